namespace IntegrityTarget.Storage;

/// <summary>
/// A volume of fixed-size logical blocks addressed by 64-bit LBA. This is what a SCSI logical unit
/// reads and writes through; the integrity volume implements it with verified tags and a journal,
/// <see cref="PlainVolume"/> without. Failures on the data path are returned as values
/// (<see cref="VolumeResult"/>), never thrown, so the caller can turn them into sense data in one place.
/// Buffers are whole blocks: <c>buffer.Length == blocks * BlockSize</c>.
/// </summary>
public interface IBlockVolume : IAsyncDisposable
{
    string Name { get; }

    /// <summary>512 or 4096.</summary>
    int BlockSize { get; }

    /// <summary>
    /// Logical blocks. May grow while the volume is served (<see cref="GrowAsync"/>), never shrinks:
    /// read it once per command.
    /// </summary>
    ulong BlockCount { get; }

    /// <summary>Whether <see cref="GrowAsync"/> can enlarge this volume in place while it is served.</summary>
    bool CanGrow => false;

    /// <summary>
    /// Grows the volume to <paramref name="newBlockCount"/> blocks (more than <see cref="BlockCount"/>),
    /// growing the device underneath when needed. Crash-safe: after a crash at any point the volume
    /// opens with the old or the new size, every block readable and verified. <see cref="BlockCount"/>
    /// changes only once the new size is durable. A smaller or equal count, or a volume that cannot
    /// grow, is an error value with a clear <see cref="VolumeResult.Detail"/>, never a partial grow.
    /// </summary>
    ValueTask<VolumeResult> GrowAsync(ulong newBlockCount, CancellationToken ct = default) =>
        ValueTask.FromResult(VolumeResult.Unsupported($"{Name}: this volume cannot grow while served"));

    /// <summary>Largest write (in blocks) that is atomic across a crash: old or new, never torn.</summary>
    uint MaxAtomicWriteBlocks { get; }

    /// <summary>Whether writes without FUA may complete before they are durable (write-back cache, WCE).</summary>
    bool WriteBack { get; set; }

    /// <summary>Whether <see cref="UnmapAsync"/> deallocates space (thin provisioning).</summary>
    bool SupportsUnmap { get; }

    /// <summary>Short description of the protection, e.g. "crc32c" or "none", for logs and status.</summary>
    string TagAlgorithm { get; }

    VolumeCounters Counters { get; }

    /// <summary>
    /// Reads whole blocks. On an integrity failure the result carries the first failing LBA and
    /// <c>buffer</c> holds verified data for the blocks before it. The volume logs each failure exactly
    /// once (one structured event naming volume, LBA, algorithm and the <paramref name="context"/>);
    /// callers must not log it again.
    /// </summary>
    ValueTask<VolumeResult> ReadAsync(ulong lba, Memory<byte> buffer, IoContext? context = null, CancellationToken ct = default);

    /// <summary>Writes whole blocks; atomic up to <see cref="MaxAtomicWriteBlocks"/>. FUA: durable on completion.</summary>
    ValueTask<VolumeResult> WriteAsync(ulong lba, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default);

    /// <summary>Makes every completed write durable (SYNCHRONIZE CACHE).</summary>
    ValueTask<VolumeResult> FlushAsync(CancellationToken ct = default);

    /// <summary>Blocks read as zeros afterwards and verify; space is released where possible.</summary>
    ValueTask<VolumeResult> UnmapAsync(ulong lba, ulong blocks, CancellationToken ct = default);

    /// <summary>Like <see cref="UnmapAsync"/> but the caller wants zeros whether or not space is released.</summary>
    ValueTask<VolumeResult> WriteZeroesAsync(ulong lba, ulong blocks, bool deallocate, CancellationToken ct = default);

    /// <summary>Mapped/deallocated state of the extent starting at <paramref name="lba"/> (GET LBA STATUS).</summary>
    ValueTask<LbaExtent> GetLbaStatusAsync(ulong lba, CancellationToken ct = default);
}

/// <summary>The one definition of "blocks [lba, lba+blocks) lie inside a volume of <c>capacity</c> blocks", overflow-safe;
/// the SCSI layer (for its sense) and the volumes (for their own contract) both ask it.</summary>
public static class BlockRange
{
    public static bool Contains(ulong lba, ulong blocks, ulong capacity) => lba <= capacity && blocks <= capacity - lba;
}

/// <summary>Who asked for an I/O, so the single log event of a failure can name it (e.g. LUN 0, initiator IQN, "READ(16)").</summary>
public sealed record IoContext(string Unit, string Initiator, string Command);

public enum VolumeStatus
{
    Ok = 0,
    /// <summary>A block failed verification; <see cref="VolumeResult.Lba"/> names it.</summary>
    IntegrityError,
    /// <summary>The backing device failed (EIO, device gone). <see cref="VolumeResult.Lba"/> is the first block affected when known.</summary>
    IoError,
    /// <summary>LBA range beyond the end of the volume.</summary>
    OutOfRange,
    /// <summary>The backing store is out of space (thin file on a full filesystem).</summary>
    NoSpace,
    /// <summary>The operation was cancelled before it touched the backend.</summary>
    Cancelled,
    /// <summary>The volume cannot do what was asked (e.g. grow, or shrink); <see cref="VolumeResult.Detail"/> says why.</summary>
    Unsupported,
}

/// <summary>Outcome of a volume operation. <see cref="GoodBlocks"/> = blocks completed before <see cref="Lba"/>.</summary>
public readonly record struct VolumeResult(VolumeStatus Status, ulong Lba = 0, ulong GoodBlocks = 0, string? Detail = null)
{
    public static readonly VolumeResult Success = new(VolumeStatus.Ok);
    public bool IsOk => Status == VolumeStatus.Ok;
    public static VolumeResult Integrity(ulong lba, ulong goodBlocks, string? detail = null) => new(VolumeStatus.IntegrityError, lba, goodBlocks, detail);
    public static VolumeResult Io(ulong lba, ulong goodBlocks, string? detail) => new(VolumeStatus.IoError, lba, goodBlocks, detail);
    public static VolumeResult Range(ulong lba) => new(VolumeStatus.OutOfRange, lba);
    public static VolumeResult Unsupported(string detail) => new(VolumeStatus.Unsupported, Detail: detail);
}

/// <summary>An extent of blocks sharing one provisioning state.</summary>
public readonly record struct LbaExtent(ulong Lba, ulong Blocks, bool Mapped);

/// <summary>Per-volume counters (thread-safe, monotonic), read by status reporting.</summary>
public sealed class VolumeCounters
{
    private long _reads, _writes, _bytesRead, _bytesWritten, _mismatches, _journalCommits, _flushes, _unmaps;
    public long Reads => Volatile.Read(ref _reads);
    public long Writes => Volatile.Read(ref _writes);
    public long BytesRead => Volatile.Read(ref _bytesRead);
    public long BytesWritten => Volatile.Read(ref _bytesWritten);
    public long Mismatches => Volatile.Read(ref _mismatches);
    public long JournalCommits => Volatile.Read(ref _journalCommits);
    public long Flushes => Volatile.Read(ref _flushes);
    public long Unmaps => Volatile.Read(ref _unmaps);

    public void AddRead(long bytes) { Interlocked.Increment(ref _reads); Interlocked.Add(ref _bytesRead, bytes); }
    public void AddWrite(long bytes) { Interlocked.Increment(ref _writes); Interlocked.Add(ref _bytesWritten, bytes); }
    public void AddMismatch() => Interlocked.Increment(ref _mismatches);
    public void AddJournalCommit() => Interlocked.Increment(ref _journalCommits);
    public void AddFlush() => Interlocked.Increment(ref _flushes);
    public void AddUnmap() => Interlocked.Increment(ref _unmaps);

    public IReadOnlyDictionary<string, long> Snapshot() => new Dictionary<string, long>
    {
        ["reads"] = Reads, ["writes"] = Writes, ["bytesRead"] = BytesRead, ["bytesWritten"] = BytesWritten,
        ["mismatches"] = Mismatches, ["journalCommits"] = JournalCommits, ["flushes"] = Flushes, ["unmaps"] = Unmaps,
    };
}
