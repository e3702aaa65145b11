using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Crash;

/// <summary>
/// Passes everything through, but a flush first waits 1..<paramref name="maxDelayMs"/> ms (seeded) before it reaches
/// the device under it: a flush the volume starts in the background is then still running while the committer
/// writes further transactions and slots, and the crash-simulating device below records those writes before the
/// flush (a crash point "before the flush" has them pending). A real flush may make such later writes durable
/// too; this models the case where it has not reached any of them yet.
/// </summary>
internal sealed class SlowFlushDevice(IBlockDevice inner, int maxDelayMs, ulong seed) : IBlockDevice
{
    private SplitMix64 _rng = new(seed);
    private readonly object _lock = new();
    public string Name => inner.Name;
    public long Length => inner.Length;
    public int SectorSize => inner.SectorSize;
    public bool CanDeallocate => inner.CanDeallocate;
    public bool CanGrow => inner.CanGrow;
    public int BulkConcurrency => inner.BulkConcurrency;
    public int PreferredWriteUnit => inner.PreferredWriteUnit;
    public ValueTask GrowAsync(long newLength, CancellationToken ct = default) => inner.GrowAsync(newLength, ct);
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) => inner.ReadAsync(offset, buffer, ct);
    public ValueTask ReadScatterAsync(long offset, IReadOnlyList<Memory<byte>> parts, CancellationToken ct = default) => inner.ReadScatterAsync(offset, parts, ct);
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) => inner.WriteAsync(offset, data, fua, ct);
    public ValueTask WriteGatherAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> parts, bool fua, CancellationToken ct = default) => inner.WriteGatherAsync(offset, parts, fua, ct);
    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => inner.DiscardAsync(offset, length, ct);
    public (bool Allocated, long Length) GetAllocation(long offset) => inner.GetAllocation(offset);
    public void Dispose() => inner.Dispose();

    public async ValueTask FlushAsync(CancellationToken ct = default)
    {
        int ms;
        lock (_lock) ms = _rng.NextInt(1, maxDelayMs);
        await Task.Delay(ms, CancellationToken.None);
        await inner.FlushAsync(ct);
    }
}
