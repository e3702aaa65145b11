namespace IntegrityTarget.Storage.Rbd;

/// <summary>What the gateway was doing when librados/librbd failed; picks the explanation of an errno.</summary>
public enum CephOperation
{
    Connect,
    OpenPool,
    OpenImage,
    CreateImage,
    RemoveImage,
    LockImage,
    Read,
    Write,
    Flush,
    Discard,
    Resize,
}

/// <summary>
/// A failed librados/librbd call: the errno (positive, also in <see cref="Exception.HResult"/>, so a volume
/// classifies ENOSPC as out of space like any other device), the operation and a message a person can act on.
/// </summary>
public sealed class RbdException(CephOperation operation, int errno, string message) : IOException(message, errno)
{
    public CephOperation Operation { get; } = operation;
    public int Errno { get; } = errno;
}

/// <summary>
/// The one table from Ceph error codes to messages. librados and librbd return -errno; the same code means
/// different things depending on the call (ENOENT from connect is a missing keyring, from rbd_open a missing
/// image), so a row may be specific to an operation and the general row of the code is the fallback.
/// </summary>
public static class CephError
{
    public const int EPERM = 1, ENOENT = 2, EIO = 5, EAGAIN = 11, EACCES = 13, EBUSY = 16, EEXIST = 17, EINVAL = 22,
        EFBIG = 27, ENOSPC = 28, EROFS = 30, ERANGE = 34, ENOSYS = 38, EOPNOTSUPP = 95, ENOTCONN = 107,
        /// <summary>Ceph's EBLOCKLISTED is ESHUTDOWN on Linux.</summary>
        EBLOCKLISTED = 108, ETIMEDOUT = 110, ECONNREFUSED = 111, EDQUOT = 122, ECANCELED = 125;

    private sealed record Row(int Errno, CephOperation? Operation, string Symbol, string Meaning);

    // {0} = the subject (image spec, pool, client name), {1} = the timeout in seconds.
    private static readonly Row[] Rows =
    [
        new(ENOENT, CephOperation.Connect, "ENOENT", "no keyring for {0} was found (set Ceph:Keyring / --ceph-keyring, or keyring= in the [client] section of ceph.conf)"),
        new(ENOENT, CephOperation.OpenPool, "ENOENT", "pool '{0}' does not exist (create it with: ceph osd pool create {0} && rbd pool init {0})"),
        new(ENOENT, CephOperation.OpenImage, "ENOENT", "image {0} does not exist (create it with --size, or: rbd create --size 10G {0})"),
        new(ENOENT, CephOperation.RemoveImage, "ENOENT", "image {0} does not exist"),
        new(ENOENT, null, "ENOENT", "{0}: no such object or image"),
        new(EPERM, CephOperation.Connect, "EPERM", "{0} is not allowed to connect (its key or caps; see `ceph auth get {0}`)"),
        new(EPERM, null, "EPERM", "{0}: operation not permitted by the client's caps (the gateway needs mon 'profile rbd' and osd 'profile rbd pool=POOL')"),
        new(EACCES, CephOperation.Connect, "EACCES", "authentication of {0} failed (wrong key in the keyring, or the client does not exist: ceph auth get {0})"),
        new(EACCES, null, "EACCES", "{0}: permission denied by the client's caps (the gateway needs mon 'profile rbd' and osd 'profile rbd pool=POOL')"),
        new(ETIMEDOUT, CephOperation.Connect, "ETIMEDOUT", "{0} got no answer from any monitor within {1} s (check mon_host in ceph.conf and the network, or the cluster is down; the limit is Ceph:TimeoutSeconds)"),
        new(ETIMEDOUT, null, "ETIMEDOUT", "{0}: the cluster did not complete the request within {1} s (rados_osd_op_timeout; OSDs down or the cluster unhealthy: ceph -s)"),
        new(EBLOCKLISTED, null, "EBLOCKLISTED", "{0}: this gateway has been blocklisted by the cluster (another gateway broke its lock, or an admin did); it can no longer write this image. Restart it once the other owner is gone"),
        new(EROFS, CephOperation.LockImage, "EROFS", "{0}: the exclusive lock is held by another client that does not release it"),
        new(EROFS, null, "EROFS", "{0}: the image is read-only here (the exclusive lock is owned by another client, or the image is a snapshot or non-primary mirror)"),
        new(EBUSY, CephOperation.RemoveImage, "EBUSY", "image {0} is in use (it has watchers: another gateway or client has it open)"),
        new(EBUSY, null, "EBUSY", "{0}: busy (locked or in use by another client)"),
        new(EEXIST, CephOperation.CreateImage, "EEXIST", "image {0} already exists"),
        new(ENOSPC, null, "ENOSPC", "{0}: the cluster is out of space (an OSD is full: ceph df, ceph osd df)"),
        new(EDQUOT, null, "EDQUOT", "{0}: the pool's quota is exhausted (ceph osd pool get-quota)"),
        new(EFBIG, null, "EFBIG", "{0}: beyond the image's size"),
        new(EINVAL, null, "EINVAL", "{0}: invalid argument (a librbd/librados option or a range outside the image)"),
        new(EOPNOTSUPP, null, "EOPNOTSUPP", "{0}: not supported by this image or cluster (image features, or an older cluster)"),
        new(ENOSYS, null, "ENOSYS", "{0}: not implemented by this librbd/cluster"),
        new(ENOTCONN, null, "ENOTCONN", "{0}: not connected to the cluster"),
        new(ECONNREFUSED, null, "ECONNREFUSED", "{0}: connection refused by the cluster (a monitor or OSD is not listening)"),
        new(EIO, null, "EIO", "{0}: I/O error reported by the cluster (an OSD could not read or write the object)"),
        new(EAGAIN, null, "EAGAIN", "{0}: try again (the cluster is busy or the lock is changing hands)"),
        new(ECANCELED, null, "ECANCELED", "{0}: cancelled (the image was closed or the lock was lost)"),
        new(ERANGE, null, "ERANGE", "{0}: result out of range"),
    ];

    /// <summary>The errno's symbol (e.g. "ETIMEDOUT"), or "errno N" for a code this table does not know.</summary>
    public static string Symbol(int errno)
    {
        errno = Math.Abs(errno);
        return Rows.FirstOrDefault(r => r.Errno == errno)?.Symbol ?? $"errno {errno}";
    }

    /// <summary>A message for a failure of <paramref name="op"/> on <paramref name="subject"/>; never "unknown error".</summary>
    /// <param name="rc">The call's return value (-errno) or the errno itself.</param>
    public static string Describe(CephOperation op, int rc, string subject, int timeoutSeconds = 30)
    {
        int errno = Math.Abs(rc);
        var row = Rows.FirstOrDefault(r => r.Errno == errno && r.Operation == op) ?? Rows.FirstOrDefault(r => r.Errno == errno && r.Operation == null);
        string text = row != null
            ? string.Format(System.Globalization.CultureInfo.InvariantCulture, row.Meaning, subject, timeoutSeconds)
            : $"{subject}: {Verb(op)} failed with Ceph error code {errno}{SystemText(errno)}";
        return $"{text} [{Verb(op)}: {Symbol(errno)}]";
    }

    /// <summary>The C library's text for a code, when it has one (never "Unknown error N").</summary>
    private static string SystemText(int errno)
    {
        var text = System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(errno);
        return string.IsNullOrEmpty(text) || text.StartsWith("Unknown", StringComparison.OrdinalIgnoreCase) ? "" : $" ({text})";
    }

    /// <summary>The exception for a failed call; the message comes from <see cref="Describe"/>.</summary>
    public static RbdException Fail(CephOperation op, int rc, string subject, int timeoutSeconds = 30) =>
        new(op, Math.Abs(rc), Describe(op, rc, subject, timeoutSeconds));

    /// <summary>Throws <see cref="RbdException"/> when <paramref name="rc"/> is negative; returns it otherwise.</summary>
    public static long Check(long rc, CephOperation op, string subject, int timeoutSeconds = 30) =>
        rc < 0 ? throw Fail(op, (int)rc, subject, timeoutSeconds) : rc;

    private static string Verb(CephOperation op) => op switch
    {
        CephOperation.Connect => "connect",
        CephOperation.OpenPool => "open pool",
        CephOperation.OpenImage => "open image",
        CephOperation.CreateImage => "create image",
        CephOperation.RemoveImage => "remove image",
        CephOperation.LockImage => "exclusive lock",
        CephOperation.Read => "read",
        CephOperation.Write => "write",
        CephOperation.Flush => "flush",
        CephOperation.Discard => "discard",
        CephOperation.Resize => "resize",
        _ => op.ToString(),
    };
}
