using System.Buffers.Binary;
using System.Diagnostics;

namespace IntegrityTarget.Integrity;

// Checkpoints: the journal's effects made permanent so its space can be reused. Blocking (write path 7: close,
// recovery, grow, a full ring) or in the background for the older part of the ring while commits go on (7a).
public sealed partial class IntegrityVolume
{
    private SortedSet<long> _dirtyMapSectors = new();

    /// <summary>A background checkpoint in flight (committer-owned; null when none).</summary>
    private sealed class BackgroundCheckpoint
    {
        /// <summary>The pending blocks taken at the cut (their index entries, so their ring bytes, are kept until done).</summary>
        public required Dictionary<ulong, DataRec> Taken;
        /// <summary>The map sectors dirty at the cut, serialized from the proven map then.</summary>
        public required List<(long Offset, byte[] Sector)> Map;
        /// <summary>Slots the home copies write: their release is deferred until the checkpoint is done.</summary>
        public required HashSet<long> Slots;
        public readonly List<(long Slot, bool Discard)> Deferred = new();
        /// <summary>The journal superblock that ends it: start = the first transaction after the cut's marker.</summary>
        public required JournalSuper Super;
        /// <summary>Ring bytes (from the old start through the marker) that return to the ring when it is done.</summary>
        public required long RingBytes;
        public Task Task = Task.CompletedTask;
    }

    private BackgroundCheckpoint? _ckpt;

    /// <summary>A background checkpoint of the older part of the ring is in flight (tests, diagnostics).</summary>
    internal bool BackgroundCheckpointRunning => Volatile.Read(ref _ckpt) != null;

    /// <summary>Fraction of the ring in use at which the committer cuts it and checkpoints the older part in the background.
    /// A quarter: the newer part then has three quarters of the ring to fill before writers wait for the older one
    /// (on files a lap of 4k random writes at QD32 fills half the ring faster than its home copies go out).</summary>
    private const double BackgroundCheckpointFill = 0.25;

    /// <summary>
    /// Makes the journal's effects permanent so its space can be reused (write path 7): a durable point
    /// that proves everything, every pending block home, the dirty sectors of the committed map (now equal
    /// to the proven one), a flush (home copies included), and only then the journal superblock moving the
    /// start past every transaction (one atomic sector write with FUA). Every writer waits for it.
    /// </summary>
    private async ValueTask CheckpointAsync(CancellationToken ct)
    {
        await FinishBackgroundCheckpointAsync(wait: true).ConfigureAwait(false);
        long t0 = Stopwatch.GetTimestamp();
        await EnsureProvenAsync(ct).ConfigureAwait(false);
        await ApplyPendingAsync(ct).ConfigureAwait(false);
        if (_pendingHome.Count > 0) throw new InvalidOperationException($"{Name}: {_pendingHome.Count} journaled blocks could not go home at a checkpoint");
        await WriteMapSectorsAsync(_dirtyMapSectors, _committedMap, ct).ConfigureAwait(false);
        await FlushDeviceAsync(ct).ConfigureAwait(false);
        _checkpoints++;
        await WriteJournalSuperAsync(new JournalSuper(_journalEpoch, _nextSeq, 0, _checkpoints, 0), ct).ConfigureAwait(false);
        _dirtyMapSectors.Clear();
        _ringHead = 0;
        _ringUsed = 0;
        Interlocked.Add(ref _stCkptTicks, Stopwatch.GetTimestamp() - t0);
        Interlocked.Increment(ref _stSyncCkpts);
        LogCheckpointStats("Blocking");
    }

    /// <summary>
    /// Cuts the ring (write path 7a): a durable point with a marker proves every transaction so far; the pending
    /// blocks, the dirty map sectors (serialized now) and the ring space up to here go to a background task that
    /// copies the blocks home, writes the map, flushes and moves the journal start past the marker, while the
    /// committer goes on writing after it. Committer only; none may be in flight.
    /// </summary>
    private async ValueTask StartBackgroundCheckpointAsync(CancellationToken ct)
    {
        Debug.Assert(_ckpt == null);
        long t0 = Stopwatch.GetTimestamp();
        await EnsureProvenAsync(ct).ConfigureAwait(false);
        Interlocked.Add(ref _stCutTicks, Stopwatch.GetTimestamp() - t0);
        // Only the set of slots is needed here (a release deferred from now on looks in it); the list of home copies
        // and its sort by slot are built by the background task: 30k blocks at a cut took milliseconds that every
        // queued writer waited for (issue 12 profile). Nothing else touches the taken set after the swap.
        var taken = _pendingHome;
        _pendingHome = new();
        var slots = new HashSet<long>();
        foreach (var r in taken.Values) slots.Add(r.Phys);
        var map = new List<(long, byte[])>(_dirtyMapSectors.Count);
        foreach (long s in _dirtyMapSectors) map.Add((_g.MapSector(s).Offset, SerializeMapSector(s, _committedMap)));
        _dirtyMapSectors = new();
        long start = _ringHead >= _g.JournalAreaBytes ? 0 : _ringHead;
        var k = new BackgroundCheckpoint
        {
            Taken = taken, Map = map, Slots = slots, RingBytes = _ringUsed,
            Super = new JournalSuper(_journalEpoch, _nextSeq, start, _checkpoints + 1, 0),
        };
        _ckpt = k;
        // On a thread of its own, not the thread pool: on a file every call below blocks (home copies, map writes, the
        // fdatasync of tens of ms), and pool workers held by them delayed the commands' continuations (the 4k QD1 p99;
        // docs "Measured", 2026-12-07 evening). A device whose calls complete later (RBD) runs it on the pool, as before.
        k.Task = _dev.SynchronousCalls
            ? Task.Factory.StartNew(() => RunBackgroundCheckpointAsync(k), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap()
            : Task.Run(() => RunBackgroundCheckpointAsync(k));
        _ = k.Task.ContinueWith(_ => Wake(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    /// <summary>Commands per transaction up to which the background checkpoint yields to them (see <see cref="YieldsToCommands"/>).</summary>
    private const double FewUnitsPerCommit = 2;

    /// <summary>Bytes of the file whose writeback a background checkpoint starts at a time before its fdatasync.</summary>
    private const long WritebackStep = 4L << 20;

    /// <summary>Most writeback steps a background checkpoint takes (the step grows with the file beyond 1 GiB).</summary>
    private const long MaxWritebackSteps = 256;

    /// <summary>
    /// Whether the background checkpoint, on a thread of its own, gives way to the commands between its steps (a yield
    /// after every slot's home copies and between writeback steps): while few commands are in flight (at most about two
    /// per transaction) and it is ahead, i.e. the newer part of the ring has filled less than half the space left to it.
    /// A small write at QD1 otherwise waited up to a time slice (milliseconds) for a CPU that home-copy threads held
    /// (docs "Measured", 2026-12-07 evening). With many commands in flight (4k writes at QD32: ~30 per transaction) the
    /// CPU is saturated, a yielding checkpoint falls behind and the ring fills, which stops every writer (measured: 0.84
    /// of the IOPS), so it runs flat out.
    /// </summary>
    private bool YieldsToCommands(BackgroundCheckpoint k)
    {
        if (Thread.CurrentThread.IsThreadPoolThread || Volatile.Read(ref _unitsPerCommit) > FewUnitsPerCommit) return false;
        long area = _g.JournalAreaBytes, newer = Volatile.Read(ref _ringUsed) - k.RingBytes;
        return newer < (area - k.RingBytes) / 2;
    }

    private async Task RunBackgroundCheckpointAsync(BackgroundCheckpoint k)
    {
        long t0 = Stopwatch.GetTimestamp();
        var ct = CancellationToken.None;
        var home = new List<HomeItem>(k.Taken.Count);
        foreach (var r in k.Taken.Values) home.Add(new HomeItem(r.Lba, r.Phys, r.Buf?.AsMemory(0, _bs) ?? default, r));
        SortForHome(home);
        await HomeInBatchesAsync(home, ct, background: true).ConfigureAwait(false);
        foreach (var (offset, sector) in k.Map)
        {
            if (_abandon) throw new OperationCanceledException("volume abandoned");
            await _dev.WriteAsync(offset, sector, fua: false, ct).ConfigureAwait(false);
        }
        if (_abandon) throw new OperationCanceledException("volume abandoned");
        if (YieldsToCommands(k))
        {
            // The fdatasync below would write back every dirty page of the file in one call, seconds of kernel CPU on a
            // loaded disk that no command can interrupt. Started here in steps with a yield after each, the writeback's
            // submission lets the commands in between; the fdatasync then mostly waits. Only a hint: it changes
            // neither what is durable nor when (write path 7a).
            // At most MaxWritebackSteps calls however large the LUN (a 1 TiB file in 4 MiB steps would be 262,144 calls
            // per checkpoint, nearly all over clean pages).
            long len = _dev.Length, step = Math.Max(WritebackStep, (len + MaxWritebackSteps - 1) / MaxWritebackSteps);
            for (long o = 0; o < len; o += step)
            {
                _dev.StartWriteback(o, Math.Min(step, len - o));
                Thread.Yield();
            }
        }
        Interlocked.Increment(ref _stFlushes);
        await _dev.FlushAsync(ct).ConfigureAwait(false);
        if (_abandon) throw new OperationCanceledException("volume abandoned");
        await WriteJournalSuperAsync(k.Super, ct).ConfigureAwait(false);
        Interlocked.Add(ref _stCkptTicks, Stopwatch.GetTimestamp() - t0);
    }

    /// <summary>When the background checkpoint is done (or, with <paramref name="wait"/>, once it is): its ring space
    /// returns, its block images go back to the pool, the slots whose release it deferred are released. Its failure
    /// is thrown (the volume fails: the journal start did not move, so reopening replays from the old start).</summary>
    private async ValueTask FinishBackgroundCheckpointAsync(bool wait)
    {
        var k = _ckpt;
        if (k == null || (!wait && !k.Task.IsCompleted)) return;
        try { await k.Task.ConfigureAwait(false); }
        catch { _ckpt = null; throw; }
        _ckpt = null;
        _checkpoints = k.Super.Checkpoints;
        _ringUsed -= k.RingBytes;
        Debug.Assert(_ringUsed >= 0);
        _recs.Return(k.Taken.Values);
        foreach (var (slot, discard) in k.Deferred) await ReleaseSlotAsync(slot, discard, CancellationToken.None).ConfigureAwait(false);
        if (k.Deferred.Count > 0) _slots.Signal();
        Interlocked.Increment(ref _stBgCkpts);
        LogCheckpointStats("Background");
    }

    private ValueTask WriteJournalSuperAsync(JournalSuper js, CancellationToken ct) =>
        _dev.WriteAsync(_g.JournalOffset, (js with { Version = _journalVersion }).Serialize(), fua: true, ct);

    /// <summary>Writes the given map sectors from <paramref name="map"/>, each with its checksum.</summary>
    private async ValueTask WriteMapSectorsAsync(IEnumerable<long> sectors, long[] map, CancellationToken ct)
    {
        foreach (long s in sectors)
            await _dev.WriteAsync(_g.MapSector(s).Offset, SerializeMapSector(s, map), fua: false, ct).ConfigureAwait(false);
    }

    private byte[] SerializeMapSector(long s, long[] map)
    {
        var sec = new byte[512];
        var (_, first, count) = _g.MapSector(s);
        for (int k = 0; k < count; k++) BinaryPrimitives.WriteInt64LittleEndian(sec.AsSpan(k * 8), map[first + k]);
        BinaryPrimitives.WriteUInt32LittleEndian(sec.AsSpan(504), MapSectorCrc(s, sec));
        return sec;
    }
}
