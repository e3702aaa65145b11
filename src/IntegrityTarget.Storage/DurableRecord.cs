namespace IntegrityTarget.Storage;

/// <summary>
/// One small record kept with a LUN's backing store (a file beside a file LUN; image metadata for an RBD
/// image), read whole and replaced whole. <see cref="Write"/> is atomic and durable when it returns: after a
/// crash at any point the record reads as the old or the new value, never a mix. Every gateway that can
/// open the LUN's backing store sees the same record.
/// </summary>
public interface IDurableRecord
{
    /// <summary>Where the record lives, for messages.</summary>
    string Name { get; }

    /// <summary>The record, or null when there is none.</summary>
    byte[]? Read();

    /// <summary>Replaces the record atomically and durably.</summary>
    void Write(ReadOnlySpan<byte> value);

    /// <summary>Removes the record durably (no-op when there is none).</summary>
    void Delete();
}

/// <summary>
/// A record in its own file: written to a temporary file, fsync'd, renamed over the old one, and the
/// directory fsync'd, so a crash leaves the old or the new file and a completed write survives power loss.
/// </summary>
public sealed class DurableFile(string path) : IDurableRecord
{
    public string Name => path;

    public byte[]? Read() => File.Exists(path) ? File.ReadAllBytes(path) : null;

    public void Write(ReadOnlySpan<byte> value)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".";
        var tmp = Path.Combine(dir, $".{Path.GetFileName(path)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
            {
                fs.Write(value);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
        Native.FsyncDirectory(dir);
    }

    public void Delete()
    {
        if (!File.Exists(path)) return;
        File.Delete(path);
        Native.FsyncDirectory(Path.GetDirectoryName(Path.GetFullPath(path)) ?? ".");
    }
}
