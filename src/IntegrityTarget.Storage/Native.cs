using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace IntegrityTarget.Storage;

/// <summary>The few Linux calls .NET does not expose: fdatasync, hole punching, SEEK_DATA/SEEK_HOLE, RWF_DSYNC writes.</summary>
internal static unsafe partial class Native
{
    private const int FALLOC_FL_KEEP_SIZE = 0x01;
    private const int FALLOC_FL_PUNCH_HOLE = 0x02;
    private const int SEEK_END = 2;
    private const int SEEK_DATA = 3;
    private const int SEEK_HOLE = 4;
    private const int RWF_DSYNC = 0x02;
    public const int ENXIO = 6;
    public const int ENOSYS = 38;
    public const int EOPNOTSUPP = 95;
    public const int EINVAL = 22;

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec { public void* Base; public nuint Len; }

    [LibraryImport("libc", SetLastError = true)] private static partial int fdatasync(int fd);
    [LibraryImport("libc", SetLastError = true)] private static partial int fsync(int fd);
    [LibraryImport("libc", SetLastError = true)] private static partial int sync_file_range(int fd, long offset, long nbytes, uint flags);
    private const uint SYNC_FILE_RANGE_WRITE = 2;
    [LibraryImport("libc", SetLastError = true)] private static partial int fallocate(int fd, int mode, long offset, long len);
    [LibraryImport("libc", SetLastError = true)] private static partial long lseek(int fd, long offset, int whence);
    [LibraryImport("libc", SetLastError = true)] private static partial nint pwritev2(int fd, IoVec* iov, int iovcnt, long offset, int flags);
    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)] private static partial int open(string path, int flags);
    [LibraryImport("libc", SetLastError = true)] private static partial int close(int fd);
    [LibraryImport("libc", SetLastError = true)] private static partial int flock(int fd, int operation);
    private const int O_RDONLY = 0, O_RDWR = 2, O_DIRECTORY = 0x10000, O_CLOEXEC = 0x80000;
    private const int LOCK_EX = 2, LOCK_NB = 4;
    public const int EWOULDBLOCK = 11, ENOENT = 2;

    /// <summary>
    /// open(2) without .NET's own flock (File.OpenHandle takes LOCK_SH/LOCK_EX itself, which a gateway that
    /// only reads a locked file's header, or that takes the lock itself, must avoid). Returns the errno on failure.
    /// </summary>
    public static SafeFileHandle? OpenRaw(string path, bool writable, out int errno)
    {
        int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
        errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
        return fd < 0 ? null : new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>
    /// A second open file description of the file <paramref name="h"/> is open on (through /proc/self/fd, so it is the
    /// same inode even if the path was renamed or replaced since), without a lock: it has a writeback error cursor of its
    /// own. Falls back to <paramref name="path"/> when /proc is not mounted.
    /// </summary>
    public static SafeFileHandle Reopen(SafeFileHandle h, string path, bool writable)
    {
        var r = OpenRaw($"/proc/self/fd/{Fd(h)}", writable, out int errno);
        if (r == null && errno == ENOENT) r = OpenRaw(path, writable, out errno);
        return r ?? throw new IOException($"{path}: cannot open it again for flushing: {Marshal.GetPInvokeErrorMessage(errno)}");
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)] private static partial int statx(int dirfd, string path, int flags, uint mask, byte* buf);

    /// <summary>The inode number of <paramref name="path"/> (statx; stx_ino sits at byte 32 of struct statx on every architecture).</summary>
    public static bool Inode(string path, out ulong ino)
    {
        const int AT_FDCWD = -100; const uint STATX_INO = 0x100;
        byte* buf = stackalloc byte[256];
        ino = 0;
        if (statx(AT_FDCWD, path, 0, STATX_INO, buf) != 0) return false;
        ino = *(ulong*)(buf + 32);
        return true;
    }

    /// <summary>flock(LOCK_EX|LOCK_NB): true when taken, false when another open file holds it; throws on other errors.</summary>
    public static bool TryLockExclusive(SafeFileHandle h, string name)
    {
        if (flock(Fd(h), LOCK_EX | LOCK_NB) == 0) return true;
        int e = Marshal.GetLastPInvokeError();
        if (e == EWOULDBLOCK) return false;
        throw Error("flock", name, e);
    }

    /// <summary>Makes a rename or unlink in <paramref name="dir"/> durable (fsync of the directory).</summary>
    public static void FsyncDirectory(string dir)
    {
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) throw Error("open(directory)", dir);
        try { if (fsync(fd) != 0) throw Error("fsync(directory)", dir); }
        finally { close(fd); }
    }

    private static int Fd(SafeFileHandle h) => (int)h.DangerousGetHandle();

    public static void FdataSync(SafeFileHandle h, string name)
    {
        if (fdatasync(Fd(h)) != 0) throw Error("fdatasync", name);
    }

    /// <summary>sync_file_range(SYNC_FILE_RANGE_WRITE): starts writeback of the range's dirty pages and does not wait
    /// for it. Durability is unchanged (only a later fdatasync promises anything); false when the call is refused.</summary>
    public static bool StartWriteback(SafeFileHandle h, long offset, long length) =>
        sync_file_range(Fd(h), offset, length, SYNC_FILE_RANGE_WRITE) == 0;

    /// <summary>fsync: data and all metadata (used after a size change, where the size is the point).</summary>
    public static void FSync(SafeFileHandle h, string name)
    {
        if (fsync(Fd(h)) != 0) throw Error("fsync", name);
    }

    /// <returns>false when the filesystem cannot punch holes.</returns>
    public static bool PunchHole(SafeFileHandle h, long offset, long length, string name)
    {
        if (fallocate(Fd(h), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0) return true;
        int e = Marshal.GetLastPInvokeError();
        if (e is EOPNOTSUPP or ENOSYS or EINVAL) return false;
        throw Error("fallocate(PUNCH_HOLE)", name, e);
    }

    public static long SizeBySeek(SafeFileHandle h, string name)
    {
        long r = lseek(Fd(h), 0, SEEK_END);
        if (r < 0) throw Error("lseek(SEEK_END)", name);
        return r;
    }

    /// <summary>Next data/hole boundary; -1 when the filesystem does not support SEEK_DATA/SEEK_HOLE, or past the last data (ENXIO).</summary>
    public static long SeekData(SafeFileHandle h, long offset, bool hole)
    {
        long r = lseek(Fd(h), offset, hole ? SEEK_HOLE : SEEK_DATA);
        return r;
    }

    public static int LastError => Marshal.GetLastPInvokeError();

    /// <returns>false when RWF_DSYNC is unsupported (caller falls back to write + fdatasync).</returns>
    public static bool WriteDsync(SafeFileHandle h, long offset, ReadOnlySpan<byte> data, string name)
    {
        fixed (byte* p = data)
        {
            long done = 0;
            while (done < data.Length)
            {
                var iov = new IoVec { Base = p + done, Len = (nuint)(data.Length - done) };
                nint n = pwritev2(Fd(h), &iov, 1, offset + done, RWF_DSYNC);
                if (n < 0)
                {
                    int e = Marshal.GetLastPInvokeError();
                    if (e == 4) continue; // EINTR
                    if (done == 0 && e is EOPNOTSUPP or ENOSYS or EINVAL) return false;
                    throw Error("pwritev2(RWF_DSYNC)", name, e);
                }
                if (n == 0) throw new IOException($"{name}: short write at offset {offset + done} (device full?)");
                done += n;
            }
        }
        return true;
    }

    private static IOException Error(string call, string name, int? errno = null)
    {
        int e = errno ?? Marshal.GetLastPInvokeError();
        return new IOException($"{name}: {call} failed: {Marshal.GetPInvokeErrorMessage(e)} (errno {e})", e);
    }
}
