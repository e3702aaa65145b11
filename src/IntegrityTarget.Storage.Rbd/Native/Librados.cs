using System.Runtime.InteropServices;

namespace IntegrityTarget.Storage.Rbd.Native;

/// <summary>
/// The part of librados' C API (librados.so.2, package librados2) the RBD device needs. Every call returns
/// 0 (or a count) on success and a negative errno on failure; <see cref="CephError"/> turns those into messages.
/// </summary>
internal static unsafe partial class Librados
{
    public const string Library = "librados.so.2";

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_create2(out nint cluster, string clusterName, string userName, ulong flags);

    /// <param name="path">null: $CEPH_CONF, then /etc/ceph/$cluster.conf, ~/.ceph/$cluster.conf, ./$cluster.conf.</param>
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_conf_read_file(nint cluster, string? path);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_conf_set(nint cluster, string option, string value);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_conf_get(nint cluster, string option, byte* buf, nuint len);

    [LibraryImport(Library)]
    public static partial int rados_connect(nint cluster);

    [LibraryImport(Library)]
    public static partial void rados_shutdown(nint cluster);

    [LibraryImport(Library)]
    public static partial ulong rados_get_instance_id(nint cluster);

    /// <summary>This client's messenger addresses (for naming it as a lock holder); free with <see cref="rados_buffer_free"/>.</summary>
    [LibraryImport(Library)]
    public static partial int rados_getaddrs(nint cluster, out byte* addrs);

    [LibraryImport(Library)]
    public static partial void rados_buffer_free(byte* buf);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial long rados_pool_lookup(nint cluster, string poolName);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_ioctx_create(nint cluster, string poolName, out nint ioctx);

    [LibraryImport(Library)]
    public static partial void rados_ioctx_destroy(nint ioctx);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial void rados_ioctx_set_namespace(nint ioctx, string? nspace);

    /// <summary>Adds a client address to the OSD blocklist (what failover does to a dead lock owner).</summary>
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_blocklist_add(nint cluster, string clientAddress, uint expireSeconds);

    /// <summary>Writes straight into one RADOS object, bypassing librbd (tests damage images with it).</summary>
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_write(nint ioctx, string oid, byte* buf, nuint len, ulong off);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rados_read(nint ioctx, string oid, byte* buf, nuint len, ulong off);

    public static string ConfGet(nint cluster, string option)
    {
        byte* buf = stackalloc byte[512];
        int r = rados_conf_get(cluster, option, buf, 512);
        return r < 0 ? "" : Marshal.PtrToStringUTF8((nint)buf) ?? "";
    }
}
