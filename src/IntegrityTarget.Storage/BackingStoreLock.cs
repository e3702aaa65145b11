namespace IntegrityTarget.Storage;

/// <summary>
/// The one gate to writing a LUN's backing store that several gateways can reach (a shared file, an RBD
/// image): a gateway writes the store only through a device it got from <see cref="TryAcquireAsync"/>,
/// and holds the store's lock until it disposes that device.
/// </summary>
public interface IBackingStoreLock
{
    /// <summary>The store, for messages (a path, pool/image).</summary>
    string Name { get; }

    /// <summary>
    /// One attempt to take the lock and open the store for writing. <paramref name="holderIsGone"/>: the
    /// caller knows the holding gateway is dead or cut off (its peer link ended and stayed down), so a lock
    /// that outlives its holder may be broken and the holder fenced first (RBD: break and blocklist). A
    /// file's lock is never broken: the kernel frees a dead process's lock, and a live one keeps it.
    /// </summary>
    ValueTask<LockAttempt> TryAcquireAsync(bool holderIsGone, CancellationToken ct);

    /// <summary>Opens the store read-only without the lock, to read what does not change while it is served (the volume header).</summary>
    IBlockDevice OpenReadOnlyUnlocked();
}

/// <summary>Outcome of one attempt: the device (the lock is held until it is disposed), or who holds the lock when known.</summary>
public readonly record struct LockAttempt(IBlockDevice? Device, string? Holder)
{
    /// <summary>Whether the device still holds the lock (false once the lock was broken by another gateway: fenced).</summary>
    public Func<bool> StillHeld { get; init; } = static () => true;
}

/// <summary>The flock of a shared file or block device (<see cref="FileBlockDevice.TryOpenLocked"/>).</summary>
public sealed class FileStoreLock(string path) : IBackingStoreLock
{
    public string Name => path;

    public ValueTask<LockAttempt> TryAcquireAsync(bool holderIsGone, CancellationToken ct)
    {
        var device = FileBlockDevice.TryOpenLocked(path);
        return ValueTask.FromResult(device != null ? new LockAttempt(device, null) : new LockAttempt(null, HolderOf(path)));
    }

    public IBlockDevice OpenReadOnlyUnlocked() => FileBlockDevice.OpenUnlockedReadOnly(path);

    /// <summary>"process N" from /proc/locks when a FLOCK entry names the file's inode, else null.</summary>
    public static string? HolderOf(string path)
    {
        try
        {
            if (!Native.Inode(path, out ulong ino)) return null;
            foreach (var line in File.ReadLines("/proc/locks"))
            {
                // "1: FLOCK  ADVISORY  WRITE 12345 08:01:131 0 EOF"
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length < 6 || f[1] != "FLOCK") continue;
                var dev = f[5].Split(':');
                if (dev.Length == 3 && ulong.TryParse(dev[2], out var i) && i == ino) return $"process {f[4]}";
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }
}
