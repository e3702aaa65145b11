using System.Net;
using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Serving;
using Serilog;
using IntegrityTarget.Iscsi;
using IntegrityTarget.Transport;

namespace IntegrityTarget.Host.Wiring;

/// <summary>
/// The network side of a serving process: the iSCSI server, and one transport per portal, so a reload can
/// add or remove a portal without touching the others.
/// </summary>
public sealed class FrontEnd : IAsyncDisposable
{
    private readonly IscsiServer _server;
    private readonly HostConfig _config;
    private readonly ILogger _log;
    private readonly Scsi.ICopyTargetResolver? _copyTargets;
    private readonly Metrics.HostMetrics? _metrics;
    private readonly List<(IPEndPoint Portal, IIscsiTransport Transport)> _portals = [];
    private readonly Lock _gate = new();

    private FrontEnd(IscsiServer server, HostConfig config, ILogger log, Scsi.ICopyTargetResolver? copyTargets, Metrics.HostMetrics? metrics)
    {
        _server = server; _config = config; _log = log; _copyTargets = copyTargets; _metrics = metrics;
    }

    private static ChapCredentials? Chap(ChapSettings? c) => c == null ? null : new ChapCredentials(c.User, c.Secret);

    /// <summary>The iSCSI side of one served target (its SCSI layer built over its opened LUNs).</summary>
    private IscsiTargetConfig Build(ServedTarget t)
    {
        var scsi = ScsiWiring.Build(t, _log, _copyTargets);
        t.Scsi = scsi;
        var config = new IscsiTargetConfig
        {
            Iqn = t.Iqn,
            Alias = t.Settings.Alias,
            Scsi = _metrics == null ? scsi : _metrics.Time(t.Iqn, scsi),
            AllowedInitiators = t.Settings.AllowedInitiators,
            Chap = Chap(t.Settings.Chap),
            MutualChap = Chap(t.Settings.MutualChap),
        };
        t.Iscsi = config;
        return config;
    }

    /// <summary>Builds SCSI targets, the iSCSI server and one transport per portal, and starts listening.</summary>
    /// <param name="copyTargets">Resolves EXTENDED COPY units across targets (the host's ACL view).</param>
    /// <param name="metrics">When metrics are on: times every command of every target.</param>
    public static async Task<FrontEnd> StartAsync(HostConfig config, IReadOnlyList<ServedTarget> targets, ILogger log, CancellationToken ct,
        Scsi.ICopyTargetResolver? copyTargets = null, Metrics.HostMetrics? metrics = null)
    {
        var s = config.Iscsi;
        long? fdLimit = FileDescriptorLimit.Soft();
        int connectionLimit = FileDescriptorLimit.ConnectionLimit(s.ConnectionLimit, fdLimit, out var fdWarning);
        if (fdWarning != null) log.Warning("{Warning}", fdWarning);
        log.Information("Up to {Limit} connections (RLIMIT_NOFILE {FdLimit}); {Pending} of them may be logging in at once",
            connectionLimit, fdLimit?.ToString() ?? "unknown", Math.Max(8, connectionLimit / 4));
        var options = new IscsiServerOptions
        {
            // A gateway of a group is one target port: its portal group tag is its port group (and relative port).
            PortalGroupTag = config.Ha?.SelfGateway.PortGroup ?? 1,
            MaxRecvDataSegmentLength = s.MaxRecvDataSegmentLength,
            MaxBurstLength = s.MaxBurstLength,
            FirstBurstLength = s.FirstBurstLength,
            ImmediateData = s.ImmediateData,
            InitialR2T = s.InitialR2T,
            MaxOutstandingR2T = s.MaxOutstandingR2T,
            QueueDepth = s.QueueDepth,
            NopInterval = TimeSpan.FromSeconds(s.NopIntervalSeconds),
            NopTimeout = TimeSpan.FromSeconds(s.NopTimeoutSeconds),
            ConnectionLimit = connectionLimit,
            MaxInFlightBytes = s.MaxInFlightBytes,
            MaxCommandDataLength = (int)Math.Min(64L << 20, s.MaxInFlightBytes),
            ChapFailureDelay = TimeSpan.FromMilliseconds(s.ChapFailureDelayMilliseconds),
            ChapFailureMaxDelay = TimeSpan.FromSeconds(Math.Max(s.ChapFailureMaxDelaySeconds, s.ChapFailureDelayMilliseconds / 1000.0)),
            DiscoveryChap = Chap(s.DiscoveryChap),
            DiscoveryMutualChap = Chap(s.DiscoveryMutualChap),
        };
        if (options.Validate() is { Count: > 0 } errors)
            throw new CliException("Iscsi: " + string.Join("; ", errors), ExitCodes.Usage);
        var server = new IscsiServer([], options, log);
        var front = new FrontEnd(server, config, log, copyTargets, metrics);
        try
        {
            foreach (var t in targets) server.AddTarget(front.Build(t));
            foreach (var p in config.Portals) await front.AddPortalAsync(p, ct);
        }
        catch
        {
            await front.DisposeAsync();
            throw;
        }
        return front;
    }

    /// <summary>Starts listening on one more portal; throws <see cref="TransportBindException"/> when it cannot be bound.</summary>
    public async Task AddPortalAsync(IPEndPoint portal, CancellationToken ct)
    {
        IIscsiTransport transport = _config.Transport switch
        {
            "dotnetty" => new DotNettyTransport(_server, _log),
            _ => new SocketTransport(_server, _log),
        };
        try { await transport.StartAsync([portal], ct); }
        catch
        {
            await transport.DisposeAsync();
            throw;
        }
        lock (_gate) _portals.Add((portal, transport));
    }

    /// <summary>Stops listening on a portal; the connections that came in through it are closed.</summary>
    public async Task RemovePortalAsync(IPEndPoint portal)
    {
        List<IIscsiTransport> gone;
        lock (_gate)
        {
            gone = _portals.Where(p => p.Portal.Equals(portal)).Select(p => p.Transport).ToList();
            _portals.RemoveAll(p => p.Portal.Equals(portal));
        }
        foreach (var t in gone) await t.DisposeAsync();
    }

    /// <summary>The portals as configured (port 0 as given), for reload's comparison.</summary>
    public IReadOnlyList<IPEndPoint> Portals { get { lock (_gate) return _portals.Select(p => p.Portal).ToList(); } }

    /// <summary>Serves one more target (reload).</summary>
    public void AddTarget(ServedTarget t) => _server.AddTarget(Build(t));

    /// <summary>Stops serving a target and closes its sessions (reload).</summary>
    public Task RemoveTargetAsync(string iqn) => _server.RemoveTargetAsync(iqn);

    /// <summary>Applies a target's new alias, ACL and CHAP; closes the sessions of initiators it no longer admits.</summary>
    public Task<int> UpdateAccessAsync(ServedTarget t)
    {
        var c = t.Iscsi ?? throw new InvalidOperationException($"{t.Iqn} is not served");
        c.Alias = t.Settings.Alias;
        c.Chap = Chap(t.Settings.Chap);
        c.MutualChap = Chap(t.Settings.MutualChap);
        c.AllowedInitiators = t.Settings.AllowedInitiators;
        return _server.CloseSessionsNotAllowedAsync(c);
    }

    /// <summary>A logical unit for one more LUN of a served target.</summary>
    public Scsi.ScsiLogicalUnit BuildUnit(ServedTarget t, ServedLun l) => ScsiWiring.BuildUnit(t, l, _log);

    public IReadOnlyList<IPEndPoint> BoundEndpoints { get { lock (_gate) return _portals.SelectMany(p => p.Transport.BoundEndpoints).ToList(); } }

    public IReadOnlyList<object> Sessions() => [.. _server.Sessions];

    public IReadOnlyList<SessionInfo> SessionInfos() => [.. _server.Sessions];

    /// <summary>The iSCSI layer's counters (logins, CHAP failures, rejects, connections, sessions per target).</summary>
    public IscsiCounters Counters => _server.Counters;

    /// <summary>
    /// The server refuses new logins and lets in-flight commands finish; then the transports stop
    /// listening and close what is left.
    /// </summary>
    public async Task ShutdownAsync(CancellationToken ct)
    {
        try { await _server.ShutdownAsync(ct); }
        finally
        {
            List<IIscsiTransport> all;
            lock (_gate) all = _portals.Select(p => p.Transport).ToList();
            foreach (var t in all) await t.StopAsync(CancellationToken.None);
        }
    }

    public static bool IsBindFailure(Exception e) => e is TransportBindException;

    public async ValueTask DisposeAsync()
    {
        List<IIscsiTransport> all;
        lock (_gate) { all = _portals.Select(p => p.Transport).ToList(); _portals.Clear(); }
        foreach (var t in all) await t.DisposeAsync();
        await _server.DisposeAsync();
    }
}
