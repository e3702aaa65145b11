using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;
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
    private sealed class DataRec
    {
        public ulong Lba;
        public long Phys;
        public readonly byte[] Buf;
        public DataRec(int blockSize) => Buf = new byte[blockSize];
    }

    /// <summary>
    /// Journaled block images of this volume, kept for reuse. They live from the write until their home
    /// copy (up to a journal lap, seconds), so renting them from the shared array pool, which holds only a
    /// few dozen per size, made every one a fresh allocation that the GC then promoted and collected late.
    /// Retains at most one journal's worth of blocks.
    /// </summary>
    private sealed class RecPool(int blockSize, int capacity)
    {
        private readonly Stack<DataRec> _free = new();

        public DataRec Rent(ulong lba, long phys)
        {
            DataRec? r = null;
            lock (_free) _free.TryPop(out r);
            r ??= new DataRec(blockSize);
            r.Lba = lba; r.Phys = phys;
            return r;
        }

        public void Return(DataRec r)
        {
            lock (_free) if (_free.Count < capacity) _free.Push(r);
        }

        public void Return(IEnumerable<DataRec> recs)
        {
            lock (_free) foreach (var r in recs) if (_free.Count < capacity) _free.Push(r); else break;
        }

        public int Count { get { lock (_free) return _free.Count; } }

        /// <summary>Drops every pooled record (the GC takes them back).</summary>
        public void Trim() { lock (_free) _free.Clear(); }
    }

    /// <summary>One command's worth of journal records: committed together or not at all.</summary>
    private sealed class Unit
    {
        public List<DataRec>? Data;
        public List<(long Chunk, long Entry)>? Maps;
        public List<long>? FreeAfter;
        public long Bytes;
        public bool Durable;
        public bool Unmap;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public int Records => (Data?.Count ?? 0) + (Maps?.Count ?? 0);
    }

    private const int MaxAgeMs = 20;
    /// <summary>Idle time after which journaled blocks are made durable and copied home.</summary>
    private readonly int _idleHomeMs;
    /// <summary>Idle time after which the pool of released block records is dropped.</summary>
    private readonly int _idleTrimMs;
    /// <summary>Home-copy batches of at least this many blocks are split between threads.</summary>
    private readonly int _parallelApplyBlocks;
    private const int MaxMapRecordsPerUnit = 4096;

    private readonly IBlockDevice _dev;
    private readonly ILogger _log;
    private readonly Geometry _g;
    private readonly Superblock _sb;
    private readonly Tagger _tagger;
    private readonly int _bs;
    private readonly int _bpc;
    private readonly RecPool _recs;

    // Live map (what reads and new writes see, updated when a command is queued) and the committed map
    // (what the journal has made durable; the only one checkpoints write). Entry: 0 = unmapped, else phys + 1.
    private readonly long[] _map;
    private readonly long[] _committedMap;
    private readonly SortedSet<long> _dirtyMapSectors = new();

    private readonly object _freeLock = new();
    private readonly Stack<long> _free = new();
    private TaskCompletionSource _freed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Queue of commands waiting for the committer, plus the overlay that lets reads see acknowledged
    // but not yet applied partial-chunk writes. Both guarded by _q.
    private readonly object _q = new();
    private readonly Dictionary<ulong, DataRec> _overlay = new();
    /// <summary>Overlay entries per logical chunk, changed under _q: lets reads of a chunk with nothing
    /// pending skip the lock and the per-block lookups.</summary>
    private readonly int[] _overlayInChunk;
    /// <summary>Even when no home copies are being written; bumped under _q before and after each batch of them.</summary>
    private long _homeSeq;
    private TaskCompletionSource _homeCopied = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<Unit> _queue = new();
    private long _queuedBytes;
    private bool _commitRequested;
    private long _oldestTicks;
    private TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly SemaphoreSlim _wake = new(0);
    private readonly CancellationTokenSource _stop = new();
    private volatile bool _abandon;
    private Task? _committer;
    private volatile Exception? _failed;
    private readonly long _watermark;
    private readonly long _maxPending;
    private readonly long _maxTxnBytes;
    private readonly long _lowWater;

    private readonly RangeLock _locks = new();

    // Committer-owned journal state.
    /// <summary>Latest journaled-but-not-yet-homed block per LBA. Home copies are written only once the
    /// transactions holding them are durable, at the next durable point (a commit that flushes or uses FUA,
    /// an idle moment, a checkpoint), so write-back commits need neither FUA nor a home write each.</summary>
    private readonly Dictionary<ulong, DataRec> _pendingHome = new();
    /// <summary>Transactions were written without being made durable since the last flush.</summary>
    private bool _unsynced;
    /// <summary>Slots replaced (or unmapped) by remaps in transactions not yet durable: reused only after the
    /// next flush (non-empty only while _unsynced).</summary>
    private readonly List<(long Slot, bool Unmap)> _replaced = new();
    /// <summary>A writer waits for free slots: the committer flushes instead of leaving commits plain.</summary>
    private volatile bool _slotsWanted;
    private long _head;
    private ulong _nextSeq;
    private ulong _checkpoints;
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
    /// <summary>Released journal block records kept for reuse (tests).</summary>
    internal int PooledRecords => _recs.Count;

    private IntegrityVolume(IBlockDevice dev, Superblock sb, Geometry g, Tagger tagger, OpenOptions options, ILogger log)
    {
        _dev = dev; _sb = sb; _g = g; _tagger = tagger;
        _bs = g.BlockSize; _bpc = g.BlocksPerChunk;
        _recs = new RecPool(_bs, (int)Math.Min(int.MaxValue, g.JournalAreaBytes / _bs));
        Name = options.Name ?? dev.Name;
        _log = log.ForContext("Volume", Name);
        WriteBack = options.WriteBack;
        _idleHomeMs = options.IdleHomeMs;
        _idleTrimMs = options.IdleTrimMs;
        _parallelApplyBlocks = Math.Max(2, options.ParallelApplyBlocks);
        _map = new long[g.LogicalChunks];
        _committedMap = new long[g.LogicalChunks];
        _overlayInChunk = new int[g.LogicalChunks];
        _maxTxnBytes = Math.Min(g.JournalAreaBytes / 2, 16L << 20);
        _watermark = Math.Min(_maxTxnBytes / 2, 8L << 20);
        _maxPending = _watermark * 4;
        _lowWater = Geometry.SpareChunks(g.LogicalChunks) / 2;
    }

    // ------------------------------------------------------------------ sizing

    public static long DeviceBytesFor(ulong logicalBlocks, int blockSize, TagAlgorithm alg, long? journalBytes = null)
    {
        CheckBlockSize(blockSize, "sizing");
        return Geometry.Compute(blockSize, alg, logicalBlocks, journalBytes).DeviceBytes;
    }

    /// <summary>The journal size format uses when <see cref="FormatOptions.JournalBytes"/> is not given.</summary>
    public static long DefaultJournalBytes(ulong logicalBlocks, int blockSize) => Geometry.DefaultJournalBytes(logicalBlocks, blockSize);

    public static ulong LogicalBlocksFor(long deviceBytes, int blockSize, TagAlgorithm alg, long? journalBytes = null)
    {
        CheckBlockSize(blockSize, "sizing");
        ulong bpc = (ulong)(Geometry.ChunkBytesDefault / blockSize);
        ulong lo = 0, hi = (ulong)Math.Max(0, deviceBytes / blockSize) / bpc + 1; // in chunks
        while (lo < hi)
        {
            ulong mid = (lo + hi + 1) / 2;
            if (Geometry.Compute(blockSize, alg, mid * bpc, journalBytes).DeviceBytes <= deviceBytes) lo = mid; else hi = mid - 1;
        }
        return lo * bpc;
    }

    private static void CheckBlockSize(int bs, string what)
    {
        if (bs is not (512 or 4096)) throw new IntegrityVolumeException($"{what}: block size {bs} is not supported (must be 512 or 4096)");
    }

    // ------------------------------------------------------------------ probe / format / open

    public static DeviceContent Probe(IBlockDevice device)
    {
        if (device.Length >= 512)
        {
            var s = new byte[512];
            ReadSync(device, 0, s);
            if (Superblock.HasMagic(s)) return DeviceContent.IntegrityVolume;
        }
        var buf = new byte[1 << 20];
        long pos = 0;
        while (pos < device.Length)
        {
            var (allocated, len) = device.GetAllocation(pos);
            if (len <= 0) break;
            if (allocated)
            {
                long end = pos + len;
                for (long p = pos; p < end; p += buf.Length)
                {
                    int n = (int)Math.Min(buf.Length, end - p);
                    ReadSync(device, p, buf.AsMemory(0, n));
                    if (buf.AsSpan(0, n).IndexOfAnyExcept((byte)0) >= 0) return DeviceContent.Unknown;
                }
            }
            pos += len;
        }
        return DeviceContent.Blank;
    }

    public static async ValueTask<IntegrityVolume> FormatAsync(IBlockDevice device, FormatOptions options, ILogger log, IProgress<double>? progress = null, CancellationToken ct = default)
    {
        string name = device.Name;
        CheckBlockSize(options.BlockSize, name);
        if (!Enum.IsDefined(options.Algorithm))
            throw new IntegrityVolumeException($"{name}: unknown tag algorithm {(int)options.Algorithm} (known: crc32c, xxhash64, hmac-sha256)");
        if (options.Algorithm == Integrity.TagAlgorithm.HmacSha256 && options.Key.Length < 16)
            throw new IntegrityVolumeException($"{name}: hmac-sha256 needs a key of at least 16 bytes (got {options.Key.Length})");
        if (options.JournalBytes is long jb && jb < Geometry.MinJournalBytes)
            throw new IntegrityVolumeException($"{name}: journal of {jb} bytes is too small (minimum {Geometry.MinJournalBytes})");
        var content = Probe(device);
        if (!options.Force && content == DeviceContent.IntegrityVolume)
            throw new IntegrityVolumeException($"{name}: already holds an integrity volume; refusing to format it without Force");
        if (!options.Force && content == DeviceContent.Unknown)
            throw new IntegrityVolumeException($"{name}: holds data that is not an integrity volume (not all zeros); refusing to format it without Force");

        int bpc = Geometry.ChunkBytesDefault / options.BlockSize;
        ulong blocks = options.LogicalBlocks ?? LogicalBlocksFor(device.Length, options.BlockSize, options.Algorithm, options.JournalBytes);
        if (blocks == 0)
        {
            long need = DeviceBytesFor((ulong)bpc, options.BlockSize, options.Algorithm, options.JournalBytes);
            throw new IntegrityVolumeException($"{name}: device of {device.Length} bytes is too small for an integrity volume with {options.BlockSize}-byte blocks (needs at least {need} bytes)");
        }
        var g = Geometry.Compute(options.BlockSize, options.Algorithm, blocks, options.JournalBytes);
        if (g.DeviceBytes > device.Length)
            throw new IntegrityVolumeException($"{name}: device of {device.Length} bytes is too small for {blocks} blocks of {options.BlockSize} bytes (needs {g.DeviceBytes} bytes)");

        var salt = RandomNumberGenerator.GetBytes(16);
        var keyCheck = options.Algorithm == Integrity.TagAlgorithm.HmacSha256 ? Tagger.KeyCheck(options.Key.Span, salt) : new byte[32];
        var sb = Superblock.From(g, Guid.NewGuid(), salt, keyCheck);

        // Kill any old superblock first (durably), so a crash mid-format never leaves an old superblock
        // describing half-wiped metadata. Then zero journal and map, release the data area, and write
        // the new superblock last, with FUA, once everything it describes is durable.
        progress?.Report(0);
        if (content != DeviceContent.Blank)
        {
            await device.WriteAsync(0, new byte[4096], fua: true, ct);
            await ZeroAsync(device, 0, g.DataOffset, ct);
            if (device.CanDeallocate)
            {
                long dataBytes = device.Length - g.DataOffset, step = 256L << 20;
                for (long p = 0; p < dataBytes; p += step)
                {
                    ct.ThrowIfCancellationRequested();
                    await device.DiscardAsync(g.DataOffset + p, Math.Min(step, dataBytes - p), ct);
                    progress?.Report(0.9 * (p + step) / Math.Max(1, dataBytes));
                }
            }
        }
        await device.WriteAsync(g.JournalOffset, new JournalSuper(1, 0).Serialize(), fua: false, ct);
        await device.FlushAsync(ct);
        await device.WriteAsync(0, sb.Serialize(), fua: true, ct);
        progress?.Report(1);
        log.Information("Formatted {Device} as integrity volume {Volume}: {Blocks} blocks of {BlockSize} B, {Algorithm}, journal {JournalBytes} B, chunk {ChunkBytes} B, uuid {Uuid}",
            name, options.Name ?? name, blocks, g.BlockSize, Tagger.NameOf(g.Algorithm), g.JournalBytes, g.ChunkBytes, sb.Uuid);
        return await OpenAsync(device, (options.Tuning ?? new OpenOptions()) with { Key = options.Key, Name = options.Name }, log, ct);
    }

    private static async ValueTask ZeroAsync(IBlockDevice dev, long offset, long length, CancellationToken ct)
    {
        var zeros = new byte[1 << 20];
        for (long p = 0; p < length; p += zeros.Length)
            await dev.WriteAsync(offset + p, zeros.AsMemory(0, (int)Math.Min(zeros.Length, length - p)), fua: false, ct);
    }

    public static async ValueTask<IntegrityVolume> OpenAsync(IBlockDevice device, OpenOptions options, ILogger log, CancellationToken ct = default)
    {
        string name = device.Name;
        if (device.Length < 4096)
            throw new IntegrityVolumeException($"{name}: device of {device.Length} bytes is too small to hold an integrity volume");
        var s = new byte[4096];
        await device.ReadAsync(0, s, ct);
        var sb = Superblock.Parse(s, out var problem);
        if (sb == null) throw new IntegrityVolumeException($"{name}: cannot open: {problem}");
        var g = sb.Validate(out problem);
        if (g == null) throw new IntegrityVolumeException($"{name}: cannot open: {problem}");
        if (device.Length < g.DeviceBytes)
            throw new IntegrityVolumeException($"{name}: device is truncated: it has {device.Length} bytes but the volume ({g.LogicalBlocks} blocks of {g.BlockSize} B) needs {g.DeviceBytes}");
        if (g.Algorithm == Integrity.TagAlgorithm.HmacSha256)
        {
            if (options.Key.Length == 0)
                throw new IntegrityVolumeException($"{name}: the volume uses hmac-sha256 and no key was given");
            if (!CryptographicOperations.FixedTimeEquals(Tagger.KeyCheck(options.Key.Span, sb.Salt), sb.KeyCheck))
                throw new IntegrityVolumeException($"{name}: wrong key (the key check value stored on the volume does not match)");
        }
        var tagger = new Tagger(g.Algorithm, sb.Salt, g.Algorithm == Integrity.TagAlgorithm.HmacSha256 ? options.Key.Span : default);
        var v = new IntegrityVolume(device, sb, g, tagger, options, log);
        await v.RecoverAsync(ct);
        v._committer = Task.Run(v.CommitterLoopAsync, CancellationToken.None);
        return v;
    }

    // ------------------------------------------------------------------ recovery

    private sealed record TxnInfo(ulong Seq, long Pos, byte[] Buf, int Total, int HeaderBytes, int Records);

    private async ValueTask RecoverAsync(CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        LoadMap(_dev, _g, _committedMap, Name, out var badSector);
        if (badSector is long bs)
        {
            long c0 = bs * Geometry.MapEntriesPerSector, c1 = Math.Min(_g.LogicalChunks, c0 + Geometry.MapEntriesPerSector) - 1;
            throw new IntegrityVolumeException($"{Name}: chunk map sector {bs} is damaged (checksum mismatch or bad entry) covering LBAs {(ulong)c0 * (ulong)_bpc}..{Math.Min(_g.LogicalBlocks, (ulong)(c1 + 1) * (ulong)_bpc) - 1}");
        }
        var js = new byte[512];
        await _dev.ReadAsync(_g.JournalOffset, js, ct);
        var jsb = JournalSuper.Parse(js, out var problem) ?? throw new IntegrityVolumeException($"{Name}: cannot open: {problem}");
        _checkpoints = jsb.Checkpoints;
        var txns = ScanJournal(_dev, _g, _tagger, jsb.StartSequence, out bool torn, out bool corrupt, out string stop);
        if (corrupt)
            _log.Error("Journal of {Volume}: transaction {Seq} is damaged although a later one is intact; replay stops before it ({Stop})", Name, jsb.StartSequence + (ulong)txns.Count, stop);

        // A data record is stale when a later record remaps its chunk (that write replaced the whole chunk,
        // and the old slot may already hold another chunk's data), so find each chunk's last remap first.
        var lastRemap = new Dictionary<long, long>();
        long ord = 0;
        foreach (var t in txns)
            for (int i = 0; i < t.Records; i++, ord++)
            {
                var (type, a, _) = ReadRecord(t.Buf, i);
                if (type == Txn.TypeMap) lastRemap[(long)a] = ord;
            }
        var apply = new List<(ulong Lba, long Phys, ReadOnlyMemory<byte> Data)>();
        long records = 0;
        ord = 0;
        foreach (var t in txns)
        {
            int payload = t.HeaderBytes;
            for (int i = 0; i < t.Records; i++, ord++)
            {
                var (type, a, b) = ReadRecord(t.Buf, i);
                records++;
                if (type == Txn.TypeData)
                {
                    long chunk = (long)(a / (ulong)_bpc);
                    if (!lastRemap.TryGetValue(chunk, out long lr) || lr < ord) apply.Add((a, (long)b, t.Buf.AsMemory(payload, _bs)));
                    payload += _bs;
                }
                else
                {
                    _committedMap[(long)a] = (long)b;
                    _dirtyMapSectors.Add((long)a / Geometry.MapEntriesPerSector);
                }
            }
        }
        _nextSeq = jsb.StartSequence + (ulong)txns.Count;
        _head = 0;
        if (txns.Count > 0)
        {
            // Replay is idempotent: home writes and map sectors are rewritten from the same journal until
            // the checkpoint below moves the journal start past them. Applying the records in journal order
            // leaves each block at its last version, so only that one is written.
            // A record whose home slot is not its chunk's slot in the replayed map can only come from a
            // journal written after a failed commit; writing it would land in a slot the map does not give
            // that chunk (possibly another chunk's), so it is skipped and reported.
            var last = new Dictionary<ulong, (ulong Lba, long Phys, ReadOnlyMemory<byte> Data)>(apply.Count);
            long misplaced = 0;
            foreach (var r in apply)
            {
                if (_committedMap[ChunkOf(r.Lba)] != r.Phys + 1) { misplaced++; continue; }
                last[r.Lba] = r;
            }
            if (misplaced > 0)
                _log.Warning("Journal of {Volume}: {Count} journaled blocks name a home slot their chunk is not mapped to; they were not replayed", Name, misplaced);
            var latest = new List<(ulong Lba, long Phys, ReadOnlyMemory<byte> Data)>(last.Values);
            SortForHome(latest);
            await ApplyAsync(latest, ct);
            await CheckpointAsync(ct);
        }
        Array.Copy(_committedMap, _map, _map.Length);
        var used = new bool[_g.PhysicalChunks];
        foreach (long e in _committedMap) if (e != 0) used[e - 1] = true;
        for (long p = _g.PhysicalChunks - 1; p >= 0; p--) if (!used[p]) _free.Push(p);
        sw.Stop();
        LastRecovery = new RecoveryReport(txns.Count, records, torn ? 1 : 0, corrupt, sw.Elapsed, jsb.StartSequence, _nextSeq);
        _log.Information("Opened {Volume}: replayed {Transactions} journal transactions ({Records} records), discarded {Torn} torn, in {Ms:F1} ms",
            Name, txns.Count, records, torn ? 1 : 0, sw.Elapsed.TotalMilliseconds);
    }

    private static (uint Type, ulong A, ulong B) ReadRecord(byte[] buf, int i)
    {
        var r = buf.AsSpan(Txn.FixedHeader + i * Txn.RecordBytes, Txn.RecordBytes);
        return (BinaryPrimitives.ReadUInt32LittleEndian(r), BinaryPrimitives.ReadUInt64LittleEndian(r[8..]), BinaryPrimitives.ReadUInt64LittleEndian(r[16..]));
    }

    private static void LoadMap(IBlockDevice dev, Geometry g, long[] map, string name, out long? badSector)
    {
        badSector = null;
        var buf = new byte[1 << 20];
        long sectors = g.MapSectors;
        for (long s0 = 0; s0 < sectors; s0 += buf.Length / 512)
        {
            int n = (int)Math.Min(buf.Length / 512, sectors - s0);
            ReadSync(dev, g.MapOffset + s0 * 512, buf.AsMemory(0, n * 512));
            for (int i = 0; i < n; i++)
            {
                long s = s0 + i;
                var sec = buf.AsSpan(i * 512, 512);
                if (sec.IndexOfAnyExcept((byte)0) < 0) continue; // never written: all chunks unmapped
                if (BinaryPrimitives.ReadUInt32LittleEndian(sec[504..]) != MapSectorCrc(s, sec)) { badSector ??= s; continue; }
                for (int k = 0; k < Geometry.MapEntriesPerSector; k++)
                {
                    long c = s * Geometry.MapEntriesPerSector + k;
                    long e = BinaryPrimitives.ReadInt64LittleEndian(sec[(k * 8)..]);
                    if (c >= g.LogicalChunks) break;
                    if (e < 0 || e > g.PhysicalChunks) { badSector ??= s; break; }
                    map[c] = e;
                }
            }
        }
    }

    private static uint MapSectorCrc(long sector, ReadOnlySpan<byte> sec)
    {
        Span<byte> idx = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(idx, sector);
        return ~Tagger.Crc32C(Tagger.Crc32C(0xFFFFFFFFu, idx), sec[..504]);
    }

    /// <summary>Reads consecutive valid transactions from the journal start. tagger null = structure only (no key).</summary>
    private static List<TxnInfo> ScanJournal(IBlockDevice dev, Geometry g, Tagger? tagger, ulong startSeq, out bool torn, out bool corrupt, out string stop)
    {
        var list = new List<TxnInfo>();
        torn = false; corrupt = false;
        long pos = 0;
        ulong seq = startSeq;
        var hdr = new byte[4096];
        while (true)
        {
            var t = TryReadTxn(dev, g, tagger, pos, seq, hdr, out string why, out bool headerOk);
            if (t == null)
            {
                stop = $"at journal offset {pos}: {why}";
                if (headerOk)
                {
                    torn = true;
                    // A valid successor proves damage only if it was written after this one was durable; in
                    // write-back mode the unflushed tail may be lost out of order (and is discarded whole).
                    int total = BinaryPrimitives.ReadInt32LittleEndian(hdr.AsSpan(16));
                    var next = TryReadTxn(dev, g, tagger, pos + total, seq + 1, new byte[4096], out _, out _);
                    if (next != null && (BinaryPrimitives.ReadUInt32LittleEndian(next.Buf.AsSpan(28)) & Txn.FlagPriorDurable) != 0) corrupt = true;
                }
                return list;
            }
            list.Add(t);
            pos += t.Total; seq++;
        }
    }

    private static TxnInfo? TryReadTxn(IBlockDevice dev, Geometry g, Tagger? tagger, long pos, ulong seq, byte[] hdr, out string why, out bool headerOk)
    {
        headerOk = false;
        if (pos < 0 || pos + 4096 > g.JournalAreaBytes) { why = "end of journal area"; return null; }
        ReadSync(dev, g.JournalAreaOffset + pos, hdr);
        if (!hdr.AsSpan(0, 8).SequenceEqual(Txn.Magic)) { why = "no transaction header (end of log)"; return null; }
        ulong s = BinaryPrimitives.ReadUInt64LittleEndian(hdr.AsSpan(8));
        if (s != seq) { why = $"sequence {s} where {seq} was expected (end of log)"; return null; }
        int total = BinaryPrimitives.ReadInt32LittleEndian(hdr.AsSpan(16));
        int records = BinaryPrimitives.ReadInt32LittleEndian(hdr.AsSpan(20));
        int hb = BinaryPrimitives.ReadInt32LittleEndian(hdr.AsSpan(24));
        if (records < 0 || hb != Txn.HeaderBytes(records) || total < hb || total % 4096 != 0 || pos + total > g.JournalAreaBytes)
        { why = $"transaction {seq} header has impossible sizes"; headerOk = true; return null; }
        headerOk = true;
        var buf = new byte[total];
        ReadSync(dev, g.JournalAreaOffset + pos, buf);
        if (tagger != null)
        {
            Span<byte> stored = stackalloc byte[32], computed = stackalloc byte[32];
            buf.AsSpan(32, 32).CopyTo(stored);
            buf.AsSpan(32, 32).Clear();
            tagger.Checksum(buf, computed);
            stored.CopyTo(buf.AsSpan(32, 32));
            if (!stored.SequenceEqual(computed)) { why = $"transaction {seq} checksum mismatch (torn or damaged)"; return null; }
        }
        // Structural sanity of the records (a valid checksum makes this a formality).
        int data = 0;
        for (int i = 0; i < records; i++)
        {
            var (type, a, b) = ReadRecord(buf, i);
            if (type == Txn.TypeData) { data++; if (a >= g.LogicalBlocks || b >= (ulong)g.PhysicalChunks) { why = $"transaction {seq} record {i} out of range"; return null; } }
            else if (type == Txn.TypeMap) { if (a >= (ulong)g.LogicalChunks || b > (ulong)g.PhysicalChunks) { why = $"transaction {seq} record {i} out of range"; return null; } }
            else { why = $"transaction {seq} record {i} has unknown type {type}"; return null; }
        }
        if (hb + (long)data * g.BlockSize > total) { why = $"transaction {seq} payload larger than the transaction"; return null; }
        why = "";
        return new TxnInfo(seq, pos, buf, total, hb, records);
    }

    private static void ReadSync(IBlockDevice dev, long offset, Memory<byte> buf)
    {
        var t = dev.ReadAsync(offset, buf);
        if (t.IsCompletedSuccessfully) return;
        t.AsTask().GetAwaiter().GetResult();
    }
}
