using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity;

// Recovery at open: load the map, scan the journal, validate the remaps that need it, record the kept
// prefix, replay it, checkpoint (docs/integrity-volume.md, "Recovery").
public sealed partial class IntegrityVolume
{
    private sealed record TxnInfo(TxnHeader H, long Pos, byte[] Buf)
    {
        public ulong Seq => H.Seq;
        public int Records => H.Records;
        public int Total => H.Total;
    }

    /// <summary>Alignment of the transactions this open writes: 4 KiB (version 2) until recovery has emptied the ring,
    /// then the device's (<see cref="JournalAlignFor"/>).</summary>
    private int _txnAlign = Txn.Aligned;
    /// <summary>The version every journal superblock write names: the one read at open until the write that empties the
    /// ring, then the one for <see cref="_txnAlign"/> (docs "On-disk format", "Journal version 3").</summary>
    private uint _journalVersion = JournalSuper.AlignedVersion;

    /// <summary>Compact (512 B) transactions where the device says small unaligned writes are cheap, 4 KiB otherwise (RBD).</summary>
    internal static int JournalAlignFor(IBlockDevice dev) => Math.Clamp(Math.Max(dev.SectorSize, dev.PreferredWriteUnit), Txn.Compact, Txn.Aligned);

    /// <summary>Switches this open to the device's transaction form. Only while the ring is empty and just before the
    /// journal superblock write that says so (the checkpoint's, or the new epoch's): one atomic sector write both empties
    /// the ring and names the new version, so no superblock ever names version 2 over a ring holding compact transactions.</summary>
    private void SwitchJournalForm()
    {
        _txnAlign = JournalAlignFor(_dev);
        _journalVersion = JournalSuper.VersionFor(_txnAlign);
    }

    private async ValueTask RecoverAsync(CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        LoadMap(_dev, _g, _committedMap, out var badSector);
        if (badSector is long bs)
        {
            var (_, c0, n) = _g.MapSector(bs);
            throw new IntegrityVolumeException($"{Name}: chunk map sector {bs} is damaged (checksum mismatch or bad entry) covering LBAs {(ulong)c0 * (ulong)_bpc}..{Math.Min(_g.LogicalBlocks, (ulong)(c0 + n) * (ulong)_bpc) - 1}");
        }
        var js = new byte[512];
        await _dev.ReadAsync(_g.JournalOffset, js, ct).ConfigureAwait(false);
        var jsb = JournalSuper.Parse(js, _g.JournalAreaBytes, out var problem) ?? throw new IntegrityVolumeException($"{Name}: cannot open: {problem}");
        _checkpoints = jsb.Checkpoints;
        _journalVersion = jsb.Version;
        var scan = ScanJournal(_dev, _g, _tagger, jsb, out bool torn, out bool corrupt, out string stop, out bool tailMarker);
        if (corrupt)
            _log.Error("Journal of {Volume}: transaction {Seq} is damaged although a later one is intact; replay stops before it ({Stop})", Name, jsb.StartSequence + (ulong)scan.Count, stop);

        // Which prefix to keep: the longest in which every chunk's last remap is proven or validates. A
        // recovery interrupted after recording its decision (the journal superblock's end) keeps exactly
        // that prefix and validates nothing: replay may already have changed the slots it validated.
        int keep = scan.Count;
        long validated = 0;
        if (!jsb.HasEnd && scan.Count > 0 && !_skipRemapValidation)
        {
            (keep, validated) = await ChoosePrefixAsync(scan, tailMarker, ct).ConfigureAwait(false);
            if (keep < scan.Count)
                _log.Warning("Journal of {Volume}: transaction {Seq} names a slot that does not hold what it wrote (lost or torn write-back data); {Dropped} unflushed transactions from there on are discarded",
                    Name, scan[keep].Seq, scan.Count - keep);
        }
        var txns = scan.GetRange(0, keep);
        _nextSeq = jsb.StartSequence + (ulong)keep;
        _durableThrough = _provenThrough = _nextSeq - 1;
        _journalEpoch = jsb.Epoch + 1;

        long records = 0;
        if (txns.Count > 0)
        {
            // Record the decision before changing anything (replay rewrites slots that validation read).
            await _dev.FlushAsync(ct).ConfigureAwait(false);
            if (!jsb.HasEnd) await WriteJournalSuperAsync(jsb with { EndSequence = _nextSeq }, ct).ConfigureAwait(false);
            records = await ReplayAsync(txns, ct).ConfigureAwait(false);
            // Replay wrote no transaction; the checkpoint makes everything durable, then its superblock write empties the ring.
            SwitchJournalForm();
            await CheckpointAsync(ct).ConfigureAwait(false);
        }
        else
        {
            // Nothing to replay; still start a new epoch, so whatever the scan discarded can never be read as
            // a transaction of this open.
            SwitchJournalForm();
            await WriteJournalSuperAsync(new JournalSuper(_journalEpoch, _nextSeq, 0, _checkpoints, 0), ct).ConfigureAwait(false);
        }
        Array.Copy(_committedMap, _map, _map.Length);
        _slots.Rebuild(_committedMap);
        sw.Stop();
        int discarded = (torn ? 1 : 0) + (scan.Count - keep);
        LastRecovery = new RecoveryReport(txns.Count, records, discarded, corrupt, sw.Elapsed, jsb.StartSequence, _nextSeq) { SlotsValidated = validated };
        _log.Information("Opened {Volume}: replayed {Transactions} journal transactions ({Records} records), discarded {Torn}, validated {Validated} slots, in {Ms:F1} ms",
            Name, txns.Count, records, discarded, validated, sw.Elapsed.TotalMilliseconds);
    }

    /// <summary>
    /// Validation (docs: "Recovery"): M = the last marker; remaps before it are proven. Starting with the whole
    /// log, every chunk's last remap at or after M must validate; the first transaction holding one that does
    /// not ends the prefix, and the check repeats on the shorter prefix (each slot is read at most once).
    /// Returns how many transactions to keep and how many slots were read. <paramref name="tailMarker"/>: the
    /// transaction that ended the scan (torn or damaged) has an intact header with <see cref="Txn.FlagPriorDurable"/>,
    /// which is true of everything before it however the rest of it fared.
    /// </summary>
    private async ValueTask<(int Keep, long Validated)> ChoosePrefixAsync(List<TxnInfo> scan, bool tailMarker, CancellationToken ct)
    {
        int marker = tailMarker ? scan.Count : scan.FindLastIndex(t => t.H.PriorDurable);
        int from = Math.Max(marker, 0);
        var verdicts = new Dictionary<(int Txn, int Rec), bool>();
        var slotBuf = _buffers.Rent((int)_g.SlotBytes);
        try
        {
            int keep = scan.Count;
            while (true)
            {
                var last = new Dictionary<long, (int Txn, int Rec, TxnRecord R)>();
                for (int ti = from; ti < keep; ti++)
                    for (int ri = 0; ri < scan[ti].Records; ri++)
                    {
                        var r = TransactionCodec.ReadRecord(scan[ti].Buf, ri);
                        if (r.IsRemap) last[(long)r.A] = (ti, ri, r);
                    }
                int cut = keep;
                // In journal order: the first failure ends this round, and later remaps are beyond the cut.
                foreach (var (c, (ti, ri, r)) in last.OrderBy(kv => kv.Value.Txn).ThenBy(kv => kv.Value.Rec))
                {
                    if (r.B == 0) continue; // unmapped: nothing to validate
                    if (!verdicts.TryGetValue((ti, ri), out bool ok))
                        verdicts[(ti, ri)] = ok = await SlotHoldsAsync(c, (long)r.B - 1, r.Digest, slotBuf, ct).ConfigureAwait(false);
                    if (!ok) { cut = ti; break; }
                }
                if (cut == keep) return (keep, verdicts.Count);
                keep = cut;
            }
        }
        finally { _buffers.Return(slotBuf); }
    }

    /// <summary>Whether slot <paramref name="p"/> holds exactly what a remap of chunk <paramref name="c"/> wrote:
    /// its tag region has the recorded digest, and every block matches its tag.</summary>
    private async ValueTask<bool> SlotHoldsAsync(long c, long p, UInt128 digest, byte[] buf, CancellationToken ct)
    {
        var g = _g;
        var mem = buf.AsMemory(0, (int)g.SlotBytes);
        await _dev.ReadAsync(g.SlotOffset(p), mem, ct).ConfigureAwait(false);
        var span = mem.Span;
        var region = span.Slice(g.ChunkBytes, g.TagRegionBytes);
        if (_tagger.SlotDigest(region) != digest) return false;
        return _tagger.VerifyBlocks((ulong)c * (ulong)_bpc, span[..g.ChunkBytes], _bs, region[..(_bpc * g.TagSize)], null) < 0;
    }

    /// <summary>
    /// Applies the kept transactions: remaps update the map; a data record is applied only if no later record
    /// remaps its chunk (the old slot may hold another chunk's data by then). Applying the records in journal
    /// order leaves each block at its last version, so only that one is written. Idempotent: home writes and
    /// map sectors are rewritten from the same journal until the checkpoint moves the journal start.
    /// </summary>
    private async ValueTask<long> ReplayAsync(List<TxnInfo> txns, CancellationToken ct)
    {
        var lastRemap = new Dictionary<long, long>();
        long ord = 0;
        foreach (var t in txns)
            for (int i = 0; i < t.Records; i++, ord++)
            {
                var r = TransactionCodec.ReadRecord(t.Buf, i);
                if (r.IsRemap) lastRemap[(long)r.A] = ord;
            }
        var apply = new List<HomeItem>();
        long records = 0;
        ord = 0;
        foreach (var t in txns)
        {
            int payload = t.H.HeaderBytes;
            for (int i = 0; i < t.Records; i++, ord++)
            {
                var r = TransactionCodec.ReadRecord(t.Buf, i);
                records++;
                if (r.IsData)
                {
                    long chunk = (long)(r.A / (ulong)_bpc);
                    if (!lastRemap.TryGetValue(chunk, out long lr) || lr < ord)
                        for (int k = 0; k < r.Count; k++) apply.Add(new HomeItem(r.A + (ulong)k, (long)r.B, t.Buf.AsMemory(payload + k * _bs, _bs), null));
                    payload += r.Count * _bs;
                }
                else
                {
                    _committedMap[(long)r.A] = (long)r.B;
                    _dirtyMapSectors.Add(_g.MapSectorOf((long)r.A).Sector);
                }
            }
        }
        // A record whose home slot is not its chunk's slot in the replayed map can only come from a journal
        // written after a failed commit; writing it would land in a slot the map does not give that chunk
        // (possibly another chunk's), so it is skipped and reported.
        var latest = new Dictionary<ulong, HomeItem>(apply.Count);
        long misplaced = 0;
        foreach (var r in apply)
        {
            if (_committedMap[ChunkOf(r.Lba)] != r.Phys + 1) { misplaced++; continue; }
            latest[r.Lba] = r;
        }
        if (misplaced > 0)
            _log.Warning("Journal of {Volume}: {Count} journaled blocks name a home slot their chunk is not mapped to; they were not replayed", Name, misplaced);
        var list = new List<HomeItem>(latest.Values);
        SortForHome(list);
        await ApplyAsync(list, ct).ConfigureAwait(false);
        return records;
    }

    /// <summary>Reads every segment's map area into <paramref name="map"/>; the first damaged sector, if any, in
    /// <paramref name="badSector"/> (its entries stay unmapped).</summary>
    private static void LoadMap(IBlockDevice dev, Geometry g, long[] map, out long? badSector)
    {
        badSector = null;
        var buf = new byte[1 << 20];
        foreach (var seg in g.Segments)
            for (long s0 = 0; s0 < seg.MapSectors; s0 += buf.Length / 512)
            {
                int n = (int)Math.Min(buf.Length / 512, seg.MapSectors - s0);
                ReadSync(dev, seg.MapOffset + s0 * 512, buf.AsMemory(0, n * 512));
                for (int i = 0; i < n; i++)
                {
                    long s = seg.FirstMapSector + s0 + i;
                    var sec = buf.AsSpan(i * 512, 512);
                    if (sec.IndexOfAnyExcept((byte)0) < 0) continue; // never written: all chunks unmapped
                    if (BinaryPrimitives.ReadUInt32LittleEndian(sec[504..]) != MapSectorCrc(s, sec)) { badSector ??= s; continue; }
                    var (_, first, count) = g.MapSector(s);
                    for (int k = 0; k < count; k++)
                    {
                        long e = BinaryPrimitives.ReadInt64LittleEndian(sec[(k * 8)..]);
                        if (e < 0 || e > g.PhysicalSlots) { badSector ??= s; break; }
                        map[first + k] = e;
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

    /// <summary>
    /// Reads consecutive valid transactions of the journal superblock's epoch from its start, in ring order
    /// (each where the previous ends, or at the ring's start when it did not fit), up to its end sequence
    /// when one is recorded. tagger null = structure only (no key).
    /// </summary>
    private static List<TxnInfo> ScanJournal(IBlockDevice dev, Geometry g, Tagger? tagger, JournalSuper js, out bool torn, out bool corrupt, out string stop)
        => ScanJournal(dev, g, tagger, js, out torn, out corrupt, out stop, out _);

    /// <param name="tailMarker">The transaction that ended the scan has an intact header (its own CRC) that names it
    /// and carries <see cref="Txn.FlagPriorDurable"/>: everything scanned was flushed before it was written.</param>
    private static List<TxnInfo> ScanJournal(IBlockDevice dev, Geometry g, Tagger? tagger, JournalSuper js, out bool torn, out bool corrupt, out string stop, out bool tailMarker)
    {
        var list = new List<TxnInfo>();
        torn = false; corrupt = false; tailMarker = false;
        long pos = js.StartOffset;
        ulong seq = js.StartSequence;
        var hdr = new byte[Txn.Compact]; // a header and its own CRC fit the first sector in every form
        while (true)
        {
            if (js.HasEnd && seq >= js.EndSequence) { stop = $"at the end recorded by an interrupted recovery (sequence {js.EndSequence})"; return list; }
            var t = TryReadAt(dev, g, tagger, ref pos, seq, js.Epoch, hdr, out string why, out bool matched);
            if (t == null)
            {
                stop = $"at journal offset {pos}: {why}";
                if (matched)
                {
                    torn = true;
                    tailMarker = TransactionCodec.ReadHeader(hdr, long.MaxValue, out _) is { PriorDurable: true };
                    // A valid successor proves damage only if it was written after this one was durable; in
                    // write-back mode the unflushed tail may be lost out of order (and is discarded whole).
                    int total = BinaryPrimitives.ReadInt32LittleEndian(hdr.AsSpan(24));
                    long next = pos + Geometry.RoundUp(Math.Max(total, Txn.Compact), Txn.Compact);
                    var succ = TryReadAt(dev, g, tagger, ref next, seq + 1, js.Epoch, new byte[Txn.Compact], out _, out _);
                    if (succ != null && succ.H.PriorDurable) corrupt = true;
                }
                return list;
            }
            list.Add(t);
            pos += t.Total; seq++;
        }
    }

    /// <summary>The transaction with (<paramref name="seq"/>, <paramref name="epoch"/>) at <paramref name="pos"/>, or else at
    /// the ring's start (where it goes when it did not fit before the end); <paramref name="pos"/> is updated to
    /// where it was found. <paramref name="matched"/>: a header of that transaction was found (so a failure is a torn one).</summary>
    private static TxnInfo? TryReadAt(IBlockDevice dev, Geometry g, Tagger? tagger, ref long pos, ulong seq, uint epoch, byte[] hdr, out string why, out bool matched)
    {
        var t = TryReadTxn(dev, g, tagger, pos, seq, epoch, hdr, out why, out matched);
        if (t != null || matched || pos == 0) return t;
        var t0 = TryReadTxn(dev, g, tagger, 0, seq, epoch, hdr, out string why0, out bool matched0);
        if (t0 != null || matched0) { pos = 0; why = why0; matched = matched0; }
        return t0;
    }

    private static TxnInfo? TryReadTxn(IBlockDevice dev, Geometry g, Tagger? tagger, long pos, ulong seq, uint epoch, byte[] hdr, out string why, out bool matched)
    {
        matched = false;
        long area = g.JournalAreaBytes;
        if (pos < 0 || pos + Txn.Compact > area) { why = "end of journal ring"; return null; }
        ReadSync(dev, g.JournalAreaOffset + pos, hdr);
        var h = TransactionCodec.ReadHeader(hdr, area, out why);
        if (h is not { } th)
        {
            // A header (its own CRC intact) that names this transaction but has impossible sizes is damage, not the end.
            matched = TransactionCodec.ReadHeader(hdr, long.MaxValue, out _) is { } any && any.Seq == seq && any.Epoch == epoch;
            if (!matched) why = "no transaction header (end of log)";
            return null;
        }
        if (th.Seq != seq || th.Epoch != epoch) { why = $"transaction {th.Seq} of epoch {th.Epoch} where {seq} of epoch {epoch} was expected (end of log)"; return null; }
        matched = true;
        if (pos + th.Total > area) { why = $"transaction {seq} runs past the end of the ring"; return null; }
        var buf = new byte[th.Total];
        ReadSync(dev, g.JournalAreaOffset + pos, buf);
        if (tagger != null && !TransactionCodec.CheckSeal(buf, tagger)) { why = $"transaction {seq} checksum mismatch (torn or damaged)"; return null; }
        if (TransactionCodec.CheckRecords(buf, th, g) is { } bad) { why = bad; return null; }
        why = "";
        return new TxnInfo(th, pos, buf);
    }

    private static void ReadSync(IBlockDevice dev, long offset, Memory<byte> buf)
    {
        var t = dev.ReadAsync(offset, buf);
        if (t.IsCompletedSuccessfully) return;
        t.AsTask().GetAwaiter().GetResult();
    }
}
