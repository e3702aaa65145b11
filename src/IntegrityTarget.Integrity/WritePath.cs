using System.Buffers;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity;

// Writes, unmap and write-zeroes: commands turned into units of journal records.
public sealed partial class IntegrityVolume
{
    private const int MaxMapRecordsPerUnit = 4096;

    public async ValueTask<VolumeResult> WriteAsync(ulong lba, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
    {
        if (data.Length % _bs != 0) return new VolumeResult(VolumeStatus.OutOfRange, lba, 0, $"data of {data.Length} bytes is not whole {_bs}-byte blocks");
        ulong blocks = (ulong)(data.Length / _bs);
        if (!InRange(lba, blocks)) return VolumeResult.Range(lba);
        if (blocks == 0) return VolumeResult.Success;
        if (ct.IsCancellationRequested) return new VolumeResult(VolumeStatus.Cancelled);
        if (_failed != null) return FailedResult(lba);
        if (blocks <= MaxAtomicWriteBlocks)
        {
            var one = await WriteCommandAsync(lba, data, fua, ct).ConfigureAwait(false);
            if (!one.IsOk) return one with { GoodBlocks = 0 };
        }
        else
        {
            // Larger than one atomic unit (SBC promises no atomicity beyond it): the parts are started in order
            // (each takes its range lock before the next starts, so overlapping commands keep their order) and
            // are in flight together, instead of each waiting for its journal commit before the next begins.
            var parts = new List<(ulong Done, ValueTask<VolumeResult> Result)>();
            for (ulong done = 0; done < blocks;)
            {
                ulong n = Math.Min(blocks - done, MaxAtomicWriteBlocks);
                parts.Add((done, WriteCommandAsync(lba + done, data.Slice((int)done * _bs, (int)n * _bs), fua, ct)));
                done += n;
            }
            VolumeResult? failed = null;
            foreach (var (done, result) in parts)
            {
                var r = await result.ConfigureAwait(false); // every part is awaited, also after one failed
                if (!r.IsOk && failed == null) failed = r with { GoodBlocks = done };
            }
            if (failed is { } f) return f;
        }
        Counters.AddWrite(data.Length);
        return VolumeResult.Success;
    }

    private async ValueTask<VolumeResult> WriteCommandAsync(ulong lba, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct)
    {
        ulong end = lba + (ulong)(data.Length / _bs);
        long c0 = ChunkOf(lba), c1 = ChunkOf(end - 1);
        // The range lock first, then back-pressure: overlapping commands keep their arrival order even when
        // several of them wait for the committer to drain.
        var lk = await _locks.AcquireAsync(c0, c1, shared: false).ConfigureAwait(false);
        var u = new Unit { Durable = fua || !WriteBack };
        List<long>? allocated = null;
        try
        {
            await BackpressureAsync().ConfigureAwait(false);
            int need = 0;
            for (long c = c0; c <= c1; c++) if (IsWholeChunk(c, lba, end) || _map[c] == 0) need++;
            if (need > 0) allocated = await AllocateAsync(need, ct).ConfigureAwait(false);
            int ai = 0;
            // Slots in ascending order (a run of consecutive ones when the pool allows): chunk k of the command takes
            // the k-th, so back-to-back chunks sit in back-to-back slots (written, and later read, as one request).
            var toSlots = need > 0 ? new SlotPiece[need] : null;
            for (long c = c0; c <= c1; c++)
            {
                ulong cs = (ulong)c * (ulong)_bpc;
                ulong s = Math.Max(lba, cs), e = Math.Min(end, cs + (ulong)_g.BlocksInChunk(c));
                var piece = data.Slice((int)(s - lba) * _bs, (int)(e - s) * _bs);
                if (IsWholeChunk(c, lba, end) || _map[c] == 0)
                {
                    // Redirect-on-write: the chunk goes to a free slot with its tags; the journal only
                    // records the remap. An unmapped chunk gets its first blocks the same way, zero-filled.
                    long p = allocated![ai];
                    toSlots![ai++] = new SlotPiece(p, c, (int)(s - cs), piece);
                    (u.Maps ??= new()).Add((c, p + 1, UInt128.Zero)); // the digest comes with the write below
                    if (_map[c] != 0) (u.FreeAfter ??= new()).Add(_map[c] - 1);
                    u.Bytes += Txn.RecordBytes;
                }
                else
                {
                    long p = _map[c] - 1;
                    u.Data ??= new();
                    for (ulong b = s; b < e; b++)
                    {
                        var rec = _recs.Rent(b, p);
                        var img = piece.Span.Slice((int)(b - s) * _bs, _bs);
                        img.CopyTo(rec.Buf); // private copy: the caller may reuse its buffer
                        // The index tag, from the private copy: reads and home copies check the ring's image against it.
                        _tagger.ComputeTag(b, rec.Buf, rec.Tag);
                        u.Data.Add(rec);
                        u.Bytes += _bs + Txn.RecordBytes;
                    }
                }
            }
            if (toSlots != null)
            {
                // The unit is queued, and so its remaps committed, only once every slot write has completed; the
                // maps were added in the same order as the slot pieces, so map i gets piece i's digest.
                var digests = new UInt128[toSlots.Length];
                // It never throws and returns only when no write of it is running any more (a slot goes back to the
                // pool only when nothing is writing to it).
                var error = await WriteSlotsAsync(toSlots, digests, ct).ConfigureAwait(false);
                if (error != null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(error);
                for (int i = 0; i < digests.Length; i++) u.Maps![i] = u.Maps[i] with { Digest = digests[i] };
            }
            if (!Enqueue(u)) throw new IOException(FailedMessage);
            allocated = null;
            _badBlocks.Forget(lba, end - lba);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException)
        {
            if (allocated != null) _slots.Return(allocated);
            if (u.Data != null) _recs.Return(u.Data);
            return ex is OperationCanceledException ? new VolumeResult(VolumeStatus.Cancelled, lba) : Classify((IOException)ex, lba);
        }
        finally { _locks.Release(lk); }
        // Acknowledged only once its transaction is on the device (written; flushed through it when durable):
        // an acknowledged write lives in the backing store, never only in this process's memory, so the death
        // of this process (SIGKILL, OOM, a gateway failover) loses none, and a SYNCHRONIZE CACHE that another
        // gateway or a restarted one answers covers it.
        return await AwaitUnitAsync(u, lba).ConfigureAwait(false);
    }

    private async ValueTask<List<long>> AllocateAsync(int n, CancellationToken ct)
    {
        while (true)
        {
            var list = _slots.TryAllocate(n, out var freed, out bool low);
            // Low water: start a durable point now so limbo slots return before writers must wait.
            if (low) { _slotsLow = true; RequestCommit(); }
            if (list != null) return list;
            // A failed volume frees no slot any more: nothing would end this wait.
            if (_failed != null) throw new IOException(FailedMessage);
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            try { await freed.WaitAsync(ct).ConfigureAwait(false); }
            finally { Interlocked.Add(ref _stSlotWaitTicks, System.Diagnostics.Stopwatch.GetTimestamp() - t0); }
        }
    }

    private string FailedMessage => $"{Name}: volume failed: {_failed?.Message}";
    private VolumeResult FailedResult(ulong lba) => VolumeResult.Io(lba, 0, FailedMessage);

    private static VolumeResult Classify(IOException e, ulong lba) =>
        e.HResult == 28 ? new VolumeResult(VolumeStatus.NoSpace, lba, 0, e.Message) : VolumeResult.Io(lba, 0, e.Message);

    private async ValueTask<VolumeResult> AwaitUnitAsync(Unit u, ulong lba)
    {
        try { await u.Done.Task.ConfigureAwait(false); return VolumeResult.Success; }
        catch (Exception e) { return VolumeResult.Io(lba, 0, $"{Name}: journal commit failed: {e.Message}"); }
    }

    private bool IsWholeChunk(long c, ulong lba, ulong end)
    {
        ulong cs = (ulong)c * (ulong)_bpc;
        return lba <= cs && end >= cs + (ulong)_g.BlocksInChunk(c);
    }

    /// <summary>A piece of a command bound for free slot <paramref name="Slot"/>: chunk <paramref name="Chunk"/>'s blocks
    /// from index <paramref name="FirstIndex"/> (the whole chunk, or the first write into an unmapped chunk).</summary>
    private readonly record struct SlotPiece(long Slot, long Chunk, int FirstIndex, ReadOnlyMemory<byte> Data);

    /// <summary>Most slots written with one request: two parts a slot stay far below IOV_MAX (1024), which both
    /// pwritev and librbd's writev refuse to exceed.</summary>
    private const int MaxRunSlots = 256;

    /// <summary>
    /// Writes each piece with its tags to its slot (not durable) and puts the digest of each slot's tag region,
    /// which the remap record carries so recovery can tell whether the write landed whole, into
    /// <paramref name="digests"/>. Pieces whose slots are back to back on the device (a <em>run</em>: the pieces
    /// come in ascending slot order, and a 1 MiB write normally gets consecutive slots) are written with ONE gather
    /// write, data, tags, data, tags... (one pwritev, one rbd_aio_writev); any other piece with one write of its
    /// own. The writes of different runs are in flight together and may complete in any order (each remap
    /// validates its own slot). Never throws: returns the first failure, and only once every write started has
    /// finished, so no slot is handed back, and no buffer (the caller's included) let go of, under a running write.
    /// </summary>
    private async ValueTask<Exception?> WriteSlotsAsync(SlotPiece[] pieces, UInt128[] digests, CancellationToken ct)
    {
        var g = _g;
        var images = new byte[]?[pieces.Length];
        var writes = new List<ValueTask<Exception?>>();
        Exception? first = null;
        try
        {
            for (int i = 0, j; i < pieces.Length; i = j)
            {
                for (j = i + 1; j < pieces.Length && j - i < MaxRunSlots && pieces[j].Slot == pieces[j - 1].Slot + 1
                     && g.SlotOffset(pieces[j].Slot) == g.SlotOffset(pieces[j - 1].Slot) + g.SlotBytes; j++) { }
                // The run's tags are computed before its write starts; a later run's while this one is written
                // (on a device whose writes complete asynchronously).
                var parts = new List<ReadOnlyMemory<byte>>(2 * (j - i));
                for (int k = i; k < j; k++) digests[k] = SlotImage(pieces[k], out images[k], parts);
                writes.Add(WriteRunAsync(pieces, images, i, j, parts, ct));
            }
        }
        catch (Exception e) { first = e; } // (computing tags does not fail; but no write may be left running)
        foreach (var w in writes)
        {
            var e = await w.ConfigureAwait(false); // every one, also after a failure (not `first ??= await w`)
            first ??= e;
        }
        foreach (var b in images) if (b != null) _buffers.Return(b);
        return first;
    }

    /// <summary>One device write of pieces [<paramref name="from"/>, <paramref name="to"/>) (slots back to back); the
    /// failure, if any, is returned rather than thrown.</summary>
    private async ValueTask<Exception?> WriteRunAsync(SlotPiece[] pieces, byte[]?[] images, int from, int to, List<ReadOnlyMemory<byte>> parts, CancellationToken ct)
    {
        try
        {
            await _dev.WriteGatherAsync(_g.SlotOffset(pieces[from].Slot), parts, fua: false, ct).ConfigureAwait(false);
        }
        catch (Exception e) { return e; }
        int ts = _g.TagSize;
        for (int k = from; k < to; k++)
        {
            // No read sees slot p before the remap to it is queued, after this; a stale entry of a freed p is replaced.
            var tags = pieces[k].Data.Length == _g.ChunkBytes ? images[k].AsSpan(0, _bpc * ts) : images[k].AsSpan(_g.ChunkBytes, _bpc * ts);
            _tagCache.Put(pieces[k].Slot, tags);
        }
        return null;
    }

    /// <summary>
    /// What slot <c>piece.Slot</c> is to hold, appended to <paramref name="parts"/>, and the digest of its tag region.
    /// A piece that fills the chunk: the caller's data as it is (no copy; untouched until the command completes) and
    /// the tag region computed from it into <paramref name="image"/>. A smaller piece (first write into an unmapped
    /// chunk): the whole slot, zero-filled around the piece, with its tags, in <paramref name="image"/>. Every
    /// block of the slot gets its tag, also those past the end of a partial last chunk (zeros), so a later grow
    /// finds them valid. <paramref name="image"/> is rented from the volume's pool; the caller returns it.
    /// </summary>
    private UInt128 SlotImage(SlotPiece piece, out byte[]? image, List<ReadOnlyMemory<byte>> parts)
    {
        var g = _g;
        int ts = g.TagSize, region = g.TagRegionBytes;
        ulong cs = (ulong)piece.Chunk * (ulong)_bpc;
        image = null;
        if (piece.Data.Length == g.ChunkBytes)
        {
            image = _buffers.Rent(region);
            var data = piece.Data.Span;
            var t = image.AsSpan(0, region);
            for (int i = 0; i < _bpc; i++)
                _tagger.ComputeTag(cs + (ulong)i, data.Slice(i * _bs, _bs), t.Slice(i * ts, ts));
            t[(_bpc * ts)..].Clear();
            parts.Add(piece.Data);
            parts.Add(image.AsMemory(0, region));
            return _tagger.SlotDigest(t);
        }
        int slot = (int)g.SlotBytes;
        image = _buffers.Rent(slot);
        var span = image.AsSpan(0, slot);
        // Zero only what the piece does not cover.
        int from = piece.FirstIndex * _bs, to = from + piece.Data.Length;
        span[..from].Clear();
        piece.Data.Span.CopyTo(span[from..]);
        span[to..].Clear();
        for (int i = 0; i < _bpc; i++)
            _tagger.ComputeTag(cs + (ulong)i, span.Slice(i * _bs, _bs), span.Slice(g.ChunkBytes + i * ts, ts));
        parts.Add(image.AsMemory(0, slot));
        return _tagger.SlotDigest(span.Slice(g.ChunkBytes, g.TagRegionBytes));
    }

    public async ValueTask<VolumeResult> FlushAsync(CancellationToken ct = default)
    {
        if (_failed != null) return FailedResult(0);
        var u = new Unit { Durable = true };
        if (!Enqueue(u)) return FailedResult(0);
        var r = await AwaitUnitAsync(u, 0).ConfigureAwait(false);
        if (r.IsOk) Counters.AddFlush();
        return r;
    }

    public ValueTask<VolumeResult> UnmapAsync(ulong lba, ulong blocks, CancellationToken ct = default) => WriteZeroesAsync(lba, blocks, true, ct);

    public async ValueTask<VolumeResult> WriteZeroesAsync(ulong lba, ulong blocks, bool deallocate, CancellationToken ct = default)
    {
        if (!InRange(lba, blocks)) return VolumeResult.Range(lba);
        if (blocks == 0) return VolumeResult.Success;
        if (_failed != null) return FailedResult(lba);
        ulong end = lba + blocks, cur = lba;
        while (cur < end)
        {
            // Bounded groups keep one unit's record table small; unmap is not promised atomic as a whole.
            ulong groupEnd = Math.Min(end, ((ulong)ChunkOf(cur) + MaxMapRecordsPerUnit) * (ulong)_bpc);
            long c0 = ChunkOf(cur), c1 = ChunkOf(groupEnd - 1);
            var lk = await _locks.AcquireAsync(c0, c1, shared: false).ConfigureAwait(false);
            var u = new Unit { Durable = !WriteBack, Unmap = true };
            try
            {
                await BackpressureAsync().ConfigureAwait(false);
                for (long c = c0; c <= c1; c++)
                {
                    if (_map[c] == 0) continue; // already reads as zeros
                    if (IsWholeChunk(c, cur, groupEnd))
                    {
                        (u.Maps ??= new()).Add((c, 0, UInt128.Zero));
                        (u.FreeAfter ??= new()).Add(_map[c] - 1);
                        u.Bytes += Txn.RecordBytes;
                    }
                    else
                    {
                        ulong cs = (ulong)c * (ulong)_bpc;
                        ulong s = Math.Max(cur, cs), e = Math.Min(groupEnd, cs + (ulong)_g.BlocksInChunk(c));
                        u.Data ??= new();
                        for (ulong b = s; b < e; b++)
                        {
                            var rec = _recs.Rent(b, _map[c] - 1);
                            Array.Clear(rec.Buf!);
                            _tagger.ComputeTag(b, rec.Buf, rec.Tag);
                            u.Data.Add(rec);
                            u.Bytes += _bs + Txn.RecordBytes;
                        }
                    }
                }
                if (!Enqueue(u))
                {
                    if (u.Data != null) _recs.Return(u.Data);
                    return FailedResult(cur);
                }
                _badBlocks.Forget(cur, groupEnd - cur);
            }
            finally { _locks.Release(lk); }
            // As for writes: acknowledged once written to the device, not from memory.
            var r = await AwaitUnitAsync(u, cur).ConfigureAwait(false);
            if (!r.IsOk) return r;
            cur = groupEnd;
        }
        Counters.AddUnmap();
        return VolumeResult.Success;
    }
}
