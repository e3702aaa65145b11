using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using IntegrityTarget.Storage.Rbd.Native;
using Serilog;

namespace IntegrityTarget.Storage.Rbd;

/// <summary>
/// A Ceph RBD image as an <see cref="IBlockDevice"/>, through librbd's asynchronous C API.
/// <para>Durability (<see cref="CephClientOptions.ForcedSettings"/>): librbd runs without a cache, so a completed
/// write is on the OSDs of its placement group (an acknowledged write survives this process); <see cref="FlushAsync"/>
/// (rbd_aio_flush) reports the error of any write that failed. Should librbd run a cache anyway (a build that
/// ignores the setting), FUA writes carry LIBRADOS_OP_FLAG_FADVISE_FUA under write-around and are write + flush
/// under write-back.</para>
/// <para>Errors become <see cref="RbdException"/> (an <see cref="IOException"/> whose HResult is the errno), with
/// a message from <see cref="CephError"/>; each distinct error is logged once per 10 s per device.</para>
/// <para>Writable opens hold the image's exclusive lock (<see cref="ExclusiveLock"/>) until disposed.</para>
/// </summary>
public sealed class RbdBlockDevice : IBlockDevice
{
    private static readonly TimeSpan ErrorLogInterval = TimeSpan.FromSeconds(10);

    private readonly RbdClient _client;
    private readonly bool _ownsClient;
    private nint _image;
    private readonly ExclusiveLock? _lock;
    private readonly ILogger _log;
    /// <summary>How a FUA write is made durable: with the write itself (no cache, or write-around), or by a flush after it.</summary>
    private readonly FuaMode _fua;
    private enum FuaMode { NoCache, FuaFlag, WriteThenFlush }
    private const int FadviseFua = 0x80; // LIBRADOS_OP_FLAG_FADVISE_FUA
    private readonly int _timeout;
    private long _length;
    private long _imageSize;
    private int _inFlight;
    private readonly Stack<RbdCompletionSource> _pool = new();
    private readonly Lock _poolGate = new();
    private GCHandle _watchSelf;
    private ulong _watchHandle;
    private bool _watching;
    private readonly Dictionary<int, (DateTime Last, int Suppressed)> _errorLog = [];
    private int _disposed;

    public RbdImageSpec Spec { get; }
    public string Name { get; }
    public bool ReadOnly { get; }
    public long Length => Volatile.Read(ref _length);
    public bool CanGrow => !ReadOnly;
    public int SectorSize => 512;
    /// <summary>Every call waits for an OSD round trip: a checkpoint's home copies (a tag-region read and a write
    /// per slot) go 32 at a time instead of one after another per core.</summary>
    public int BulkConcurrency => 32;
    /// <summary>A read of the journal is an OSD read: the volume keeps journaled blocks' images in memory (not measured yet).</summary>
    public bool CheapReadBack => false;
    /// <summary>Discard is rbd_aio_write_zeroes: whole objects are deallocated, partial ranges written as zeros.</summary>
    public bool CanDeallocate => true;

    /// <summary>Who may write this image; null for read-only opens (they take no lock).</summary>
    public ILunOwnership? Ownership => _lock;

    /// <summary>
    /// A record in the image's metadata (<c>rbd image-meta</c>): kept with the image, so every gateway that can
    /// open the image sees it; each set is one atomic update of the image header, committed by the OSDs.
    /// </summary>
    public IDurableRecord Metadata(string key) => new RbdMetadataRecord(this, key);

    /// <summary>Runs <paramref name="call"/> with the open image handle (metadata calls).</summary>
    internal T WithImage<T>(Func<nint, T> call)
    {
        CheckOpen();
        return call(_image);
    }

    /// <summary>The image's size as the cluster reports it now (differs from <see cref="Length"/> after a resize by someone else).</summary>
    public long ImageSize => Volatile.Read(ref _imageSize);

    /// <summary>Raised (on the thread pool) when someone else resized the image: (old size, new size).</summary>
    public event Action<long, long>? ResizedExternally;

    private RbdBlockDevice(RbdClient client, bool ownsClient, RbdImageSpec spec, nint image, bool readOnly, ExclusiveLock? exclusiveLock, long size, ILogger log)
    {
        _client = client; _ownsClient = ownsClient; Spec = spec; _image = image; ReadOnly = readOnly; _lock = exclusiveLock;
        _length = _imageSize = size; _log = log; _timeout = client.Options.TimeoutSeconds;
        Name = spec.ToString();
        _fua = Librados.ConfGet(client.Cluster, "rbd_cache") is "false" or "0" ? FuaMode.NoCache
            : Librados.ConfGet(client.Cluster, "rbd_cache_policy") == "writearound" ? FuaMode.FuaFlag
            : FuaMode.WriteThenFlush;
    }

    internal static RbdBlockDevice Open(RbdClient client, RbdImageSpec spec, bool readOnly, ILogger? log, bool ownsClient) =>
        Open(client, spec, readOnly, log, ownsClient, takeOver: null, out _)!;

    /// <summary>
    /// Opens the image for writing only if its lock can be had without asking a live holder (failover between
    /// gateways, <see cref="ExclusiveLock.TryTakeOver"/>); null, with the holders, when another client holds it.
    /// </summary>
    internal static RbdBlockDevice? OpenTakingOver(RbdClient client, RbdImageSpec spec, bool holderIsGone, ILogger? log, bool ownsClient, out IReadOnlyList<LockHolder> holders) =>
        Open(client, spec, readOnly: false, log, ownsClient, takeOver: holderIsGone, out holders);

    private static RbdBlockDevice? Open(RbdClient client, RbdImageSpec spec, bool readOnly, ILogger? log, bool ownsClient, bool? takeOver, out IReadOnlyList<LockHolder> holders)
    {
        nint image = 0;
        ExclusiveLock? exclusiveLock = null;
        int timeout = client.Options.TimeoutSeconds;
        holders = [];
        try
        {
            nint io = client.IoCtx(spec);
            int rc = readOnly ? Librbd.rbd_open_read_only(io, spec.Image, out image, null) : Librbd.rbd_open(io, spec.Image, out image, null);
            if (rc < 0) { image = 0; throw CephError.Fail(CephOperation.OpenImage, rc, spec.Display, timeout); }
            if (!readOnly && takeOver is { } gone)
            {
                exclusiveLock = ExclusiveLock.TryTakeOver(image, spec.Display, timeout, gone, log, out holders);
                if (exclusiveLock == null)
                {
                    Librbd.rbd_close(image);
                    return null;
                }
            }
            else if (!readOnly) exclusiveLock = ExclusiveLock.Acquire(image, spec.Display, timeout, log);
            CephError.Check(Librbd.rbd_get_size(image, out ulong size), CephOperation.OpenImage, spec.Display, timeout);
            var device = new RbdBlockDevice(client, ownsClient, spec, image, readOnly, exclusiveLock, (long)size, log ?? Serilog.Core.Logger.None);
            device.Watch();
            return device;
        }
        catch
        {
            exclusiveLock?.Release();
            if (image != 0) Librbd.rbd_close(image);
            if (ownsClient) client.Dispose();
            throw;
        }
    }

    // ------------------------------------------------------------------ data path

    public unsafe ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
    {
        CheckRange(offset, buffer.Length);
        if (buffer.IsEmpty) return ValueTask.CompletedTask; // librbd asserts on zero-length reads
        var src = Rent();
        var pin = buffer.Pin();
        nint c = src.Begin(CephOperation.Read, offset, buffer.Length, pin);
        int rc = Librbd.rbd_aio_read2(_image, (ulong)offset, (nuint)buffer.Length, (byte*)pin.Pointer, c, 0);
        return rc < 0 ? src.FailSubmit(c, rc) : src.Task;
    }

    /// <summary>One rbd_aio_readv: the parts are filled by one request (one OSD read per object touched), no copy.</summary>
    public unsafe ValueTask ReadScatterAsync(long offset, IReadOnlyList<Memory<byte>> parts, CancellationToken ct = default)
    {
        if (parts.Count == 1) return ReadAsync(offset, parts[0], ct);
        long total = Total(parts, static p => p.Length);
        CheckRange(offset, total);
        if (total == 0) return ValueTask.CompletedTask;
        if (parts.Count > MaxIoVecs) return InGroups(offset, parts, static p => p.Length, (o, g) => ReadScatterAsync(o, g, ct));
        var src = Rent();
        nint c = src.BeginVector(CephOperation.Read, offset, parts, static p => p.Pin(), static p => p.Length, out var iov);
        int rc = Librbd.rbd_aio_readv(_image, iov, parts.Count, (ulong)offset, c);
        return rc < 0 ? src.FailSubmit(c, rc) : src.Task;
    }

    /// <summary>
    /// One rbd_aio_writev: librbd sends the parts as they are (one OSD write per object touched, no copy). It takes no
    /// op flags, so a FUA write with the write-around cache (FUA flag passed through) is copied into one buffer
    /// and written with the flag instead: one round trip, not a write and a flush.
    /// </summary>
    public unsafe ValueTask WriteGatherAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> parts, bool fua, CancellationToken ct = default)
    {
        if (parts.Count == 1) return WriteAsync(offset, parts[0], fua, ct);
        CheckWritable();
        long total = Total(parts, static p => p.Length);
        CheckRange(offset, total);
        if (total == 0) return ValueTask.CompletedTask;
        if (parts.Count > MaxIoVecs) return InGroups(offset, parts, static p => p.Length, (o, g) => WriteGatherAsync(o, g, fua, ct));
        if (fua && _fua == FuaMode.FuaFlag) return CopyThenWrite(offset, parts, total, fua);
        var src = Rent();
        nint c = src.BeginVector(CephOperation.Write, offset, parts, static p => p.Pin(), static p => p.Length, out var iov);
        int rc = Librbd.rbd_aio_writev(_image, iov, parts.Count, (ulong)offset, c);
        var write = rc < 0 ? src.FailSubmit(c, rc) : src.Task;
        return fua && _fua == FuaMode.WriteThenFlush ? ThenFlush(write) : write;
    }

    /// <summary>librbd refuses more than IOV_MAX parts.</summary>
    private const int MaxIoVecs = 1024;

    /// <summary>A request of more parts than librbd takes at once: groups of <see cref="MaxIoVecs"/> parts, one after another.</summary>
    private static async ValueTask InGroups<T>(long offset, IReadOnlyList<T> parts, Func<T, int> length, Func<long, IReadOnlyList<T>, ValueTask> request)
    {
        var all = parts as T[] ?? [.. parts];
        for (int i = 0; i < all.Length; i += MaxIoVecs)
        {
            var group = new ArraySegment<T>(all, i, Math.Min(MaxIoVecs, all.Length - i));
            await request(offset, group).ConfigureAwait(false);
            offset += Total(group, length);
        }
    }

    private static long Total<T>(IReadOnlyList<T> parts, Func<T, int> length)
    {
        long total = 0;
        for (int i = 0; i < parts.Count; i++) total += length(parts[i]);
        return total;
    }

    private async ValueTask CopyThenWrite(long offset, IReadOnlyList<ReadOnlyMemory<byte>> parts, long total, bool fua)
    {
        byte[] buf = System.Buffers.ArrayPool<byte>.Shared.Rent(checked((int)total));
        try
        {
            int at = 0;
            for (int i = 0; i < parts.Count; i++) { parts[i].Span.CopyTo(buf.AsSpan(at)); at += parts[i].Length; }
            await WriteAsync(offset, buf.AsMemory(0, at), fua).ConfigureAwait(false);
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(buf); }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
    {
        CheckWritable();
        CheckRange(offset, data.Length);
        if (data.IsEmpty) return ValueTask.CompletedTask;
        var write = Submit(CephOperation.Write, offset, data, fua && _fua == FuaMode.FuaFlag ? FadviseFua : 0);
        return fua && _fua == FuaMode.WriteThenFlush ? ThenFlush(write) : write;
    }

    private unsafe ValueTask Submit(CephOperation op, long offset, ReadOnlyMemory<byte> data, int opFlags)
    {
        var src = Rent();
        var pin = data.Pin();
        nint c = src.Begin(op, offset, data.Length, pin);
        int rc = Librbd.rbd_aio_write2(_image, (ulong)offset, (nuint)data.Length, (byte*)pin.Pointer, c, opFlags);
        return rc < 0 ? src.FailSubmit(c, rc) : src.Task;
    }

    private async ValueTask ThenFlush(ValueTask write)
    {
        await write.ConfigureAwait(false);
        await AioFlush().ConfigureAwait(false);
    }

    /// <summary>rbd_aio_flush: every write completed before it is on the OSDs (nothing to do without a cache).</summary>
    public ValueTask FlushAsync(CancellationToken ct = default)
    {
        CheckOpen();
        return _fua == FuaMode.NoCache || ReadOnly ? ValueTask.CompletedTask : AioFlush();
    }

    private unsafe ValueTask AioFlush()
    {
        var src = Rent();
        nint c = src.Begin(CephOperation.Flush, 0, 0, default);
        int rc = Librbd.rbd_aio_flush(_image, c);
        return rc < 0 ? src.FailSubmit(c, rc) : src.Task;
    }

    /// <summary>
    /// rbd_aio_write_zeroes, not rbd_aio_discard: a discard of part of an object may be skipped
    /// (rbd_skip_partial_discard) and leave the old bytes, while the contract is that the range reads as zeros.
    /// </summary>
    public async ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        CheckWritable();
        CheckRange(offset, length);
        const long step = 1L << 30; // size_t is wide enough, but keep single requests a sane size
        for (long done = 0; done < length; done += step)
            await WriteZeroes(offset + done, Math.Min(step, length - done)).ConfigureAwait(false);
    }

    private ValueTask WriteZeroes(long offset, long length)
    {
        var src = Rent();
        nint c = src.Begin(CephOperation.Discard, offset, length, default);
        int rc = Librbd.rbd_aio_write_zeroes(_image, (ulong)offset, (nuint)length, c, 0, 0);
        return rc < 0 ? src.FailSubmit(c, rc) : src.Task;
    }

    /// <summary>RBD images are thin, but asking the object map per command is not worth it: everything counts as allocated.</summary>
    public (bool Allocated, long Length) GetAllocation(long offset) => offset >= Length ? (false, 0) : (true, Length - offset);

    /// <summary>rbd_resize to a larger size (never shrinks). Durable when it returns: the size is in the image header.</summary>
    public async ValueTask GrowAsync(long newLength, CancellationToken ct = default)
    {
        CheckWritable();
        if (newLength <= Length) throw new ArgumentOutOfRangeException(nameof(newLength), $"{Name}: grow to {newLength} bytes is not larger than {Length}");
        // rbd_resize is synchronous (and rare): run it off the caller's thread.
        Enter();
        int rc;
        try { rc = await Task.Run(() => Librbd.rbd_resize(_image, (ulong)newLength), ct).ConfigureAwait(false); }
        finally { Completed(); }
        if (rc < 0) throw Failure(CephOperation.Resize, rc, newLength, 0);
        Volatile.Write(ref _length, newLength);
        Volatile.Write(ref _imageSize, newLength);
        _log.Information("{Image}: grown to {Bytes} bytes", Name, newLength);
    }

    // ------------------------------------------------------------------ completions

    /// <summary>
    /// Counts a request in flight before looking at the disposed flag, so that <see cref="Dispose"/>, which sets
    /// the flag and then waits for the count to reach zero, can never close the image under a request.
    /// </summary>
    private bool TryEnter()
    {
        Interlocked.Increment(ref _inFlight);
        if (Volatile.Read(ref _disposed) == 0) return true;
        Interlocked.Decrement(ref _inFlight);
        return false;
    }

    private void Enter()
    {
        if (!TryEnter()) throw new ObjectDisposedException(Name);
    }

    /// <summary>A completion source for one request, already counted in flight (<see cref="Completed"/> ends it).</summary>
    private RbdCompletionSource Rent()
    {
        Enter();
        lock (_poolGate) if (_pool.TryPop(out var s)) return s;
        return new RbdCompletionSource(this);
    }

    internal void Return(RbdCompletionSource s)
    {
        lock (_poolGate)
        {
            if (Volatile.Read(ref _disposed) != 0 || _pool.Count >= 1024) { s.Free(); return; }
            _pool.Push(s);
        }
    }

    internal void Completed() => Interlocked.Decrement(ref _inFlight);

    /// <summary>The exception for a failed request (logged here, at most once per error code per 10 s).</summary>
    internal RbdException Failure(CephOperation op, int rc, long offset, long length)
    {
        string what = op switch
        {
            CephOperation.Read or CephOperation.Write or CephOperation.Discard => $"{Name}: {op.ToString().ToLowerInvariant()} of {length} bytes at offset {offset}",
            _ => Name,
        };
        var e = CephError.Fail(op, rc, what, _timeout);
        LogThrottled(e);
        return e;
    }

    private void LogThrottled(RbdException e)
    {
        int suppressed;
        lock (_errorLog)
        {
            var now = DateTime.UtcNow;
            if (_errorLog.TryGetValue(e.Errno, out var entry) && now - entry.Last < ErrorLogInterval)
            {
                _errorLog[e.Errno] = (entry.Last, entry.Suppressed + 1);
                return;
            }
            suppressed = entry.Suppressed;
            _errorLog[e.Errno] = (now, 0);
        }
        _log.Error("RBD request failed: {Message}{Suppressed}", e.Message, suppressed > 0 ? $" ({suppressed} more like it in the last {ErrorLogInterval.TotalSeconds:0} s)" : "");
    }

    // ------------------------------------------------------------------ header watch (external resize)

    private unsafe void Watch()
    {
        _watchSelf = GCHandle.Alloc(this);
        int rc = Librbd.rbd_update_watch(_image, out _watchHandle, &OnHeaderUpdate, GCHandle.ToIntPtr(_watchSelf));
        if (rc < 0)
        {
            _watchSelf.Free();
            _log.Warning("{Image}: cannot watch the image header ({Error}); a resize by someone else goes unnoticed", Name, CephError.Symbol(rc));
            return;
        }
        _watching = true;
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static void OnHeaderUpdate(nint arg)
    {
        // On a librbd thread that must not call back into librbd synchronously: look at the size from the pool.
        try
        {
            var device = (RbdBlockDevice)GCHandle.FromIntPtr(arg).Target!;
            ThreadPool.UnsafeQueueUserWorkItem(static d => d.RefreshSize(), device, preferLocal: false);
        }
        catch (Exception e)
        {
            Environment.FailFast("RBD header watch callback failed", e);
        }
    }

    private void RefreshSize()
    {
        if (!TryEnter()) return;
        ulong now;
        try { if (Librbd.rbd_get_size(_image, out now) < 0) return; }
        finally { Completed(); }
        long old = Interlocked.Exchange(ref _imageSize, (long)now);
        if (old == (long)now || (long)now == Length) return;
        if ((long)now < Length)
            _log.Error("{Image} was shrunk outside the gateway from {Old} to {New} bytes while served; I/O beyond {New} fails", Name, old, (long)now, (long)now);
        else
            _log.Warning("{Image} was resized outside the gateway from {Old} to {New} bytes; the LUN keeps its size of {Served} bytes until it is grown through the gateway or restarted",
                Name, old, (long)now, Length);
        ResizedExternally?.Invoke(old, (long)now);
    }

    // ------------------------------------------------------------------ checks, close

    private void CheckOpen() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

    private void CheckWritable()
    {
        CheckOpen();
        if (ReadOnly) throw new RbdException(CephOperation.Write, CephError.EROFS, $"{Name} is open read-only");
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"{Name}: range [{offset}, {offset + length}) outside device of {Length} bytes");
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_watching) Librbd.rbd_update_unwatch(_image, _watchHandle);
        // Requests still in flight hold pinned buffers and callbacks into this object: wait for them (each is
        // bounded by rados_osd_op_timeout), then close.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(_timeout + 10);
        while (Volatile.Read(ref _inFlight) > 0 && DateTime.UtcNow < deadline) Thread.Sleep(1);
        bool drained = Volatile.Read(ref _inFlight) == 0;
        if (!drained) _log.Error("{Image}: {Count} requests did not complete by close; the image is left open", Name, Volatile.Read(ref _inFlight));
        else
        {
            _lock?.Release();
            Librbd.rbd_close(_image);
            _image = 0;
        }
        if (_watchSelf.IsAllocated && drained) _watchSelf.Free();
        lock (_poolGate) while (_pool.TryPop(out var s)) s.Free();
        if (_ownsClient && drained) _client.Dispose();
    }
}
