using System.Buffers;

namespace IntegrityTarget.Transport;

/// <summary>
/// Fixed-size blocks for the connection pipes, kept for reuse instead of being given back to the GC
/// (MemoryPool&lt;byte&gt;.Shared collapses under 1 MiB-deep queues, see docs/limits.md). One pool per
/// transport; it retains at most <c>maxRetained</c> blocks, and every <c>trimInterval</c> drops the blocks
/// that stayed unused through the whole previous interval, so a flood of connections or a burst of large
/// reads does not pin its peak of blocks for good. The free blocks are an array stack under a lock: a
/// ConcurrentStack made a node per returned block (garbage on every received PDU) and counted itself by
/// walking all of them on every rent and return.
/// </summary>
internal sealed class RetainingMemoryPool : MemoryPool<byte>
{
    private readonly Stack<Block> _free = new(); // guarded by itself
    private readonly int _blockSize;
    private readonly int _maxRetained;
    private readonly Timer? _timer;
    private int _lowWater;

    public RetainingMemoryPool(int blockSize = 64 * 1024, int maxRetained = 4096, TimeSpan? trimInterval = null)
    {
        _blockSize = blockSize;
        _maxRetained = maxRetained;
        var every = trimInterval ?? TimeSpan.FromSeconds(10);
        // Held weakly by its timer, so an abandoned pool is collected with it.
        if (every != Timeout.InfiniteTimeSpan)
            _timer = new Timer(static s => { if (((WeakReference<RetainingMemoryPool>)s!).TryGetTarget(out var p)) p.Trim(); },
                new WeakReference<RetainingMemoryPool>(this), every, every);
    }

    public override int MaxBufferSize => _blockSize;

    /// <summary>Blocks kept for reuse right now.</summary>
    public int Retained { get { lock (_free) return _free.Count; } }

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        if (minBufferSize > _blockSize) return new Block(null, new byte[minBufferSize]); // oversized: not retained
        lock (_free)
        {
            if (_free.TryPop(out var b))
            {
                if (_free.Count < _lowWater) _lowWater = _free.Count;
                return b.Reuse();
            }
            _lowWater = 0;
        }
        return new Block(this, GC.AllocateUninitializedArray<byte>(_blockSize, pinned: true));
    }

    private void Return(Block b)
    {
        lock (_free)
        {
            if (_free.Count < _maxRetained) _free.Push(b);
        }
    }

    /// <summary>Drops the blocks that were not needed since the last trim (an approximate low-water mark).</summary>
    public void Trim()
    {
        lock (_free)
        {
            for (int n = _lowWater; n > 0 && _free.TryPop(out _); n--) { }
            if (_free.Count == 0) _free.TrimExcess();
            _lowWater = _free.Count;
        }
    }

    protected override void Dispose(bool disposing)
    {
        _timer?.Dispose();
        lock (_free) _free.Clear();
    }

    private sealed class Block(RetainingMemoryPool? pool, byte[] array) : IMemoryOwner<byte>
    {
        private int _rented = 1;

        public Memory<byte> Memory => array;

        public Block Reuse() { _rented = 1; return this; }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _rented, 0) == 1) pool?.Return(this);
        }
    }
}
