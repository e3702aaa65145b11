using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity;

/// <summary>Per-block tag algorithm. The numeric value is stored in the superblock: never renumber.</summary>
public enum TagAlgorithm { Crc32c = 1, XxHash64 = 2, HmacSha256 = 3 }

public sealed class FormatOptions
{
    public int BlockSize { get; init; } = 4096;
    public TagAlgorithm Algorithm { get; init; } = TagAlgorithm.Crc32c;
    /// <summary>HMAC key (HmacSha256 only). Never stored on the volume; only a check value is.</summary>
    public ReadOnlyMemory<byte> Key { get; init; }
    /// <summary>Journal size in bytes (null = 1/32 of the logical size, clamped to 2..256 MiB).</summary>
    public long? JournalBytes { get; init; }
    /// <summary>Spare slots beyond one per chunk: the write-back window of whole-chunk writes, which reuse slots
    /// replaced within the window without flushing (null = about 3 % + 32).</summary>
    public long? SpareSlots { get; init; }
    /// <summary>Tests only: accept a spare pool smaller than one 1 MiB command needs (down to 1 slot), for exact crash
    /// states built from single-chunk writes.</summary>
    internal bool AllowTinySparePool { get; init; }
    /// <summary>null = as many blocks as fit on the device.</summary>
    public ulong? LogicalBlocks { get; init; }
    /// <summary>Format even when the device already holds a volume or other data.</summary>
    public bool Force { get; init; }
    /// <summary>Name used in log events (defaults to the device name).</summary>
    public string? Name { get; init; }
    /// <summary>Tag cache of the volume that formatting opens (<see cref="OpenOptions.TagCacheBytes"/>); null = the default.</summary>
    public long? TagCacheBytes { get; init; }
    /// <summary>Internal knobs (idle time, parallel home copies) for the volume that formatting opens; Key
    /// and Name always come from these format options.</summary>
    internal OpenOptions? Tuning { get; init; }
}

public sealed record OpenOptions
{
    public ReadOnlyMemory<byte> Key { get; init; }
    public bool WriteBack { get; init; } = true;
    public string? Name { get; init; }
    /// <summary>Idle time (ms) after which journaled blocks are made durable and copied home; tests set
    /// <see cref="Timeout.Infinite"/> to keep them in the journal.</summary>
    internal int IdleHomeMs { get; init; } = 50;
    /// <summary>Idle time (ms) after which the volume gives its pool of released journal block buffers
    /// back to the GC, so a volume that sat idle after a burst of small writes holds no spare memory.</summary>
    internal int IdleTrimMs { get; init; } = 10_000;
    /// <summary>Journaled blocks per home-copy batch from which the batch is split between threads; the
    /// crash suite lowers it so its small volumes take that path too.</summary>
    internal int ParallelApplyBlocks { get; init; } = 512;
    /// <summary>Memory for cached tags (docs/integrity-volume.md, "Reads"): a small read whose slot's tags are
    /// cached costs one device read instead of two, and a home copy need not read the tags it rewrites. Taken
    /// as slots are used, up to this. 0 = no cache: every read also reads its tags from the device. Default
    /// 64 MiB: the tags of 8 TiB of 4 KiB blocks, or 8 GiB of 512-byte blocks, with crc32c.</summary>
    public long TagCacheBytes { get; init; } = 64L << 20;
    /// <summary>Repeated failures of an LBA already reported are summarised at most this often.</summary>
    internal TimeSpan FailureLogWindow { get; init; } = TimeSpan.FromMinutes(1);
    /// <summary>Deliberately broken recovery for the crash harness's self-test: keep every remap without
    /// validating its slot. Never set outside tests.</summary>
    internal bool SkipRemapValidation { get; init; }
    /// <summary>Free slots below which the committer starts a background flush (null = half the spare, at most 512);
    /// the crash suite raises it so its small volumes flush in the background at nearly every commit.</summary>
    internal long? BackgroundFlushBelow { get; init; }
    /// <summary>Deliberately broken spare pool for the crash harness's self-test: limbo slots return to the pool when a
    /// background flush starts instead of when it completes. Never set outside tests.</summary>
    internal bool ReleaseLimboAtFlushStart { get; init; }
    /// <summary>Deliberately broken background checkpoint for a self-test: a slot it is still writing home copies into
    /// returns to the pool as soon as it is freed (write path 7a defers that until the checkpoint is done). Never set
    /// outside tests.</summary>
    internal bool ReleaseCheckpointSlotsEarly { get; init; }
    /// <summary>Keep journaled blocks' images in memory until home instead of reading them back from the ring (write path
    /// 3); null = as the device suggests (<see cref="IBlockDevice.CheapReadBack"/>: kept on RBD only). Tests set it.</summary>
    internal bool? KeepJournaledImages { get; init; }
}

public enum DeviceContent { Blank, IntegrityVolume, Unknown }

/// <summary>A volume problem a person must act on; the message names the device and says what is wrong.</summary>
public class IntegrityVolumeException : Exception
{
    public IntegrityVolumeException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A keyed volume was opened without its key, or with another key: the caller's mistake, not damage.</summary>
public sealed class IntegrityKeyException(string message) : IntegrityVolumeException(message);

/// <summary>What the recovery pass at open did.</summary>
public sealed record RecoveryReport(
    long TransactionsReplayed, long RecordsReplayed, long TornDiscarded, bool CorruptTransactionFound,
    TimeSpan Duration, ulong FirstSequence, ulong NextSequence)
{
    /// <summary>Slots read to validate remaps written after the last marker.</summary>
    public long SlotsValidated { get; init; }
}

public sealed class ScrubOptions
{
    /// <summary>Throttle in MB/s (10^6 bytes) of logical data checked; null or &lt;= 0 = unthrottled.</summary>
    public double? MaxMBPerSecond { get; init; }
    public IProgress<ScrubProgress>? Progress { get; init; }
    /// <summary>Names the scrub in the per-failure log events.</summary>
    public IoContext? Context { get; init; }
    /// <summary>Stop listing (not counting) bad LBAs after this many.</summary>
    public int MaxListedBadLbas { get; init; } = 10_000;
}

public readonly record struct ScrubProgress(ulong BlocksDone, ulong BlocksTotal, long Mismatches)
{
    public double Fraction => BlocksTotal == 0 ? 1 : (double)BlocksDone / BlocksTotal;
}

public sealed record ScrubReport(ulong BlocksChecked, ulong BlocksSkippedUnmapped, long Mismatches,
    IReadOnlyList<ulong> BadLbas, long IoErrors, TimeSpan Duration, bool Cancelled);
