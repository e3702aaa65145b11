using IntegrityTarget.Host.Config;
using IntegrityTarget.Storage;
using IntegrityTarget.Storage.Rbd;
using Serilog;

namespace IntegrityTarget.Host.Wiring;

/// <summary>
/// Where a LUN's bytes live, chosen by the path's scheme: a file or block device, or (rbd:POOL/IMAGE) a Ceph
/// RBD image (<see cref="RbdBacking"/>). Serving, format, scrub and dump reach devices only through this, so
/// they work the same on both.
/// </summary>
public abstract class Backing : IDisposable
{
    /// <summary>What a person would type to name it: the file path or rbd:POOL/IMAGE.</summary>
    public abstract string Display { get; }

    /// <summary>"file" or "image", for messages.</summary>
    public abstract string Noun { get; }

    /// <summary>The message when it does not exist.</summary>
    public string Missing => $"{Display}: no such {(Noun == "file" ? "file or block device" : Noun)}";

    public abstract bool Exists();

    /// <summary>Creates it with <paramref name="bytes"/> (sparse / thin) and opens it for writing.</summary>
    public abstract IBlockDevice Create(long bytes, ILogger log);

    /// <summary>Opens it; writable opens are exclusive (a file lock, an image's exclusive lock).</summary>
    public abstract IBlockDevice Open(bool readOnly, ILogger log);

    /// <summary>Removes what <see cref="Create"/> made, after the step that needed it failed.</summary>
    public abstract void Delete();

    /// <summary>Whether an exception from <see cref="Open"/> means someone else has it open for writing.</summary>
    public abstract bool IsInUse(Exception e);

    public virtual void Dispose() { }

    /// <summary>The backing of a configured LUN.</summary>
    public static Backing For(LunSettings lun) =>
        lun.Rbd is { } spec ? new RbdBacking(spec, lun.Ceph ?? new CephClientOptions()) : new FileBacking(lun.Path);

    /// <summary>The backing an offline verb was given: rbd:POOL/IMAGE, or a path relative to <paramref name="workingDirectory"/>.</summary>
    public static Backing For(string pathOrImage, CephClientOptions ceph, string workingDirectory)
    {
        if (!RbdImageSpec.IsRbdPath(pathOrImage)) return new FileBacking(Path.GetFullPath(pathOrImage, workingDirectory));
        if (!RbdImageSpec.TryParse(pathOrImage, out var spec, out var error)) throw new Cli.CliException(error, Cli.ExitCodes.Usage);
        return new RbdBacking(spec, ceph);
    }
}

/// <summary>A regular file (created sparse) or a block device.</summary>
public sealed class FileBacking(string path) : Backing
{
    public override string Display => path;
    public override string Noun => "file";
    public override bool Exists() => File.Exists(path);
    public override IBlockDevice Create(long bytes, ILogger log) => FileBlockDevice.CreateSparse(path, bytes);
    public override IBlockDevice Open(bool readOnly, ILogger log) => FileBlockDevice.Open(path, readOnly);
    public override void Delete() => File.Delete(path);
    public override bool IsInUse(Exception e) => e is StorageException && e.Message.Contains("in use", StringComparison.Ordinal);
}
