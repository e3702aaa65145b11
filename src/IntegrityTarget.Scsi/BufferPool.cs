using System.Buffers;
using System.Collections.Concurrent;

namespace IntegrityTarget.Scsi;

/// <summary>
/// Data-in buffers for one logical unit: arrays from <see cref="ArrayPool{T}.Shared"/> wrapped in owner
/// objects that are themselves reused, so a READ in steady state allocates neither a byte[] nor an owner.
/// The transport disposes the <see cref="ScsiResponse"/>, which hands both back.
/// </summary>
internal sealed class BufferPool
{
    private const int MaxIdleOwners = 256;
    private readonly ConcurrentBag<Owner> _idle = new();

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
            _array = ArrayPool<byte>.Shared.Rent(Math.Max(length, 1));
            _length = length;
            if (clear) _array.AsSpan(0, length).Clear();
        }

        public void Dispose()
        {
            var a = Interlocked.Exchange(ref _array, null);
            if (a == null) return; // already returned
            ArrayPool<byte>.Shared.Return(a);
            if (_pool._idle.Count < MaxIdleOwners) _pool._idle.Add(this);
        }
    }
}
