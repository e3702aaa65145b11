using System.Runtime.InteropServices;
using IntegrityTarget.Storage.Rbd.Native;

namespace IntegrityTarget.Storage.Rbd;

/// <summary>Who holds an image's exclusive lock: the lock owner as librbd names it, and (when the header lists it) the client and its address.</summary>
public sealed record LockHolder(string Owner, string? Client, string? Address)
{
    public override string ToString() => Client is null ? $"the client at {Owner}" : $"{Client} at {Address ?? Owner}";
}

/// <summary>
/// The one place that decides who may write an image, so that failover between gateways can grow here:
/// take the lock, say who holds it, give it up, and (for failover, not used by a single gateway) break a dead
/// owner's lock.
/// </summary>
public interface ILunOwnership
{
    /// <summary>Whether this gateway holds the lock right now (false once the cluster took it away).</summary>
    bool IsOwner { get; }

    /// <summary>The current holders (empty when nobody holds the lock).</summary>
    IReadOnlyList<LockHolder> Holders();

    /// <summary>Gives the lock up (at close; an owner that dies loses it when the OSDs notice).</summary>
    void Release();

    /// <summary>
    /// Breaks another owner's lock and blocklists that client, so a gateway presumed dead cannot write again
    /// (failover). Never called by a single gateway on its own.
    /// </summary>
    void BreakLock(LockHolder holder);
}

/// <summary>
/// RBD's exclusive lock (image feature exclusive-lock) taken explicitly with <c>rbd_lock_acquire</c>. Taken
/// that way, librbd holds it in "managed" mode: it does not hand it over when another client asks for it (as
/// it would for an automatic lock), so a second gateway gets EROFS and this class names the holder, instead of
/// the two of them writing the same journal in turn.
/// </summary>
public sealed unsafe class ExclusiveLock : ILunOwnership
{
    private readonly nint _image;
    private readonly string _name;
    private bool _released;

    private ExclusiveLock(nint image, string name) { _image = image; _name = name; }

    /// <summary>The image's exclusive-lock feature must be on; a writable open without it would have no single-writer guarantee.</summary>
    public static void RequireFeature(nint image, string name, int timeoutSeconds)
    {
        CephError.Check(Librbd.rbd_get_features(image, out ulong features), CephOperation.OpenImage, name, timeoutSeconds);
        if ((features & Librbd.FeatureExclusiveLock) == 0)
            throw new RbdException(CephOperation.LockImage, CephError.EOPNOTSUPP,
                $"{name} does not have the exclusive-lock feature, so nothing would stop a second gateway from writing it at the same time; " +
                $"enable it with: rbd feature enable {name} exclusive-lock");
    }

    /// <summary>Takes the lock or throws an <see cref="RbdException"/> (EROFS/EBUSY) naming who holds it.</summary>
    /// <remarks>
    /// librbd asks a live holder to release (it refuses: EROFS at once) and breaks the lock of a holder whose
    /// session is gone, which the OSDs notice after osd_client_watch_timeout (30 s by default): a gateway
    /// restarted after a crash waits that long here, and says so first.
    /// </remarks>
    public static ExclusiveLock Acquire(nint image, string name, int timeoutSeconds, Serilog.ILogger? log = null)
    {
        RequireFeature(image, name, timeoutSeconds);
        if (log != null && ReadHolders(image) is { Count: > 0 } before)
            log.Information("{Image} is locked by {Holder}; asking for the lock (refused at once if that client is alive; " +
                            "a dead client's lock is broken once the cluster notices, within about 30 s)", name, string.Join(", ", before));
        int rc = Librbd.rbd_lock_acquire(image, Librbd.LockModeExclusive);
        if (rc == 0) return new ExclusiveLock(image, name);
        if (rc is -CephError.EROFS or -CephError.EBUSY or -CephError.EAGAIN)
        {
            var holders = ReadHolders(image);
            string who = holders.Count == 0 ? "another client (it released the lock meanwhile; try again)" : string.Join(", ", holders);
            throw new RbdException(CephOperation.LockImage, -rc,
                $"{name} is already open for writing by {who}: one gateway writes an image at a time. " +
                $"Stop the other gateway first (if it died, the cluster frees its lock once its session times out, " +
                $"by default within 30 s; see `rbd status {name}` and `rbd lock ls {name}`) [{CephError.Symbol(rc)}]");
        }
        throw CephError.Fail(CephOperation.LockImage, rc, name, timeoutSeconds);
    }

    /// <summary>
    /// One attempt by a gateway of a group (failover): the lock when it was free, else null and who holds it.
    /// A live holder is never asked to let go. With <paramref name="holderIsGone"/> (the holder's gateway is dead
    /// or cut off), each holder's lock is broken first; librbd blocklists the broken client
    /// (rbd_blocklist_on_break_lock), so a holder that was only cut off can never write to the image again.
    /// </summary>
    public static ExclusiveLock? TryTakeOver(nint image, string name, int timeoutSeconds, bool holderIsGone,
        Serilog.ILogger? log, out IReadOnlyList<LockHolder> holders)
    {
        RequireFeature(image, name, timeoutSeconds);
        holders = ReadHolders(image);
        if (holders.Count > 0)
        {
            if (!holderIsGone) return null;
            foreach (var h in holders)
            {
                int brk = Librbd.rbd_lock_break(image, Librbd.LockModeExclusive, h.Owner);
                if (brk < 0 && brk != -CephError.ENOENT) throw CephError.Fail(CephOperation.LockImage, brk, name, timeoutSeconds);
                log?.Warning("{Image}: broke the exclusive lock of {Holder}, whose gateway is gone; that client is blocklisted and cannot write to the image again", name, h);
            }
        }
        int rc = Librbd.rbd_lock_acquire(image, Librbd.LockModeExclusive);
        if (rc == 0) { holders = []; return new ExclusiveLock(image, name); }
        if (rc is -CephError.EROFS or -CephError.EBUSY or -CephError.EAGAIN) { holders = ReadHolders(image); return null; } // another gateway was quicker
        throw CephError.Fail(CephOperation.LockImage, rc, name, timeoutSeconds);
    }

    public bool IsOwner => !_released && Librbd.rbd_is_exclusive_lock_owner(_image, out int owner) == 0 && owner != 0;

    public IReadOnlyList<LockHolder> Holders() => ReadHolders(_image);

    public void Release()
    {
        if (_released) return;
        _released = true;
        Librbd.rbd_lock_release(_image);
    }

    public void BreakLock(LockHolder holder)
    {
        int rc = Librbd.rbd_lock_break(_image, Librbd.LockModeExclusive, holder.Owner);
        if (rc < 0) throw CephError.Fail(CephOperation.LockImage, rc, _name);
    }

    /// <summary>
    /// Owners from librbd (it names a lock owner by its messenger address), each completed with its client name
    /// (client.ID) from the header's watchers, whose addresses are the same.
    /// </summary>
    internal static IReadOnlyList<LockHolder> ReadHolders(nint image)
    {
        var owners = new List<string>();
        nuint max = 8;
        byte** names = stackalloc byte*[8];
        if (Librbd.rbd_lock_get_owners(image, out _, names, ref max) == 0)
        {
            for (nuint i = 0; i < max; i++) owners.Add(Marshal.PtrToStringUTF8((nint)names[i]) ?? "?");
            Librbd.rbd_lock_get_owners_cleanup(names, max);
        }
        if (owners.Count == 0) return [];
        var watchers = Watchers(image);
        return owners.Select(o => new LockHolder(o, watchers.TryGetValue(o, out var id) ? $"client.{id}" : null, o)).ToList();
    }

    private static Dictionary<string, long> Watchers(nint image)
    {
        var result = new Dictionary<string, long>();
        nuint max = 16;
        var list = stackalloc Librbd.ImageWatcher[16];
        if (Librbd.rbd_watchers_list(image, list, ref max) != 0) return result;
        for (nuint i = 0; i < max; i++)
            if (Marshal.PtrToStringUTF8((nint)list[i].Addr) is { } addr) result[addr] = list[i].Id;
        Librbd.rbd_watchers_list_cleanup(list, max);
        return result;
    }
}
