using System.Buffers.Binary;
using System.Diagnostics;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity;

// Recovery at open: load the map, scan and replay the journal, checkpoint.
public sealed partial class IntegrityVolume
{
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
