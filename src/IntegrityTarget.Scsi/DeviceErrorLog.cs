using IntegrityTarget.Storage;

namespace IntegrityTarget.Scsi;

/// <summary>What a logical unit asked of its volume when the device failed (flags: a set of them says which
/// operations' failures a volume logs itself, <see cref="LogicalUnitOptions.VolumeLogsDeviceErrors"/>).</summary>
[Flags]
public enum VolumeOperation { None = 0, Read = 1, Write = 2, Flush = 4, All = Read | Write | Flush }

/// <summary>
/// The device I/O failures of one logical unit (a volume answering <see cref="IntegrityTarget.Storage.VolumeStatus.IoError"/>),
/// counted always and, for the operations whose failures the volume does not log itself, logged without a flood when an initiator
/// retries: the first failure of each distinct (operation, LBA) is one Error naming unit, operation, LBA, the
/// command's range, initiator, volume and the system's message; a flush has no LBA, so a failing flush is logged
/// once. Later failures of a pair already reported are counted and summarised in one Warning at most every
/// <see cref="Window"/> (on the next failure after it). Bounded: beyond <see cref="MaxTracked"/> pairs, new ones are
/// still logged at Error, just not remembered. Per logical unit; thread-safe.
/// </summary>
public sealed class DeviceErrorLog
{
    public const int MaxTracked = RepeatedEvents<(VolumeOperation, ulong)>.MaxTracked;
    private readonly Serilog.ILogger _log;
    private readonly RepeatedEvents<(VolumeOperation Op, ulong Lba)> _seen;
    private long _failures;

    /// <param name="log">Where the events go.</param>
    /// <param name="loggedByVolume">The operations whose failures the volume (or its device) logs itself: those are only counted.</param>
    /// <param name="window">Shortest time between two summaries of repeats.</param>
    public DeviceErrorLog(Serilog.ILogger log, VolumeOperation loggedByVolume, TimeSpan window)
    {
        _log = log; LoggedByVolume = loggedByVolume; _seen = new(window);
    }

    public VolumeOperation LoggedByVolume { get; }
    public TimeSpan Window => _seen.Window;

    /// <summary>Device I/O failures met by the unit's commands, each one counted (logged or not).</summary>
    public long Failures => Interlocked.Read(ref _failures);

    /// <summary>
    /// One failed volume call: <paramref name="lba"/> is the block the volume names (the first of the call for a
    /// plain volume), [<paramref name="first"/>, <paramref name="first"/>+<paramref name="blocks"/>) the range the call covered.
    /// </summary>
    public void Report(VolumeOperation op, ulong lba, ulong first, ulong blocks, string? detail, string unit, string volume, string command, string initiator)
    {
        Interlocked.Increment(ref _failures);
        if ((op & LoggedByVolume) != 0) return;
        if (op == VolumeOperation.Flush) lba = 0;
        if (_seen.Note((op, lba), out bool summaryDue))
        {
            string error = detail ?? "no detail";
            if (op == VolumeOperation.Flush)
                _log.Error("{Unit}: device flush failed on {Volume} ({Command} from {Initiator}): {Error}", unit, volume, command, initiator, error);
            else
                _log.Error("{Unit}: device {Operation} failed at LBA {Lba} ({Command} of LBAs {First}..{Last} from {Initiator}) on {Volume}: {Error}",
                    unit, op == VolumeOperation.Read ? "read" : "write", lba, command, first, first + Math.Max(blocks, 1) - 1, initiator, volume, error);
            return;
        }
        if (summaryDue) Summarise(unit);
    }

    /// <summary>Logs the repeats counted since the last summary, if any.</summary>
    public void Summarise(string unit)
    {
        if (_seen.TakeSummary() is not { } s) return;
        var top = s.Top;
        string most = top.Op switch
        {
            VolumeOperation.Flush => "flush",
            VolumeOperation.Read => $"read at LBA {top.Lba}",
            _ => $"write at LBA {top.Lba}",
        };
        _log.Warning("{Unit}: device failures repeated: {Repeats} more of {Pairs} already reported, most often {Top} ({TopCount} times), in the last {Seconds} s",
            unit, s.Repeats, s.Keys, most, s.TopCount, s.Seconds);
    }
}
