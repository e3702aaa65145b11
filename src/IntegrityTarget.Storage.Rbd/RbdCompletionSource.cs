using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading.Tasks.Sources;
using IntegrityTarget.Storage.Rbd.Native;

namespace IntegrityTarget.Storage.Rbd;

/// <summary>
/// One librbd asynchronous request bridged to a <see cref="ValueTask"/> without a thread per I/O: the object
/// is pooled per device, a GCHandle to it (allocated once) is the completion's callback argument, the
/// caller's buffer is pinned from submission until librbd calls back, and the awaiting code continues on the
/// thread pool (never on librbd's callback thread, which must not block or re-enter librbd).
/// </summary>
internal sealed unsafe class RbdCompletionSource : IValueTaskSource
{
    private ManualResetValueTaskSourceCore<long> _core = new() { RunContinuationsAsynchronously = true };
    private readonly RbdBlockDevice _device;
    private readonly GCHandle _self;
    private MemoryHandle _pin;
    /// <summary>Vectored requests: one pin per part and the native iovec array (kept with the source, grown on demand).</summary>
    private MemoryHandle[] _pins = [];
    private int _pinCount;
    private Librbd.IoVec* _iov;
    private int _iovCapacity;
    private CephOperation _op;
    private long _offset, _length;

    public RbdCompletionSource(RbdBlockDevice device)
    {
        _device = device;
        _self = GCHandle.Alloc(this);
    }

    /// <summary>Creates the native completion for one request (already counted in flight by the device); the caller submits it and hands back <see cref="Task"/>.</summary>
    public nint Begin(CephOperation op, long offset, long length, MemoryHandle pin)
    {
        _op = op; _offset = offset; _length = length; _pin = pin;
        int rc = Librbd.rbd_aio_create_completion(GCHandle.ToIntPtr(_self), &OnComplete, out nint completion);
        if (rc < 0)
        {
            Unpin();
            _device.Completed();
            _device.Return(this);
            throw new RbdException(op, -rc, $"{_device.Name}: librbd could not create a completion: {CephError.Symbol(rc)}");
        }
        return completion;
    }

    /// <summary>
    /// <see cref="Begin"/> for a vectored request: pins every part for the request's life and fills the iovec array
    /// (valid until the completion, which rbd_aio_readv needs) with them back to back.
    /// </summary>
    public nint BeginVector<T>(CephOperation op, long offset, IReadOnlyList<T> parts, Func<T, MemoryHandle> pin, Func<T, int> length, out Librbd.IoVec* iov)
    {
        int n = parts.Count;
        if (n > _iovCapacity)
        {
            int capacity = Math.Max(n, 2 * _iovCapacity);
            _iov = (Librbd.IoVec*)NativeMemory.Realloc(_iov, (nuint)(capacity * sizeof(Librbd.IoVec)));
            _iovCapacity = capacity;
        }
        if (n > _pins.Length) _pins = new MemoryHandle[Math.Max(n, 2 * _pins.Length)];
        long total = 0;
        for (int i = 0; i < n; i++)
        {
            var h = pin(parts[i]);
            _pins[i] = h;
            _pinCount = i + 1;
            _iov[i].Base = (byte*)h.Pointer;
            _iov[i].Length = (nuint)length(parts[i]);
            total += length(parts[i]);
        }
        iov = _iov;
        return Begin(op, offset, total, default);
    }

    private void Unpin()
    {
        _pin.Dispose();
        _pin = default;
        for (int i = 0; i < _pinCount; i++) { _pins[i].Dispose(); _pins[i] = default; }
        _pinCount = 0;
    }

    /// <summary>The submit call itself failed (the request was never queued, so no callback will come).</summary>
    public ValueTask FailSubmit(nint completion, int rc)
    {
        Librbd.rbd_aio_release(completion);
        Complete(rc);
        return new ValueTask(this, _core.Version);
    }

    public ValueTask Task => new(this, _core.Version);

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static void OnComplete(nint completion, nint arg)
    {
        // Runs on a librbd thread: no exception may escape into native code, and nothing here blocks.
        try
        {
            long rc = Librbd.rbd_aio_get_return_value(completion);
            Librbd.rbd_aio_release(completion);
            ((RbdCompletionSource)GCHandle.FromIntPtr(arg).Target!).Complete(rc);
        }
        catch (Exception e)
        {
            Environment.FailFast("RBD completion callback failed", e);
        }
    }

    private void Complete(long rc)
    {
        Unpin();
        _device.Completed();
        _core.SetResult(rc);
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    public void GetResult(short token)
    {
        long rc;
        CephOperation op = _op;
        long offset = _offset, length = _length;
        try { rc = _core.GetResult(token); }
        finally
        {
            _core.Reset();
            _device.Return(this);
        }
        if (rc < 0) throw _device.Failure(op, (int)rc, offset, length);
    }

    /// <summary>Only for sources that are not in flight (the device drained them first).</summary>
    public void Free()
    {
        if (_self.IsAllocated) _self.Free();
        NativeMemory.Free(_iov);
        _iov = null;
        _iovCapacity = 0;
    }
}
