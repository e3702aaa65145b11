using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.InteropServices;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity;

public sealed partial class IntegrityVolume
{
    private long ChunkOf(ulong lba) => (long)(lba / (ulong)_bpc);
    private bool InRange(ulong lba, ulong blocks) => blocks <= BlockCount && lba <= BlockCount - blocks;

    // ------------------------------------------------------------------ reads

    public async ValueTask<VolumeResult> ReadAsync(ulong lba, Memory<byte> buffer, IoContext? context = null, CancellationToken ct = default)
    {
        if (buffer.Length % _bs != 0) return new VolumeResult(VolumeStatus.OutOfRange, lba, 0, $"buffer of {buffer.Length} bytes is not whole {_bs}-byte blocks");
        ulong blocks = (ulong)(buffer.Length / _bs);
        if (!InRange(lba, blocks)) return VolumeResult.Range(lba);
        if (blocks == 0) return VolumeResult.Success;
        if (ct.IsCancellationRequested) return new VolumeResult(VolumeStatus.Cancelled);
        ulong end = lba + blocks;
        var lk = await _locks.AcquireAsync(ChunkOf(lba), ChunkOf(end - 1), shared: true).ConfigureAwait(false);
        try
        {
            ulong cur = lba;
            int off = 0;
            while (cur < end)
            {
                long c = ChunkOf(cur);
                ulong pieceEnd = Math.Min(end, (ulong)(c + 1) * (ulong)_bpc);
                int n = (int)(pieceEnd - cur);
                // The rest of the caller's buffer (from this piece on) lets a piece that ends at its chunk's end
                // read its tags in the same device read: they follow the data in the slot.
                int bad = await ReadPieceAsync(c, cur, n, buffer[off..], ct).ConfigureAwait(false);
                if (bad >= 0)
                {
                    ulong fail = cur + (ulong)bad;
                    ReportFailure(fail, context);
                    return VolumeResult.Integrity(fail, fail - lba, $"{TagAlgorithm} tag mismatch at LBA {fail}");
                }
                cur = pieceEnd; off += n * _bs;
            }
        }
        catch (IOException e) { return VolumeResult.Io(lba, 0, e.Message); }
        finally { _locks.Release(lk); }
        Counters.AddRead(buffer.Length);
        return VolumeResult.Success;
    }

    /// <summary>Reads and verifies blocks of one chunk into the start of <paramref name="rest"/> (n blocks; bytes
    /// after them may be used as scratch and are overwritten by later pieces); on a mismatch re-reads from the
    /// failing block once (a racing home write or a transient read must not fail a good block). Returns the
    /// index of the first block that failed twice, or -1.</summary>
    private async ValueTask<int> ReadPieceAsync(long c, ulong start, int n, Memory<byte> rest, CancellationToken ct)
    {
        int bad = await ReadAndVerifyAsync(c, start, n, rest, ct).ConfigureAwait(false);
        if (bad < 0) return -1;
        int again = await ReadAndVerifyAsync(c, start + (ulong)bad, n - bad, rest.Slice(bad * _bs, (n - bad) * _bs), ct).ConfigureAwait(false);
        return again < 0 ? -1 : bad + again;
    }

    private async ValueTask<int> ReadAndVerifyAsync(long c, ulong start, int n, Memory<byte> rest, CancellationToken ct)
    {
        while (true)
        {
            // Home copies race with reads (the committer takes no range lock): a read that fetched a block
            // from the device before its home copy landed, and looked at the overlay after the entry left
            // it, would return the older content. The home sequence (odd while copies are being written)
            // tells whether that can have happened; then the read is simply done again.
            long seq = Volatile.Read(ref _homeSeq);
            if ((seq & 1) != 0) { await HomeCopyDoneAsync().ConfigureAwait(false); continue; }
            int r = await ReadOnceAsync(c, start, n, rest, seq, ct).ConfigureAwait(false);
            if (r != Stale) return r;
        }
    }

    private const int Stale = -2;

    private async ValueTask<int> ReadOnceAsync(long c, ulong start, int n, Memory<byte> rest, long seq, CancellationToken ct)
    {
        var mem = rest[..(n * _bs)];
        long e = Volatile.Read(ref _map[c]);
        if (e == 0) { mem.Span.Clear(); return -1; } // unmapped: zeros, nothing to verify
        long p = e - 1;
        int idx0 = (int)(start % (ulong)_bpc);
        int ts = _g.TagSize;
        long dOff = _g.SlotOffset(p) + (long)idx0 * _bs;
        // A piece that runs to the end of a full chunk is followed on the device by the tag region: when the
        // caller's buffer has room, one device read brings data and the current tags (never a cached copy).
        int joined = n * _bs + (int)Geometry.RoundUp((long)(idx0 + n) * ts, 512);
        if (idx0 + n == _bpc && rest.Length >= joined)
        {
            await _dev.ReadAsync(dOff, rest[..joined], ct).ConfigureAwait(false);
            return VerifyRead(start, n, mem, rest.Span.Slice(n * _bs + idx0 * ts, n * ts), seq);
        }
        await _dev.ReadAsync(dOff, mem, ct).ConfigureAwait(false);
        long tOff = _g.TagOffset(p, idx0);
        long tStart = tOff & ~511L, tEnd = Geometry.RoundUp(tOff + (long)n * ts, 512);
        byte[] tags = ArrayPool<byte>.Shared.Rent((int)(tEnd - tStart));
        try
        {
            await _dev.ReadAsync(tStart, tags.AsMemory(0, (int)(tEnd - tStart)), ct).ConfigureAwait(false);
            return VerifyRead(start, n, mem, tags.AsSpan((int)(tOff - tStart), n * ts), seq);
        }
        finally { ArrayPool<byte>.Shared.Return(tags); }
    }

    /// <summary>Lays not-yet-applied journaled blocks over what was read, then verifies every other block.
    /// Returns <see cref="Stale"/> when home copies were written since <paramref name="seq"/>.</summary>
    private int VerifyRead(ulong start, int n, Memory<byte> mem, ReadOnlySpan<byte> tags, long seq)
    {
        if (!OverlayCopy(start, n, mem, seq, out bool[]? fromOverlay)) return Stale;
        return _tagger.VerifyBlocks(start, mem.Span, _bs, tags, fromOverlay);
    }

    /// <summary>Copies acknowledged-but-not-yet-applied blocks over what was read from home. False when
    /// home copies started or ended since <paramref name="seq"/> (what was read may predate one).</summary>
    private bool OverlayCopy(ulong start, int n, Memory<byte> mem, long seq, out bool[]? hit)
    {
        hit = null;
        // Writers publish overlay entries under _q before acknowledging; the per-chunk count is re-read under
        // the lock, so skipping the lock when it is zero only skips blocks no acknowledged write still holds.
        // The committer bumps _homeSeq before it writes home copies and again after it drops their entries.
        long c = ChunkOf(start);
        if (Volatile.Read(ref _overlayInChunk[c]) == 0) return Volatile.Read(ref _homeSeq) == seq;
        lock (_q)
        {
            if (_homeSeq != seq) return false;
            if (_overlayInChunk[c] == 0) return true;
            for (int i = 0; i < n; i++)
                if (_overlay.TryGetValue(start + (ulong)i, out var r))
                {
                    r.Buf.AsSpan(0, _bs).CopyTo(mem.Span.Slice(i * _bs, _bs));
                    (hit ??= new bool[n])[i] = true;
                }
            return true;
        }
    }

    private Task HomeCopyDoneAsync()
    {
        lock (_q) return (_homeSeq & 1) != 0 ? _homeCopied.Task : Task.CompletedTask;
    }

    /// <summary>Under _q.</summary>
    private void OverlayPut(DataRec r)
    {
        if (_overlay.TryAdd(r.Lba, r)) _overlayInChunk[ChunkOf(r.Lba)]++;
        else _overlay[r.Lba] = r;
    }

    /// <summary>Under _q.</summary>
    private void OverlayRemove(ulong lba)
    {
        if (_overlay.Remove(lba)) _overlayInChunk[ChunkOf(lba)]--;
    }

    /// <summary>The one log event (and counter) of a verification failure.</summary>
    private void ReportFailure(ulong lba, IoContext? ctx)
    {
        Counters.AddMismatch();
        _log.Error("Integrity verification failed on {Volume} at LBA {Lba} ({TagAlgorithm}); unit {Unit}, initiator {Initiator}, command {Command}",
            Name, lba, TagAlgorithm, ctx?.Unit, ctx?.Initiator, ctx?.Command);
    }

    // ------------------------------------------------------------------ writes

    public async ValueTask<VolumeResult> WriteAsync(ulong lba, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
    {
        if (data.Length % _bs != 0) return new VolumeResult(VolumeStatus.OutOfRange, lba, 0, $"data of {data.Length} bytes is not whole {_bs}-byte blocks");
        ulong blocks = (ulong)(data.Length / _bs);
        if (!InRange(lba, blocks)) return VolumeResult.Range(lba);
        if (blocks == 0) return VolumeResult.Success;
        if (ct.IsCancellationRequested) return new VolumeResult(VolumeStatus.Cancelled);
        if (_failed != null) return FailedResult(lba);
        ulong done = 0;
        while (done < blocks)
        {
            ulong n = Math.Min(blocks - done, MaxAtomicWriteBlocks);
            var r = await WriteCommandAsync(lba + done, data.Slice((int)done * _bs, (int)n * _bs), fua, ct).ConfigureAwait(false);
            if (!r.IsOk) return r with { GoodBlocks = done };
            done += n;
        }
        Counters.AddWrite(data.Length);
        return VolumeResult.Success;
    }

    private async ValueTask<VolumeResult> WriteCommandAsync(ulong lba, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct)
    {
        await BackpressureAsync().ConfigureAwait(false);
        ulong end = lba + (ulong)(data.Length / _bs);
        long c0 = ChunkOf(lba), c1 = ChunkOf(end - 1);
        var lk = await _locks.AcquireAsync(c0, c1, shared: false).ConfigureAwait(false);
        var u = new Unit { Durable = fua || !WriteBack };
        List<long>? allocated = null;
        try
        {
            int need = 0;
            for (long c = c0; c <= c1; c++) if (IsWholeChunk(c, lba, end) || _map[c] == 0) need++;
            if (need > 0) allocated = await AllocateAsync(need, ct).ConfigureAwait(false);
            int ai = 0;
            for (long c = c0; c <= c1; c++)
            {
                ulong cs = (ulong)c * (ulong)_bpc;
                ulong s = Math.Max(lba, cs), e = Math.Min(end, cs + (ulong)_g.BlocksInChunk(c));
                var piece = data.Slice((int)(s - lba) * _bs, (int)(e - s) * _bs);
                if (IsWholeChunk(c, lba, end) || _map[c] == 0)
                {
                    // Redirect-on-write: the chunk goes to a free slot with its tags; the journal only
                    // records the remap. An unmapped chunk gets its first blocks the same way, zero-filled.
                    long p = allocated![ai++];
                    await WriteSlotAsync(p, c, (int)(s - cs), piece, ct).ConfigureAwait(false);
                    (u.Maps ??= new()).Add((c, p + 1));
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
            if (!Enqueue(u)) throw new IOException(FailedMessage);
            allocated = null;
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException)
        {
            if (allocated != null) lock (_freeLock) foreach (var p in allocated) _free.Push(p);
            if (u.Data != null) _recs.Return(u.Data);
            return ex is OperationCanceledException ? new VolumeResult(VolumeStatus.Cancelled, lba) : Classify((IOException)ex, lba);
        }
        finally { _locks.Release(lk); }
        if (u.Durable) return await AwaitUnitAsync(u, lba).ConfigureAwait(false);
        return VolumeResult.Success;
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

    private async ValueTask WriteSlotAsync(long p, long c, int firstIndex, ReadOnlyMemory<byte> piece, CancellationToken ct)
    {
        int slot = (int)_g.SlotBytes;
        byte[] buf = ArrayPool<byte>.Shared.Rent(slot);
        try
        {
            var span = buf.AsSpan(0, slot);
            // Zero only what the piece does not cover (a whole-chunk write clears just the tag region's tail).
            int from = firstIndex * _bs, to = from + piece.Length;
            span[..from].Clear();
            piece.Span.CopyTo(span[from..]);
            span[to..].Clear();
            int cb = _g.BlocksInChunk(c), ts = _g.TagSize;
            ulong cs = (ulong)c * (ulong)_bpc;
            for (int i = 0; i < cb; i++)
                _tagger.ComputeTag(cs + (ulong)i, span.Slice(i * _bs, _bs), span.Slice(_g.ChunkBytes + i * ts, ts));
            await _dev.WriteAsync(_g.SlotOffset(p), buf.AsMemory(0, slot), fua: false, ct).ConfigureAwait(false);
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    private async ValueTask<List<long>> AllocateAsync(int n, CancellationToken ct)
    {
        while (true)
        {
            Task wait;
            lock (_freeLock)
            {
                if (_free.Count >= n)
                {
                    var list = new List<long>(n);
                    for (int i = 0; i < n; i++) list.Add(_free.Pop());
                    // Low water: start a commit now so replaced slots return before writers must wait.
                    if (_free.Count < _lowWater) RequestCommit();
                    return list;
                }
                wait = _freed.Task;
            }
            // Old slots come back once the remaps that replaced them are durable.
            _slotsWanted = true;
            RequestCommit();
            await wait.WaitAsync(ct).ConfigureAwait(false);
        }
    }

    private async ValueTask BackpressureAsync()
    {
        while (Volatile.Read(ref _queuedBytes) > _maxPending && _failed == null)
        {
            Task t;
            lock (_q) t = _drained.Task;
            RequestCommit();
            await t.ConfigureAwait(false);
        }
    }

    /// <summary>Queues a command's records for the committer and shows them to reads; false (nothing
    /// queued, nothing shown) once the volume has failed, whose committer commits nothing more.</summary>
    private bool Enqueue(Unit u)
    {
        bool wake;
        lock (_q)
        {
            // Fail() drains the queue under _q after setting _failed: a unit is either drained (and failed)
            // or refused here, never left to commit after units queued before it were dropped.
            if (_failed != null) return false;
            if (u.Maps != null)
                foreach (var (c, e) in u.Maps)
                {
                    Volatile.Write(ref _map[c], e);
                    // The remap replaces the whole chunk: older queued blocks of it must no longer show.
                    if (_overlayInChunk[c] > 0)
                    {
                        ulong cs = (ulong)c * (ulong)_bpc;
                        for (int i = 0; i < _bpc; i++) OverlayRemove(cs + (ulong)i);
                    }
                }
            if (u.Data != null) foreach (var r in u.Data) OverlayPut(r);
            // The first unit of an empty queue wakes the committer too, so it starts the 20 ms age clock
            // (otherwise an idle volume would hold write-back writes in memory until some later command).
            bool first = _queue.Count == 0;
            if (first) _oldestTicks = Environment.TickCount64;
            _queue.Add(u);
            _queuedBytes += u.Bytes;
            if (u.Durable) _commitRequested = true;
            wake = first || u.Durable || _queuedBytes >= _watermark;
        }
        if (wake) Wake();
        return true;
    }

    private void RequestCommit()
    {
        lock (_q) _commitRequested = true;
        Wake();
    }

    private void Wake()
    {
        if (_wake.CurrentCount == 0) _wake.Release();
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

    // ------------------------------------------------------------------ unmap / status

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
            await BackpressureAsync().ConfigureAwait(false);
            long c0 = ChunkOf(cur), c1 = ChunkOf(groupEnd - 1);
            var lk = await _locks.AcquireAsync(c0, c1, shared: false).ConfigureAwait(false);
            var u = new Unit { Durable = !WriteBack, Unmap = true };
            try
            {
                for (long c = c0; c <= c1; c++)
                {
                    if (_map[c] == 0) continue; // already reads as zeros
                    if (IsWholeChunk(c, cur, groupEnd))
                    {
                        (u.Maps ??= new()).Add((c, 0));
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
            }
            finally { _locks.Release(lk); }
            if (u.Durable)
            {
                var r = await AwaitUnitAsync(u, cur).ConfigureAwait(false);
                if (!r.IsOk) return r;
            }
            cur = groupEnd;
        }
        Counters.AddUnmap();
        return VolumeResult.Success;
    }

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

    /// <summary>Chunk-map area location (offset, bytes), for diagnostics and tests.</summary>
    public (long Offset, long Bytes) MapArea => (_g.MapOffset, _g.MapBytes);

    // ------------------------------------------------------------------ committer

    private async Task CommitterLoopAsync()
    {
        while (!_abandon)
        {
            List<Unit>? batch = null;
            bool stopping = _stop.IsCancellationRequested, pending, syncNow = false;
            lock (_q)
            {
                pending = _queue.Count > 0;
                // Writers short of slots while replaced ones wait for their remaps to become durable.
                if (!pending && (_commitRequested || _slotsWanted) && _unsynced) { syncNow = true; _commitRequested = false; }
                if (pending && (_commitRequested || stopping || _queuedBytes >= _watermark || Environment.TickCount64 - _oldestTicks >= MaxAgeMs))
                {
                    long bytes = 0; int n = 0;
                    while (n < _queue.Count)
                    {
                        var u = _queue[n];
                        long ub = u.Bytes + Txn.FixedHeader;
                        if (n > 0 && bytes + ub > _maxTxnBytes - 8192) break;
                        bytes += ub; n++;
                    }
                    batch = _queue.GetRange(0, n);
                    _queue.RemoveRange(0, n);
                    foreach (var u in batch) _queuedBytes -= u.Bytes;
                    _commitRequested = _queue.Exists(x => x.Durable);
                    _oldestTicks = Environment.TickCount64;
                }
            }
            if (batch != null)
            {
                try { await CommitBatchAsync(batch).ConfigureAwait(false); }
                catch (Exception e) { Fail(e, batch); }
                continue;
            }
            if (syncNow) { await BackgroundSyncAsync().ConfigureAwait(false); continue; }
            if (stopping) break;
            // Idle with transactions not yet durable or blocks not yet home: make them durable and copy them
            // home, so reads stop consulting the overlay, replaced slots return to the pool, and a power cut
            // loses nothing that sat idle (a disk cache's write-back).
            bool homing = !pending && (_pendingHome.Count > 0 || _unsynced);
            // With nothing left to do, a volume that still pools released block records waits that long
            // and then lets them go.
            bool trimming = !pending && !homing && _recs.Count > 0;
            bool woken = true;
            try { woken = await _wake.WaitAsync(pending ? MaxAgeMs : homing ? _idleHomeMs : trimming ? _idleTrimMs : Timeout.Infinite, _stop.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            if (!woken && homing && !_abandon)
            {
                lock (_q) pending = _queue.Count > 0;
                if (!pending) await BackgroundSyncAsync().ConfigureAwait(false);
            }
            else if (!woken && trimming) _recs.Trim();
        }
    }

    /// <summary>A durable point the committer reaches on its own (idle, or writers short of slots).</summary>
    private async ValueTask BackgroundSyncAsync()
    {
        try { await SyncAndApplyAsync(CancellationToken.None).ConfigureAwait(false); }
        catch (Exception e) { Fail(e, []); }
    }

    private void Fail(Exception e, List<Unit> batch)
    {
        _failed ??= e;
        _log.Error(e, "Journal commit on {Volume} failed; the volume refuses further writes", Name);
        foreach (var u in batch) u.Done.TrySetException(e);
        List<Unit> rest;
        lock (_q) { rest = new(_queue); _queue.Clear(); _queuedBytes = 0; }
        foreach (var u in rest) u.Done.TrySetException(e);
        TaskCompletionSource d, f;
        lock (_q) { d = _drained; _drained = new(TaskCreationOptions.RunContinuationsAsynchronously); }
        lock (_freeLock) { f = _freed; _freed = new(TaskCreationOptions.RunContinuationsAsynchronously); }
        d.TrySetResult(); f.TrySetException(e as IOException ?? new IOException(e.Message, e));
    }

    /// <summary>
    /// One journal transaction for a batch of commands. Slots written by redirect-on-write are flushed first
    /// (a durable remap must never point at non-durable data). The transaction is made durable only when a
    /// command in it asks for it (FUA, flush, write-through): with FUA when everything before it is durable,
    /// else written plainly and flushed. Otherwise it is written plainly; the slots its remaps replaced
    /// return to the pool, and its journaled blocks go home, at the next durable point.
    /// </summary>
    private async ValueTask CommitBatchAsync(List<Unit> batch)
    {
        var ct = CancellationToken.None;
        int nData = 0, nRecs = 0;
        bool hasMaps = false, durable = false;
        foreach (var u in batch) { nData += u.Data?.Count ?? 0; nRecs += u.Records; hasMaps |= u.Maps is { Count: > 0 }; durable |= u.Durable; }
        if (nRecs > 0)
        {
            int hb = Txn.HeaderBytes(nRecs);
            long total = Geometry.RoundUp(hb + (long)nData * _bs, 4096);
            if (_head + total > _g.JournalAreaBytes) await CheckpointAsync(ct).ConfigureAwait(false);
            if (hasMaps) { await _dev.FlushAsync(ct).ConfigureAwait(false); await DurableAsync(ct).ConfigureAwait(false); }
            byte[] buf = ArrayPool<byte>.Shared.Rent((int)total);
            bool fua = durable && !_unsynced;
            try
            {
                var span = buf.AsSpan(0, (int)total);
                span[..hb].Clear();
                Txn.Magic.CopyTo(span);
                BinaryPrimitives.WriteUInt64LittleEndian(span[8..], _nextSeq);
                BinaryPrimitives.WriteInt32LittleEndian(span[16..], (int)total);
                BinaryPrimitives.WriteInt32LittleEndian(span[20..], nRecs);
                BinaryPrimitives.WriteInt32LittleEndian(span[24..], hb);
                BinaryPrimitives.WriteUInt32LittleEndian(span[28..], _unsynced ? 0 : Txn.FlagPriorDurable);
                int ri = 0, payload = hb;
                foreach (var u in batch)
                {
                    if (u.Data != null)
                        foreach (var r in u.Data)
                        {
                            WriteRecord(span, ri++, Txn.TypeData, r.Lba, (ulong)r.Phys);
                            r.Buf.AsSpan(0, _bs).CopyTo(span[payload..]);
                            payload += _bs;
                        }
                    if (u.Maps != null)
                        foreach (var (c, e) in u.Maps) WriteRecord(span, ri++, Txn.TypeMap, (ulong)c, (ulong)e);
                }
                span[payload..].Clear();
                _tagger.Checksum(span, span.Slice(32, 32));
                await _dev.WriteAsync(_g.JournalAreaOffset + _head, buf.AsMemory(0, (int)total), fua, ct).ConfigureAwait(false);
            }
            finally { ArrayPool<byte>.Shared.Return(buf); }
            _head += total;
            _nextSeq++;
            Counters.AddJournalCommit();

            // Journaled blocks wait for a durable point before going home; remaps fold into the committed
            // map. Record order matters: a remap supersedes every earlier block of its chunk.
            foreach (var u in batch)
            {
                if (u.Data != null)
                    foreach (var r in u.Data)
                    {
                        if (_pendingHome.Remove(r.Lba, out var old)) ReleaseRec(old);
                        _pendingHome[r.Lba] = r;
                    }
                if (u.Maps != null)
                    foreach (var (c, e) in u.Maps)
                    {
                        if (_pendingHome.Count > 0)
                        {
                            ulong cs = (ulong)c * (ulong)_bpc;
                            for (int i = 0; i < _bpc; i++) if (_pendingHome.Remove(cs + (ulong)i, out var old)) ReleaseRec(old);
                        }
                        _committedMap[c] = e;
                        _dirtyMapSectors.Add(c / Geometry.MapEntriesPerSector);
                    }
            }
            // Slots replaced by these remaps may be reused once the transaction is durable (until then the
            // durable map may still point at them).
            foreach (var u in batch)
                if (u.FreeAfter != null)
                    foreach (var p in u.FreeAfter) _replaced.Add((p, u.Unmap));
            if (!fua) _unsynced = true;
            // A durable point (no flush needed after a FUA write); also when writers wait for slots, so a
            // steady stream of plain commits cannot starve them.
            if (fua || durable || _slotsWanted) await SyncAndApplyAsync(ct).ConfigureAwait(false);
        }
        else if (durable && _unsynced) await SyncAndApplyAsync(ct).ConfigureAwait(false);
        foreach (var u in batch) u.Done.TrySetResult();
        TaskCompletionSource d, f;
        lock (_q) { d = _drained; _drained = new(TaskCreationOptions.RunContinuationsAsynchronously); }
        lock (_freeLock) { f = _freed; _freed = new(TaskCreationOptions.RunContinuationsAsynchronously); }
        d.TrySetResult(); f.TrySetResult();
    }

    /// <summary>Makes every written transaction durable, then copies their blocks home.</summary>
    private async ValueTask SyncAndApplyAsync(CancellationToken ct)
    {
        if (_unsynced) await _dev.FlushAsync(ct).ConfigureAwait(false);
        await DurableAsync(ct).ConfigureAwait(false);
        await ApplyPendingAsync(ct).ConfigureAwait(false);
    }

    /// <summary>Every written transaction is durable now: slots their remaps replaced return to the pool.</summary>
    private async ValueTask DurableAsync(CancellationToken ct)
    {
        _unsynced = false;
        _slotsWanted = false;
        if (_replaced.Count == 0) return;
        foreach (var (p, unmap) in _replaced)
        {
            // Unmap releases space; a slot replaced by an overwrite is reused soon, so punching it would only
            // churn the filesystem's allocation.
            if (unmap && _dev.CanDeallocate) await _dev.DiscardAsync(_g.SlotOffset(p), _g.SlotBytes, ct).ConfigureAwait(false);
            lock (_freeLock) _free.Push(p);
        }
        _replaced.Clear();
        TaskCompletionSource f;
        lock (_freeLock) { f = _freed; _freed = new(TaskCreationOptions.RunContinuationsAsynchronously); }
        f.TrySetResult();
    }

    /// <summary>
    /// Copies every journaled block home (all their transactions are durable: callers ensure it), then
    /// drops them from the overlay. The journal keeps them until the next checkpoint, so a torn home write
    /// is repaired by replay.
    /// </summary>
    private async ValueTask ApplyPendingAsync(CancellationToken ct)
    {
        if (_pendingHome.Count == 0) return;
        Debug.Assert(!_unsynced);
        var apply = new List<(ulong Lba, long Phys, ReadOnlyMemory<byte> Data)>(_pendingHome.Count);
        foreach (var r in _pendingHome.Values)
        {
            // Never happens (a committed remap drops its chunk's pending blocks); guards a slot now owned elsewhere.
            if (_committedMap[ChunkOf(r.Lba)] != r.Phys + 1) { Debug.Fail($"pending block {r.Lba} is not in its chunk's slot"); continue; }
            apply.Add((r.Lba, r.Phys, r.Buf.AsMemory(0, _bs)));
        }
        SortForHome(apply);
        lock (_q) _homeSeq++; // odd: reads racing the home writes below retry
        bool ok = false;
        try { await ApplyAsync(apply, ct).ConfigureAwait(false); ok = true; }
        finally
        {
            TaskCompletionSource done;
            lock (_q)
            {
                // On failure the entries stay: the overlay still holds the truth the home slot may lack.
                if (ok)
                    foreach (var r in _pendingHome.Values)
                        if (_overlay.TryGetValue(r.Lba, out var cur) && ReferenceEquals(cur, r)) OverlayRemove(r.Lba);
                _homeSeq++;
                done = _homeCopied;
                _homeCopied = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }
            done.TrySetResult();
        }
        _recs.Return(_pendingHome.Values);
        _pendingHome.Clear();
    }

    /// <summary>Returns a block image to the pool once neither the overlay nor the pending set holds it.
    /// Callers guarantee the overlay no longer references it (a newer write or a remap replaced it there,
    /// or it was removed after its home copy).</summary>
    private void ReleaseRec(DataRec r) => _recs.Return(r);

    private static void WriteRecord(Span<byte> txn, int i, uint type, ulong a, ulong b)
    {
        var r = txn.Slice(Txn.FixedHeader + i * Txn.RecordBytes, Txn.RecordBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(r, type);
        BinaryPrimitives.WriteUInt64LittleEndian(r[8..], a);
        BinaryPrimitives.WriteUInt64LittleEndian(r[16..], b);
    }

    /// <summary>Writes journaled blocks to their home slots with fresh tags: <paramref name="recs"/> holds one
    /// record per LBA, sorted by slot then LBA (only the latest version of a block matters). Each slot's tag
    /// region is read and written once. A large batch (a checkpoint after a lap of small random writes) is
    /// split at slot boundaries and written by several threads: the file device's writes are synchronous
    /// system calls, and two parts share no bytes.</summary>
    private async ValueTask ApplyAsync(List<(ulong Lba, long Phys, ReadOnlyMemory<byte> Data)> recs, CancellationToken ct)
    {
        int parts = Math.Min(Environment.ProcessorCount, 4);
        if (parts < 2 || recs.Count < _parallelApplyBlocks) { await ApplyRangeAsync(recs, 0, recs.Count, ct).ConfigureAwait(false); return; }
        var tasks = new List<Task>(parts);
        int from = 0;
        for (int k = 1; k <= parts && from < recs.Count; k++)
        {
            int to = k == parts ? recs.Count : Math.Max(from, (int)((long)recs.Count * k / parts));
            while (to < recs.Count && to > from && recs[to].Phys == recs[to - 1].Phys) to++; // never split a slot
            if (to == from) continue;
            int f = from, t = to;
            tasks.Add(Task.Run(() => ApplyRangeAsync(recs, f, t, ct).AsTask(), CancellationToken.None));
            from = to;
        }
        await Task.WhenAll(tasks).ConfigureAwait(false);
    }

    /// <summary>Orders records for <see cref="ApplyAsync"/>: by slot, then LBA (a chunk's blocks all live in
    /// its one slot, so slot × blocks-per-chunk + index in chunk is a unique key that sorts as primitives).</summary>
    private void SortForHome(List<(ulong Lba, long Phys, ReadOnlyMemory<byte> Data)> recs)
    {
        var items = CollectionsMarshal.AsSpan(recs);
        long[] keys = ArrayPool<long>.Shared.Rent(items.Length);
        for (int i = 0; i < items.Length; i++) keys[i] = items[i].Phys * _bpc + (long)(items[i].Lba % (ulong)_bpc);
        keys.AsSpan(0, items.Length).Sort(items);
        ArrayPool<long>.Shared.Return(keys);
    }

    private async ValueTask ApplyRangeAsync(List<(ulong Lba, long Phys, ReadOnlyMemory<byte> Data)> recs, int from, int to, CancellationToken ct)
    {
        int ts = _g.TagSize, tr = _g.TagRegionBytes;
        byte[] region = ArrayPool<byte>.Shared.Rent(tr);
        byte[] run = ArrayPool<byte>.Shared.Rent(_g.ChunkBytes);
        try
        {
            int i = from;
            while (i < to)
            {
                long p = recs[i].Phys;
                int slotEnd = i + 1;
                while (slotEnd < to && recs[slotEnd].Phys == p) slotEnd++;
                await _dev.ReadAsync(_g.SlotOffset(p) + _g.ChunkBytes, region.AsMemory(0, tr), ct).ConfigureAwait(false);
                // Runs of consecutive blocks go home in one write each.
                for (int k = i; k < slotEnd;)
                {
                    int j = k + 1;
                    while (j < slotEnd && recs[j].Lba == recs[j - 1].Lba + 1) j++;
                    Debug.Assert(j == slotEnd || recs[j].Lba > recs[j - 1].Lba, "home copies must be unique and sorted");
                    int idx = (int)(recs[k].Lba % (ulong)_bpc);
                    ReadOnlyMemory<byte> data = recs[k].Data;
                    if (j - k > 1)
                    {
                        for (int m = k; m < j; m++) recs[m].Data.Span.CopyTo(run.AsSpan((m - k) * _bs));
                        data = run.AsMemory(0, (j - k) * _bs);
                    }
                    await _dev.WriteAsync(_g.SlotOffset(p) + (long)idx * _bs, data, fua: false, ct).ConfigureAwait(false);
                    for (int m = k; m < j; m++)
                        _tagger.ComputeTag(recs[m].Lba, recs[m].Data.Span, region.AsSpan((idx + m - k) * ts, ts));
                    k = j;
                }
                await _dev.WriteAsync(_g.SlotOffset(p) + _g.ChunkBytes, region.AsMemory(0, tr), fua: false, ct).ConfigureAwait(false);
                i = slotEnd;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(region);
            ArrayPool<byte>.Shared.Return(run);
        }
    }

    /// <summary>
    /// Makes the journal's effects permanent so its space can be reused: committed map sectors are
    /// written, everything is flushed (home copies included), and only then does the journal superblock
    /// move the start past the applied transactions (one atomic sector write with FUA).
    /// </summary>
    private async ValueTask CheckpointAsync(CancellationToken ct)
    {
        await SyncAndApplyAsync(ct).ConfigureAwait(false);
        var sec = new byte[512];
        foreach (long s in _dirtyMapSectors)
        {
            Array.Clear(sec);
            for (int k = 0; k < Geometry.MapEntriesPerSector; k++)
            {
                long c = s * Geometry.MapEntriesPerSector + k;
                if (c >= _g.LogicalChunks) break;
                BinaryPrimitives.WriteInt64LittleEndian(sec.AsSpan(k * 8), _committedMap[c]);
            }
            BinaryPrimitives.WriteUInt32LittleEndian(sec.AsSpan(504), MapSectorCrc(s, sec));
            await _dev.WriteAsync(_g.MapOffset + s * 512, sec, fua: false, ct).ConfigureAwait(false);
        }
        await _dev.FlushAsync(ct).ConfigureAwait(false);
        _checkpoints++;
        await _dev.WriteAsync(_g.JournalOffset, new JournalSuper(_nextSeq, _checkpoints).Serialize(), fua: true, ct).ConfigureAwait(false);
        _dirtyMapSectors.Clear();
        _head = 0;
    }

    // ------------------------------------------------------------------ lifecycle

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
            if (_failed == null && (_head > 0 || _dirtyMapSectors.Count > 0))
            {
                try { await CheckpointAsync(CancellationToken.None).ConfigureAwait(false); }
                catch (IOException e) { _log.Warning(e, "Final checkpoint of {Volume} failed; the journal will be replayed at next open", Name); }
            }
        }
        if (OwnsDevice) _dev.Dispose();
    }

    /// <summary>Stops background work without writing anything more (simulates power loss in tests).
    /// Commands still queued never complete durably; the volume object must not be used afterwards.</summary>
    public async ValueTask AbandonAsync()
    {
        _abandon = true;
        _disposed = true;
        _stop.Cancel();
        if (_committer != null) { try { await _committer.ConfigureAwait(false); } catch { /* the simulated crash may fail I/O */ } }
    }
}
