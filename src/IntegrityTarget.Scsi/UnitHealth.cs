namespace IntegrityTarget.Scsi;

/// <summary>The outcome of the last full verification pass over a logical unit's blocks.</summary>
public sealed record ScrubSummary(DateTimeOffset FinishedUtc, ulong BlocksChecked, long BadBlocks);

/// <summary>
/// What one logical unit knows about the health of its data, for LOG SENSE (integrity page) and metrics:
/// the distinct LBAs that failed verification (seen by a command or by a scrub) and the last scrub. A
/// finished scrub is the authority: it replaces the set with what it found, so blocks rewritten since are
/// forgotten. The set is bounded (<see cref="MaxTrackedLbas"/>); beyond it only the count grows.
/// Thread-safe; per logical unit, never static.
/// </summary>
public sealed class UnitHealth
{
    public const int MaxTrackedLbas = 65536;

    private readonly SortedSet<ulong> _bad = new();
    private readonly Lock _gate = new();
    private long _untracked;
    private ScrubSummary? _lastScrub;

    /// <summary>Distinct LBAs known to fail verification.</summary>
    public long DistinctBadLbas { get { lock (_gate) return _bad.Count + _untracked; } }

    /// <summary>The lowest LBA known to fail verification, or null.</summary>
    public ulong? LowestBadLba { get { lock (_gate) return _bad.Count > 0 ? _bad.Min : null; } }

    public ScrubSummary? LastScrub { get { lock (_gate) return _lastScrub; } }

    public void RecordBadBlock(ulong lba)
    {
        lock (_gate)
        {
            if (_bad.Count < MaxTrackedLbas) _bad.Add(lba);
            else if (!_bad.Contains(lba)) _untracked++;
        }
    }

    /// <summary>A scrub finished: it checked every block, so its findings replace what was known.</summary>
    /// <param name="badLbas">The bad LBAs it listed (may be fewer than <paramref name="summary"/>.BadBlocks when it capped its list).</param>
    public void RecordScrub(ScrubSummary summary, IEnumerable<ulong> badLbas)
    {
        lock (_gate)
        {
            _bad.Clear();
            foreach (var lba in badLbas) if (_bad.Count < MaxTrackedLbas) _bad.Add(lba);
            _untracked = Math.Max(0, summary.BadBlocks - _bad.Count);
            _lastScrub = summary;
        }
    }
}
