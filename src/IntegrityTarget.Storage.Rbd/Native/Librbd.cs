using System.Runtime.InteropServices;

namespace IntegrityTarget.Storage.Rbd.Native;

/// <summary>
/// The part of librbd's C API (librbd.so.1, package librbd1) the RBD device needs. Negative return values
/// are -errno. Asynchronous calls complete through an <c>rbd_completion_t</c> whose callback runs on one of
/// librbd's threads (see <see cref="RbdCompletionSource"/>).
/// </summary>
internal static unsafe partial class Librbd
{
    public const string Library = "librbd.so.1";

    public const ulong FeatureLayering = 1UL << 0;
    public const ulong FeatureStripingV2 = 1UL << 1;
    public const ulong FeatureExclusiveLock = 1UL << 2;
    public const ulong FeatureObjectMap = 1UL << 3;
    public const ulong FeatureFastDiff = 1UL << 4;
    public const ulong FeatureDeepFlatten = 1UL << 5;
    public const ulong FeatureJournaling = 1UL << 6;

    /// <summary>What <c>rbd create</c> gives by default in Pacific (61): layering, exclusive-lock, object-map, fast-diff, deep-flatten.</summary>
    public const ulong DefaultFeatures = FeatureLayering | FeatureExclusiveLock | FeatureObjectMap | FeatureFastDiff | FeatureDeepFlatten;

    public const int LockModeExclusive = 0;
    public const int LockModeShared = 1;

    [StructLayout(LayoutKind.Sequential)]
    public struct ImageInfo
    {
        public ulong Size;
        public ulong ObjSize;
        public ulong NumObjs;
        public int Order;
        public fixed byte BlockNamePrefix[24]; // RBD_MAX_BLOCK_NAME_SIZE
        public long ParentPool;
        public fixed byte ParentName[96];      // RBD_MAX_IMAGE_NAME_SIZE
    }

    [LibraryImport(Library)]
    public static partial void rbd_version(out int major, out int minor, out int extra);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rbd_create2(nint ioctx, string name, ulong size, ulong features, ref int order);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rbd_remove(nint ioctx, string name);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rbd_open(nint ioctx, string name, out nint image, string? snapName);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rbd_open_read_only(nint ioctx, string name, out nint image, string? snapName);

    [LibraryImport(Library)]
    public static partial int rbd_close(nint image);

    [LibraryImport(Library)]
    public static partial int rbd_get_size(nint image, out ulong size);

    [LibraryImport(Library)]
    public static partial int rbd_get_features(nint image, out ulong features);

    [LibraryImport(Library)]
    public static partial int rbd_stat(nint image, out ImageInfo info, nuint infoSize);

    [LibraryImport(Library)]
    public static partial int rbd_resize(nint image, ulong size);

    // ---- exclusive lock (feature exclusive-lock)
    [LibraryImport(Library)]
    public static partial int rbd_is_exclusive_lock_owner(nint image, out int isOwner);

    [LibraryImport(Library)]
    public static partial int rbd_lock_acquire(nint image, int lockMode);

    [LibraryImport(Library)]
    public static partial int rbd_lock_release(nint image);

    [LibraryImport(Library)]
    public static partial int rbd_lock_get_owners(nint image, out int lockMode, byte** lockOwners, ref nuint maxLockOwners);

    [LibraryImport(Library)]
    public static partial void rbd_lock_get_owners_cleanup(byte** lockOwners, nuint count);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rbd_lock_break(nint image, int lockMode, string lockOwner);

    // ---- image metadata (rbd image-meta)
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rbd_metadata_get(nint image, string key, byte* value, ref nuint valueLength);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rbd_metadata_set(nint image, string key, string value);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int rbd_metadata_remove(nint image, string key);

    [StructLayout(LayoutKind.Sequential)]
    public struct ImageWatcher
    {
        public byte* Addr;
        public long Id;
        public ulong Cookie;
    }

    /// <summary>Clients watching the image header (every open image): their address and global id (client.ID).</summary>
    [LibraryImport(Library)]
    public static partial int rbd_watchers_list(nint image, ImageWatcher* watchers, ref nuint maxWatchers);

    [LibraryImport(Library)]
    public static partial void rbd_watchers_list_cleanup(ImageWatcher* watchers, nuint count);

    // ---- header watch (resize and other metadata changes made by others)
    [LibraryImport(Library)]
    public static partial int rbd_update_watch(nint image, out ulong handle, delegate* unmanaged[Cdecl]<nint, void> callback, nint arg);

    [LibraryImport(Library)]
    public static partial int rbd_update_unwatch(nint image, ulong handle);

    // ---- asynchronous I/O
    [LibraryImport(Library)]
    public static partial int rbd_aio_create_completion(nint arg, delegate* unmanaged[Cdecl]<nint, nint, void> callback, out nint completion);

    [LibraryImport(Library)]
    public static partial nint rbd_aio_get_return_value(nint completion);

    [LibraryImport(Library)]
    public static partial void rbd_aio_release(nint completion);

    [LibraryImport(Library)]
    public static partial int rbd_aio_read2(nint image, ulong off, nuint len, byte* buf, nint completion, int opFlags);

    [LibraryImport(Library)]
    public static partial int rbd_aio_write2(nint image, ulong off, nuint len, byte* buf, nint completion, int opFlags);

    /// <summary>struct iovec.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    /// <summary>One write of the buffers back to back (librbd references them, no copy; no op flags, so no FUA).</summary>
    [LibraryImport(Library)]
    public static partial int rbd_aio_writev(nint image, IoVec* iov, int iovcnt, ulong off, nint completion);

    /// <summary>One read scattered into the buffers; librbd keeps the iovec array until the completion.</summary>
    [LibraryImport(Library)]
    public static partial int rbd_aio_readv(nint image, IoVec* iov, int iovcnt, ulong off, nint completion);

    [LibraryImport(Library)]
    public static partial int rbd_aio_flush(nint image, nint completion);

    [LibraryImport(Library)]
    public static partial int rbd_aio_discard(nint image, ulong off, ulong len, nint completion);

    [LibraryImport(Library)]
    public static partial int rbd_aio_write_zeroes(nint image, ulong off, nuint len, nint completion, int zeroFlags, int opFlags);

    [LibraryImport(Library)]
    public static partial int rbd_aio_writesame(nint image, ulong off, nuint len, byte* buf, nuint dataLen, nint completion, int opFlags);

    [LibraryImport(Library)]
    public static partial int rbd_get_block_name_prefix(nint image, byte* prefix, nuint prefixLen);
}
