using System.Collections.Concurrent;

namespace IntegrityTarget.Storage;

/// <summary>
/// A sparse in-memory device for tests and benchmarks: 64 KiB chunks allocated on first write,
/// so a multi-GiB LUN costs only what is written. Everything is "durable" at once, a grow included.
/// </summary>
public sealed class MemoryBlockDevice : IBlockDevice
{
    private const int ChunkShift = 16;
    private const int ChunkSize = 1 << ChunkShift;
    private readonly ConcurrentDictionary<long, byte[]> _chunks = new();
    private long _length;

    public MemoryBlockDevice(long length, string name = "memory")
    {
        if (length <= 0 || length % 512 != 0) throw new ArgumentOutOfRangeException(nameof(length), "length must be a positive multiple of 512");
        _length = length; Name = name;
    }

    public string Name { get; }
    public long Length => Volatile.Read(ref _length);
    public int SectorSize => 512;
    /// <summary>A write of whole sectors at any sector boundary costs just those sectors.</summary>
    public int PreferredWriteUnit => 512;
    public bool CanDeallocate => true;
    public bool CanGrow => true;

    public ValueTask GrowAsync(long newLength, CancellationToken ct = default)
    {
        Grow(newLength);
        return ValueTask.CompletedTask;
    }

    /// <summary>Extends the device; the new bytes read as zeros (bytes past the old end were never written).</summary>
    public void Grow(long newLength)
    {
        if (newLength % 512 != 0)
            throw new ArgumentOutOfRangeException(nameof(newLength), $"{Name}: new length {newLength} is not a multiple of 512 bytes");
        lock (_chunks)
        {
            if (newLength < _length)
                throw new ArgumentOutOfRangeException(nameof(newLength), $"{Name}: cannot shrink from {_length} to {newLength} bytes");
            Volatile.Write(ref _length, newLength);
        }
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
    {
        Read(offset, buffer.Span);
        return ValueTask.CompletedTask;
    }

    public void Read(long offset, Span<byte> buffer)
    {
        Check(offset, buffer.Length);
        while (!buffer.IsEmpty)
        {
            long chunk = offset >> ChunkShift; int within = (int)(offset & (ChunkSize - 1));
            int n = Math.Min(buffer.Length, ChunkSize - within);
            if (_chunks.TryGetValue(chunk, out var c)) lock (c) c.AsSpan(within, n).CopyTo(buffer);
            else buffer[..n].Clear();
            buffer = buffer[n..]; offset += n;
        }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
    {
        Write(offset, data.Span);
        return ValueTask.CompletedTask;
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        Check(offset, data.Length);
        while (!data.IsEmpty)
        {
            long chunk = offset >> ChunkShift; int within = (int)(offset & (ChunkSize - 1));
            int n = Math.Min(data.Length, ChunkSize - within);
            var c = _chunks.GetOrAdd(chunk, _ => new byte[ChunkSize]);
            lock (c) data[..n].CopyTo(c.AsSpan(within, n));
            data = data[n..]; offset += n;
        }
    }

    public ValueTask FlushAsync(CancellationToken ct = default) => ValueTask.CompletedTask;

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        Check(offset, length);
        long end = offset + length;
        while (offset < end)
        {
            long chunk = offset >> ChunkShift; int within = (int)(offset & (ChunkSize - 1));
            int n = (int)Math.Min(end - offset, ChunkSize - within);
            if (within == 0 && n == ChunkSize) _chunks.TryRemove(chunk, out _);
            else if (_chunks.TryGetValue(chunk, out var c)) lock (c) c.AsSpan(within, n).Clear();
            offset += n;
        }
        return ValueTask.CompletedTask;
    }

    public (bool Allocated, long Length) GetAllocation(long offset)
    {
        long length = Length;
        if (offset >= length) return (false, 0);
        bool first = _chunks.ContainsKey(offset >> ChunkShift);
        long pos = ((offset >> ChunkShift) + 1) << ChunkShift;
        while (pos < length && _chunks.ContainsKey(pos >> ChunkShift) == first) pos += ChunkSize;
        return (first, Math.Min(pos, length) - offset);
    }

    private void Check(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"{Name}: range [{offset}, {offset + length}) outside device of {Length} bytes");
    }

    public void Dispose() { }
}
