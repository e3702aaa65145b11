using System.Buffers;
using System.Collections.Concurrent;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Scsi;

/// <summary>
/// Data-in buffers for one logical unit: arrays from a <see cref="TrimmingArrayPool"/> (which gives back
/// what an idle unit does not need, unlike <see cref="ArrayPool{T}.Shared"/>) wrapped in owner objects that
/// are themselves reused, so a READ in steady state allocates neither a byte[] nor an owner. The transport
/// disposes the <see cref="ScsiResponse"/>, which hands both back.
/// </summary>
internal sealed class BufferPool
{
    private const int MaxIdleOwners = 256;
    private readonly ConcurrentBag<Owner> _idle = new();
    /// <summary>Up to 16 MiB (the default maximum transfer) pooled, 8 arrays per size, trimmed every 10 s.</summary>
    private readonly TrimmingArrayPool _arrays = new(16 << 20, 8, TimeSpan.FromSeconds(10));

    public IMemoryOwner<byte> Rent(int length, bool clear = true)
    {
        if (!_idle.TryTake(out var o)) o = new Owner(this);
        o.Take(length, clear);
        return o;
    }

    private sealed class Owner : IMemoryOwner<byte>
    {
        private readonly BufferPool _pool;
        private byte[]? _array;
        private int _length;
        public Owner(BufferPool pool) { _pool = pool; }

        public Memory<byte> Memory => _array is { } a ? a.AsMemory(0, _length) : throw new ObjectDisposedException(nameof(BufferPool));

        public void Take(int length, bool clear)
        {
            _array = _pool._arrays.Rent(Math.Max(length, 1));
            _length = length;
            if (clear) _array.AsSpan(0, length).Clear();
        }

        public void Dispose()
        {
            var a = Interlocked.Exchange(ref _array, null);
            if (a == null) return; // already returned
            _pool._arrays.Return(a);
            if (_pool._idle.Count < MaxIdleOwners) _pool._idle.Add(this);
        }
    }
}
