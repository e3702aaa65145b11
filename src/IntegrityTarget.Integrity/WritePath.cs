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
        ValueTask<(UInt128, Exception?)>[]? slotWrites = null;
        try
        {
            await BackpressureAsync().ConfigureAwait(false);
            int need = 0;
            for (long c = c0; c <= c1; c++) if (IsWholeChunk(c, lba, end) || _map[c] == 0) need++;
            if (need > 0) allocated = await AllocateAsync(need, ct).ConfigureAwait(false);
            int ai = 0;
            // The slot writes of all the command's chunks are in flight together (one round trip on a network
            // store, not one per chunk); the unit is queued, and so its remaps committed, only once all of them
            // have completed. Their order among themselves does not matter: each remap validates its own slot.
            slotWrites = need > 0 ? new ValueTask<(UInt128, Exception?)>[need] : null;
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
                    slotWrites![ai++] = WriteSlotCatchingAsync(p, c, (int)(s - cs), piece, ct);
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
                        piece.Span.Slice((int)(b - s) * _bs, _bs).CopyTo(rec.Buf); // private copy: the caller may reuse its buffer
                        u.Data.Add(rec);
                        u.Bytes += _bs + Txn.RecordBytes;
                    }
                }
            }
            if (slotWrites != null)
            {
                Exception? first = null;
                for (int i = 0; i < slotWrites.Length; i++)
                {
                    // Every write is awaited, also after one failed: a slot goes back to the pool only when
                    // nothing is writing to it any more.
                    var (digest, error) = await slotWrites[i].ConfigureAwait(false);
                    first ??= error;
                    if (error == null) u.Maps![i] = u.Maps[i] with { Digest = digest };
                }
                slotWrites = null;
                if (first != null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
            }
            if (!Enqueue(u)) throw new IOException(FailedMessage);
            allocated = null;
            _badBlocks.Forget(lba, end - lba);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException)
        {
            if (slotWrites != null) foreach (var w in slotWrites) await w.ConfigureAwait(false); // (never throws)
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

    private async ValueTask<(UInt128, Exception?)> WriteSlotCatchingAsync(long p, long c, int firstIndex, ReadOnlyMemory<byte> piece, CancellationToken ct)
    {
        try { return (await WriteSlotAsync(p, c, firstIndex, piece, ct).ConfigureAwait(false), null); }
        catch (Exception e) { return (UInt128.Zero, e); }
    }

    /// <summary>Writes a chunk's data and tags to slot <paramref name="p"/> in one device write (not durable) and
    /// returns the digest of the tag region, which the remap record carries so recovery can tell whether this
    /// write landed whole. Every block of the slot gets its tag, also those past the end of a partial last
    /// chunk (zeros), so a later grow finds them valid.</summary>
    private async ValueTask<UInt128> WriteSlotAsync(long p, long c, int firstIndex, ReadOnlyMemory<byte> piece, CancellationToken ct)
    {
        if (piece.Length == _g.ChunkBytes) return await WriteWholeSlotAsync(p, c, piece, ct).ConfigureAwait(false);
        int slot = (int)_g.SlotBytes;
        byte[] buf = _buffers.Rent(slot);
        try
        {
            var span = buf.AsSpan(0, slot);
            // Zero only what the piece does not cover (a whole-chunk write clears just the tag region's tail).
            int from = firstIndex * _bs, to = from + piece.Length;
            span[..from].Clear();
            piece.Span.CopyTo(span[from..]);
            span[to..].Clear();
            var g = _g;
            int ts = g.TagSize;
            ulong cs = (ulong)c * (ulong)_bpc;
            for (int i = 0; i < _bpc; i++)
                _tagger.ComputeTag(cs + (ulong)i, span.Slice(i * _bs, _bs), span.Slice(g.ChunkBytes + i * ts, ts));
            var digest = _tagger.SlotDigest(span.Slice(g.ChunkBytes, g.TagRegionBytes));
            await _dev.WriteAsync(g.SlotOffset(p), buf.AsMemory(0, slot), fua: false, ct).ConfigureAwait(false);
            // No read sees slot p before the remap to it is queued, after this; a stale entry of a freed p is replaced.
            _tagCache.Put(p, buf.AsSpan(g.ChunkBytes, _bpc * ts));
            return digest;
        }
        finally { _buffers.Return(buf); }
    }

    /// <summary><see cref="WriteSlotAsync"/> for a piece that fills the chunk: the tags are computed straight from the
    /// caller's data and the slot is written with one gather write of that data and the tag region, with no copy
    /// of the data into a slot buffer (the caller's buffer stays untouched until the command completes).</summary>
    private async ValueTask<UInt128> WriteWholeSlotAsync(long p, long c, ReadOnlyMemory<byte> piece, CancellationToken ct)
    {
        var g = _g;
        int ts = g.TagSize, region = g.TagRegionBytes;
        byte[] tags = _buffers.Rent(region);
        try
        {
            var span = piece.Span;
            var t = tags.AsSpan(0, region);
            ulong cs = (ulong)c * (ulong)_bpc;
            for (int i = 0; i < _bpc; i++)
                _tagger.ComputeTag(cs + (ulong)i, span.Slice(i * _bs, _bs), t.Slice(i * ts, ts));
            t[(_bpc * ts)..].Clear();
            var digest = _tagger.SlotDigest(t);
            await _dev.WriteGatherAsync(g.SlotOffset(p), [piece, tags.AsMemory(0, region)], fua: false, ct).ConfigureAwait(false);
            // No read sees slot p before the remap to it is queued, after this; a stale entry of a freed p is replaced.
            _tagCache.Put(p, tags.AsSpan(0, _bpc * ts));
            return digest;
        }
        finally { _buffers.Return(tags); }
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
                            Array.Clear(rec.Buf);
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
