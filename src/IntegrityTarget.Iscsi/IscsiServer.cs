using System.Buffers;
using System.Net;
using IntegrityTarget.Iscsi.Login;
using IntegrityTarget.Iscsi.Session;
using Serilog;

namespace IntegrityTarget.Iscsi;

/// <summary>
/// The iSCSI target core: the targets it serves, the sessions logged in, and connection creation for
/// transports (see <see cref="IPduSink"/> for the transport seam). Knows nothing about sockets.
/// </summary>
public sealed class IscsiServer : IAsyncDisposable
{
    // Copy-on-write, so logins and SendTargets read them without a lock while a reload adds or removes targets.
    private volatile Dictionary<string, IscsiTargetConfig> _targets;
    private volatile List<IscsiTargetConfig> _targetList;
    private readonly object _sync = new();
    private readonly List<IscsiSession> _sessions = [];
    private readonly HashSet<IscsiConnection> _connections = [];
    private ushort _nextTsih = 1;
    private volatile bool _shuttingDown;
    private readonly List<(IscsiTargetConfig Target, Action<ulong, IReadOnlyCollection<string>> Handler)> _subscriptions = [];

    public IscsiServer(IEnumerable<IscsiTargetConfig> targets, IscsiServerOptions options, ILogger log)
    {
        ArgumentNullException.ThrowIfNull(targets);
        Options = options ?? throw new ArgumentNullException(nameof(options));
        Log = (log ?? throw new ArgumentNullException(nameof(log))).ForContext<IscsiServer>();
        var problems = options.Validate().ToList();
        var list = targets.ToList();
        var map = new Dictionary<string, IscsiTargetConfig>(StringComparer.OrdinalIgnoreCase);
        foreach (var t in list)
        {
            if (string.IsNullOrWhiteSpace(t.Iqn)) problems.Add("a target has an empty IQN");
            else if (!map.TryAdd(t.Iqn, t)) problems.Add($"target IQN '{t.Iqn}' is configured twice");
        }
        _targetList = list;
        _targets = map;
        if (problems.Count > 0)
            throw new ArgumentException("Invalid iSCSI configuration: " + string.Join("; ", problems));

        Budget = new InFlightBudget(options.MaxInFlightBytes);
        Counters.Budget = Budget;
        // A delayed answer must still come before the login timeout closes the connection.
        var maxDelay = TimeSpan.FromTicks(Math.Min(options.ChapFailureMaxDelay.Ticks, options.LoginTimeout.Ticks * 4 / 5));
        AuthThrottle = new AuthThrottle(TimeSpan.FromTicks(Math.Min(options.ChapFailureDelay.Ticks, maxDelay.Ticks)), maxDelay);
        // Large Data-Out buffers: a pool owned by this server (MemoryPool.Shared collapses with deep 1 MiB queues) that
        // gives back, after an idle interval, what it no longer needs.
        BufferPool = new IntegrityTarget.Storage.TrimmingArrayPool(Math.Max(options.MaxCommandDataLength, 1 << 20), 16, TimeSpan.FromSeconds(10));
        foreach (var t in _targetList) Subscribe(t);
    }

    private void Subscribe(IscsiTargetConfig target)
    {
        Action<ulong, IReadOnlyCollection<string>> handler = (lun, ports) => OnAbortTasksRequested(target, lun, ports);
        target.Scsi.AbortTasksRequested += handler;
        lock (_subscriptions) _subscriptions.Add((target, handler));
    }

    /// <summary>Serves one more target from now on (reload).</summary>
    public void AddTarget(IscsiTargetConfig target)
    {
        lock (_sync)
        {
            if (_targets.ContainsKey(target.Iqn)) throw new ArgumentException($"target IQN '{target.Iqn}' is served already");
            _targets = new Dictionary<string, IscsiTargetConfig>(_targets, StringComparer.OrdinalIgnoreCase) { [target.Iqn] = target };
            _targetList = [.. _targetList, target];
        }
        Subscribe(target);
    }

    /// <summary>Stops serving a target (reload): no new logins, and its sessions are closed.</summary>
    public async Task RemoveTargetAsync(string iqn)
    {
        IscsiTargetConfig? gone;
        lock (_sync)
        {
            if (!_targets.TryGetValue(iqn, out gone)) return;
            var map = new Dictionary<string, IscsiTargetConfig>(_targets, StringComparer.OrdinalIgnoreCase);
            map.Remove(iqn);
            _targets = map;
            _targetList = _targetList.Where(t => !ReferenceEquals(t, gone)).ToList();
        }
        await CloseSessionsAsync(s => ReferenceEquals(s.Target, gone), "target removed").ConfigureAwait(false);
        lock (_subscriptions)
        {
            foreach (var (t, h) in _subscriptions.Where(x => ReferenceEquals(x.Target, gone)).ToList())
            {
                t.Scsi.AbortTasksRequested -= h;
                _subscriptions.Remove((t, h));
            }
        }
    }

    /// <summary>Closes every session of <paramref name="target"/> whose initiator it no longer admits (ACL changed by a reload).</summary>
    public Task<int> CloseSessionsNotAllowedAsync(IscsiTargetConfig target) =>
        CloseSessionsAsync(s => ReferenceEquals(s.Target, target) && !target.Allows(s.InitiatorName), "initiator no longer in the ACL");

    private async Task<int> CloseSessionsAsync(Func<IscsiSession, bool> which, string reason)
    {
        List<IscsiSession> victims;
        lock (_sync) victims = _sessions.Where(which).ToList();
        foreach (var s in victims)
        {
            Log.Information("Closing session {Initiator} TSIH {Tsih} on {Target}: {Reason}", s.InitiatorName, s.Tsih, s.Target?.Iqn, reason);
            await s.Connection.CloseAsync(reason).ConfigureAwait(false);
        }
        return victims.Count;
    }

    public IscsiServerOptions Options { get; }
    /// <summary>Logins, CHAP failures, rejects, connections and sessions, for status and metrics.</summary>
    public IscsiCounters Counters { get; } = new();
    /// <summary>Connections refused at the limit or closed to make room: a few lines per minute at most.</summary>
    private readonly LogLimiter _connectionLimitLog = new(TimeSpan.FromSeconds(10), maxPerInterval: 2);
    /// <summary>Failed logins: one line per address, initiator and status per 10 s, at most 20 lines per 10 s.</summary>
    internal LogLimiter LoginFailureLog { get; } = new(TimeSpan.FromSeconds(10));
    /// <summary>Command data in flight across all connections, bounded by <see cref="IscsiServerOptions.MaxInFlightBytes"/>.</summary>
    public InFlightBudget Budget { get; }
    /// <summary>The growing delay before a failed authentication is answered.</summary>
    internal AuthThrottle AuthThrottle { get; }
    /// <summary>At most one "discovery found nothing for this initiator" hint per initiator per minute.</summary>
    internal LogLimiter DiscoveryHints { get; } = new(TimeSpan.FromMinutes(1));
    internal ILogger Log { get; }
    internal IntegrityTarget.Storage.TrimmingArrayPool BufferPool { get; }
    internal IReadOnlyList<IscsiTargetConfig> Targets => _targetList;
    public bool IsShuttingDown => _shuttingDown;

    public IReadOnlyCollection<SessionInfo> Sessions
    {
        get { lock (_sync) return _sessions.Select(s => s.Snapshot()).ToList(); }
    }

    internal IscsiTargetConfig? FindTarget(string iqn) => _targets.GetValueOrDefault(iqn);

    /// <summary>
    /// Creates the protocol state for one accepted transport connection. Returns null while shutting down
    /// or when <see cref="IscsiServerOptions.ConnectionLimit"/> connections are open: the transport then
    /// closes the socket at once. When too many connections are still logging in, the one logging in
    /// longest is closed to make room (a flood of idle connections cannot lock out real logins).
    /// </summary>
    public IscsiConnection? CreateConnection(IPduSink sink, IPEndPoint? local, IPEndPoint? remote)
    {
        ArgumentNullException.ThrowIfNull(sink);
        IscsiConnection? evict = null;
        IscsiConnection c;
        lock (_sync)
        {
            if (_shuttingDown) return null;
            if (_connections.Count >= Options.ConnectionLimit)
            {
                Counters.RecordConnectionRefused();
                if (_connectionLimitLog.ShouldLog("refused", out var more))
                    Log.Warning("Connection from {Remote} refused: {Limit} connections are open (Iscsi:ConnectionLimit){More}",
                        remote?.ToString() ?? "?", Options.ConnectionLimit, more > 0 ? $"; {more} more refused since the last such line" : "");
                return null;
            }
            int pending = 0;
            foreach (var open in _connections)
            {
                if (!open.IsLoggingIn) continue;
                pending++;
                if (evict is null || open.CreatedTimestamp < evict.CreatedTimestamp) evict = open;
            }
            if (pending < Options.PendingLoginLimit) evict = null;
            c = new IscsiConnection(this, sink, local, remote);
            _connections.Add(c);
            Counters.ConnectionOpened();
        }
        if (evict is not null)
        {
            Counters.RecordPendingLoginEvicted();
            if (_connectionLimitLog.ShouldLog("evicted", out var more))
                Log.Warning("{Limit} connections are still logging in: closing the oldest, from {Remote}, to make room{More}",
                    Options.PendingLoginLimit, evict.Remote?.ToString() ?? "?", more > 0 ? $" ({more} more since the last such line)" : "");
            _ = evict.CloseAsync("too many connections logging in");
        }
        return c;
    }

    /// <summary>
    /// Closes up to <paramref name="count"/> of the connections that have been logging in longest, to free
    /// their file descriptors (a transport calls this when accept fails for want of them); logged-in
    /// sessions are never touched. Returns how many were closed.
    /// </summary>
    public int ShedPendingLogins(int count)
    {
        List<IscsiConnection> victims;
        lock (_sync)
            victims = _connections.Where(c => c.IsLoggingIn).OrderBy(c => c.CreatedTimestamp).Take(count).ToList();
        foreach (var v in victims)
        {
            Counters.RecordPendingLoginEvicted();
            _ = v.CloseAsync("closed to free file descriptors");
        }
        return victims.Count;
    }

    internal void ConnectionClosed(IscsiConnection c)
    {
        lock (_sync)
        {
            if (_connections.Remove(c)) Counters.ConnectionClosed();
            if (c.Session is { } s && _sessions.Remove(s)) Counters.SessionClosed(s.Target?.Iqn);
        }
    }

    /// <summary>
    /// Registers a session that completed login. A session with the same initiator name, ISID and target
    /// is reinstated: it is closed (tasks aborted, nexus lost) before the new one becomes active.
    /// </summary>
    internal async Task<IscsiSession?> RegisterSessionAsync(
        IscsiTargetConfig? target, string initiator, ulong isid, ushort requestedTsih, IscsiConnection connection,
        Func<ushort, IscsiSession> create)
    {
        List<IscsiSession> old;
        lock (_sync)
        {
            old = _sessions.Where(s => s.Target == target && s.Isid == isid &&
                                       string.Equals(s.InitiatorName, initiator, StringComparison.OrdinalIgnoreCase)).ToList();
            foreach (var s in old)
                if (_sessions.Remove(s)) Counters.SessionClosed(s.Target?.Iqn);
        }
        foreach (var s in old)
        {
            Log.Information("Reinstating session {Initiator} ISID {Isid} TSIH {Tsih}: closing the old one", LogText.Escape(initiator), LunAddress.IsidHex(isid), s.Tsih);
            await s.Connection.CloseAsync("session reinstated").ConfigureAwait(false);
        }
        lock (_sync)
        {
            if (_shuttingDown) return null;
            ushort tsih = requestedTsih != 0 && old.Any(o => o.Tsih == requestedTsih) ? requestedTsih : AllocateTsih();
            var session = create(tsih);
            _sessions.Add(session);
            Counters.SessionOpened(target?.Iqn);
            return session;
        }
    }

    /// <summary>Whether a login naming an existing TSIH refers to a session of this initiator and ISID.</summary>
    internal bool SessionExists(ushort tsih, string initiator, ulong isid)
    {
        lock (_sync)
            return _sessions.Any(s => s.Tsih == tsih && s.Isid == isid && string.Equals(s.InitiatorName, initiator, StringComparison.OrdinalIgnoreCase));
    }

    private ushort AllocateTsih()
    {
        // Called under _sync. TSIH 0 is reserved for "new session".
        for (int i = 0; i < 65535; i++)
        {
            var t = _nextTsih++;
            if (_nextTsih == 0) _nextTsih = 1;
            if (t != 0 && !_sessions.Any(s => s.Tsih == t)) return t;
        }
        throw new InvalidOperationException("no free TSIH: 65535 sessions are open");
    }

    internal IReadOnlyList<IscsiConnection> ConnectionsOf(IscsiTargetConfig target)
    {
        lock (_sync) return _sessions.Where(s => s.Target == target).Select(s => s.Connection).ToList();
    }

    private void OnAbortTasksRequested(IscsiTargetConfig target, ulong lun, IReadOnlyCollection<string> ports)
    {
        foreach (var c in ConnectionsOf(target))
        {
            if (c.Session?.Nexus is { } n && ports.Contains(n.InitiatorPortName))
                _ = c.AbortTasksAsync(t => t.Lun == lun, notifyInitiator: true, "PREEMPT AND ABORT");
        }
    }

    /// <summary>Stops accepting logins, lets in-flight commands finish, then closes every connection.</summary>
    public async Task ShutdownAsync(CancellationToken ct)
    {
        List<IscsiConnection> conns;
        bool first;
        lock (_sync)
        {
            first = !_shuttingDown;
            _shuttingDown = true;
            conns = _connections.ToList();
        }
        // Once, and only when there is something to drain (the host already says that it is stopping).
        if (first && conns.Count > 0) Log.Information("iSCSI shutdown: draining {Count} connections", conns.Count);
        await Task.WhenAll(conns.Select(c => c.DrainAndCloseAsync(ct))).ConfigureAwait(false);
    }

    /// <summary>Shuts down (giving in-flight commands up to 5 s; call <see cref="ShutdownAsync"/> first for a longer drain).</summary>
    public async ValueTask DisposeAsync()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        await ShutdownAsync(cts.Token).ConfigureAwait(false);
        foreach (var (t, h) in _subscriptions) t.Scsi.AbortTasksRequested -= h;
        _subscriptions.Clear();
        BufferPool.Dispose();
    }
}
