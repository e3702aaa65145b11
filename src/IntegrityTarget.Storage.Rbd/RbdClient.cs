using System.Runtime.InteropServices;
using IntegrityTarget.Storage.Rbd.Native;

namespace IntegrityTarget.Storage.Rbd;

/// <summary>
/// One connection to a Ceph cluster (a librados <c>rados_t</c>) and its pool handles: creates, removes and
/// opens images. Each served image gets its own client (as tcmu-runner does), so an image's timeouts,
/// blocklisting and shutdown never touch another's.
/// </summary>
public sealed class RbdClient : IDisposable
{
    private nint _cluster;
    private readonly Dictionary<(string Pool, string? Ns), nint> _ioctxs = [];
    private readonly Lock _gate = new();

    public CephClientOptions Options { get; }

    private RbdClient(nint cluster, CephClientOptions options) { _cluster = cluster; Options = options; }

    internal nint Cluster => _cluster != 0 ? _cluster : throw new ObjectDisposedException(nameof(RbdClient));

    /// <summary>Reads ceph.conf, applies the keyring and the gateway's settings, and connects (at most TimeoutSeconds).</summary>
    /// <exception cref="RbdException">With a message naming the file, the client or the cause.</exception>
    public static RbdClient Connect(CephClientOptions options)
    {
        string who = options.ClientName;
        int rc = Librados.rados_create2(out nint cluster, options.Cluster, who, 0);
        if (rc < 0) throw new RbdException(CephOperation.Connect, -rc, $"cannot create a Ceph client for cluster '{options.Cluster}' as {who}: {CephError.Symbol(rc)}");
        try
        {
            if (options.ConfFile is { } conf)
            {
                if (!File.Exists(conf))
                    throw new RbdException(CephOperation.Connect, CephError.ENOENT, $"Ceph configuration file '{conf}' does not exist (Ceph:ConfFile / --ceph-conf / CEPH_CONF)");
                rc = Librados.rados_conf_read_file(cluster, conf);
                if (rc < 0) throw new RbdException(CephOperation.Connect, -rc, $"Ceph configuration file '{conf}' cannot be read or parsed: {CephError.Symbol(rc)}");
            }
            else
            {
                rc = Librados.rados_conf_read_file(cluster, null);
                if (rc < 0)
                    throw new RbdException(CephOperation.Connect, -rc,
                        $"no Ceph configuration found for cluster '{options.Cluster}' (looked for /etc/ceph/{options.Cluster}.conf, ~/.ceph/{options.Cluster}.conf, ./{options.Cluster}.conf); " +
                        "give one with --ceph-conf FILE, Ceph:ConfFile or CEPH_CONF");
            }
            if (options.Keyring is { } keyring)
            {
                if (!File.Exists(keyring))
                    throw new RbdException(CephOperation.Connect, CephError.ENOENT, $"keyring '{keyring}' does not exist (Ceph:Keyring / --ceph-keyring)");
                Set(cluster, "keyring", keyring);
            }
            foreach (var (option, value) in options.ForcedSettings()) Set(cluster, option, value);
            if (string.IsNullOrWhiteSpace(Librados.ConfGet(cluster, "mon_host")))
                throw new RbdException(CephOperation.Connect, CephError.EINVAL, $"the Ceph configuration{(options.ConfFile is { } c ? $" '{c}'" : "")} names no monitor (mon_host)");
            rc = Librados.rados_connect(cluster);
            if (rc < 0) throw CephError.Fail(CephOperation.Connect, rc, who, options.TimeoutSeconds);
            return new RbdClient(cluster, options);
        }
        catch
        {
            Librados.rados_shutdown(cluster);
            throw;
        }
    }

    private static void Set(nint cluster, string option, string value)
    {
        int rc = Librados.rados_conf_set(cluster, option, value);
        if (rc < 0) throw new RbdException(CephOperation.Connect, -rc, $"librados rejected the setting {option} = {value}: {CephError.Symbol(rc)}");
    }

    /// <summary>The pool (and namespace) handle, opened once per client.</summary>
    internal nint IoCtx(RbdImageSpec spec)
    {
        lock (_gate)
        {
            if (_ioctxs.TryGetValue((spec.Pool, spec.Namespace), out var io)) return io;
            int rc = Librados.rados_ioctx_create(Cluster, spec.Pool, out io);
            if (rc < 0) throw CephError.Fail(CephOperation.OpenPool, rc, spec.Pool, Options.TimeoutSeconds);
            if (spec.Namespace != null) Librados.rados_ioctx_set_namespace(io, spec.Namespace);
            _ioctxs[(spec.Pool, spec.Namespace)] = io;
            return io;
        }
    }

    /// <summary>Whether the image exists (a read-only open, closed at once).</summary>
    public bool ImageExists(RbdImageSpec spec)
    {
        int rc = Librbd.rbd_open_read_only(IoCtx(spec), spec.Image, out nint image, null);
        if (rc == -CephError.ENOENT) return false;
        if (rc < 0) throw CephError.Fail(CephOperation.OpenImage, rc, spec.Display, Options.TimeoutSeconds);
        Librbd.rbd_close(image);
        return true;
    }

    /// <summary>Creates an image of <paramref name="bytes"/> with Pacific's default features (exclusive-lock among them) and 4 MiB objects.</summary>
    public void CreateImage(RbdImageSpec spec, long bytes)
    {
        int order = 22;
        int rc = Librbd.rbd_create2(IoCtx(spec), spec.Image, (ulong)bytes, Librbd.DefaultFeatures, ref order);
        if (rc < 0) throw CephError.Fail(CephOperation.CreateImage, rc, spec.Display, Options.TimeoutSeconds);
    }

    public void RemoveImage(RbdImageSpec spec)
    {
        int rc = Librbd.rbd_remove(IoCtx(spec), spec.Image);
        if (rc < 0) throw CephError.Fail(CephOperation.RemoveImage, rc, spec.Display, Options.TimeoutSeconds);
    }

    /// <summary>This client's address as the cluster sees it (what a lock holder is named by), e.g. "127.0.0.1:0/3141592".</summary>
    public unsafe string Address
    {
        get
        {
            if (Librados.rados_getaddrs(Cluster, out byte* addrs) < 0 || addrs == null) return "(unknown address)";
            try { return Marshal.PtrToStringUTF8((nint)addrs) ?? "(unknown address)"; }
            finally { Librados.rados_buffer_free(addrs); }
        }
    }

    /// <summary>"client.4242": this connection's global id, as lock listings name it.</summary>
    public string EntityName => $"client.{Librados.rados_get_instance_id(Cluster)}";

    /// <summary>
    /// Opens the image. Writable opens take its exclusive lock first (<see cref="ExclusiveLock"/>) and refuse
    /// an image without the exclusive-lock feature. <paramref name="ownsClient"/>: disposing the device
    /// disposes this client too.
    /// </summary>
    public RbdBlockDevice OpenImage(RbdImageSpec spec, bool readOnly, Serilog.ILogger? log = null, bool ownsClient = false) =>
        RbdBlockDevice.Open(this, spec, readOnly, log, ownsClient);

    public void Dispose()
    {
        lock (_gate)
        {
            if (_cluster == 0) return;
            foreach (var io in _ioctxs.Values) Librados.rados_ioctx_destroy(io);
            _ioctxs.Clear();
            Librados.rados_shutdown(_cluster);
            _cluster = 0;
        }
    }
}
