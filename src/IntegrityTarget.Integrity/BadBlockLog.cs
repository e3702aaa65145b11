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
    public const int MaxTracked = RepeatedEvents<ulong>.MaxTracked;
    private readonly RepeatedEvents<ulong> _lbas = new(window);

    public TimeSpan Window => _lbas.Window;

    /// <summary>LBAs remembered as reported (cheap check for the write path).</summary>
    public int Count => _lbas.Count;

    public void Report(ulong lba, IoContext? ctx)
    {
        if (_lbas.Note(lba, out bool summaryDue))
            log.Error("Integrity verification failed on {Volume} at LBA {Lba} ({TagAlgorithm}); unit {Unit}, initiator {Initiator}, command {Command}",
                volume, lba, algorithm, ctx?.Unit, ctx?.Initiator, ctx?.Command);
        else if (summaryDue) Summarise();
    }

    /// <summary>Blocks [lba, lba+blocks) were rewritten (or unmapped): a later failure there is logged at Error again.</summary>
    public void Forget(ulong lba, ulong blocks)
    {
        int known = _lbas.Count;
        if (known == 0) return;
        if (blocks < (ulong)known) _lbas.Forget(Range(lba, blocks));
        else _lbas.ForgetWhere(k => k >= lba && k - lba < blocks);
    }

    private static IEnumerable<ulong> Range(ulong lba, ulong blocks)
    {
        for (ulong b = lba; b < lba + blocks; b++) yield return b;
    }

    /// <summary>Logs the repeats counted since the last summary, if any.</summary>
    public void Summarise()
    {
        if (_lbas.TakeSummary() is not { } s) return;
        log.Warning("Integrity verification failures repeated on {Volume}: {Repeats} more on {Lbas} LBA(s) already reported, most often LBA {TopLba} ({TopCount} times), in the last {Seconds} s",
            volume, s.Repeats, s.Keys, s.Top, s.TopCount, s.Seconds);
    }
}
