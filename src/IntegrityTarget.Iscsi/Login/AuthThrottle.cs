using System.Diagnostics;
using System.Net;

namespace IntegrityTarget.Iscsi.Login;

/// <summary>
/// Slows down guessing CHAP secrets. Failed authentications are counted per initiator name and per
/// source address; the answer to a failure waits base × 2^(n−1), capped, where n is the larger of the
/// two counts. A successful CHAP login resets both; counts are forgotten after a quiet while. Since many
/// connections could wait in parallel, at most <see cref="MaxWaitingPerKey"/> failures of one name or
/// address wait at a time: further attempts from it (for a name: from an address that failed too) fail
/// without their response being checked, so the rate of checked guesses per address, and per name from
/// any address that has failed, is bounded by MaxWaitingPerKey per delay. One per server;
/// thread-safe; the keys it remembers are bounded.
/// </summary>
internal sealed class AuthThrottle(TimeSpan baseDelay, TimeSpan maxDelay, int maxEntries = 10_000)
{
    public const int MaxWaitingPerKey = 4;

    private sealed class Entry { public int Failures; public int Waiting; public long LastFailure; }

    private readonly object _lock = new();
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.OrdinalIgnoreCase);
    /// <summary>A key with no failure for this long starts from zero again.</summary>
    private readonly TimeSpan _forgetAfter = TimeSpan.FromTicks(Math.Max(TimeSpan.FromMinutes(5).Ticks, maxDelay.Ticks * 10));

    public bool Enabled => baseDelay > TimeSpan.Zero;

    private static IEnumerable<string> Keys(string? initiator, IPAddress? address)
    {
        if (!string.IsNullOrEmpty(initiator)) yield return "name:" + initiator;
        if (address is not null) yield return "addr:" + (address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address);
    }

    /// <summary>
    /// Whether so many failures are already waiting that another attempt is not checked: those of this address,
    /// or those of this initiator name when this address has failed too. Initiator names are not secret, so a
    /// name saturated by guesses from elsewhere never locks out an address without failures (the real
    /// initiator); a guesser then needs a fresh address for every checked guess.
    /// </summary>
    public bool IsSaturated(string? initiator, IPAddress? address)
    {
        if (!Enabled) return false;
        var keys = Keys(initiator, address).ToArray();
        long now = Stopwatch.GetTimestamp();
        lock (_lock)
        {
            Entry? addr = null;
            foreach (var k in keys)
                if (k.StartsWith("addr:", StringComparison.Ordinal) && _entries.TryGetValue(k, out var e))
                {
                    if (e.Waiting >= MaxWaitingPerKey) return true;
                    addr = e;
                }
            bool addressFailed = addr is not null && addr.Failures > 0 && Stopwatch.GetElapsedTime(addr.LastFailure, now) <= _forgetAfter;
            if (!addressFailed && address is not null) return false;
            foreach (var k in keys)
                if (k.StartsWith("name:", StringComparison.Ordinal) && _entries.TryGetValue(k, out var e) && e.Waiting >= MaxWaitingPerKey) return true;
        }
        return false;
    }

    /// <summary>
    /// Records a failed authentication and returns how long its answer waits and the failure count it is
    /// based on. Dispose the returned lease when the wait is over (it counts towards saturation until then).
    /// </summary>
    public Lease Failed(string? initiator, IPAddress? address, out TimeSpan delay, out int failures)
    {
        delay = TimeSpan.Zero;
        failures = 0;
        if (!Enabled) return default;
        long now = Stopwatch.GetTimestamp();
        var keys = Keys(initiator, address).ToArray();
        lock (_lock)
        {
            if (_entries.Count + keys.Length > maxEntries) Prune(now);
            foreach (var k in keys)
            {
                if (!_entries.TryGetValue(k, out var e)) _entries[k] = e = new Entry();
                else if (Stopwatch.GetElapsedTime(e.LastFailure, now) > _forgetAfter) e.Failures = 0;
                e.Failures = Math.Min(e.Failures + 1, 1_000_000);
                e.LastFailure = now;
                e.Waiting++;
                failures = Math.Max(failures, e.Failures);
            }
        }
        double factor = Math.Pow(2, Math.Min(failures - 1, 30));
        delay = TimeSpan.FromTicks((long)Math.Min(baseDelay.Ticks * factor, maxDelay.Ticks));
        return new Lease(this, keys);
    }

    /// <summary>A successful CHAP authentication: this name and address start from zero.</summary>
    public void Succeeded(string? initiator, IPAddress? address)
    {
        if (!Enabled) return;
        lock (_lock)
            foreach (var k in Keys(initiator, address))
                if (_entries.TryGetValue(k, out var e)) { e.Failures = 0; if (e.Waiting == 0) _entries.Remove(k); }
    }

    /// <summary>Failures remembered for a key (tests).</summary>
    internal int FailuresOf(string? initiator, IPAddress? address)
    {
        lock (_lock) return Keys(initiator, address).Select(k => _entries.TryGetValue(k, out var e) ? e.Failures : 0).DefaultIfEmpty().Max();
    }

    private void Release(string[] keys)
    {
        lock (_lock)
            foreach (var k in keys)
                if (_entries.TryGetValue(k, out var e) && e.Waiting > 0) e.Waiting--;
    }

    /// <summary>Forgets quiet keys; if that is not enough, the quarter with the oldest failures.</summary>
    private void Prune(long now)
    {
        foreach (var k in _entries.Where(kv => kv.Value.Waiting == 0 && Stopwatch.GetElapsedTime(kv.Value.LastFailure, now) > _forgetAfter)
                     .Select(kv => kv.Key).ToList())
            _entries.Remove(k);
        if (_entries.Count < maxEntries * 3 / 4) return;
        foreach (var k in _entries.Where(kv => kv.Value.Waiting == 0).OrderBy(kv => kv.Value.LastFailure)
                     .Take(_entries.Count - maxEntries * 3 / 4).Select(kv => kv.Key).ToList())
            _entries.Remove(k);
    }

    /// <summary>Held while a failed attempt waits out its delay.</summary>
    public readonly struct Lease(AuthThrottle? owner, string[]? keys) : IDisposable
    {
        public void Dispose()
        {
            if (owner is not null && keys is not null) owner.Release(keys);
        }
    }
}
