using IntegrityTarget.Storage;

namespace IntegrityTarget.Benchmarks;

/// <summary>Passes everything through and counts bytes written and flushes, to measure write amplification.
/// With <paramref name="flushEveryBytes"/> &gt; 0 it also flushes after every that many bytes written (the
/// synced raw baseline: every byte reaches the disk within a bounded window, as the volume's must).</summary>
internal sealed class CountingDevice(IBlockDevice inner, long flushEveryBytes = 0) : IBlockDevice
{
    private long _written, _flushes, _sinceFlush;
    public long BytesWritten => Interlocked.Read(ref _written);
    public long Flushes => Interlocked.Read(ref _flushes);
    public void Reset() { Interlocked.Exchange(ref _written, 0); Interlocked.Exchange(ref _flushes, 0); }

    public string Name => inner.Name;
    public long Length => inner.Length;
    public int SectorSize => inner.SectorSize;
    public int PreferredWriteUnit => inner.PreferredWriteUnit;
    public bool CanDeallocate => inner.CanDeallocate;
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) => inner.ReadAsync(offset, buffer, ct);
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
    {
        Interlocked.Add(ref _written, data.Length);
        if (fua) Interlocked.Increment(ref _flushes);
        // Only the synced baseline pays for an async wrapper; the volumes' writes pass straight through.
        return flushEveryBytes > 0 ? WriteThenMaybeFlushAsync(offset, data, fua, ct) : inner.WriteAsync(offset, data, fua, ct);
    }

    private async ValueTask WriteThenMaybeFlushAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct)
    {
        await inner.WriteAsync(offset, data, fua, ct);
        if (Interlocked.Add(ref _sinceFlush, data.Length) < flushEveryBytes) return;
        Interlocked.Exchange(ref _sinceFlush, 0);
        await FlushAsync(ct);
    }
    public ValueTask FlushAsync(CancellationToken ct = default) { Interlocked.Increment(ref _flushes); return inner.FlushAsync(ct); }
    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => inner.DiscardAsync(offset, length, ct);
    public (bool Allocated, long Length) GetAllocation(long offset) => inner.GetAllocation(offset);
    public void Dispose() => inner.Dispose();
}
