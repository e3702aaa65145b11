using IntegrityTarget.Storage;
using Serilog;

namespace IntegrityTarget.Integrity;

/// <summary>
/// A volume of logical blocks over an <see cref="IBlockDevice"/> where every block carries a tag over
/// (LBA, data), every read is verified, and writes are atomic per command. Logical space is cut into
/// chunks mapped to physical slots (data + tags). Whole-chunk writes go to a free slot and are committed
/// by one journal transaction that remaps the chunk (data written once); partial-chunk writes go
/// through the data journal and are copied home after the journal is durable. See docs/integrity-volume.md.
/// </summary>
public sealed partial class IntegrityVolume : IBlockVolume
{
    private readonly IBlockDevice _dev;
    private readonly ILogger _log;
    /// <summary>Replaced (never changed in place) by a grow, while the volume is quiesced.</summary>
    private Geometry _g;
    private Superblock _sb;
    private readonly Tagger _tagger;
    private readonly int _bs;
    private readonly int _bpc;
    private readonly RecPool _recs;
    /// <summary>
    /// Transaction, slot, tag-region and scrub buffers. ArrayPool.Shared kept one of every size per core
    /// (1 to 16 MiB transactions: ~60 MiB) for good; this pool lets go of what an idle volume does not use.
    /// </summary>
    private readonly TrimmingArrayPool _buffers = new(32 << 20, 2, TimeSpan.FromSeconds(10));

    // Live map (what reads and new writes see, updated when a command is queued) and the committed map
    // (what the journal has made durable; the only one checkpoints write). Entry: 0 = unmapped, else phys + 1.
    private long[] _map;
    private long[] _committedMap;
    private readonly SlotAllocator _slots;

    private readonly ChunkRangeLock _locks = new();
    private readonly bool _skipRemapValidation;
    /// <summary>Journaled blocks keep their images in memory until home (RBD), instead of only an index entry once their
    /// transaction is written (write path 3).</summary>
    private readonly bool _keepImages;
    private readonly TagCache _tagCache;
    private readonly BadBlockLog _badBlocks;
    private bool _disposed;

    public string Name { get; }
    public int BlockSize => _bs;
    public ulong BlockCount => _g.LogicalBlocks;
    public uint MaxAtomicWriteBlocks => (uint)((1 << 20) / _bs);
    public bool WriteBack { get; set; }
    public bool SupportsUnmap => true;
    public string TagAlgorithm => Tagger.NameOf(_g.Algorithm);
    public TagAlgorithm Algorithm => _g.Algorithm;
    public VolumeCounters Counters { get; } = new();
    public RecoveryReport LastRecovery { get; private set; } = null!;
    public Guid Uuid => _sb.Uuid;
    /// <summary>Logical chunk size in bytes (redirect-on-write unit).</summary>
    public int ChunkBytes => _g.ChunkBytes;
    /// <summary>When true, disposing the volume disposes the device.</summary>
    public bool OwnsDevice { get; set; }
    public IBlockDevice Device => _dev;
    /// <summary>Reads (and home copies) that found their slot's tags in the tag cache, those that did not, and the
    /// slots cached; null when the cache is off (<see cref="OpenOptions.TagCacheBytes"/> = 0).</summary>
    public (long Hits, long Misses, int Slots)? TagCacheStats => _tagCache.Enabled ? (_tagCache.Hits, _tagCache.Misses, _tagCache.Count) : null;
    /// <summary>Released journal block records kept for reuse (tests).</summary>
    internal int PooledRecords => _recs.Count;

    private IntegrityVolume(IBlockDevice dev, Superblock sb, Geometry g, Tagger tagger, OpenOptions options, ILogger log)
    {
        _dev = dev; _sb = sb; _g = g; _tagger = tagger;
        _bs = g.BlockSize; _bpc = g.BlocksPerChunk;
        Name = options.Name ?? dev.Name;
        _log = log.ForContext("Volume", Name);
        WriteBack = options.WriteBack;
        _idleHomeMs = options.IdleHomeMs;
        _idleTrimMs = options.IdleTrimMs;
        _parallelApplyBlocks = Math.Max(2, options.ParallelApplyBlocks);
        _skipRemapValidation = options.SkipRemapValidation;
        _releaseLimboAtFlushStart = options.ReleaseLimboAtFlushStart;
        _releaseCheckpointSlotsEarly = options.ReleaseCheckpointSlotsEarly;
        _tagCache = new TagCache(g.BlocksPerChunk * g.TagSize, options.TagCacheBytes);
        _badBlocks = new BadBlockLog(_log, Name, Tagger.NameOf(g.Algorithm), options.FailureLogWindow);
        _map = new long[g.LogicalChunks];
        _committedMap = new long[g.LogicalChunks];
        _overlayInChunk = new int[g.LogicalChunks];
        _maxTxnBytes = Math.Min(g.JournalAreaBytes / 2, 16L << 20);
        _maxPending = Math.Min(_maxTxnBytes / 2, 8L << 20) * 4;
        _keepImages = options.KeepJournaledImages ?? !dev.CheapReadBack;
        // Images are held only from a write until its transaction is written (what the queue may hold, plus a batch),
        // unless they are kept until home (then up to a journal's worth).
        long records = Math.Min(int.MaxValue, g.JournalAreaBytes / _bs);
        _recs = new RecPool(_bs, g.TagSize, (int)records, _keepImages ? (int)records : (int)Math.Min(int.MaxValue, (_maxPending + _maxTxnBytes) / _bs));
        _slots = new SlotAllocator(g.PhysicalSlots) { LowWater = SlotAllocator.LowWaterFor(g.SpareSlots), BackgroundWater = options.BackgroundFlushBelow ?? SlotAllocator.BackgroundWaterFor(g.SpareSlots) };
    }

    public static long DeviceBytesFor(ulong logicalBlocks, int blockSize, TagAlgorithm alg, long? journalBytes = null, long? spareSlots = null)
    {
        CheckBlockSize(blockSize, "sizing");
        return Geometry.Compute(blockSize, alg, logicalBlocks, journalBytes, spareSlots).DeviceBytes;
    }

    /// <summary>Fewest spare slots <see cref="FormatOptions.SpareSlots"/> may ask for (what a 1 MiB write of whole chunks takes).</summary>
    public const long MinSpareSlots = Geometry.MinSpareSlots;

    /// <summary>Smallest journal <see cref="FormatOptions.JournalBytes"/> may ask for.</summary>
    public const long MinJournalBytes = Geometry.MinJournalBytes;

    /// <summary>The journal size format uses when <see cref="FormatOptions.JournalBytes"/> is not given.</summary>
    public static long DefaultJournalBytes(ulong logicalBlocks, int blockSize) => Geometry.DefaultJournalBytes(logicalBlocks, blockSize);

    public static ulong LogicalBlocksFor(long deviceBytes, int blockSize, TagAlgorithm alg, long? journalBytes = null, long? spareSlots = null)
    {
        CheckBlockSize(blockSize, "sizing");
        ulong bpc = (ulong)(Geometry.ChunkBytesDefault / blockSize);
        ulong lo = 0, hi = (ulong)Math.Max(0, deviceBytes / blockSize) / bpc + 1; // in chunks
        while (lo < hi)
        {
            ulong mid = (lo + hi + 1) / 2;
            if (Geometry.Compute(blockSize, alg, mid * bpc, journalBytes, spareSlots).DeviceBytes <= deviceBytes) lo = mid; else hi = mid - 1;
        }
        return lo * bpc;
    }

    private static void CheckBlockSize(int bs, string what)
    {
        if (bs is not (512 or 4096)) throw new IntegrityVolumeException($"{what}: block size {bs} is not supported (must be 512 or 4096)");
    }
    private long ChunkOf(ulong lba) => (long)(lba / (ulong)_bpc);
    private bool InRange(ulong lba, ulong blocks) => BlockRange.Contains(lba, blocks, BlockCount);

    public ValueTask<LbaExtent> GetLbaStatusAsync(ulong lba, CancellationToken ct = default)
    {
        if (lba >= BlockCount) return ValueTask.FromResult(new LbaExtent(lba, 0, true));
        long c = ChunkOf(lba);
        bool mapped = Volatile.Read(ref _map[c]) != 0;
        long c2 = c + 1;
        while (c2 < _g.LogicalChunks && (Volatile.Read(ref _map[c2]) != 0) == mapped) c2++;
        ulong endLba = Math.Min(BlockCount, (ulong)c2 * (ulong)_bpc);
        return ValueTask.FromResult(new LbaExtent(lba, endLba - lba, mapped));
    }

    /// <summary>
    /// Where a block's data and tag currently live on the device (null when unmapped, i.e. reads as
    /// zeros). For diagnostics and corruption tests; blocks still only in the journal are found after
    /// <see cref="FlushAsync"/>, which copies them home.
    /// </summary>
    public (long DataOffset, long TagOffset, int TagSize)? LocateBlock(ulong lba)
    {
        if (lba >= BlockCount) throw new ArgumentOutOfRangeException(nameof(lba), $"LBA {lba} beyond the volume's {BlockCount} blocks");
        long e = Volatile.Read(ref _map[ChunkOf(lba)]);
        if (e == 0) return null;
        int idx = (int)(lba % (ulong)_bpc);
        return (_g.SlotOffset(e - 1) + (long)idx * _bs, _g.TagOffset(e - 1, idx), _g.TagSize);
    }

    /// <summary>Journal area location (offset, bytes), for diagnostics and tests.</summary>
    public (long Offset, long Bytes) JournalArea => (_g.JournalAreaOffset, _g.JournalAreaBytes);

    /// <summary>The first segment's chunk-map area (offset, bytes), for diagnostics and tests; its slots follow.</summary>
    public (long Offset, long Bytes) MapArea => (_g.Segments[0].MapOffset, _g.Segments[0].MapBytes);

    /// <summary>Commits everything queued, checkpoints, and stops background work.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed) return;
        _disposed = true;
        if (!_abandon)
        {
            if (_failed == null) await FlushAsync().ConfigureAwait(false);
            _stop.Cancel();
            if (_committer != null) await _committer.ConfigureAwait(false);
            if (_failed == null && (_ringUsed > 0 || _dirtyMapSectors.Count > 0))
            {
                try { await CheckpointAsync(CancellationToken.None).ConfigureAwait(false); }
                catch (IOException e) { _log.Warning(e, "Final checkpoint of {Volume} failed; the journal will be replayed at next open", Name); }
            }
        }
        _badBlocks.Summarise();
        if (OwnsDevice) _dev.Dispose();
        _buffers.Dispose();
    }

    /// <summary>Stops background work without writing anything more (simulates power loss in tests).
    /// Commands still queued never complete durably; the volume object must not be used afterwards.</summary>
    public async ValueTask AbandonAsync()
    {
        _abandon = true;
        _disposed = true;
        _stop.Cancel();
        if (_committer != null) { try { await _committer.ConfigureAwait(false); } catch { /* the simulated crash may fail I/O */ } }
        // A background checkpoint stops at its next step; nothing of it may reach the device after this returns.
        if (_ckpt?.Task is { } ck) { try { await ck.ConfigureAwait(false); } catch { /* abandoned or failed: the journal start did not move */ } }
    }
}
