namespace IntegrityTarget.Storage;

/// <summary>
/// A volume without integrity protection: LBA n lives at byte n*BlockSize of the device. Used when a
/// LUN turns integrity off (for comparison) and by SCSI-layer tests. Writes are atomic only per
/// device sector, which is why this is not the default.
/// </summary>
public sealed class PlainVolume : IBlockVolume
{
    private readonly IBlockDevice _device;
    private readonly bool _ownsDevice;

    public PlainVolume(IBlockDevice device, int blockSize, string? name = null, bool ownsDevice = true)
    {
        if (blockSize is not (512 or 4096)) throw new ArgumentOutOfRangeException(nameof(blockSize), "block size must be 512 or 4096");
        if (device.Length < blockSize) throw new StorageException($"{device.Name}: {device.Length} bytes is smaller than one {blockSize}-byte block");
        _device = device; _ownsDevice = ownsDevice;
        BlockSize = blockSize;
        _blockCount = (ulong)(device.Length / blockSize);
        Name = name ?? device.Name;
    }

    public string Name { get; }
    public int BlockSize { get; }
    private ulong _blockCount;
    private readonly SemaphoreSlim _growing = new(1, 1);
    public ulong BlockCount => Volatile.Read(ref _blockCount);

    /// <summary>A plain volume is its device: it grows when the device can (a file, an RBD image; not a block device).</summary>
    public bool CanGrow => _device.CanGrow;

    /// <summary>
    /// Grows the device to <paramref name="newBlockCount"/> whole blocks, then serves them. The device makes
    /// its new length durable before returning, so after a crash the file has the old or the new length and
    /// the volume reopens with that many blocks; the new blocks read as zeros either way. Until the device
    /// grow has returned, commands beyond the old end are still out of range.
    /// </summary>
    public async ValueTask<VolumeResult> GrowAsync(ulong newBlockCount, CancellationToken ct = default)
    {
        await _growing.WaitAsync(ct);
        try
        {
            ulong current = BlockCount;
            if (newBlockCount < current)
                return VolumeResult.Unsupported($"{Name}: shrinking is not supported ({current} blocks now, {newBlockCount} asked); data beyond the new end would be lost");
            if (newBlockCount == current) return VolumeResult.Unsupported($"{Name}: already {current} blocks");
            if (!_device.CanGrow) return VolumeResult.Unsupported($"{Name}: {_device.Name} cannot grow (a block device has a fixed size)");
            if (newBlockCount > (ulong)(long.MaxValue / BlockSize)) return VolumeResult.Unsupported($"{Name}: {newBlockCount} blocks is beyond the largest device");
            try { await _device.GrowAsync((long)newBlockCount * BlockSize, ct); }
            catch (IOException e) { return Classify(e, current); }
            Volatile.Write(ref _blockCount, newBlockCount);
            return VolumeResult.Success;
        }
        finally { _growing.Release(); }
    }
    public uint MaxAtomicWriteBlocks => 1;
    public bool WriteBack { get; set; } = true;
    public bool SupportsUnmap => true;
    public string TagAlgorithm => "none";
    public VolumeCounters Counters { get; } = new();

    private bool InRange(ulong lba, ulong blocks) => BlockRange.Contains(lba, blocks, BlockCount);

    public async ValueTask<VolumeResult> ReadAsync(ulong lba, Memory<byte> buffer, IoContext? context = null, CancellationToken ct = default)
    {
        ulong blocks = (ulong)(buffer.Length / BlockSize);
        if (!InRange(lba, blocks)) return VolumeResult.Range(lba);
        if (ct.IsCancellationRequested) return new VolumeResult(VolumeStatus.Cancelled);
        try { await _device.ReadAsync((long)lba * BlockSize, buffer, ct); }
        catch (IOException e) { return VolumeResult.Io(lba, 0, e.Message); }
        Counters.AddRead(buffer.Length);
        return VolumeResult.Success;
    }

    public async ValueTask<VolumeResult> WriteAsync(ulong lba, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
    {
        ulong blocks = (ulong)(data.Length / BlockSize);
        if (!InRange(lba, blocks)) return VolumeResult.Range(lba);
        if (ct.IsCancellationRequested) return new VolumeResult(VolumeStatus.Cancelled);
        try { await _device.WriteAsync((long)lba * BlockSize, data, fua || !WriteBack, ct); }
        catch (IOException e) { return Classify(e, lba); }
        Counters.AddWrite(data.Length);
        return VolumeResult.Success;
    }

    public async ValueTask<VolumeResult> FlushAsync(CancellationToken ct = default)
    {
        try { await _device.FlushAsync(ct); }
        catch (IOException e) { return VolumeResult.Io(0, 0, e.Message); }
        Counters.AddFlush();
        return VolumeResult.Success;
    }

    public ValueTask<VolumeResult> UnmapAsync(ulong lba, ulong blocks, CancellationToken ct = default) => WriteZeroesAsync(lba, blocks, true, ct);

    public async ValueTask<VolumeResult> WriteZeroesAsync(ulong lba, ulong blocks, bool deallocate, CancellationToken ct = default)
    {
        if (!InRange(lba, blocks)) return VolumeResult.Range(lba);
        if (blocks == 0) return VolumeResult.Success;
        try
        {
            await _device.DiscardAsync((long)lba * BlockSize, (long)blocks * BlockSize, ct);
            if (!WriteBack) await _device.FlushAsync(ct);
        }
        catch (IOException e) { return Classify(e, lba); }
        Counters.AddUnmap();
        return VolumeResult.Success;
    }

    public ValueTask<LbaExtent> GetLbaStatusAsync(ulong lba, CancellationToken ct = default)
    {
        if (lba >= BlockCount) return ValueTask.FromResult(new LbaExtent(lba, 0, true));
        var (allocated, length) = _device.GetAllocation((long)lba * BlockSize);
        // Round outward to whole blocks: a partly allocated block counts as mapped.
        ulong blocks = Math.Max(1, (ulong)(length / BlockSize));
        blocks = Math.Min(blocks, BlockCount - lba);
        return ValueTask.FromResult(new LbaExtent(lba, blocks, allocated));
    }

    private static VolumeResult Classify(IOException e, ulong lba) =>
        e.HResult == 28 /* ENOSPC */ ? new VolumeResult(VolumeStatus.NoSpace, lba, 0, e.Message) : VolumeResult.Io(lba, 0, e.Message);

    public ValueTask DisposeAsync()
    {
        if (_ownsDevice) _device.Dispose();
        return ValueTask.CompletedTask;
    }
}
