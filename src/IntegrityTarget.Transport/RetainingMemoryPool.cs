using System.Buffers;
using System.Collections.Concurrent;

namespace IntegrityTarget.Transport;

/// <summary>
/// Fixed-size blocks for the connection pipes, kept for reuse instead of being given back to the GC
/// (MemoryPool&lt;byte&gt;.Shared collapses under 1 MiB-deep queues, see docs/limits.md). One pool per
/// transport; it retains at most <c>maxRetained</c> blocks.
/// </summary>
internal sealed class RetainingMemoryPool(int blockSize = 64 * 1024, int maxRetained = 4096) : MemoryPool<byte>
{
    private readonly ConcurrentStack<Block> _free = new();

    public override int MaxBufferSize => blockSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        if (minBufferSize > blockSize) return new Block(null, new byte[minBufferSize]); // oversized: not retained
        return _free.TryPop(out var b) ? b.Reuse() : new Block(this, GC.AllocateUninitializedArray<byte>(blockSize, pinned: true));
    }

    private void Return(Block b)
    {
        if (_free.Count < maxRetained) _free.Push(b);
    }

    protected override void Dispose(bool disposing) => _free.Clear();

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
