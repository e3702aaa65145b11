namespace IntegrityTarget.Storage;

/// <summary>
/// The bookkeeping of a log that reports each distinct failure once and summarises repeats at a bounded rate (the
/// integrity volume's bad blocks, a logical unit's device errors): which keys were reported, how often each one
/// failed again since the last summary, and when the next summary is due. A key may be forgotten (a rewritten
/// block): its next failure is news again, and the repeats it had stay in the next summary. Bounded: beyond
/// <see cref="MaxTracked"/> keys a new one is news every time (logged, not remembered). Thread-safe.
/// </summary>
public sealed class RepeatedEvents<TKey>(TimeSpan window) where TKey : notnull
{
    public const int MaxTracked = 4096;
    private readonly Dictionary<TKey, long> _repeats = new(); // key -> failures since the last summary
    private readonly Lock _gate = new();
    private long _windowStart = Environment.TickCount64;
    private long _pending;
    // Keys forgotten with repeats not yet summarised: how many, and the most frequent of them.
    private int _forgotten;
    private TKey? _forgottenTop;
    private long _forgottenTopCount;
    private volatile int _count;

    /// <summary>Shortest time between two summaries.</summary>
    public TimeSpan Window { get; } = window;

    /// <summary>Keys remembered as reported (a cheap check before forgetting).</summary>
    public int Count => _count;

    /// <summary>One failure of <paramref name="key"/>: true when it is news (the caller logs it), false when it is a
    /// repeat (counted; <paramref name="summaryDue"/> says the window since the last summary has passed).</summary>
    public bool Note(TKey key, out bool summaryDue)
    {
        summaryDue = false;
        lock (_gate)
        {
            if (!_repeats.TryGetValue(key, out long c))
            {
                if (_repeats.Count < MaxTracked) { _repeats[key] = 0; _count = _repeats.Count; }
                return true;
            }
            _repeats[key] = c + 1;
            _pending++;
        }
        summaryDue = Environment.TickCount64 - Volatile.Read(ref _windowStart) >= (long)Window.TotalMilliseconds;
        return false;
    }

    /// <summary>Stops remembering the keys <paramref name="keys"/> yields (their next failure is news again).</summary>
    public void Forget(IEnumerable<TKey> keys)
    {
        lock (_gate)
        {
            foreach (var k in keys) Drop(k);
            _count = _repeats.Count;
        }
    }

    /// <summary>Stops remembering every key that <paramref name="match"/> accepts.</summary>
    public void ForgetWhere(Func<TKey, bool> match)
    {
        lock (_gate)
        {
            foreach (var k in _repeats.Keys.Where(match).ToList()) Drop(k);
            _count = _repeats.Count;
        }
    }

    private void Drop(TKey key)
    {
        if (!_repeats.Remove(key, out long c) || c == 0) return;
        _forgotten++;
        if (c > _forgottenTopCount) { _forgottenTop = key; _forgottenTopCount = c; }
    }

    /// <summary>The repeats since the last summary, and a new window; null when there were none. The repeats of
    /// keys forgotten since are part of the count, so the keys and the most frequent one include them.</summary>
    public (long Repeats, int Keys, TKey Top, long TopCount, long Seconds)? TakeSummary()
    {
        lock (_gate)
        {
            long n = _pending, seconds = (Environment.TickCount64 - _windowStart) / 1000;
            _windowStart = Environment.TickCount64;
            _pending = 0;
            int keys = _forgotten;
            (TKey? top, long topCount) = (_forgottenTop, _forgottenTopCount);
            _forgotten = 0; _forgottenTop = default; _forgottenTopCount = 0;
            if (n == 0) return null;
            foreach (var (key, c) in _repeats)
            {
                if (c == 0) continue;
                keys++;
                if (c > topCount) { top = key; topCount = c; }
            }
            foreach (var k in _repeats.Keys.ToList()) _repeats[k] = 0;
            return (n, keys, top!, topCount, seconds);
        }
    }
}
