using System.Net;
using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Serving;
using Serilog;
using IntegrityTarget.Iscsi;
using IntegrityTarget.Transport;

namespace IntegrityTarget.Host.Wiring;

/// <summary>The network side of a serving process: the iSCSI server over the configured transport.</summary>
public sealed class FrontEnd : IAsyncDisposable
{
    private readonly IscsiServer _server;
    private readonly IIscsiTransport _transport;

    private FrontEnd(IscsiServer server, IIscsiTransport transport) { _server = server; _transport = transport; }

    private static ChapCredentials? Chap(ChapSettings? c) => c == null ? null : new ChapCredentials(c.User, c.Secret);

    /// <summary>Builds SCSI targets, the iSCSI server and the transport, and starts listening.</summary>
    /// <param name="copyTargets">Resolves EXTENDED COPY units across targets (the host's ACL view).</param>
    /// <param name="metrics">When metrics are on: times every command of every target.</param>
    public static async Task<FrontEnd> StartAsync(HostConfig config, IReadOnlyList<ServedTarget> targets, ILogger log, CancellationToken ct,
        Scsi.ICopyTargetResolver? copyTargets = null, Metrics.HostMetrics? metrics = null)
    {
        var iscsiTargets = targets.Select(t => new IscsiTargetConfig
        {
            Iqn = t.Iqn,
            Alias = t.Settings.Alias,
            Scsi = ScsiWiring.Build(t, log, copyTargets, metrics),
            AllowedInitiators = t.Settings.AllowedInitiators,
            Chap = Chap(t.Settings.Chap),
            MutualChap = Chap(t.Settings.MutualChap),
        }).ToList();
        var s = config.Iscsi;
        var options = new IscsiServerOptions
        {
            MaxRecvDataSegmentLength = s.MaxRecvDataSegmentLength,
            MaxBurstLength = s.MaxBurstLength,
            FirstBurstLength = s.FirstBurstLength,
            ImmediateData = s.ImmediateData,
            InitialR2T = s.InitialR2T,
            MaxOutstandingR2T = s.MaxOutstandingR2T,
            QueueDepth = s.QueueDepth,
            NopInterval = TimeSpan.FromSeconds(s.NopIntervalSeconds),
            NopTimeout = TimeSpan.FromSeconds(s.NopTimeoutSeconds),
            DiscoveryChap = Chap(s.DiscoveryChap),
            DiscoveryMutualChap = Chap(s.DiscoveryMutualChap),
        };
        if (options.Validate() is { Count: > 0 } errors)
            throw new CliException("Iscsi: " + string.Join("; ", errors), ExitCodes.Usage);
        var server = new IscsiServer(iscsiTargets, options, log);
        IIscsiTransport? transport = null;
        try
        {
            transport = config.Transport switch
            {
                "dotnetty" => new DotNettyTransport(server, log),
                _ => new SocketTransport(server, log),
            };
            await transport.StartAsync(config.Portals, ct);
        }
        catch
        {
            if (transport != null) await transport.DisposeAsync();
            await server.DisposeAsync();
            throw;
        }
        return new FrontEnd(server, transport);
    }

    public IReadOnlyList<IPEndPoint> BoundEndpoints => _transport.BoundEndpoints;

    public IReadOnlyList<object> Sessions() => [.. _server.Sessions];

    public IReadOnlyList<SessionInfo> SessionInfos() => [.. _server.Sessions];

    /// <summary>The iSCSI layer's counters (logins, CHAP failures, rejects, connections, sessions per target).</summary>
    public IscsiCounters Counters => _server.Counters;

    /// <summary>
    /// The server refuses new logins and lets in-flight commands finish; then the transport stops
    /// listening and closes what is left.
    /// </summary>
    public async Task ShutdownAsync(CancellationToken ct)
    {
        try { await _server.ShutdownAsync(ct); }
        finally { await _transport.StopAsync(CancellationToken.None); }
    }

    public static bool IsBindFailure(Exception e) => e is TransportBindException;

    public async ValueTask DisposeAsync()
    {
        await _transport.DisposeAsync();
        await _server.DisposeAsync();
    }
}
