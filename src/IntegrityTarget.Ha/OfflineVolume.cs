using IntegrityTarget.Storage;

namespace IntegrityTarget.Ha;

/// <summary>
/// What a gateway that does not own a LUN puts under the logical unit it answers with when no owner is
/// reachable: the volume's geometry (read from its header without the lock) and nothing else. Its port
/// group is unavailable or transitioning then, so no data command reaches it; if one did, it would fail
/// as an I/O error rather than touch a store this gateway does not hold.
/// </summary>
internal sealed class OfflineVolume(string name, int blockSize, ulong blockCount, bool supportsUnmap) : IBlockVolume
{
    private static VolumeResult NotHere(string name) => VolumeResult.Io(0, 0, $"{name} is not open on this gateway (another gateway owns it)");

    public string Name => name;
    public int BlockSize => blockSize;
    public ulong BlockCount => blockCount;
    public uint MaxAtomicWriteBlocks => 0;
    public bool WriteBack { get; set; } = true;
    public bool SupportsUnmap => supportsUnmap;
    public string TagAlgorithm => "n/a";
    public VolumeCounters Counters { get; } = new();

    public ValueTask<VolumeResult> ReadAsync(ulong lba, Memory<byte> buffer, IoContext? context = null, CancellationToken ct = default) => new(NotHere(name));
    public ValueTask<VolumeResult> WriteAsync(ulong lba, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) => new(NotHere(name));
    public ValueTask<VolumeResult> FlushAsync(CancellationToken ct = default) => new(NotHere(name));
    public ValueTask<VolumeResult> UnmapAsync(ulong lba, ulong blocks, CancellationToken ct = default) => new(NotHere(name));
    public ValueTask<VolumeResult> WriteZeroesAsync(ulong lba, ulong blocks, bool deallocate, CancellationToken ct = default) => new(NotHere(name));
    public ValueTask<LbaExtent> GetLbaStatusAsync(ulong lba, CancellationToken ct = default) => new(new LbaExtent(lba, 1, true));
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
