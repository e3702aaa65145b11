using System.Buffers;
using IntegrityTarget.Storage;
using System.Buffers.Binary;

namespace IntegrityTarget.Integrity;

// The committer: queued commands become journal transactions (group commit), and durable points.
public sealed partial class IntegrityVolume
{
    /// <summary>Idle time after which journaled blocks are made durable and copied home.</summary>
    private readonly int _idleHomeMs;
    /// <summary>Idle time after which the pool of released block records is dropped.</summary>
    private readonly int _idleTrimMs;

    // Queue of commands waiting for the committer, plus the overlay that lets reads see acknowledged
    // but not yet applied partial-chunk writes. Both guarded by _q.
    private readonly object _q = new();
    private readonly List<Unit> _queue = new();
    private long _queuedBytes;
    private bool _commitRequested;
    private TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly SemaphoreSlim _wake = new(0);
    private readonly CancellationTokenSource _stop = new();
    private volatile bool _abandon;
    private Task? _committer;
    private volatile Exception? _failed;
    private readonly long _maxPending;
    private readonly long _maxTxnBytes;

    // Committer-owned journal state (docs/integrity-volume.md, "Terms the argument uses").
    private ulong _nextSeq;
    /// <summary>Journal epoch of this open: every transaction carries it (so transactions a recovery discarded
    /// never read as new ones), and the journal superblock names it.</summary>
    private uint _journalEpoch;
    private ulong _checkpoints;
    /// <summary>Ring positions (bytes into the transaction area): where the next transaction goes, and bytes
    /// in use since the journal start (including any unused tail skipped at the ring's end).</summary>
    private long _ringHead, _ringUsed;
    /// <summary>Device flushes started since open: the flush epoch a transaction is written in.</summary>
    private long _flushEpoch;
    /// <summary>Every transaction up to this sequence, and every slot they name, is durable (flushed).</summary>
    private ulong _durableThrough;
    /// <summary>Every transaction up to this sequence is proven: a durable marker follows it.</summary>
    private ulong _provenThrough;
    /// <summary>The last transaction written with <see cref="Txn.FlagPriorDurable"/> (0 = none since open).</summary>
    private ulong _lastMarker;
    /// <summary>Writers found the free pool below its low water (or empty): the committer makes a durable
    /// point with a marker, which empties limbo.</summary>
    private volatile bool _slotsLow;
    /// <summary>One 4 KiB journal block stays free for the marker a checkpoint may need to write. A marker has no payload, so
    /// it keeps the 4 KiB form in both journal versions (<see cref="Txn.FormOf"/>).</summary>
    private const int MarkerBytes = Txn.Aligned;

    private async ValueTask BackpressureAsync()
    {
        if (Volatile.Read(ref _queuedBytes) <= _maxPending) return;
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        while (Volatile.Read(ref _queuedBytes) > _maxPending && _failed == null)
        {
            Task t;
            lock (_q) t = _drained.Task;
            RequestCommit();
            await t.ConfigureAwait(false);
        }
        Interlocked.Add(ref _stBackpressureTicks, System.Diagnostics.Stopwatch.GetTimestamp() - t0);
    }

    /// <summary>Queues a command's records for the committer and shows them to reads; false (nothing
    /// queued, nothing shown) once the volume has failed, whose committer commits nothing more.</summary>
    private bool Enqueue(Unit u)
    {
        lock (_q)
        {
            // Fail() drains the queue under _q after setting _failed: a unit is either drained (and failed)
            // or refused here, never left to commit after units queued before it were dropped.
            if (_failed != null) return false;
            if (u.Maps != null)
                foreach (var (c, e, _) in u.Maps)
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
            _queue.Add(u);
            _queuedBytes += u.Bytes;
            if (u.Durable || u.Exclusive != null) _commitRequested = true;
        }
        // Every command waits until its transaction is written, so the committer starts as soon as it is free:
        // commands that arrive while it writes one transaction go into the next (group commit).
        Wake();
        return true;
    }

    private readonly List<Unit> _batch = new();

    private void RequestCommit()
    {
        lock (_q) _commitRequested = true;
        Wake();
    }

    private void Wake()
    {
        if (_wake.CurrentCount == 0) _wake.Release();
    }

    private async Task CommitterLoopAsync()
    {
        while (!_abandon)
        {
            if (_bgFlush is { IsCompleted: true })
            {
                try { await HarvestBackgroundFlushAsync(CancellationToken.None).ConfigureAwait(false); }
                catch (Exception e) { Fail(e, []); }
            }
            if (_ckpt is { Task.IsCompleted: true })
            {
                try { await FinishBackgroundCheckpointAsync(wait: false).ConfigureAwait(false); }
                catch (Exception e) { Fail(e, []); }
            }
            List<Unit>? batch = null;
            Unit? exclusive = null;
            bool stopping = _stop.IsCancellationRequested, pending, syncNow = false;
            lock (_q)
            {
                pending = _queue.Count > 0;
                // Writers short of slots while replaced ones wait in limbo for a marker.
                if (!pending && (_commitRequested || _slotsLow) && (Unflushed || _slots.LimboCount > 0)) { syncNow = true; _commitRequested = false; }
                if (pending && _queue[0].Exclusive != null)
                {
                    exclusive = _queue[0];
                    _queue.RemoveAt(0);
                }
                else if (pending)
                {
                    long bytes = 0; int n = 0;
                    while (n < _queue.Count && _queue[n].Exclusive == null)
                    {
                        var u = _queue[n];
                        long ub = u.Bytes + Txn.RecordBytes;
                        if (n > 0 && bytes + ub > _maxTxnBytes - 8192) break;
                        bytes += ub; n++;
                    }
                    // One list for every batch: a batch of thousands of 512-byte writes made a large-object-heap
                    // array per commit. Only this loop uses it, and it is cleared once the batch is committed.
                    batch = _batch;
                    for (int i = 0; i < n; i++) batch.Add(_queue[i]);
                    _queue.RemoveRange(0, n);
                    foreach (var u in batch) _queuedBytes -= u.Bytes;
                    _commitRequested = _queue.Exists(x => x.Durable || x.Exclusive != null);
                }
            }
            if (exclusive != null)
            {
                // A grow changes the geometry: no background checkpoint may be writing the map or slots meanwhile.
                try { await FinishBackgroundCheckpointAsync(wait: true).ConfigureAwait(false); await exclusive.Exclusive!().ConfigureAwait(false); exclusive.Done.TrySetResult(); }
                catch (Exception e) { exclusive.Done.TrySetException(e); }
                continue;
            }
            if (batch != null)
            {
                try { await CommitBatchAsync(batch).ConfigureAwait(false); }
                catch (Exception e) { Fail(e, batch); }
                finally { batch.Clear(); }
                continue;
            }
            if (syncNow) { await BackgroundSyncAsync().ConfigureAwait(false); continue; }
            if (stopping) break;
            // Idle with transactions not yet durable, blocks not yet home or slots in limbo: make everything
            // durable and proven and copy blocks home, so reads stop consulting the overlay, replaced slots
            // return to the pool, and a power cut loses nothing that sat idle (a disk cache's write-back).
            bool homing = !pending && (_pendingHome.Count > 0 || Unflushed || _provenThrough + 1 < _nextSeq || _slots.LimboCount > 0);
            // With nothing left to do, a volume that still pools released block records waits that long
            // and then lets them go.
            bool trimming = !pending && !homing && (_recs.Count > 0 || _applyScratch != null);
            bool woken = true;
            try { woken = await _wake.WaitAsync(homing ? _idleHomeMs : trimming ? _idleTrimMs : Timeout.Infinite, _stop.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            if (!woken && homing && !_abandon)
            {
                lock (_q) pending = _queue.Count > 0;
                if (!pending) await BackgroundSyncAsync().ConfigureAwait(false);
            }
            else if (!woken && trimming) { _recs.Trim(); TrimScratch(); }
        }
        if (!_abandon && _ckpt != null)
        {
            try { await FinishBackgroundCheckpointAsync(wait: true).ConfigureAwait(false); }
            catch (Exception e) { Fail(e, []); }
        }
        await DrainBackgroundFlushAsync().ConfigureAwait(false);
    }

    /// <summary>Transactions were written since the last flush started.</summary>
    private bool Unflushed => _durableThrough + 1 < _nextSeq;

    /// <summary>A durable point the committer reaches on its own (idle, or writers short of slots): flush,
    /// marker, limbo emptied, every pending block home.</summary>
    private async ValueTask BackgroundSyncAsync()
    {
        try
        {
            await EnsureProvenAsync(CancellationToken.None).ConfigureAwait(false);
            await ApplyPendingAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) { Fail(e, []); }
    }

    private void Fail(Exception e, List<Unit> batch)
    {
        // Logged once: the loop goes on meeting the failure (each later flush fails too, the device keeps it) and
        // would otherwise repeat the same error with every background sync.
        if (Interlocked.CompareExchange(ref _failed, e, null) is null)
            _log.Error(e, "Journal commit on {Volume} failed; the volume refuses further writes", Name);
        else
            _log.Debug("Journal commit on {Volume} failed again: {Error}", Name, e.Message);
        foreach (var u in batch) u.Done.TrySetException(e);
        List<Unit> rest;
        lock (_q) { rest = new(_queue); _queue.Clear(); _queuedBytes = 0; }
        foreach (var u in rest) u.Done.TrySetException(e);
        TaskCompletionSource d;
        lock (_q) { d = _drained; _drained = new(TaskCreationOptions.RunContinuationsAsynchronously); }
        d.TrySetResult();
        _slots.Signal(e as IOException ?? new IOException(e.Message, e));
    }

    /// <summary>Commands per transaction, smoothed over the last ~10 commits (committer-written; the background checkpoint
    /// reads it to tell a few commands in flight, whose latency its CPU use shows in, from many).</summary>
    private double _unitsPerCommit = 1;

    /// <summary>
    /// One journal transaction for a batch of commands, written plainly: no flush before it, even when it
    /// holds remaps (their records carry digests recovery checks). It is made durable only when a command
    /// in it asks for it (FUA, flush, write-through): then the device is flushed after it, or, when it holds
    /// no remap and everything before it is durable, it is written with FUA. Slots its remaps replaced go
    /// back to the pool at once when fresh, else to limbo; its journaled blocks go home at a durable point.
    /// </summary>
    private async ValueTask CommitBatchAsync(List<Unit> batch)
    {
        Volatile.Write(ref _unitsPerCommit, _unitsPerCommit * 0.9 + batch.Count * 0.1);
        var ct = CancellationToken.None;
        int nRecs = 0;
        long nData = 0;
        bool hasRemaps = false, durable = false;
        foreach (var u in batch)
        {
            nData += u.Data?.Count ?? 0; nRecs += u.Records; durable |= u.Durable;
            if (u.Maps != null) foreach (var m in u.Maps) hasRemaps |= m.Entry != 0;
        }
        if (nRecs > 0)
        {
            long total = Txn.TotalBytes(nRecs, nData, _bs, _txnAlign);
            long pos = await ReserveJournalAsync(total, ct).ConfigureAwait(false);
            bool prior = !Unflushed;
            bool fua = durable && prior && !hasRemaps;
            ulong seq = _nextSeq;
            long epoch = _flushEpoch;
            byte[] buf = _buffers.Rent((int)total);
            try
            {
                var span = buf.AsSpan(0, (int)total);
                int hb = Txn.HeaderBytes(nRecs, nData * _bs, _txnAlign);
                TransactionCodec.WriteHeader(span, new TxnHeader(seq, _journalEpoch, prior ? Txn.FlagPriorDurable : 0, (int)total, nRecs, hb));
                span[Txn.FixedHeader..hb].Clear();
                int ri = 0, payload = hb;
                foreach (var u in batch)
                {
                    if (u.Data is { Count: > 0 } d)
                    {
                        int first = 0;
                        for (int i = 0; i < d.Count; i++)
                        {
                            d[i].Buf!.AsSpan(0, _bs).CopyTo(span[payload..]);
                            d[i].RingPos = pos + payload; // used once the image is dropped, after the write below
                            payload += _bs;
                            if (i + 1 == d.Count || !Unit.Extends(d[i], d[i + 1]))
                            {
                                TransactionCodec.WriteRecord(span, ri++, TxnRecord.Data(d[first].Lba, i - first + 1, d[first].Phys));
                                first = i + 1;
                            }
                        }
                    }
                    if (u.Maps != null)
                        foreach (var (c, e, digest) in u.Maps) TransactionCodec.WriteRecord(span, ri++, TxnRecord.Remap(c, e, digest));
                }
                span[payload..].Clear();
                TransactionCodec.Seal(span, _tagger);
                await _dev.WriteAsync(_g.JournalAreaOffset + pos, buf.AsMemory(0, (int)total), fua, ct).ConfigureAwait(false);
            }
            finally { _buffers.Return(buf); }
            // The images are in the ring now: the blocks stay only as index entries (ring position, tag), and reads and
            // home copies read them back from the ring (write path 3). The ring bytes stay until a checkpoint moved the
            // journal start past this transaction, which it does only once no entry names them.
            if (nData > 0 && !_keepImages)
                lock (_q)
                    foreach (var u in batch)
                        if (u.Data != null) foreach (var r in u.Data) _recs.DropImage(r);
            _nextSeq++;
            _stTxns++;
            Counters.AddJournalCommit();
            if (prior) _lastMarker = seq;

            // Journaled blocks wait for a durable point before going home; remaps fold into the committed
            // map. Record order matters: a remap supersedes every earlier block of its chunk, and a slot a
            // unit names may be replaced by a later unit of the same batch (then it is fresh).
            foreach (var u in batch)
            {
                if (u.Data != null)
                    foreach (var r in u.Data)
                    {
                        r.Seq = seq;
                        if (_pendingHome.Remove(r.Lba, out var old)) ReleaseRec(old);
                        _pendingHome[r.Lba] = r;
                    }
                if (u.Maps != null)
                    foreach (var (c, e, _) in u.Maps)
                    {
                        if (_pendingHome.Count > 0)
                        {
                            ulong cs = (ulong)c * (ulong)_bpc;
                            for (int i = 0; i < _bpc; i++) if (_pendingHome.Remove(cs + (ulong)i, out var old)) ReleaseRec(old);
                        }
                        _committedMap[c] = e;
                        _dirtyMapSectors.Add(_g.MapSectorOf(c).Sector);
                        if (e != 0) _slots.Named(e - 1, seq, epoch);
                    }
                if (u.FreeAfter != null)
                    foreach (var p in u.FreeAfter)
                        if (_slots.Replaced(p, seq, epoch, u.Unmap)) await ReleaseSlotAsync(p, u.Unmap, ct).ConfigureAwait(false);
            }
            if (fua)
            {
                // Everything before it was flushed and it names no slot: it is durable and proves itself too.
                _durableThrough = seq;
                await ProveThroughAsync(seq, ct).ConfigureAwait(false);
            }
            else if (durable) await FlushDeviceAsync(ct).ConfigureAwait(false);
        }
        else if (durable && Unflushed) await FlushDeviceAsync(ct).ConfigureAwait(false);
        // Limbo slots come back through a flush started in the background (SpareFlush.cs); writers short of
        // slots even so: a durable point with a marker empties limbo (a steady stream of plain commits must
        // not starve them).
        await SpareFlushAsync(ct).ConfigureAwait(false);
        if (_slotsLow) await EnsureProvenAsync(ct).ConfigureAwait(false);
        if (durable || _slotsLow) await HomeEverythingDurableAsync(ct).ConfigureAwait(false);
        foreach (var u in batch) u.Done.TrySetResult();
        TaskCompletionSource dr;
        lock (_q) { dr = _drained; _drained = new(TaskCreationOptions.RunContinuationsAsynchronously); }
        dr.TrySetResult();
        _slots.Signal();
        // A quarter of the ring is in use (BackgroundCheckpointFill): the older part goes to a background checkpoint while commits go on (write path 7a).
        if (_ckpt == null && _ringUsed > _g.JournalAreaBytes * BackgroundCheckpointFill && _failed == null)
            await StartBackgroundCheckpointAsync(ct).ConfigureAwait(false);
    }

    /// <summary>Copies home every block whose transaction is durable; when some wait only for the remap of
    /// their slot to be proven, writes a marker first (a flush or FUA command leaves nothing flushed in the
    /// overlay).</summary>
    private async ValueTask HomeEverythingDurableAsync(CancellationToken ct)
    {
        if (await ApplyPendingAsync(ct).ConfigureAwait(false) > 0)
        {
            await EnsureProvenAsync(ct).ConfigureAwait(false);
            await ApplyPendingAsync(ct).ConfigureAwait(false);
        }
    }

    /// <summary>Where a transaction of <paramref name="total"/> bytes goes in the ring; checkpoints first when it
    /// would not fit (one marker's worth always stays free).</summary>
    private async ValueTask<long> ReserveJournalAsync(long total, CancellationToken ct)
    {
        for (int attempt = 0; ; attempt++)
        {
            long area = _g.JournalAreaBytes, pos = _ringHead, waste = 0;
            if (pos + total > area) { waste = area - pos; pos = 0; }
            if (_ringUsed + waste + total + MarkerBytes <= area)
            {
                _ringUsed += waste + total;
                _ringHead = pos + total;
                return pos;
            }
            if (attempt > 1) throw new InvalidOperationException($"{Name}: a transaction of {total} bytes does not fit an empty journal of {area} bytes");
            // The ring is full: every queued writer waits from here (JournalStats.CommitterWaitMs). First for the
            // background checkpoint of the older part, if one runs; then, if that freed too little, a blocking one.
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            if (_ckpt != null) await FinishBackgroundCheckpointAsync(wait: true).ConfigureAwait(false);
            else await CheckpointAsync(ct).ConfigureAwait(false);
            Interlocked.Add(ref _stCommitterWaitTicks, System.Diagnostics.Stopwatch.GetTimestamp() - t0);
        }
    }

    /// <summary>Flushes the device: every transaction written so far, and every slot it names, becomes durable;
    /// a marker written before the flush becomes durable and proves what precedes it.</summary>
    private async ValueTask FlushDeviceAsync(CancellationToken ct)
    {
        ulong covered = _nextSeq - 1;
        _flushEpoch++;
        Interlocked.Increment(ref _stFlushes);
        await _dev.FlushAsync(ct).ConfigureAwait(false);
        await FlushedThroughAsync(covered, ct).ConfigureAwait(false);
    }

    /// <summary>A durable point that also proves every written transaction: flush if anything is unflushed, then
    /// an empty marker transaction with FUA if the last marker does not already follow everything.</summary>
    private async ValueTask EnsureProvenAsync(CancellationToken ct)
    {
        if (Unflushed) await FlushDeviceAsync(ct).ConfigureAwait(false);
        if (_provenThrough + 1 < _nextSeq) await WriteMarkerAsync(ct).ConfigureAwait(false);
        else if (_slots.LimboCount > 0) await ProveThroughAsync(_provenThrough, ct).ConfigureAwait(false);
        _slotsLow = false;
    }

    /// <summary>An empty transaction with <see cref="Txn.FlagPriorDurable"/>, written with FUA (everything
    /// before it is flushed): durable at once, it proves every transaction before it.</summary>
    private async ValueTask WriteMarkerAsync(CancellationToken ct)
    {
        long area = _g.JournalAreaBytes, pos = _ringHead, waste = 0;
        if (pos + MarkerBytes > area) { waste = area - pos; pos = 0; }
        if (_ringUsed + waste + MarkerBytes > area) throw new InvalidOperationException($"{Name}: no journal space left for a marker");
        _ringUsed += waste + MarkerBytes;
        _ringHead = pos + MarkerBytes;
        ulong seq = _nextSeq;
        var buf = new byte[MarkerBytes];
        TransactionCodec.WriteHeader(buf, new TxnHeader(seq, _journalEpoch, Txn.FlagPriorDurable, MarkerBytes, 0, Txn.HeaderBytes(0)));
        TransactionCodec.Seal(buf, _tagger);
        await _dev.WriteAsync(_g.JournalAreaOffset + pos, buf, fua: true, ct).ConfigureAwait(false);
        _nextSeq++;
        _stTxns++;
        _lastMarker = seq;
        _durableThrough = seq;
        await ProveThroughAsync(seq, ct).ConfigureAwait(false); // it holds nothing, so it proves itself too
    }

    /// <summary>Transactions up to <paramref name="p"/> are proven (so flushed: limbo slots they replaced go back to the pool).</summary>
    private async ValueTask ProveThroughAsync(ulong p, CancellationToken ct)
    {
        if (p > _provenThrough) _provenThrough = p;
        await ReleaseFlushedLimboAsync(ct).ConfigureAwait(false);
    }

    /// <summary>Returns a replaced slot to the pool. Unmap releases space; a slot replaced by an overwrite is reused
    /// soon, so punching it would only churn the filesystem's allocation.</summary>
    /// <summary>Test knob (<see cref="OpenOptions.ReleaseCheckpointSlotsEarly"/>): the bug the deferral above prevents.</summary>
    private readonly bool _releaseCheckpointSlotsEarly;

    private async ValueTask ReleaseSlotAsync(long slot, bool discard, CancellationToken ct)
    {
        // A background checkpoint may still write this slot's home copies (write path 7a): released when it is done.
        if (_ckpt is { } k && k.Slots.Contains(slot) && !_releaseCheckpointSlotsEarly) { k.Deferred.Add((slot, discard)); return; }
        if (discard && _dev.CanDeallocate) await _dev.DiscardAsync(_g.SlotOffset(slot), _g.SlotBytes, ct).ConfigureAwait(false);
        _tagCache.Invalidate(slot);
        _slots.Release(slot);
    }
}
