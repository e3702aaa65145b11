using System.Diagnostics;
using System.Net;
using IntegrityTarget.Host.Serving;
using IntegrityTarget.Host.Wiring;
using IntegrityTarget.Scsi;
using Prometheus;

namespace IntegrityTarget.Host.Metrics;

/// <summary>
/// The Prometheus endpoint of a serving process (off unless Metrics:Listen is set). Built on prometheus-net:
/// it gets the text exposition format, histograms and the process/.NET metrics right and serves them from its
/// own HttpListener, so no web framework comes in. Everything lives in this object's own registry (no static
/// state). Counters the layers already keep (volume counters, unit health, sessions) are copied in just
/// before each scrape; only command latency is measured here, by <see cref="TimedScsiTarget"/>.
/// Labels are target and LUN (and command class for latency): a bounded set, never an LBA or an initiator.
/// </summary>
public sealed class HostMetrics : IDisposable
{
    public const string Prefix = "integritytarget_";

    private readonly CollectorRegistry _registry = Prometheus.Metrics.NewCustomRegistry();
    private readonly Func<IReadOnlyList<ServedTarget>> _targets;
    private readonly Func<IReadOnlyList<Iscsi.SessionInfo>> _sessions;
    private readonly Func<Iscsi.IscsiCountersSnapshot?> _iscsi;
    private readonly Counter _logins, _chapFailures, _rejected, _acceptErrors, _refused;
    private readonly Gauge _connectionsOpen;
    private readonly MetricServer? _server;
    private readonly HashSet<(string, string)> _lunLabels = [];
    private readonly HashSet<string> _targetLabels = [];
    // The timing wrapper of each served target, so a LUN whose series were dropped is timed afresh if it comes back.
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, TimedScsiTarget> _timed = new(StringComparer.OrdinalIgnoreCase);
    private readonly Lock _gate = new();

    private readonly Counter _reads, _writes, _readBytes, _writtenBytes, _mismatches, _journalCommits, _flushes, _unmaps, _checkpoints;
    private readonly Gauge _badLbas, _capacity, _slots, _freeSlots, _scrubRunning, _scrubProgress, _lastScrub, _lastScrubBad;
    private readonly Gauge _sessionsGauge, _connections;
    private readonly Histogram _latency;

    private HostMetrics(Func<IReadOnlyList<ServedTarget>> targets, Func<IReadOnlyList<Iscsi.SessionInfo>> sessions,
        Func<Iscsi.IscsiCountersSnapshot?> iscsi, IPEndPoint? listen)
    {
        _targets = targets; _sessions = sessions; _iscsi = iscsi;
        var f = Prometheus.Metrics.WithCustomRegistry(_registry);
        string[] lun = ["target", "lun"];
        Counter C(string name, string help) => f.CreateCounter(Prefix + name, help, lun);
        Gauge G(string name, string help, params string[] labels) => f.CreateGauge(Prefix + name, help, labels.Length > 0 ? labels : lun);
        _reads = C("lun_reads_total", "Read operations completed by the LUN's volume.");
        _writes = C("lun_writes_total", "Write operations completed by the LUN's volume.");
        _readBytes = C("lun_read_bytes_total", "Bytes read from the LUN.");
        _writtenBytes = C("lun_written_bytes_total", "Bytes written to the LUN.");
        _mismatches = C("lun_integrity_mismatches_total", "Reads that failed tag verification (each also logged once).");
        _journalCommits = C("lun_journal_commits_total", "Journal transactions committed.");
        _flushes = C("lun_flushes_total", "Flushes (SYNCHRONIZE CACHE and internal durable points).");
        _unmaps = C("lun_unmaps_total", "Unmap / write-zeroes operations.");
        _checkpoints = C("lun_checkpoints_total", "Journal checkpoints since the volume was formatted (integrity LUNs).");
        _badLbas = G("lun_bad_lbas", "Distinct LBAs known to fail verification (seen by a command or the last scrub).");
        _capacity = G("lun_capacity_bytes", "Logical capacity of the LUN.");
        _slots = G("lun_slots", "Physical slots of an integrity LUN (one per chunk plus spares).");
        _freeSlots = G("lun_free_slots", "Free slots of an integrity LUN; redirect-on-write waits when none is left.");
        _scrubRunning = G("lun_scrub_running", "1 while an online scrub of the LUN runs.");
        _scrubProgress = G("lun_scrub_progress_ratio", "Fraction of the LUN the running (or last) scrub has checked.");
        _lastScrub = G("lun_last_scrub_timestamp_seconds", "When the last scrub of the LUN finished (Unix time; 0 = none since start).");
        _lastScrubBad = G("lun_last_scrub_bad_blocks", "Bad blocks the last scrub found.");
        _sessionsGauge = G("target_sessions", "Logged-in normal sessions per target.", "target");
        _connections = G("target_connections", "Connections of the logged-in sessions per target.", "target");
        _latency = f.CreateHistogram(Prefix + "scsi_command_duration_seconds", "SCSI command service time, by class (read, write, other).",
            new HistogramConfiguration
            {
                LabelNames = ["target", "lun", "class"],
                Buckets = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
            });
        _logins = f.CreateCounter(Prefix + "iscsi_logins_total", "Logins by result: ok (reached full feature phase) or failed (any failure status).", "result");
        _chapFailures = f.CreateCounter(Prefix + "iscsi_chap_failures_total", "Logins refused for CHAP (wrong name or response, or CHAP skipped).");
        _rejected = f.CreateCounter(Prefix + "iscsi_rejected_pdus_total", "Reject PDUs sent.");
        _acceptErrors = f.CreateCounter(Prefix + "iscsi_accept_errors_total", "Failed accept calls on the portals (e.g. out of file descriptors).");
        _refused = f.CreateCounter(Prefix + "iscsi_connections_refused_total", "Connections closed at once because the connection cap was reached.");
        _connectionsOpen = f.CreateGauge(Prefix + "iscsi_connections", "Connections open now (logging in or logged in).");
        f.CreateGauge(Prefix + "build_info", "Version of the serving process.", "version").WithLabels(TargetHost.Version).Set(1);
        DotNetStats.Register(_registry);
        _registry.AddBeforeCollectCallback(Refresh);
        if (listen != null)
        {
            string host = listen.Address.Equals(IPAddress.Any) || listen.Address.Equals(IPAddress.IPv6Any) ? "+" :
                listen.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{listen.Address}]" : listen.Address.ToString();
            _server = new MetricServer(host, listen.Port, "metrics/", _registry);
        }
    }

    /// <summary>Starts the endpoint on <paramref name="listen"/>.</summary>
    /// <exception cref="Cli.CliException">The address cannot be bound (in use, not ours, no permission).</exception>
    public static HostMetrics Start(IPEndPoint listen, Func<IReadOnlyList<ServedTarget>> targets, Func<IReadOnlyList<Iscsi.SessionInfo>> sessions,
        Func<Iscsi.IscsiCountersSnapshot?> iscsi)
    {
        var m = new HostMetrics(targets, sessions, iscsi, listen);
        try { m._server!.Start(); }
        catch (Exception e) when (e is HttpListenerException or System.Net.Sockets.SocketException or InvalidOperationException)
        {
            m.Dispose();
            throw new Cli.CliException($"cannot serve metrics on {listen}: {e.Message} (Metrics:Listen / --metrics ADDR:PORT)");
        }
        return m;
    }

    /// <summary>Metrics without an endpoint, for tests: <see cref="ExportAsync"/> renders what a scrape would see.</summary>
    internal static HostMetrics Detached(Func<IReadOnlyList<ServedTarget>> targets, Func<IReadOnlyList<Iscsi.SessionInfo>> sessions,
        Func<Iscsi.IscsiCountersSnapshot?> iscsi) => new(targets, sessions, iscsi, null);

    internal async Task<string> ExportAsync()
    {
        using var ms = new MemoryStream();
        await _registry.CollectAndExportAsTextAsync(ms);
        return System.Text.Encoding.UTF8.GetString(ms.ToArray());
    }

    /// <summary>Wraps a target's SCSI layer so every command's service time lands in the latency histogram.</summary>
    public IScsiTarget Time(string iqn, IScsiTarget inner) => _timed[iqn] = new TimedScsiTarget(inner, iqn, _latency);

    private void Refresh()
    {
        lock (_gate)
        {
            var seenLuns = new HashSet<(string, string)>();
            foreach (var t in _targets())
            {
                foreach (var l in t.Luns)
                {
                    var key = (t.Iqn, l.Lun.ToString(System.Globalization.CultureInfo.InvariantCulture));
                    seenLuns.Add(key);
                    string[] k = [key.Item1, key.Item2];
                    var v = l.Volume;
                    if (v == null) continue; // a shared LUN another gateway owns now
                    var c = v.Counters;
                    _reads.WithLabels(k).IncTo(c.Reads);
                    _writes.WithLabels(k).IncTo(c.Writes);
                    _readBytes.WithLabels(k).IncTo(c.BytesRead);
                    _writtenBytes.WithLabels(k).IncTo(c.BytesWritten);
                    _mismatches.WithLabels(k).IncTo(c.Mismatches);
                    _journalCommits.WithLabels(k).IncTo(c.JournalCommits);
                    _flushes.WithLabels(k).IncTo(c.Flushes);
                    _unmaps.WithLabels(k).IncTo(c.Unmaps);
                    _capacity.WithLabels(k).Set((double)v.BlockCount * v.BlockSize);
                    if (IntegrityWiring.Figures(v) is { } fig)
                    {
                        _checkpoints.WithLabels(k).IncTo(fig.Checkpoints);
                        _slots.WithLabels(k).Set(fig.Slots);
                        _freeSlots.WithLabels(k).Set(fig.FreeSlots);
                    }
                    if (l.Unit is { } u)
                    {
                        _badLbas.WithLabels(k).Set(u.Health.DistinctBadLbas);
                        if (u.Health.LastScrub is { } s)
                        {
                            _lastScrub.WithLabels(k).Set(s.FinishedUtc.ToUnixTimeSeconds());
                            _lastScrubBad.WithLabels(k).Set(s.BadBlocks);
                        }
                        else _lastScrub.WithLabels(k).Set(0);
                    }
                    _scrubRunning.WithLabels(k).Set(l.ScrubProgress.HasValue ? 1 : 0);
                    if (l.ScrubProgress is { } p) _scrubProgress.WithLabels(k).Set(p);
                }
            }
            if (_iscsi() is { } n)
            {
                _logins.WithLabels("ok").IncTo(n.LoginsSucceeded);
                _logins.WithLabels("failed").IncTo(n.LoginsFailed);
                _chapFailures.IncTo(n.ChapFailures);
                _rejected.IncTo(n.RejectedPdus);
                _acceptErrors.IncTo(n.AcceptErrors);
                _refused.IncTo(n.ConnectionsRefused);
                _connectionsOpen.Set(n.ConnectionsOpen);
            }
            var sessions = _sessions();
            var seenTargets = new HashSet<string>();
            foreach (var t in _targets())
            {
                seenTargets.Add(t.Iqn);
                var mine = sessions.Where(s => !s.Discovery && string.Equals(s.Target, t.Iqn, StringComparison.OrdinalIgnoreCase)).ToList();
                _sessionsGauge.WithLabels(t.Iqn).Set(mine.Count);
                _connections.WithLabels(t.Iqn).Set(mine.Sum(s => s.Connections));
            }
            // LUNs and targets removed by a reload stop being exported.
            foreach (var gone in _lunLabels.Except(seenLuns).ToList())
            {
                string[] k = [gone.Item1, gone.Item2];
                foreach (var m in new Collector<Counter.Child>[] { _reads, _writes, _readBytes, _writtenBytes, _mismatches, _journalCommits, _flushes, _unmaps, _checkpoints })
                    m.RemoveLabelled(k);
                foreach (var m in new Collector<Gauge.Child>[] { _badLbas, _capacity, _slots, _freeSlots, _scrubRunning, _scrubProgress, _lastScrub, _lastScrubBad })
                    m.RemoveLabelled(k);
                foreach (var cls in TimedScsiTarget.Classes) _latency.RemoveLabelled(gone.Item1, gone.Item2, cls);
                // After the removal (a command timed in between only lands in the dropped child).
                if (_timed.TryGetValue(gone.Item1, out var timed)) timed.Forget(ulong.Parse(gone.Item2, System.Globalization.CultureInfo.InvariantCulture));
            }
            foreach (var gone in _targetLabels.Except(seenTargets).ToList())
            {
                _sessionsGauge.RemoveLabelled(gone); _connections.RemoveLabelled(gone);
                _timed.TryRemove(gone, out _);
            }
            _lunLabels.Clear(); _lunLabels.UnionWith(seenLuns);
            _targetLabels.Clear(); _targetLabels.UnionWith(seenTargets);
        }
    }

    public void Dispose()
    {
        if (_server != null)
        {
            try { _server.Stop(); } catch (ObjectDisposedException) { }
            _server.Dispose();
        }
    }
}

/// <summary>
/// A target's SCSI layer with a stopwatch around every command. Commands are classed by opcode into read,
/// write and other; one histogram child per (LUN, class) is looked up once and kept. Only LUNs the target
/// serves are timed: an initiator may address any of 16384 LUN numbers, and a series for each would leave
/// the number of series to the initiator.
/// </summary>
internal sealed class TimedScsiTarget(IScsiTarget inner, string iqn, Histogram latency) : IScsiTarget
{
    public static readonly string[] Classes = ["read", "write", "other"];
    private readonly System.Collections.Concurrent.ConcurrentDictionary<(ulong, int), Histogram.Child> _children = new();

    public IReadOnlyList<ulong> Luns => inner.Luns;

    /// <summary>READ(6/10/12/16) are reads; every command that changes blocks is a write; the rest is other.</summary>
    internal static int ClassOf(byte opcode) => opcode switch
    {
        0x08 or 0x28 or 0xA8 or 0x88 => 0,
        0x0A or 0x2A or 0xAA or 0x8A or 0x2E or 0xAE or 0x8E or 0x41 or 0x93 or 0x89 or 0x8B or 0x9C or 0x42 or 0x83 => 1,
        _ => 2,
    };

    public ValueTask<ScsiResponse> ExecuteAsync(ScsiCommand command, CancellationToken ct)
    {
        long start = Stopwatch.GetTimestamp();
        var pending = inner.ExecuteAsync(command, ct);
        if (pending.IsCompletedSuccessfully)
        {
            Observe(command, start);
            return pending;
        }
        return Await(pending, command, start);
    }

    private async ValueTask<ScsiResponse> Await(ValueTask<ScsiResponse> pending, ScsiCommand command, long start)
    {
        try { return await pending.ConfigureAwait(false); }
        finally { Observe(command, start); }
    }

    /// <summary>Drops the cached children of <paramref name="lun"/> (its series were removed), so a LUN added back under that number is timed afresh.</summary>
    public void Forget(ulong lun)
    {
        for (int cls = 0; cls < Classes.Length; cls++) _children.TryRemove((lun, cls), out _);
    }

    private static bool Serves(IReadOnlyList<ulong> luns, ulong lun) =>
        luns is ulong[] sorted ? Array.BinarySearch(sorted, lun) >= 0 : luns.Contains(lun);

    private void Observe(ScsiCommand command, long start)
    {
        if (!Serves(inner.Luns, command.Lun)) return;
        int cls = command.Cdb.Length > 0 ? ClassOf(command.Cdb.Span[0]) : 2;
        var child = _children.GetOrAdd((command.Lun, cls), k => latency.WithLabels(iqn, k.Item1.ToString(System.Globalization.CultureInfo.InvariantCulture), Classes[k.Item2]));
        child.Observe(Stopwatch.GetElapsedTime(start).TotalSeconds);
    }

    public void NexusCreated(ItNexus nexus) => inner.NexusCreated(nexus);
    public void NexusLost(ItNexus nexus) => inner.NexusLost(nexus);
    public void LogicalUnitReset(ulong lun, ItNexus nexus) => inner.LogicalUnitReset(lun, nexus);
    public void TargetReset(ItNexus nexus) => inner.TargetReset(nexus);
    public ScsiResponse TransportFailure(ulong lun, in ScsiError error) => inner.TransportFailure(lun, error);

    public event Action<ulong, IReadOnlyCollection<string>>? AbortTasksRequested
    {
        add => inner.AbortTasksRequested += value;
        remove => inner.AbortTasksRequested -= value;
    }
}
