namespace IntegrityTarget.Integrity;

/// <summary>
/// FIFO reader/writer lock over ranges of chunk indices. A request waits for every earlier request
/// (granted or still waiting) that overlaps it unless both are shared, so overlapping commands run in
/// arrival order while disjoint ones run concurrently. Queues are short (the initiators' queue depth),
/// so the linear scans are cheap.
/// </summary>
internal sealed class ChunkRangeLock
{
    internal sealed class Entry
    {
        public long Lo, Hi;
        public bool Shared, Granted;
        public TaskCompletionSource? Tcs;
        public bool Conflicts(Entry o) => Lo <= o.Hi && o.Lo <= Hi && !(Shared && o.Shared);
    }

    private readonly object _m = new();
    private readonly List<Entry> _entries = new();

    public ValueTask<Entry> AcquireAsync(long lo, long hi, bool shared)
    {
        var e = new Entry { Lo = lo, Hi = hi, Shared = shared };
        lock (_m)
        {
            bool conflict = false;
            foreach (var o in _entries) if (o.Conflicts(e)) { conflict = true; break; }
            _entries.Add(e);
            if (!conflict) { e.Granted = true; return ValueTask.FromResult(e); }
            e.Tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        return Wait(e);
    }

    private static async ValueTask<Entry> Wait(Entry e) { await e.Tcs!.Task.ConfigureAwait(false); return e; }

    public void Release(Entry e)
    {
        List<Entry>? wake = null;
        lock (_m)
        {
            _entries.Remove(e);
            for (int i = 0; i < _entries.Count; i++)
            {
                var w = _entries[i];
                if (w.Granted) continue;
                bool blocked = false;
                for (int j = 0; j < i; j++) if (_entries[j].Conflicts(w)) { blocked = true; break; }
                if (!blocked) { w.Granted = true; (wake ??= new()).Add(w); }
            }
        }
        if (wake != null) foreach (var w in wake) w.Tcs!.TrySetResult();
    }
}
