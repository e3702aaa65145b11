using System.Buffers;
using IntegrityTarget.Storage;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace IntegrityTarget.Integrity;

// Home copies: journaled blocks written to their home slots with fresh tags, once their transactions are durable.
public sealed partial class IntegrityVolume
{
    /// <summary>Home-copy batches of at least this many blocks are split between threads.</summary>
    private readonly int _parallelApplyBlocks;

    // Committer-owned journal state.
    /// <summary>Latest journaled-but-not-yet-homed block per LBA. Home copies are written only once the
    /// transactions holding them are durable, at the next durable point (a commit that flushes or uses FUA,
    /// an idle moment, a checkpoint), so write-back commits need neither FUA nor a home write each.</summary>
    /// <summary>(Swapped for an empty one when a background checkpoint takes the older part's blocks.)</summary>
    private Dictionary<ulong, DataRec> _pendingHome = new();

    /// <summary>Slots whose home copies are bracketed by one pair of home-sequence bumps: reads wait at most
    /// for one such batch, not for a whole checkpoint's home copies. Sixteen slots for each home copy in flight.</summary>
    private int HomeBatchSlots => Math.Max(64, 16 * Math.Max(1, _dev.BulkConcurrency));

    /// <summary>
    /// Copies journaled blocks home that may go now (write path 3): their transaction is flushed, and the
    /// remap that put their chunk in its slot is proven (a home copy changes the slot's tag region, which a
    /// remap still to be validated must find as it was written). Then drops them from the overlay. The
    /// journal keeps them until the next checkpoint, so a torn home write is repaired by replay. Returns how
    /// many durable blocks still wait because their slot's remap is not proven yet.
    /// </summary>
    private async ValueTask<int> ApplyPendingAsync(CancellationToken ct)
    {
        if (_pendingHome.Count == 0) return 0;
        // While a background checkpoint homes the older part of the ring, the newer part's blocks wait (reads get
        // them from the overlay): an older version must never land after a newer one, nor two tasks rewrite one
        // slot's tag region (docs: write path 7a).
        if (_ckpt != null) return 0;
        // Reused from one apply to the next (a lap of small writes makes lists of many thousand entries, which
        // were a large-object-heap allocation per apply); only the committer applies, one apply at a time.
        var apply = _applyScratch ??= new(_pendingHome.Count);
        var going = _goingScratch ??= new(_pendingHome.Count);
        try { return await ApplyPendingCoreAsync(apply, going, ct).ConfigureAwait(false); }
        finally { apply.Clear(); going.Clear(); }
    }

    /// <summary>Home-copy scratch lists, kept while the volume is busy and dropped when it idles
    /// (<see cref="TrimScratch"/>).</summary>
    private List<HomeItem>? _applyScratch;
    private List<DataRec>? _goingScratch;

    private void TrimScratch() { _applyScratch = null; _goingScratch = null; }

    private async ValueTask<int> ApplyPendingCoreAsync(List<HomeItem> apply, List<DataRec> going, CancellationToken ct)
    {
        int blocked = 0;
        foreach (var r in _pendingHome.Values)
        {
            if (r.Seq > _durableThrough) continue;
            if (_slots.NamedIn(r.Phys) > _provenThrough) { blocked++; continue; }
            // Never happens (a committed remap drops its chunk's pending blocks); guards a slot now owned elsewhere.
            if (_committedMap[ChunkOf(r.Lba)] != r.Phys + 1) { Debug.Fail($"pending block {r.Lba} is not in its chunk's slot"); continue; }
            apply.Add(new HomeItem(r.Lba, r.Phys, r.Buf?.AsMemory(0, _bs) ?? default, r));
            going.Add(r);
        }
        if (going.Count == 0) return blocked;
        SortForHome(apply);
        await HomeInBatchesAsync(apply, ct).ConfigureAwait(false);
        foreach (var r in going) _pendingHome.Remove(r.Lba);
        _recs.Return(going);
        return blocked;
    }

    /// <summary>Writes sorted home copies of overlay blocks (their images are the overlay's own buffers) in batches
    /// of slots; each batch is bracketed by home-sequence bumps (odd while it is written: reads racing it retry) and
    /// drops the overlay entries it made redundant, so reads wait for one batch at most, never for a whole lap.</summary>
    private async ValueTask HomeInBatchesAsync(List<HomeItem> apply, CancellationToken ct, bool background = false)
    {
        // As wide as the device makes worth it, also in the background (write path 7a): a background checkpoint that
        // ends later lets the newer part of the ring fill up, and then every writer waits for it (measured: one home
        // copy at a time on files gave a worse p99 than two; and so did pacing, see docs "Tried and not kept").
        int parts = Math.Max(1, _dev.BulkConcurrency);
        int from = 0;
        while (from < apply.Count)
        {
            if (_abandon) throw new OperationCanceledException("volume abandoned");
            int to = from, slots = 0, batch = HomeBatchSlots;
            while (to < apply.Count && (slots < batch || apply[to].Phys == apply[to - 1].Phys))
            {
                if (to == from || apply[to].Phys != apply[to - 1].Phys) slots++;
                to++;
            }
            // A background checkpoint ahead of the ring lets commands run between slots (the parts read it, write path 7a).
            _homeYield = background && _ckpt is { } k && YieldsToCommands(k);
            // The images come back from the ring, each checked against its index tag, before the batch's home writes.
            byte[]? images = await LoadFromRingAsync(apply, from, to, ct).ConfigureAwait(false);
            lock (_q) _homeSeq++; // odd: reads racing the home writes below retry
            bool ok = false;
            try { await ApplyAsync(apply, from, to, parts, ct).ConfigureAwait(false); ok = true; }
            finally
            {
                if (images != null) _buffers.Return(images);
                _homeYield = false;
                TaskCompletionSource done;
                lock (_q)
                {
                    // On failure the entries stay: the overlay still holds the truth the home slot may lack.
                    if (ok)
                        for (int i = from; i < to; i++)
                            if (apply[i].Rec is { } rec && _overlay.TryGetValue(apply[i].Lba, out var cur) && ReferenceEquals(cur, rec))
                                OverlayRemove(apply[i].Lba);
                    _homeSeq++;
                    done = _homeCopied;
                    _homeCopied = new(TaskCreationOptions.RunContinuationsAsynchronously);
                }
                done.TrySetResult();
            }
            from = to;
            // On the thread pool (an asynchronous device resumed it there) file calls would complete synchronously batch
            // after batch: let queued commands run between batches. On the checkpoint's own thread the kernel does that.
            if (background && Thread.CurrentThread.IsThreadPoolThread) await Task.Yield();
        }
    }

    /// <summary>
    /// Reads the images of home copies [<paramref name="from"/>, <paramref name="to"/>) that are index entries back from the
    /// ring into one buffer (returned; the caller gives it back after the home writes), in ring order, one read per run
    /// of consecutive ring positions (a transaction's payload is one such run), and points each one's Data at its image.
    /// Each image is verified against the entry's tag: one that fails (a ring sector damaged on the device) is reported
    /// like any verification failure, with its LBA, and goes home with the entry's tag, not with a fresh one computed
    /// over the damaged bytes, so every read of it fails too (MEDIUM ERROR) instead of returning damaged data as good.
    /// </summary>
    private async ValueTask<byte[]?> LoadFromRingAsync(List<HomeItem> apply, int from, int to, CancellationToken ct)
    {
        int n = 0;
        for (int i = from; i < to; i++) if (apply[i].Rec is { Buf: null }) n++;
        if (n == 0) return null;
        byte[] buf = _buffers.Rent(n * _bs);
        long[] keys = ArrayPool<long>.Shared.Rent(n);
        int[] idx = ArrayPool<int>.Shared.Rent(n);
        try
        {
            for (int i = from, k = 0; i < to; i++)
                if (apply[i].Rec is { Buf: null } r) { keys[k] = r.RingPos; idx[k++] = i; }
            Array.Sort(keys, idx, 0, n);
            for (int k = 0; k < n;)
            {
                int j = k + 1;
                while (j < n && keys[j] == keys[j - 1] + _bs) j++;
                if (_abandon) throw new OperationCanceledException("volume abandoned");
                await _dev.ReadAsync(_g.JournalAreaOffset + keys[k], buf.AsMemory(k * _bs, (j - k) * _bs), ct).ConfigureAwait(false);
                Interlocked.Increment(ref _stHomeRingReads);
                k = j;
            }
            var items = CollectionsMarshal.AsSpan(apply);
            for (int k = 0; k < n; k++)
            {
                ref var it = ref items[idx[k]];
                it.Data = buf.AsMemory(k * _bs, _bs);
                if (!_tagger.Verify(it.Lba, it.Data.Span, it.Rec!.Tag))
                    ReportFailure(it.Lba, null); // its one event (BadBlockLog); reads of it later count as repeats
            }
            var ok = buf;
            buf = null!;
            return ok;
        }
        finally
        {
            ArrayPool<long>.Shared.Return(keys); ArrayPool<int>.Shared.Return(idx);
            if (buf != null) _buffers.Return(buf);
        }
    }

    /// <summary>A home copy: the block, its home slot, its image, and its index entry (null in replay, whose images come
    /// from the transactions scanned; else the entry's tag goes home, and its image is read from the ring unless it is
    /// kept in memory).</summary>
    private struct HomeItem(ulong lba, long phys, ReadOnlyMemory<byte> data, DataRec? rec)
    {
        public ulong Lba = lba;
        public long Phys = phys;
        public ReadOnlyMemory<byte> Data = data;
        public DataRec? Rec = rec;
    }

    /// <summary>Returns a block image to the pool once neither the overlay nor the pending set holds it.
    /// Callers guarantee the overlay no longer references it (a newer write or a remap replaced it there,
    /// or it was removed after its home copy).</summary>
    private void ReleaseRec(DataRec r) => _recs.Return(r);

    /// <summary>Writes journaled blocks to their home slots with fresh tags: <paramref name="recs"/> holds one
    /// record per LBA, sorted by slot then LBA (only the latest version of a block matters). Each slot's tag
    /// region is read and written once. A large batch (a checkpoint after a lap of small random writes) is
    /// split at slot boundaries and written by several threads: the file device's writes are synchronous
    /// system calls, and two parts share no bytes.</summary>
    private ValueTask ApplyAsync(List<HomeItem> recs, CancellationToken ct) =>
        ApplyAsync(recs, 0, recs.Count, Math.Max(1, _dev.BulkConcurrency), ct);

    private async ValueTask ApplyAsync(List<HomeItem> recs, int start, int end, int parts, CancellationToken ct)
    {
        int count = end - start;
        if (parts < 2 || count < _parallelApplyBlocks) { await ApplyRangeAsync(recs, start, end, ct).ConfigureAwait(false); return; }
        var ranges = new List<(int From, int To)>(parts);
        for (int k = 1, from = start; k <= parts && from < end; k++)
        {
            int to = k == parts ? end : Math.Max(from, start + (int)((long)count * k / parts));
            while (to < end && to > from && recs[to].Phys == recs[to - 1].Phys) to++; // never split a slot
            if (to == from) continue;
            ranges.Add((from, to));
            from = to;
        }
        var tasks = new List<Task>(ranges.Count);
        if (!_dev.SynchronousCalls)
        {
            // A device whose calls complete later (RBD): its parts wait without holding a thread, on the pool as always.
            foreach (var (f, t) in ranges) tasks.Add(Task.Run(() => ApplyRangeAsync(recs, f, t, ct).AsTask(), CancellationToken.None));
            await Task.WhenAll(tasks).ConfigureAwait(false);
            return;
        }
        // On a device whose calls block (a file) the first part runs on the calling thread, the others on the volume's
        // home-copy threads: never on the thread pool, whose few workers (two on two cores) the commands need. A part
        // is a loop of blocking writes (a batch takes ~1.5 ms, up to tens of ms): on pool workers the commands'
        // continuations queued behind them (docs "Measured", 2026-12-07 evening: the 4k QD1 p99).
        for (int i = 1; i < ranges.Count; i++)
        {
            var (f, t) = ranges[i];
            tasks.Add(HomeThread(i - 1).Run(() => ApplyRangeAsync(recs, f, t, ct)));
        }
        Exception? first = null;
        try { await ApplyRangeAsync(recs, ranges[0].From, ranges[0].To, ct).ConfigureAwait(false); }
        catch (Exception e) { first = e; }
        // Every part has finished before this returns, also after one failed (nothing writes a slot afterwards). On a
        // thread of our own (the background checkpoint's) wait right here: an await would resume on the thread pool.
        try
        {
            if (Thread.CurrentThread.IsThreadPoolThread) await Task.WhenAll(tasks).ConfigureAwait(false);
            else Task.WhenAll(tasks).GetAwaiter().GetResult();
        }
        catch (Exception e) { first ??= e; }
        if (first != null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
    }

    /// <summary>Set by a background checkpoint for the batch it writes: its parts yield after every slot.</summary>
    private volatile bool _homeYield;

    /// <summary>The volume's home-copy threads, one per part beyond the first (started when first needed, ended after
    /// a few idle seconds, so a volume that is not busy holds none).</summary>
    private readonly List<HomeCopyThread> _homeThreads = new();

    private HomeCopyThread HomeThread(int i)
    {
        lock (_homeThreads)
        {
            while (_homeThreads.Count <= i) _homeThreads.Add(new HomeCopyThread($"home-copy {_homeThreads.Count + 1} {Name}"));
            return _homeThreads[i];
        }
    }

    /// <summary>
    /// A thread of its own that runs one part of a home-copy batch at a time (only one apply runs at a time: the
    /// committer's, or the background checkpoint's while the committer's waits). Its thread exits after
    /// <see cref="IdleExitMs"/> without work and is started again by the next part.
    /// </summary>
    private sealed class HomeCopyThread(string name)
    {
        private const int IdleExitMs = 5000;
        private readonly object _lock = new();
        private readonly SemaphoreSlim _ready = new(0);
        private Func<ValueTask>? _work;
        private TaskCompletionSource? _done;
        private bool _alive;

        public Task Run(Func<ValueTask> work)
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_lock)
            {
                if (_work != null) throw new InvalidOperationException($"{name}: a part is still running");
                _work = work; _done = done;
                if (_alive) _ready.Release();
                else
                {
                    _alive = true;
                    new Thread(Loop) { IsBackground = true, Name = name }.Start();
                }
            }
            return done.Task;
        }

        private void Loop()
        {
            while (true)
            {
                Func<ValueTask>? work;
                TaskCompletionSource? done;
                lock (_lock) { work = _work; done = _done; }
                if (work == null)
                {
                    if (_ready.Wait(IdleExitMs)) continue;
                    lock (_lock) if (_work == null) { _alive = false; return; }
                    continue;
                }
                Exception? failed = null;
                // A file's calls complete synchronously; an asynchronous device's are waited for here (this thread is ours).
                try { work().AsTask().GetAwaiter().GetResult(); }
                catch (Exception e) { failed = e; }
                lock (_lock) { _work = null; _done = null; }
                if (failed == null) done!.TrySetResult(); else done!.TrySetException(failed);
            }
        }
    }

    /// <summary>Orders records for <see cref="ApplyAsync"/>: by slot, then LBA (a chunk's blocks all live in
    /// its one slot, so slot × blocks-per-chunk + index in chunk is a unique key that sorts as primitives).</summary>
    private void SortForHome(List<HomeItem> recs)
    {
        var items = CollectionsMarshal.AsSpan(recs);
        byte[] raw = _buffers.Rent(items.Length * sizeof(long));
        var keys = MemoryMarshal.Cast<byte, long>(raw.AsSpan(0, items.Length * sizeof(long)));
        for (int i = 0; i < items.Length; i++) keys[i] = items[i].Phys * _bpc + (long)(items[i].Lba % (ulong)_bpc);
        keys.Sort(items);
        _buffers.Return(raw);
    }

    private async ValueTask ApplyRangeAsync(List<HomeItem> recs, int from, int to, CancellationToken ct)
    {
        int ts = _g.TagSize, tr = _g.TagRegionBytes, meaningful = _bpc * ts;
        byte[] region = _buffers.Rent(tr);
        var run = new List<ReadOnlyMemory<byte>>(_bpc);
        try
        {
            int i = from;
            while (i < to)
            {
                long p = recs[i].Phys;
                int slotEnd = i + 1;
                while (slotEnd < to && recs[slotEnd].Phys == p) slotEnd++;
                // The slot's tags from the tag cache when it holds them (what the device holds there, or what the
                // volume last wrote there; the rest of the region is zeros), else from the device.
                if (_tagCache.TryCopy(p, 0, region.AsSpan(0, meaningful))) region.AsSpan(meaningful, tr - meaningful).Clear();
                else
                {
                    await _dev.ReadAsync(_g.SlotOffset(p) + _g.ChunkBytes, region.AsMemory(0, tr), ct).ConfigureAwait(false);
                    Interlocked.Increment(ref _stHomeTagReads);
                }
                Interlocked.Increment(ref _stHomeSlots);
                Interlocked.Add(ref _stHomeBlocks, slotEnd - i);
                // Runs of consecutive blocks go home in one write each.
                for (int k = i; k < slotEnd;)
                {
                    int j = k + 1;
                    while (j < slotEnd && recs[j].Lba == recs[j - 1].Lba + 1) j++;
                    Debug.Assert(j == slotEnd || recs[j].Lba > recs[j - 1].Lba, "home copies must be unique and sorted");
                    int idx = (int)(recs[k].Lba % (ulong)_bpc);
                    if (j - k == 1) await _dev.WriteAsync(_g.SlotOffset(p) + (long)idx * _bs, recs[k].Data, fua: false, ct).ConfigureAwait(false);
                    else
                    {
                        // A run of consecutive blocks: one gather write of the journaled buffers, no copy.
                        run.Clear();
                        for (int m = k; m < j; m++) run.Add(recs[m].Data);
                        await _dev.WriteGatherAsync(_g.SlotOffset(p) + (long)idx * _bs, run, fua: false, ct).ConfigureAwait(false);
                    }
                    // An index entry's tag (its image was verified against it, or is damaged and must not get a fresh
                    // one); replay's images were checked by their transaction's checksum and get a tag computed here.
                    for (int m = k; m < j; m++)
                        if (recs[m].Rec is { } rec) rec.Tag.CopyTo(region.AsSpan((idx + m - k) * ts, ts));
                        else _tagger.ComputeTag(recs[m].Lba, recs[m].Data.Span, region.AsSpan((idx + m - k) * ts, ts));
                    Interlocked.Increment(ref _stHomeDataWrites);
                    k = j;
                }
                await _dev.WriteAsync(_g.SlotOffset(p) + _g.ChunkBytes, region.AsMemory(0, tr), fua: false, ct).ConfigureAwait(false);
                Interlocked.Increment(ref _stHomeTagWrites);
                _tagCache.Put(p, region.AsSpan(0, meaningful));
                i = slotEnd;
                // A slot's home copies take ~20 µs on a file: a command woken meanwhile gets a CPU at once instead of
                // after the scheduler's time slice (only on our own threads, only while the checkpoint is ahead).
                if (_homeYield && !Thread.CurrentThread.IsThreadPoolThread) Thread.Yield();
            }
        }
        finally
        {
            _buffers.Return(region);
        }
    }
}
