using System.Diagnostics;

namespace IntegrityTarget.Iscsi;

/// <summary>
/// Bounds how often a kind of message is logged, so a flood from the network (failed logins, accept
/// errors, repeated discoveries) cannot flood the log: at most one message per key per
/// <c>interval</c>, and at most <c>maxPerInterval</c> messages over all keys in one interval. What
/// was held back is counted and handed to the next message that goes out for that key, which says so.
/// Thread-safe; the keys it remembers are bounded too.
/// </summary>
public sealed class LogLimiter(TimeSpan interval, int maxPerInterval = 20, int maxKeys = 4096)
{
    private sealed class Entry { public bool Logged; public long LastTicks; public long Suppressed; }

    private readonly object _lock = new();
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly long _intervalTicks = (long)(interval.TotalSeconds * Stopwatch.Frequency);
    private bool _windowStarted;
    private long _windowStart;
    private int _inWindow;

    /// <summary>Messages held back over all keys since start.</summary>
    public long TotalSuppressed { get; private set; }

    /// <summary>
    /// Whether a message for <paramref name="key"/> may be logged now; if so, <paramref name="suppressed"/>
    /// is how many for that key were held back since its last one (0 for none).
    /// </summary>
    public bool ShouldLog(string key, out long suppressed)
    {
        long now = Stopwatch.GetTimestamp();
        lock (_lock)
        {
            if (!_windowStarted || now - _windowStart >= _intervalTicks) { _windowStarted = true; _windowStart = now; _inWindow = 0; }
            if (!_entries.TryGetValue(key, out var e))
            {
                if (_entries.Count >= maxKeys) Prune(now);
                // Still full of recent keys: further keys share one entry rather than growing the map.
                if (_entries.Count >= maxKeys) key = "\u0000overflow";
                if (!_entries.TryGetValue(key, out e)) _entries[key] = e = new Entry();
            }
            if ((e.Logged && now - e.LastTicks < _intervalTicks) || _inWindow >= maxPerInterval)
            {
                e.Suppressed++;
                TotalSuppressed++;
                suppressed = 0;
                return false;
            }
            _inWindow++;
            e.Logged = true;
            e.LastTicks = now;
            suppressed = e.Suppressed;
            e.Suppressed = 0;
            return true;
        }
    }

    private void Prune(long now)
    {
        List<string>? old = null;
        foreach (var (k, e) in _entries)
            if (!e.Logged || now - e.LastTicks >= _intervalTicks) (old ??= []).Add(k);
        if (old is not null) foreach (var k in old) _entries.Remove(k);
    }
}
