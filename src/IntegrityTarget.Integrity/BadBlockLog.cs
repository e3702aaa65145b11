using IntegrityTarget.Storage;
using Serilog;

namespace IntegrityTarget.Integrity;

/// <summary>
/// Logging of verification failures without a flood when an initiator retries a bad block: the first failure
/// of each distinct LBA is one Error event naming it (volume, LBA, algorithm, unit, initiator, command);
/// later failures of an LBA already reported are counted and summarised in one Warning at most every
/// <see cref="Window"/> (on the next failure after it, and when the volume closes). Rewriting a block makes its
/// next failure news again. Bounded: beyond <see cref="MaxTracked"/> LBAs, new ones are still logged at
/// Error, just not remembered. Per volume; thread-safe.
/// </summary>
internal sealed class BadBlockLog(ILogger log, string volume, string algorithm, TimeSpan window)
{
    public const int MaxTracked = 4096;
    private readonly Dictionary<ulong, long> _repeats = new(); // LBA -> failures since the last summary
    private readonly Lock _gate = new();
    private long _windowStart = Environment.TickCount64;
    private long _pending;
    // LBAs forgotten (rewritten) with repeats not yet summarised: how many, and the most frequent of them.
    private long _forgottenTopCount;
    private int _forgottenLbas;
    private ulong _forgottenTop;
    private volatile int _count;

    public TimeSpan Window { get; } = window;

    /// <summary>LBAs remembered as reported (cheap check for the write path).</summary>
    public int Count => _count;

    public void Report(ulong lba, IoContext? ctx)
    {
        bool first;
        lock (_gate)
        {
            first = !_repeats.ContainsKey(lba);
            if (first) { if (_repeats.Count < MaxTracked) { _repeats[lba] = 0; _count = _repeats.Count; } }
            else { _repeats[lba]++; _pending++; }
        }
        if (first)
        {
            log.Error("Integrity verification failed on {Volume} at LBA {Lba} ({TagAlgorithm}); unit {Unit}, initiator {Initiator}, command {Command}",
                volume, lba, algorithm, ctx?.Unit, ctx?.Initiator, ctx?.Command);
            return;
        }
        if (Environment.TickCount64 - Volatile.Read(ref _windowStart) >= (long)Window.TotalMilliseconds) Summarise();
    }

    /// <summary>Blocks [lba, lba+blocks) were rewritten (or unmapped): a later failure there is logged at Error again.</summary>
    public void Forget(ulong lba, ulong blocks)
    {
        if (_count == 0) return;
        lock (_gate)
        {
            if (blocks < (ulong)_repeats.Count)
                for (ulong b = lba; b < lba + blocks; b++) Drop(b);
            else
                foreach (var k in _repeats.Keys.Where(k => k >= lba && k - lba < blocks).ToList()) Drop(k);
            _count = _repeats.Count;
        }
    }

    /// <summary>Stops remembering an LBA (under the gate); the repeats it had since the last summary stay counted there.</summary>
    private void Drop(ulong lba)
    {
        if (!_repeats.Remove(lba, out long c) || c == 0) return;
        _forgottenLbas++;
        if (c > _forgottenTopCount) { _forgottenTop = lba; _forgottenTopCount = c; }
    }

    /// <summary>Logs the repeats counted since the last summary, if any.</summary>
    public void Summarise()
    {
        long n, seconds;
        int lbas;
        ulong top = 0;
        long topCount = 0;
        lock (_gate)
        {
            n = _pending;
            seconds = (Environment.TickCount64 - _windowStart) / 1000;
            _windowStart = Environment.TickCount64;
            _pending = 0;
            if (n == 0) return;
            // The repeats of LBAs rewritten since (no longer in the table) are part of the count, so the LBAs
            // and the most frequent one include them: the numbers of one line always agree.
            lbas = _forgottenLbas;
            (top, topCount) = (_forgottenTop, _forgottenTopCount);
            foreach (var (lba, c) in _repeats)
            {
                if (c == 0) continue;
                lbas++;
                if (c > topCount) { top = lba; topCount = c; }
            }
            foreach (var k in _repeats.Keys.ToList()) _repeats[k] = 0;
            _forgottenTopCount = 0;
            _forgottenLbas = 0;
            _forgottenTop = 0;
        }
        log.Warning("Integrity verification failures repeated on {Volume}: {Repeats} more on {Lbas} LBA(s) already reported, most often LBA {TopLba} ({TopCount} times), in the last {Seconds} s",
            volume, n, lbas, top, topCount, seconds);
    }
}
