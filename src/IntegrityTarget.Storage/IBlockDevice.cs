namespace IntegrityTarget.Storage;

/// <summary>
/// Byte-addressed storage underneath a volume: a file, a block device, memory, or a crash-simulating
/// wrapper in tests. Offsets and lengths are bytes (<c>long</c>); callers keep them aligned to
/// <see cref="SectorSize"/>. Writes are only durable after <see cref="FlushAsync"/> returns, or when
/// written with <c>fua: true</c>. A power cut may tear a non-durable write at <see cref="SectorSize"/>
/// granularity, so anything that must be atomic has to be made so by the layer above.
/// </summary>
public interface IBlockDevice : IDisposable
{
    /// <summary>Human-readable identity (path or test name), used in messages.</summary>
    string Name { get; }

    /// <summary>Size in bytes. Changes only through <see cref="GrowAsync"/>.</summary>
    long Length { get; }

    /// <summary>Whether <see cref="GrowAsync"/> can enlarge the device (a file or an RBD image can; a block device cannot).</summary>
    bool CanGrow => false;

    /// <summary>
    /// Enlarges the device to <paramref name="newLength"/> bytes; the new bytes read as zeros. The new
    /// length is durable when the call returns. Never shrinks.
    /// </summary>
    ValueTask GrowAsync(long newLength, CancellationToken ct = default) =>
        throw new NotSupportedException($"{Name}: this device cannot grow");

    /// <summary>How many independent requests are worth having in flight at once for bulk work (home copies): a
    /// device whose calls are synchronous system calls gains little beyond the cores; a network store whose calls
    /// wait for a round trip gains up to its queue depth.</summary>
    int BulkConcurrency => Math.Min(Environment.ProcessorCount, 4);

    /// <summary>Whether its calls do their work on the calling thread before they return (system calls on a file), rather
    /// than completing later (a network store). Bulk work on such a device belongs on threads of its own: on the thread
    /// pool each call holds a worker that everything else waits for.</summary>
    bool SynchronousCalls => false;

    /// <summary>Whether reading back what was just written costs about a memory copy (a file, whose pages are still in the
    /// page cache; memory), rather than a round trip and work on a server (RBD: an OSD read). The integrity volume reads
    /// journaled small writes back from its journal instead of holding them in memory only where this is true
    /// (docs/integrity-volume.md, write path 3).</summary>
    bool CheapReadBack => true;

    /// <summary>A hint that the range was written and a flush will follow: a device that writes back lazily (a file in the
    /// page cache) may start writing it now, so the flush finds less to do. Promises nothing about durability; the
    /// default does nothing.</summary>
    void StartWriteback(long offset, long length) { }

    /// <summary>The smallest aligned unit a write costs no more than its own bytes at: 512 where a write of a few sectors at any
    /// sector boundary costs just those sectors (a file in the page cache, memory), 4096 where a write that does not cover
    /// whole 4 KiB blocks costs more (RBD: BlueStore reads the partial blocks first). The journal aligns its transactions
    /// to it (docs/integrity-volume.md, write path 6a).</summary>
    int PreferredWriteUnit => 4096;

    /// <summary>Unit a power cut can tear at (512 for every implementation here).</summary>
    int SectorSize { get; }

    /// <summary>True when <see cref="DiscardAsync"/> deallocates (punches holes) rather than writing zeros.</summary>
    bool CanDeallocate { get; }

    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default);

    /// <summary>
    /// Reads back-to-back bytes from <paramref name="offset"/> into <paramref name="parts"/> in order, as one read (a
    /// scatter read: e.g. a chunk's data into the caller's buffer and the tags behind it into a buffer of the
    /// volume's). The default reads into one pooled buffer with one <see cref="ReadAsync"/> call and copies the parts
    /// out, so a device that does not override it sees the single read it saw before; a device that can scatter
    /// natively (preadv, rbd_aio_readv) overrides it.
    /// </summary>
    async ValueTask ReadScatterAsync(long offset, IReadOnlyList<Memory<byte>> parts, CancellationToken ct = default)
    {
        if (parts.Count == 1) { await ReadAsync(offset, parts[0], ct).ConfigureAwait(false); return; }
        int total = 0;
        for (int i = 0; i < parts.Count; i++) total = checked(total + parts[i].Length);
        byte[] buf = System.Buffers.ArrayPool<byte>.Shared.Rent(total);
        try
        {
            await ReadAsync(offset, buf.AsMemory(0, total), ct).ConfigureAwait(false);
            int at = 0;
            for (int i = 0; i < parts.Count; i++) { buf.AsSpan(at, parts[i].Length).CopyTo(parts[i].Span); at += parts[i].Length; }
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(buf); }
    }

    /// <param name="fua">Force unit access: the bytes are durable when the call returns.</param>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default);

    /// <summary>
    /// Writes <paramref name="parts"/> back to back from <paramref name="offset"/> as one write (a gather write:
    /// the caller's data and a buffer of its own without copying them together first). Same durability and tearing
    /// as <see cref="WriteAsync"/>. The default copies the parts into one pooled buffer and makes one
    /// <see cref="WriteAsync"/> call, so a device that does not override it sees exactly the single write it saw
    /// before; a device that can gather natively (pwritev, rbd_aio_writev) overrides it.
    /// </summary>
    async ValueTask WriteGatherAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> parts, bool fua, CancellationToken ct = default)
    {
        if (parts.Count == 1) { await WriteAsync(offset, parts[0], fua, ct).ConfigureAwait(false); return; }
        int total = 0;
        for (int i = 0; i < parts.Count; i++) total = checked(total + parts[i].Length);
        byte[] buf = System.Buffers.ArrayPool<byte>.Shared.Rent(total);
        try
        {
            int at = 0;
            for (int i = 0; i < parts.Count; i++) { parts[i].Span.CopyTo(buf.AsSpan(at)); at += parts[i].Length; }
            await WriteAsync(offset, buf.AsMemory(0, total), fua, ct).ConfigureAwait(false);
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(buf); }
    }

    /// <summary>Makes every completed write durable.</summary>
    ValueTask FlushAsync(CancellationToken ct = default);

    /// <summary>Makes a range read as zeros, deallocating it when the device can. Not durable until a flush.</summary>
    ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default);

    /// <summary>
    /// Whether the byte range starting at <paramref name="offset"/> is allocated, and how far that state
    /// extends (at least one byte, at most to the end of the device). Devices that cannot tell report
    /// everything as allocated.
    /// </summary>
    (bool Allocated, long Length) GetAllocation(long offset);
}
