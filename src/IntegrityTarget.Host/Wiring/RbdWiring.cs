using IntegrityTarget.Storage;
using IntegrityTarget.Storage.Rbd;
using Serilog;

namespace IntegrityTarget.Host.Wiring;

/// <summary>
/// A LUN on a Ceph RBD image (rbd:POOL/IMAGE). One cluster connection serves the existence check, the
/// creation and the open, and then belongs to the opened device (one connection per served image).
/// </summary>
public sealed class RbdBacking(RbdImageSpec spec, CephClientOptions options) : Backing
{
    private RbdClient? _client;

    public RbdImageSpec Spec => spec;
    public override string Display => spec.ToString();
    public override string Noun => "image";

    private RbdClient Client => _client ??= RbdClient.Connect(options);

    public override bool Exists() => Client.ImageExists(spec);

    public override IBlockDevice Create(long bytes, ILogger log)
    {
        Client.CreateImage(spec, bytes);
        log.Information("Created RBD image {Image} ({Bytes} bytes) as {Client}", spec.Display, bytes, options.ClientName);
        return Open(readOnly: false, log);
    }

    public override IBlockDevice Open(bool readOnly, ILogger log)
    {
        var client = Client;
        _client = null; // the device owns it from here on
        var device = client.OpenImage(spec, readOnly, log, ownsClient: true);
        if (!readOnly) log.Information("Opened RBD image {Image} for writing as {Client} ({Address}); holding its exclusive lock", spec.Display, options.ClientName, client.Address);
        return device;
    }

    public override void Delete() => Client.RemoveImage(spec);

    public override bool IsInUse(Exception e) => e is RbdException { Operation: CephOperation.LockImage, Errno: CephError.EROFS or CephError.EBUSY or CephError.EAGAIN };

    public override void Dispose() => _client?.Dispose();
}
