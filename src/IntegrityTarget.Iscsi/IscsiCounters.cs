using System.Collections.Concurrent;

namespace IntegrityTarget.Iscsi;

/// <summary>
/// What the iSCSI layer counts, for `status` and metrics: one object per <see cref="IscsiServer"/>,
/// updated lock-free from any thread. Read it with <see cref="Snapshot"/>. Transports report their
/// own events (accept errors) through the public Record methods.
/// </summary>
public sealed class IscsiCounters
{
    private long _loginsSucceeded, _loginsFailed, _chapFailures, _loginFailuresDelayed, _rejectedPdus;
    private long _connectionsAccepted, _connectionsOpen, _connectionsRefused, _pendingLoginsEvicted, _acceptErrors;
    private readonly ConcurrentDictionary<string, StrongBox> _sessions = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>The key under which discovery sessions are counted in <see cref="IscsiCountersSnapshot.SessionsPerTarget"/>.</summary>
    public const string DiscoveryKey = "(discovery)";

    private sealed class StrongBox { public long Value; }

    /// <summary>The server's in-flight data budget, read into snapshots.</summary>
    internal InFlightBudget? Budget { get; set; }
    private long _backPressureWaits, _immediateRejected;
    internal void BackPressureWait() => Interlocked.Increment(ref _backPressureWaits);
    internal void ImmediateRejected() => Interlocked.Increment(ref _immediateRejected);

    private long _commands;
    internal void CommandReceived() => Interlocked.Increment(ref _commands);
    internal void LoginSucceeded() => Interlocked.Increment(ref _loginsSucceeded);
    internal void LoginFailed() => Interlocked.Increment(ref _loginsFailed);
    internal void ChapFailed() => Interlocked.Increment(ref _chapFailures);
    internal void LoginFailureDelayed() => Interlocked.Increment(ref _loginFailuresDelayed);
    internal void PduRejected() => Interlocked.Increment(ref _rejectedPdus);

    internal void ConnectionOpened()
    {
        Interlocked.Increment(ref _connectionsAccepted);
        Interlocked.Increment(ref _connectionsOpen);
    }

    internal void ConnectionClosed() => Interlocked.Decrement(ref _connectionsOpen);

    internal void SessionOpened(string? targetIqn) =>
        Interlocked.Increment(ref _sessions.GetOrAdd(targetIqn ?? DiscoveryKey, _ => new StrongBox()).Value);

    internal void SessionClosed(string? targetIqn) =>
        Interlocked.Decrement(ref _sessions.GetOrAdd(targetIqn ?? DiscoveryKey, _ => new StrongBox()).Value);

    /// <summary>A transport's accept call failed (e.g. EMFILE: out of file descriptors).</summary>
    public void RecordAcceptError() => Interlocked.Increment(ref _acceptErrors);

    internal void RecordConnectionRefused() => Interlocked.Increment(ref _connectionsRefused);

    internal void RecordPendingLoginEvicted() => Interlocked.Increment(ref _pendingLoginsEvicted);

    /// <summary>A number that moves whenever a connection is accepted or a SCSI command arrives (idle detection).</summary>
    public long Activity => Interlocked.Read(ref _commands) + Interlocked.Read(ref _connectionsAccepted);

    /// <summary>Connections the iSCSI layer holds right now (logging in or logged in).</summary>
    public long ConnectionsOpen => Interlocked.Read(ref _connectionsOpen);

    public IscsiCountersSnapshot Snapshot() => new()
    {
        LoginsSucceeded = Interlocked.Read(ref _loginsSucceeded),
        LoginsFailed = Interlocked.Read(ref _loginsFailed),
        ChapFailures = Interlocked.Read(ref _chapFailures),
        ScsiCommands = Interlocked.Read(ref _commands),
        LoginFailuresDelayed = Interlocked.Read(ref _loginFailuresDelayed),
        RejectedPdus = Interlocked.Read(ref _rejectedPdus),
        ConnectionsAccepted = Interlocked.Read(ref _connectionsAccepted),
        ConnectionsOpen = Interlocked.Read(ref _connectionsOpen),
        ConnectionsRefused = Interlocked.Read(ref _connectionsRefused),
        PendingLoginsEvicted = Interlocked.Read(ref _pendingLoginsEvicted),
        AcceptErrors = Interlocked.Read(ref _acceptErrors),
        InFlightBytes = Budget?.Used ?? 0,
        InFlightPeakBytes = Budget?.Peak ?? 0,
        InFlightLimitBytes = Budget?.Limit ?? 0,
        CommandsRefusedOverBudget = Budget?.Refused ?? 0,
        BackPressureWaits = Interlocked.Read(ref _backPressureWaits),
        ImmediateCommandsRejected = Interlocked.Read(ref _immediateRejected),
        SessionsPerTarget = _sessions.ToDictionary(kv => kv.Key, kv => Interlocked.Read(ref kv.Value.Value), StringComparer.OrdinalIgnoreCase),
    };
}

/// <summary>A point-in-time copy of <see cref="IscsiCounters"/> (serialisable: `status` shows it as "iscsi").</summary>
public sealed record IscsiCountersSnapshot
{
    /// <summary>Logins that reached the full feature phase (discovery and normal).</summary>
    public long LoginsSucceeded { get; init; }
    /// <summary>Logins answered with a failure status (any class, including CHAP failures).</summary>
    public long LoginsFailed { get; init; }
    /// <summary>Logins refused with "authentication failure" (wrong CHAP name or response, CHAP skipped).</summary>
    public long ChapFailures { get; init; }
    /// <summary>Failed authentications whose answer waited out the growing failure delay.</summary>
    public long LoginFailuresDelayed { get; init; }
    /// <summary>SCSI Command PDUs received.</summary>
    public long ScsiCommands { get; init; }
    /// <summary>Reject PDUs sent.</summary>
    public long RejectedPdus { get; init; }
    /// <summary>Connections handed to the iSCSI layer since start.</summary>
    public long ConnectionsAccepted { get; init; }
    public long ConnectionsOpen { get; init; }
    /// <summary>Sockets closed at once because the connection cap was reached.</summary>
    public long ConnectionsRefused { get; init; }
    /// <summary>Connections closed while logging in to make room for newer ones (too many logging in at once).</summary>
    public long PendingLoginsEvicted { get; init; }
    /// <summary>Failed accept calls (e.g. out of file descriptors).</summary>
    public long AcceptErrors { get; init; }
    /// <summary>Command data held now (write buffers, read data not yet sent), its peak and the budget (Iscsi:MaxInFlightBytes).</summary>
    public long InFlightBytes { get; init; }
    public long InFlightPeakBytes { get; init; }
    public long InFlightLimitBytes { get; init; }
    /// <summary>Commands answered TASK SET FULL because the in-flight budget was spent.</summary>
    public long CommandsRefusedOverBudget { get; init; }
    /// <summary>Times a connection stopped reading because its unsent read data was at its limit.</summary>
    public long BackPressureWaits { get; init; }
    /// <summary>Immediate SCSI commands rejected beyond a connection's limit.</summary>
    public long ImmediateCommandsRejected { get; init; }
    /// <summary>Open sessions per target IQN; discovery sessions under "(discovery)".</summary>
    public IReadOnlyDictionary<string, long> SessionsPerTarget { get; init; } = new Dictionary<string, long>();
}
