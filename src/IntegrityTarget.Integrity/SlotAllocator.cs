namespace IntegrityTarget.Integrity;

/// <summary>
/// Free physical slots for redirect-on-write, and when a replaced slot may be written again
/// (docs/integrity-volume.md, write path 2). A slot replaced by a remap is either
/// <em>fresh</em> (the remap that named it was written in the same flush epoch as the one replacing it:
/// reusable as soon as the replacing transaction is written) or in <em>limbo</em> until the replacing
/// transaction is flushed. Thread-safe; writers allocate, the committer returns and releases.
/// </summary>
internal sealed class SlotAllocator
{
    private readonly object _lock = new();
    private readonly Stack<long> _free = new();
    /// <summary>Replaced slots waiting for their replacing transaction to be flushed, in commit order.</summary>
    private readonly Queue<(long Slot, ulong ReplacedIn, bool Discard)> _limbo = new();
    /// <summary>Per slot: flush epoch of the transaction whose remap named it (-1: named before this open, or never).</summary>
    private long[] _namedEpoch;
    /// <summary>Per slot: sequence of the transaction whose remap named it (0: before this open, proven).</summary>
    private ulong[] _namedSeq;
    private TaskCompletionSource _freed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public SlotAllocator(long slots)
    {
        _namedEpoch = new long[slots];
        _namedSeq = new ulong[slots];
        Array.Fill(_namedEpoch, -1);
    }

    /// <summary>Below this many free slots the committer makes a durable point to empty limbo.</summary>
    public long LowWater { get; set; }

    /// <summary>
    /// The low water for <paramref name="spare"/> spare slots: a quarter of them, but never more than 256
    /// (32 MiB of chunks). It must stay below what one lap of overwrites leaves free when the spare pool
    /// covers the rewritten chunks (the write-back window): a durable point starts a new flush epoch, in
    /// which every slot written before it is replaced into limbo rather than reused, so one durable point
    /// too many turns a window that would have cycled at page-cache speed into one flush per lap.
    /// </summary>
    public static long LowWaterFor(long spare) => Math.Min(spare / 4, 256);

    /// <summary>Below this many free slots the committer starts a flush in the background (without waiting for
    /// it), so limbo slots come back while writers go on using the rest of the pool.</summary>
    public long BackgroundWater { get; set; }

    /// <summary>The background water for <paramref name="spare"/> spare slots: half of them, at most 512 (64 MiB
    /// of chunks), never below the low water.</summary>
    public static long BackgroundWaterFor(long spare) => Math.Max(Math.Min(spare / 2, 512), LowWaterFor(spare));

    /// <summary>Sequence of the newest transaction that sent a slot to limbo (0: limbo is empty).</summary>
    public ulong NewestLimbo { get { lock (_lock) return _limboNewest; } }
    private ulong _limboNewest;

    public int FreeCount { get { lock (_lock) return _free.Count; } }
    public int LimboCount { get { lock (_lock) return _limbo.Count; } }

    /// <summary>At open: every slot no map entry uses is free (low numbers handed out first).</summary>
    public void Rebuild(IReadOnlyList<long> mapEntries)
    {
        lock (_lock)
        {
            var used = new bool[_namedEpoch.Length];
            foreach (long e in mapEntries) if (e != 0) used[e - 1] = true;
            _free.Clear();
            _limbo.Clear();
            _limboNewest = 0;
            for (long p = used.Length - 1; p >= 0; p--) if (!used[p]) _free.Push(p);
        }
    }

    /// <summary>How deep below the top of the free stack <see cref="TryAllocate"/> looks for a run of consecutive slots
    /// when the top ones are not one (at least this many entries, or four times the request).</summary>
    private const int RunWindow = 64;

    /// <summary>
    /// Takes <paramref name="n"/> free slots in ascending order, or returns null and the task to wait on. When it
    /// can, they are consecutive numbers (a run), so a command writes them with one device request: the most
    /// recently freed ones if they form a run (the usual case: an overwrite frees a run), else the run nearest the
    /// top among the next few free slots; otherwise the top <paramref name="n"/> as before.
    /// </summary>
    public List<long>? TryAllocate(int n, out Task freed, out bool low)
    {
        lock (_lock)
        {
            freed = _freed.Task;
            low = _free.Count - n < LowWater;
            if (_free.Count < n) return null;
            var list = new List<long>(n);
            long min = long.MaxValue, max = long.MinValue;
            for (int i = 0; i < n; i++)
            {
                long p = _free.Pop();
                list.Add(p);
                min = Math.Min(min, p);
                max = Math.Max(max, p);
            }
            // Free slots are distinct, so n of them within n - 1 of each other are a run.
            if (max - min != n - 1 && _free.Count > 0) TakeRunNearTop(list);
            list.Sort();
            return list;
        }
    }

    /// <summary>
    /// <paramref name="list"/> (popped from the top, in pop order, not a run) is swapped for the run of as many
    /// consecutive free slots that lies nearest the top of the stack within a window; the slots not taken go back in
    /// their order. Leaves <paramref name="list"/> as it is when the window holds no such run. Under the lock.
    /// </summary>
    private void TakeRunNearTop(List<long> list)
    {
        int n = list.Count;
        int w = Math.Min(_free.Count, Math.Max(RunWindow, 4 * n));
        // Depth 0 is the top of the stack as it was before the popping.
        var window = new (long Slot, int Depth)[n + w];
        for (int i = 0; i < n; i++) window[i] = (list[i], i);
        for (int i = 0; i < w; i++) window[n + i] = (_free.Pop(), n + i);
        var bySlot = ((long Slot, int Depth)[])window.Clone();
        Array.Sort(bySlot, static (a, b) => a.Slot.CompareTo(b.Slot));
        int best = -1, bestDepth = int.MaxValue;
        for (int k = 0; k + n <= bySlot.Length; k++)
        {
            if (bySlot[k + n - 1].Slot - bySlot[k].Slot != n - 1) continue;
            int deepest = 0;
            for (int j = k; j < k + n; j++) deepest = Math.Max(deepest, bySlot[j].Depth);
            if (deepest < bestDepth) { best = k; bestDepth = deepest; }
        }
        var taken = new HashSet<long>();
        if (best >= 0)
        {
            list.Clear();
            for (int j = best; j < best + n; j++) { list.Add(bySlot[j].Slot); taken.Add(bySlot[j].Slot); }
        }
        else foreach (var p in list) taken.Add(p);
        // Back onto the stack, deepest first, so the rest keep their order.
        for (int i = n + w - 1; i >= 0; i--) if (!taken.Contains(window[i].Slot)) _free.Push(window[i].Slot);
    }

    /// <summary>Slots allocated but never named by a committed remap (a failed slot write or command).</summary>
    public void Return(IEnumerable<long> slots)
    {
        lock (_lock) foreach (var p in slots) _free.Push(p);
        Signal();
    }

    /// <summary>A remap naming <paramref name="slot"/> was written in transaction <paramref name="seq"/> during flush epoch <paramref name="epoch"/>.</summary>
    public void Named(long slot, ulong seq, long epoch)
    {
        _namedEpoch[slot] = epoch;
        _namedSeq[slot] = seq;
    }

    /// <summary>Sequence of the transaction whose remap put data in <paramref name="slot"/> (0 = before this open).</summary>
    public ulong NamedIn(long slot) => _namedSeq[slot];

    /// <summary>
    /// A remap in transaction <paramref name="seq"/>, written in <paramref name="epoch"/>, replaced
    /// <paramref name="slot"/>. True when the slot is fresh (named in that same epoch): the caller may
    /// release it now (after discarding it, for an unmap). Otherwise it waits in limbo.
    /// </summary>
    public bool Replaced(long slot, ulong seq, long epoch, bool discard)
    {
        if (_namedEpoch[slot] == epoch) return true;
        lock (_lock) { _limbo.Enqueue((slot, seq, discard)); _limboNewest = seq; }
        return false;
    }

    /// <summary>Limbo slots whose replacing transaction is now flushed (≤ <paramref name="flushedThrough"/>), to release.</summary>
    public List<(long Slot, bool Discard)> TakeFlushed(ulong flushedThrough)
    {
        var ready = new List<(long, bool)>();
        lock (_lock)
        {
            while (_limbo.Count > 0 && _limbo.Peek().ReplacedIn <= flushedThrough)
            {
                var (s, _, d) = _limbo.Dequeue();
                ready.Add((s, d));
            }
            if (_limbo.Count == 0) _limboNewest = 0;
        }
        return ready;
    }

    /// <summary>Makes slots allocatable again (a replaced slot that is fresh, or out of limbo).</summary>
    public void Release(long slot)
    {
        _namedEpoch[slot] = -1;
        _namedSeq[slot] = 0;
        lock (_lock) _free.Push(slot);
    }

    /// <summary>Wakes writers waiting for slots (after releases, or with an exception when the volume failed).</summary>
    public void Signal(Exception? failure = null)
    {
        TaskCompletionSource f;
        lock (_lock) { f = _freed; _freed = new(TaskCreationOptions.RunContinuationsAsynchronously); }
        if (failure is null) f.TrySetResult(); else f.TrySetException(failure);
    }

    /// <summary>A grow added slots [old count, <paramref name="slots"/>): all free.</summary>
    public void Grow(long slots)
    {
        lock (_lock)
        {
            long old = _namedEpoch.Length;
            Array.Resize(ref _namedEpoch, (int)slots);
            Array.Resize(ref _namedSeq, (int)slots);
            for (long p = slots - 1; p >= old; p--) { _namedEpoch[p] = -1; _free.Push(p); }
        }
        Signal();
    }
}
