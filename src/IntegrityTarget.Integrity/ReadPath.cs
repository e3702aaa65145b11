using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity;

// Reads: every block verified against its tag (or taken from the overlay).
public sealed partial class IntegrityVolume
{
    public async ValueTask<VolumeResult> ReadAsync(ulong lba, Memory<byte> buffer, IoContext? context = null, CancellationToken ct = default)
    {
        if (buffer.Length % _bs != 0) return new VolumeResult(VolumeStatus.OutOfRange, lba, 0, $"buffer of {buffer.Length} bytes is not whole {_bs}-byte blocks");
        ulong blocks = (ulong)(buffer.Length / _bs);
        if (!InRange(lba, blocks)) return VolumeResult.Range(lba);
        if (blocks == 0) return VolumeResult.Success;
        if (ct.IsCancellationRequested) return new VolumeResult(VolumeStatus.Cancelled);
        ulong end = lba + blocks;
        long c0 = ChunkOf(lba), c1 = ChunkOf(end - 1);
        var lk = await _locks.AcquireAsync(c0, c1, shared: true).ConfigureAwait(false);
        try
        {
            if (c0 == c1)
            {
                // Within one chunk (every small read): the piece is awaited directly, no bookkeeping for concurrency.
                int n = (int)blocks;
                PieceOutcome o;
                try { o = new(await ReadPieceAsync(c0, lba, n, buffer, fromDevice: false, ct).ConfigureAwait(false), null); }
                catch (IOException e) { o = new(-1, e); }
                if ((o.Bad >= 0 || o.Error != null) && await PieceFailureAsync(o, lba, lba, n, buffer, context, ct).ConfigureAwait(false) is { } f) return f;
            }
            else if (await ReadPiecesConcurrentlyAsync(lba, end, c0, c1, buffer, context, ct).ConfigureAwait(false) is { } f) return f;
        }
        finally { _locks.Release(lk); }
        Counters.AddRead(buffer.Length);
        return VolumeResult.Success;
    }

    /// <summary>Pieces of one command looked at together (a batch): their device reads are all in flight at once,
    /// 4 MiB of 128 KiB chunks.</summary>
    private const int PiecesPerBatch = 32;

    /// <summary>What became of one piece: the index of its first block that failed verification (-1: none), or
    /// the exception its device read threw.</summary>
    private readonly record struct PieceOutcome(int Bad, Exception? Error);

    private static readonly PieceOutcome Fine = new(-1, null);

    /// <summary>Reads of a span before its pieces that raced home copies are read one by one.</summary>
    private const int SpanAttempts = 3;

    /// <summary>
    /// A read over several chunks, a batch of pieces at a time. Whole-chunk pieces whose slots lie back to back on
    /// the device (<c>map[c+1] == map[c] + 1</c> after a large write, in whatever order) form a <em>span</em>,
    /// read with one scatter read (data into the caller's buffer, the tag regions between them into one buffer
    /// of ours) and then verified piece by piece; every other piece (partial, unmapped, alone in its slot run) is
    /// read on its own. All of a batch's reads are in flight together, each into its own part of the caller's
    /// buffer, and the outcomes are taken in LBA order, so the result is the same as reading the pieces one after
    /// another: the first piece that fails names its first bad block, and the good blocks before it are in the
    /// buffer. Every read started is awaited before this returns, failure or not: none may write into the
    /// caller's buffer after the command has completed.
    /// </summary>
    private async ValueTask<VolumeResult?> ReadPiecesConcurrentlyAsync(ulong lba, ulong end, long c0, long c1, Memory<byte> buffer, IoContext? context, CancellationToken ct)
    {
        int pieces = (int)(c1 - c0 + 1);
        for (int b0 = 0; b0 < pieces; b0 += PiecesPerBatch)
        {
            int m = Math.Min(PiecesPerBatch, pieces - b0);
            var outcomes = new PieceOutcome[m];
            var reads = new List<ValueTask>(m);
            // Whole mapped chunks, in slot order; runs of consecutive slots within one segment are spans.
            var whole = new List<(long Slot, int K)>(m);
            for (int k = 0; k < m; k++)
            {
                var (s, n) = Piece(b0 + k);
                long e = Volatile.Read(ref _map[c0 + b0 + k]);
                if (n == _bpc && e > 0) whole.Add((e - 1, k));
                else reads.Add(ReadAloneAsync(k, s, n));
            }
            whole.Sort();
            for (int i = 0, j; i < whole.Count; i = j)
            {
                for (j = i + 1; j < whole.Count && whole[j].Slot == whole[j - 1].Slot + 1
                     && _g.SlotOffset(whole[j].Slot) == _g.SlotOffset(whole[j - 1].Slot) + _g.SlotBytes; j++) { }
                if (j - i == 1) { var (s, n) = Piece(b0 + whole[i].K); reads.Add(ReadAloneAsync(whole[i].K, s, n)); }
                else reads.Add(ReadSpanAsync(whole.GetRange(i, j - i), c0 + b0, lba, buffer, outcomes, ct));
            }
            foreach (var r in reads) await r.ConfigureAwait(false); // none throws: failures are outcomes
            for (int k = 0; k < m; k++)
            {
                var o = outcomes[k];
                if (o.Bad < 0 && o.Error == null) continue;
                if (o.Error is { } err and not IOException) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(err);
                var (s, n) = Piece(b0 + k);
                return await PieceFailureAsync(o, lba, s, n, buffer.Slice((int)(s - lba) * _bs, n * _bs), context, ct).ConfigureAwait(false);
            }

            async ValueTask ReadAloneAsync(int k, ulong s, int n) =>
                outcomes[k] = await ReadPieceCatchingAsync(c0 + b0 + k, s, n, buffer.Slice((int)(s - lba) * _bs, n * _bs), ct).ConfigureAwait(false);
        }
        return null;

        (ulong Start, int Blocks) Piece(int k)
        {
            ulong cs = (ulong)(c0 + k) * (ulong)_bpc;
            ulong s = Math.Max(lba, cs), e = Math.Min(end, cs + (ulong)_bpc);
            return (s, (int)(e - s));
        }
    }

    /// <summary>
    /// Reads whole chunks whose slots are back to back on the device (<paramref name="span"/>: slot and piece index,
    /// in slot order; piece k is chunk <paramref name="cFirst"/> + k) with one scatter read: data, tags, data,
    /// tags... The data goes straight into the command's <paramref name="buffer"/> (which starts at LBA
    /// <paramref name="lba"/>), the tag regions into one buffer of ours. Then each piece is checked as a piece read
    /// on its own would be: overlay laid over, every other block verified against the tags just read (never cached
    /// ones); a mismatch is read again from the failing block with the device's tags. When home copies ran during
    /// the read (or a chunk was remapped) the whole span is read again, as a piece would be. A device error fails
    /// the span read as a whole, so each piece is then read on its own: only the piece that really fails is
    /// narrowed to its block. Outcomes go into <paramref name="outcomes"/> by piece index; this never throws.
    /// </summary>
    private async ValueTask ReadSpanAsync(List<(long Slot, int K)> span, long cFirst, ulong lba, Memory<byte> buffer, PieceOutcome[] outcomes, CancellationToken ct)
    {
        int m = span.Count, ts = _g.TagSize, region = _g.TagRegionBytes, chunk = _bpc * _bs;
        byte[] tags = _buffers.Rent(m * region);
        try
        {
            var parts = new Memory<byte>[2 * m];
            for (int j = 0; j < m; j++)
            {
                parts[2 * j] = buffer.Slice((int)(Start(j) - lba) * _bs, chunk);
                // The last tag region is read only as far as the tags go (rounded to whole sectors).
                parts[2 * j + 1] = tags.AsMemory(j * region, j < m - 1 ? region : (int)Geometry.RoundUp((long)_bpc * ts, 512));
            }
            var bad = new int[m];
            for (int attempt = 1; ; attempt++)
            {
                long seq;
                while (((seq = Volatile.Read(ref _homeSeq)) & 1) != 0) await HomeCopyDoneAsync().ConfigureAwait(false);
                try { await _dev.ReadScatterAsync(_g.SlotOffset(span[0].Slot), parts, ct).ConfigureAwait(false); }
                catch (Exception e)
                {
                    if (e is IOException)
                    {
                        var alone = new ValueTask<PieceOutcome>[m];
                        for (int j = 0; j < m; j++) alone[j] = ReadPieceCatchingAsync(cFirst + span[j].K, Start(j), _bpc, parts[2 * j], ct);
                        for (int j = 0; j < m; j++) outcomes[span[j].K] = await alone[j].ConfigureAwait(false);
                    }
                    else for (int j = 0; j < m; j++) outcomes[span[j].K] = new(-1, e);
                    return;
                }
                // After a few laps that raced home copies (a steady stream of small writes), the pieces still
                // stale are read on their own, each in a shorter window.
                bool stale = false, last = attempt == SpanAttempts;
                for (int j = 0; j < m && (last || !stale); j++)
                {
                    bad[j] = Volatile.Read(ref _map[cFirst + span[j].K]) == span[j].Slot + 1
                        ? await Verified(VerifyRead(Start(j), _bpc, parts[2 * j], tags.AsSpan(j * region, _bpc * ts), seq, out var ring), ring, Start(j), parts[2 * j], seq, ct).ConfigureAwait(false) : Stale;
                    stale |= bad[j] == Stale;
                }
                if (!stale || last) break;
            }
            for (int j = 0; j < m; j++)
            {
                long c = cFirst + span[j].K;
                outcomes[span[j].K] = bad[j] switch
                {
                    -1 => Fine,
                    Stale => await ReadPieceCatchingAsync(c, Start(j), _bpc, parts[2 * j], ct).ConfigureAwait(false),
                    _ => await CatchingAsync(RetryFromAsync(c, Start(j), _bpc, parts[2 * j], bad[j], ct)).ConfigureAwait(false),
                };
            }
        }
        finally { _buffers.Return(tags); }

        ulong Start(int j) => (ulong)(cFirst + span[j].K) * (ulong)_bpc;
    }

    private async ValueTask<PieceOutcome> ReadPieceCatchingAsync(long c, ulong start, int n, Memory<byte> mem, CancellationToken ct) =>
        await CatchingAsync(ReadPieceAsync(c, start, n, mem, fromDevice: false, ct)).ConfigureAwait(false);

    private static async ValueTask<PieceOutcome> CatchingAsync(ValueTask<int> read)
    {
        try { return new(await read.ConfigureAwait(false), null); }
        catch (Exception e) { return new(-1, e); }
    }

    /// <summary>The result of a read whose piece at <paramref name="start"/> (n blocks, in <paramref name="mem"/>) had
    /// the outcome <paramref name="o"/>; null when it is fine after all.</summary>
    private async ValueTask<VolumeResult?> PieceFailureAsync(PieceOutcome o, ulong lba, ulong start, int n, Memory<byte> mem, IoContext? context, CancellationToken ct)
    {
        int bad = o.Bad;
        if (o.Error is IOException)
        {
            // Which block fails? Read the piece again block by block: the ones before the failing one are
            // read and verified into the buffer, as for a tag mismatch, and the sense names the first
            // block that really fails (not the command's first LBA).
            var (at, ioError) = await NarrowFailureAsync(ChunkOf(start), start, n, mem, ct).ConfigureAwait(false);
            if (at < 0) return null; // transient: every block read fine the second time
            if (ioError is not null) return VolumeResult.Io(start + (ulong)at, start + (ulong)at - lba, ioError.Message);
            bad = at;
        }
        if (bad < 0) return null;
        ulong fail = start + (ulong)bad;
        ReportFailure(fail, context);
        return VolumeResult.Integrity(fail, fail - lba, $"{TagAlgorithm} tag mismatch at LBA {fail}");
    }

    /// <summary>After a device error in a piece: reads it again one block at a time. Returns the index of the
    /// first block that fails (with the I/O error, or null for a tag mismatch), or -1 when all read fine.</summary>
    private async ValueTask<(int At, IOException? Error)> NarrowFailureAsync(long c, ulong start, int n, Memory<byte> rest, CancellationToken ct)
    {
        for (int i = 0; i < n; i++)
        {
            try
            {
                if (await ReadPieceAsync(c, start + (ulong)i, 1, rest[(i * _bs)..], fromDevice: false, ct).ConfigureAwait(false) >= 0) return (i, null);
            }
            catch (IOException e) { return (i, e); }
        }
        return (-1, null);
    }

    /// <summary>Reads and verifies blocks of one chunk into the start of <paramref name="rest"/> (n blocks; nothing
    /// after them is touched); on a mismatch re-reads from the failing block once, with the tags read from the
    /// device (a racing home write or a transient read must not fail a good block, nor a cached tag outlive what
    /// the device holds). Returns the index of the first block that failed twice, or -1.
    /// <paramref name="fromDevice"/>: never use cached tags (scrub).</summary>
    private async ValueTask<int> ReadPieceAsync(long c, ulong start, int n, Memory<byte> rest, bool fromDevice, CancellationToken ct)
    {
        int bad = await ReadAndVerifyAsync(c, start, n, rest, fromDevice, ct).ConfigureAwait(false);
        return bad < 0 ? -1 : await RetryFromAsync(c, start, n, rest, bad, ct).ConfigureAwait(false);
    }

    /// <summary>Block <paramref name="bad"/> of a piece failed verification: drops the slot's cached tags and reads
    /// the piece again from that block with the tags on the device. Returns the first block that failed twice, or -1.</summary>
    private async ValueTask<int> RetryFromAsync(long c, ulong start, int n, Memory<byte> rest, int bad, CancellationToken ct)
    {
        if (Volatile.Read(ref _map[c]) is long e and > 0) _tagCache.Invalidate(e - 1);
        int again = await ReadAndVerifyAsync(c, start + (ulong)bad, n - bad, rest.Slice(bad * _bs, (n - bad) * _bs), fromDevice: true, ct).ConfigureAwait(false);
        return again < 0 ? -1 : bad + again;
    }

    private async ValueTask<int> ReadAndVerifyAsync(long c, ulong start, int n, Memory<byte> rest, bool fromDevice, CancellationToken ct)
    {
        while (true)
        {
            // Home copies race with reads (the committer takes no range lock): a read that fetched a block
            // from the device before its home copy landed, and looked at the overlay after the entry left
            // it, would return the older content. The home sequence (odd while copies are being written)
            // tells whether that can have happened; then the read is simply done again.
            long seq = Volatile.Read(ref _homeSeq);
            if ((seq & 1) != 0) { await HomeCopyDoneAsync().ConfigureAwait(false); continue; }
            int r = await ReadOnceAsync(c, start, n, rest, seq, fromDevice, ct).ConfigureAwait(false);
            if (r != Stale) return r;
        }
    }

    private const int Stale = -2;

    private async ValueTask<int> ReadOnceAsync(long c, ulong start, int n, Memory<byte> rest, long seq, bool fromDevice, CancellationToken ct)
    {
        var mem = rest[..(n * _bs)];
        long e = Volatile.Read(ref _map[c]);
        if (e == 0) { mem.Span.Clear(); return -1; } // unmapped: zeros, nothing to verify
        long p = e - 1;
        int idx0 = (int)(start % (ulong)_bpc);
        int ts = _g.TagSize;
        long dOff = _g.SlotOffset(p) + (long)idx0 * _bs;
        if (idx0 == 0 && n == _bpc)
        {
            // A whole chunk (a large read's piece that is not part of a span, or scrub's): the data and the tag region
            // behind it in one scatter read, the data into the caller's buffer. The tags are the ones on the device,
            // never a cached copy, and they do not go into the tag cache: that cache is for small reads, whose working
            // set a sequential read (or scrub, which visits every slot) would otherwise evict to hold tags that a
            // large read, reading them with its data at no extra cost, does not need.
            int tagBytes = (int)Geometry.RoundUp((long)_bpc * ts, 512);
            byte[] region = _buffers.Rent(tagBytes);
            try
            {
                await _dev.ReadScatterAsync(dOff, [mem, region.AsMemory(0, tagBytes)], ct).ConfigureAwait(false);
                return await Verified(VerifyRead(start, n, mem, region.AsSpan(0, n * ts), seq, out var ring), ring, start, mem, seq, ct).ConfigureAwait(false);
            }
            finally { _buffers.Return(region); }
        }
        if (!fromDevice && _tagCache.Enabled) return await ReadWithCachedTagsAsync(p, start, n, idx0, mem, seq, ct).ConfigureAwait(false);
        long tOff = _g.TagOffset(p, idx0);
        long tStart = tOff & ~511L, tEnd = Geometry.RoundUp(tOff + (long)n * ts, 512);
        byte[] tags = _buffers.Rent((int)(tEnd - tStart));
        try
        {
            // Data and tags read together: two reads in flight, one round trip on a network store.
            await BothAsync(_dev.ReadAsync(dOff, mem, ct), _dev.ReadAsync(tStart, tags.AsMemory(0, (int)(tEnd - tStart)), ct)).ConfigureAwait(false);
            return await Verified(VerifyRead(start, n, mem, tags.AsSpan((int)(tOff - tStart), n * ts), seq, out var ring), ring, start, mem, seq, ct).ConfigureAwait(false);
        }
        finally { _buffers.Return(tags); }
    }

    /// <summary>
    /// A read verified against the tag cache: when the slot's tags are cached only the data comes from the
    /// device; otherwise the data and all of the slot's tags are read at once (one round trip on a device where
    /// each read is one) and the tags are cached, unless a home copy may have changed them meanwhile.
    /// A small read's cached tags (up to <see cref="SmallTags"/>' size: a 4 KiB read with any algorithm) are
    /// copied into the method's own frame, so a hit rents no buffer.
    /// </summary>
    private async ValueTask<int> ReadWithCachedTagsAsync(long p, ulong start, int n, int idx0, Memory<byte> mem, long seq, CancellationToken ct)
    {
        int ts = _g.TagSize, want = n * ts;
        long dOff = _g.SlotOffset(p) + (long)idx0 * _bs;
        if (want <= SmallTags.Bytes && _tagCache.Prefetch(p, idx0 * ts))
        {
            // Cached: the entry's lines load while the data is read (on a file the read is a synchronous pread).
            var small = new SmallTags();
            var data = _dev.ReadAsync(dOff, mem, ct);
            bool hit = _tagCache.TryCopy(p, idx0 * ts, ((Span<byte>)small)[..want]);
            await data.ConfigureAwait(false);
            if (hit) return await Verified(VerifyRead(start, n, mem, ((ReadOnlySpan<byte>)small)[..want], seq, out var ring), ring, start, mem, seq, ct).ConfigureAwait(false);
            // The entry changed meanwhile (rare): the tags from the device, after the data.
            byte[] region = _buffers.Rent((int)Geometry.RoundUp(_tagCache.EntryBytes, 512));
            try
            {
                long tOff = _g.TagOffset(p, idx0), tStart = tOff & ~511L, tEnd = Geometry.RoundUp(tOff + want, 512);
                await _dev.ReadAsync(tStart, region.AsMemory(0, (int)(tEnd - tStart)), ct).ConfigureAwait(false);
                return await Verified(VerifyRead(start, n, mem, region.AsSpan((int)(tOff - tStart), want), seq, out var ring), ring, start, mem, seq, ct).ConfigureAwait(false);
            }
            finally { _buffers.Return(region); }
        }
        int all = _tagCache.EntryBytes, regionRead = (int)Geometry.RoundUp(all, 512);
        byte[] tags = _buffers.Rent(regionRead);
        try
        {
            if (want > SmallTags.Bytes && _tagCache.TryCopy(p, idx0 * ts, tags.AsSpan(0, want)))
            {
                await _dev.ReadAsync(dOff, mem, ct).ConfigureAwait(false);
                return await Verified(VerifyRead(start, n, mem, tags.AsSpan(0, want), seq, out var ring), ring, start, mem, seq, ct).ConfigureAwait(false);
            }
            await BothAsync(_dev.ReadAsync(dOff, mem, ct), _dev.ReadAsync(_g.TagOffset(p, 0), tags.AsMemory(0, regionRead), ct)).ConfigureAwait(false);
            int r = await Verified(VerifyRead(start, n, mem, tags.AsSpan(idx0 * ts, want), seq, out var rr), rr, start, mem, seq, ct).ConfigureAwait(false);
            if (r != Stale) _tagCache.AddFromDevice(p, tags.AsSpan(0, all), () => Volatile.Read(ref _homeSeq) == seq);
            return r;
        }
        finally { _buffers.Return(tags); }
    }

    /// <summary>Room for a small read's tags inside an async method's frame (8 blocks of HMAC-SHA256).</summary>
    [System.Runtime.CompilerServices.InlineArray(Bytes)]
    private struct SmallTags
    {
        public const int Bytes = 256;
        private byte _first;
    }

    /// <summary>Awaits two device operations started together; the second is awaited even when the first fails.</summary>
    private static async ValueTask BothAsync(ValueTask a, ValueTask b)
    {
        try { await a.ConfigureAwait(false); }
        finally { await b.ConfigureAwait(false); }
    }

    /// <summary>Lays not-yet-applied journaled blocks still in memory over what was read, then verifies every other
    /// block; those in the ring come back in <paramref name="ring"/> for <see cref="Verified"/>. Returns
    /// <see cref="Stale"/> when home copies were written since <paramref name="seq"/>.</summary>
    private int VerifyRead(ulong start, int n, Memory<byte> mem, ReadOnlySpan<byte> tags, long seq, out RingReads? ring)
    {
        if (!OverlayCopy(start, n, mem, seq, out bool[]? fromOverlay, out ring)) return Stale;
        return _tagger.VerifyBlocks(start, mem.Span, _bs, tags, fromOverlay);
    }

    /// <summary>The outcome of <see cref="VerifyRead"/> once the overlay blocks it left in the ring are read and verified.</summary>
    private ValueTask<int> Verified(int bad, RingReads? ring, ulong start, Memory<byte> mem, long seq, CancellationToken ct) =>
        ring == null ? new ValueTask<int>(bad) : RingVerifyAsync(bad, ring, start, mem, seq, ct);

    /// <summary>Counts a verification failure, and logs it: once at Error per distinct LBA, repeats summarised.</summary>
    private void ReportFailure(ulong lba, IoContext? ctx)
    {
        Counters.AddMismatch();
        _badBlocks.Report(lba, ctx);
    }
}
