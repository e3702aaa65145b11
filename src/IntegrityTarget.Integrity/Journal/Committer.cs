using System.Buffers;
using IntegrityTarget.Storage;
using System.Buffers.Binary;

namespace IntegrityTarget.Integrity;

// The committer: queued commands become journal transactions (group commit), and durable points.
public sealed partial class IntegrityVolume
{
    private const int MaxAgeMs = 20;
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
    /// <summary>Transactions were written without being made durable since the last flush.</summary>
    private bool _unsynced;
    private long _head;
    private ulong _nextSeq;
    private ulong _checkpoints;

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
            byte[] buf = _buffers.Rent((int)total);
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
            finally { _buffers.Return(buf); }
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

    private static void WriteRecord(Span<byte> txn, int i, uint type, ulong a, ulong b)
    {
        var r = txn.Slice(Txn.FixedHeader + i * Txn.RecordBytes, Txn.RecordBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(r, type);
        BinaryPrimitives.WriteUInt64LittleEndian(r[8..], a);
        BinaryPrimitives.WriteUInt64LittleEndian(r[16..], b);
    }
}
