using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Status;
using IntegrityTarget.Host.Wiring;
using Serilog;

namespace IntegrityTarget.Host.Serving;

/// <summary>
/// One serving process: opens every LUN, starts the iSCSI front end and the status socket, runs until
/// told to stop, then stops accepting, drains in-flight commands, flushes every volume and closes.
/// </summary>
public sealed partial class TargetHost : IStatusProvider
{
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(30);

    private HostConfig _config;
    private readonly ILogger _log;
    // Copy-on-write: status, metrics and the copy manager read it while a reload publishes a new list.
    private volatile List<ServedTarget> _targets = [];
    private readonly ConcurrentDictionary<string, bool> _scrubbing = new();
    private readonly DateTimeOffset _started = DateTimeOffset.UtcNow;
    private FrontEnd? _frontEnd;
    private Metrics.HostMetrics? _metrics;
    private Ha.HaCoordinator? _ha;

    private TargetHost(HostConfig config, ILogger log) { _config = config; _log = log; }

    /// <summary>A host over already opened LUNs without a network front end (status and scrub only), for tests.</summary>
    internal TargetHost(HostConfig config, ILogger log, IEnumerable<ServedTarget> targets) : this(config, log) => _targets.AddRange(targets);

    public IReadOnlyList<ServedTarget> Targets => _targets;

    public static string Version =>
        typeof(TargetHost).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
            .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion.Split('+')[0] ?? "0.0.0";

    /// <summary>Serves until <paramref name="stop"/> fires. Returns the process exit code.</summary>
    public static async Task<int> RunAsync(HostConfig config, ILogger log, CancellationToken stop, ReloadOptions? reload = null)
    {
        var host = new TargetHost(config, log) { _reload = reload };
        StatusServer? status = null;
        try
        {
            // The status socket first: a second server in this data directory (or a socket that cannot be made
            // here) stops before any LUN file is created or opened and before a portal is bound.
            status = new StatusServer(config.StatusSocket, host, log);
            status.Bind();
            if (!await host.OpenVolumesAsync(stop)) return ExitCodes.Failure;
            if (!await host.StartFrontEndAsync(stop)) return ExitCodes.Failure;
            status.Start();
            host.LogSummary();
            if (reload != null) reload.Signal.Requested += () => _ = host.ReloadOnSignalAsync(stop);
            log.Information("Ready; SIGTERM or Ctrl-C stops the target");
            await using (host._frontEnd is { } fe ? new IdleMemoryReclaimer(() => fe.Counters.Activity, log) : null)
            {
                try { await Task.Delay(Timeout.Infinite, stop); }
                catch (OperationCanceledException) { }
            }
            log.Information("Stopping: no new connections, draining in-flight commands");
            return await host.ShutdownAsync();
        }
        catch (CliException e)
        {
            log.Error("{Message}", e.Message);
            return e.ExitCode;
        }
        finally
        {
            if (status != null) await status.DisposeAsync();
            await host.CloseAsync();
        }
    }

    private async Task<bool> OpenVolumesAsync(CancellationToken ct)
    {
        if (_config.Ha != null)
        {
            // Shared LUNs: nothing is opened here; each LUN's volume is opened by whichever gateway takes its lock.
            (_ha, var shared) = HaWiring.Build(_config, _log);
            _targets.AddRange(shared);
            return true;
        }
        bool ok = true;
        foreach (var t in _config.Targets)
        {
            var luns = new List<ServedLun>();
            foreach (var l in t.Luns)
            {
                try { luns.Add(await VolumeOpener.OpenAsync(t, l, _log, ct)); }
                catch (CliException e)
                {
                    // Keep going: every LUN that cannot be opened is reported in the same run.
                    _log.Error("Cannot open LUN: {Message}", e.Message);
                    ok = false;
                }
            }
            _targets.Add(new ServedTarget(t, luns));
        }
        return ok;
    }

    private async Task<bool> StartFrontEndAsync(CancellationToken ct)
    {
        try
        {
            if (_config.MetricsListen is { } listen)
            {
                _metrics = Metrics.HostMetrics.Start(listen, () => _targets, () => _frontEnd?.SessionInfos() ?? [], () => _frontEnd?.Counters.Snapshot());
                _log.Information("Metrics on http://{Listen}/metrics", listen.ToString());
            }
            if (_ha != null)
            {
                try { await _ha.StartAsync(ct); }
                catch (IOException e)
                {
                    _log.Error("{Message}", e.Message);
                    return false;
                }
            }
            var copyTargets = new CopyTargets(() => _targets, () => _frontEnd?.SessionInfos() ?? []);
            _frontEnd = await FrontEnd.StartAsync(_config, _targets, _log, ct, copyTargets, _metrics);
            return true;
        }
        catch (Exception e) when (FrontEnd.IsBindFailure(e))
        {
            _log.Error("{Message}", e.Message);
            return false;
        }
        catch (Exception e) when (FindSocketError(e) is { } se)
        {
            _log.Error("Cannot listen on {Portals}: {Reason}", string.Join(", ", _config.Portals), DescribeSocketError(se));
            return false;
        }
    }

    private static SocketException? FindSocketError(Exception? e)
    {
        for (; e != null; e = e.InnerException)
            if (e is SocketException se) return se;
        return null;
    }

    public static string DescribeSocketError(SocketException e) => e.SocketErrorCode switch
    {
        SocketError.AddressAlreadyInUse => "address already in use (another target, tgtd or LIO on that port? choose another with --listen ADDR:PORT)",
        SocketError.AddressNotAvailable => "that address does not belong to this machine",
        SocketError.AccessDenied => "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        _ => e.Message,
    };

    private void LogSummary()
    {
        // Scripts and the integration harness wait for "Listening on ADDR:PORT" (with port 0 resolved).
        foreach (var ep in _frontEnd?.BoundEndpoints ?? []) _log.Information("Listening on {Portal}", ep.ToString());
        _log.Information("Transport {Transport}, status socket {Socket}", _config.Transport, _config.StatusSocket);
        foreach (var t in _targets)
        {
            _log.Information("Target {Iqn}{Alias}: initiators {Allowed}, CHAP {Chap}", t.Iqn,
                t.Settings.Alias is { } a ? $" ({a})" : "", string.Join(",", t.Settings.AllowedInitiators),
                t.Settings.Chap == null ? "off" : t.Settings.MutualChap == null ? "one-way" : "mutual");
            foreach (var l in t.Luns)
            {
                var v = l.Volume;
                if (v == null)
                {
                    _log.Information("  LUN {Lun}: {Path}, shared with the other gateways; integrity {Integrity}{ReadOnly}",
                        l.Lun, l.Settings.Path, l.Settings.Integrity ? l.Settings.TagAlgorithm : "off", l.Settings.ReadOnly ? ", read-only" : "");
                    continue;
                }
                _log.Information("  LUN {Lun}: {Path}, {Size} in {Blocks} blocks of {BlockSize} bytes, integrity {Integrity}, write-back {WriteBack}{ReadOnly}",
                    l.Lun, l.Settings.Path, SizeParser.Format((long)v.BlockCount * v.BlockSize), v.BlockCount, v.BlockSize,
                    v.TagAlgorithm, v.WriteBack ? "on" : "off", l.Settings.ReadOnly ? ", read-only" : "");
            }
        }
    }

    private async Task<int> ShutdownAsync()
    {
        int code = ExitCodes.Ok;
        if (_frontEnd != null)
        {
            using var drain = new CancellationTokenSource(DrainTimeout);
            try
            {
                await _frontEnd.ShutdownAsync(drain.Token);
            }
            catch (OperationCanceledException)
            {
                _log.Warning("In-flight commands did not finish within {Seconds} s; closing anyway", DrainTimeout.TotalSeconds);
            }
            await _frontEnd.DisposeAsync();
            _frontEnd = null;
        }
        // Shared LUNs: flush, close and release each owned LUN's lock, so another gateway takes it over now.
        if (_ha != null) await _ha.StopAsync();
        foreach (var l in _targets.SelectMany(t => t.Luns).Where(l => l.Ha == null))
        {
            var r = await l.Volume!.FlushAsync(CancellationToken.None);
            if (!r.IsOk)
            {
                _log.Error("Flushing {Volume} at shutdown failed: {Status} {Detail}", l.Volume.Name, r.Status, r.Detail);
                code = ExitCodes.Failure;
            }
        }
        if (code == ExitCodes.Ok) _log.Information("Stopped; every volume flushed");
        return code;
    }

    /// <summary>Releases whatever is still open (also after a failed start).</summary>
    private async Task CloseAsync()
    {
        if (_frontEnd != null) { await _frontEnd.DisposeAsync(); _frontEnd = null; }
        _metrics?.Dispose();
        _metrics = null;
        if (_ha != null) { await _ha.DisposeAsync(); _ha = null; }
        foreach (var l in _targets.SelectMany(t => t.Luns))
        {
            if (l.Ha != null || l.Volume == null) continue;
            try { await l.Volume.DisposeAsync(); }
            catch (Exception e) { _log.Error(e, "Closing {Volume} failed", l.Volume.Name); }
            l.Device?.Dispose();
        }
        _targets = [];
    }

    // ---- status socket ------------------------------------------------------------------------

    public StatusSnapshot GetStatus()
    {
        var targets = _targets.Select(t => new TargetStatus(
            t.Iqn, t.Settings.Alias, t.Settings.Chap != null, t.Settings.AllowedInitiators,
            t.Luns.Select(DescribeLun).ToList())).ToList();
        var portals = (_frontEnd?.BoundEndpoints ?? (IReadOnlyList<IPEndPoint>)_config.Portals).Select(e => e.ToString()).ToList();
        var sessions = (_frontEnd?.Sessions() ?? []).Select(DescribeSession).ToList();
        return new StatusSnapshot(Environment.ProcessId, Version, _started, _config.Transport, portals, targets, sessions,
            _frontEnd?.Counters.Snapshot());
    }

    private static LunStatus DescribeLun(ServedLun l)
    {
        var v = l.Volume;
        string? role = l.Ha?.Role switch
        {
            null => null,
            Ha.HaRole.Owner => "owner",
            Ha.HaRole.Follower => "follower",
            Ha.HaRole.Transitioning => "transitioning",
            _ => "unowned",
        };
        // A gateway that does not own a shared LUN has no volume open; it still knows the LUN's geometry.
        var (blockSize, blocks) = l.Ha?.Geometry ?? (l.Settings.BlockSize, 0UL);
        return v == null
            ? new LunStatus(l.Lun, l.Settings.Path, l.Settings.Integrity, l.Settings.Integrity ? l.Settings.TagAlgorithm : "none", blockSize,
                blocks, l.Settings.WriteBack, l.Settings.ReadOnly, new Dictionary<string, long>(), role, l.Ha?.OwnerGateway, l.Ha?.Opens)
            : new LunStatus(l.Lun, l.Settings.Path, l.Settings.Integrity, v.TagAlgorithm, v.BlockSize,
                v.BlockCount, v.WriteBack, l.Settings.ReadOnly, LunCounters(v, l), role, l.Ha?.OwnerGateway, l.Ha?.Opens);
    }

    /// <summary>The volume's counters, the distinct LBAs known to fail verification beside the mismatch
    /// events (a VM retrying one bad block makes many events of one LBA), and the device I/O errors the unit's
    /// commands met (each one, logged or not).</summary>
    private static IReadOnlyDictionary<string, long> LunCounters(Storage.IBlockVolume v, ServedLun l) =>
        new Dictionary<string, long>(v.Counters.Snapshot())
        {
            ["distinctBadLbas"] = l.Unit?.Health.DistinctBadLbas ?? 0,
            ["deviceErrors"] = l.Unit?.DeviceErrors.Failures ?? 0,
        };

    /// <summary>Sessions are the iSCSI layer's records; serialise their public properties, or their text if that fails.</summary>
    private static JsonNode? DescribeSession(object session)
    {
        try { return JsonSerializer.SerializeToNode(session, session.GetType(), StatusJson.Options); }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or JsonException or SocketException)
        {
            return JsonValue.Create(session.ToString());
        }
    }

    private (ServedTarget Target, ServedLun Lun) Find(string iqn, ulong lun)
    {
        var target = _targets.FirstOrDefault(t => t.Iqn.Equals(iqn, StringComparison.OrdinalIgnoreCase))
            ?? throw new CliException($"no target {iqn} is served here (targets: {string.Join(", ", _targets.Select(t => t.Iqn))})");
        var served = target.Luns.FirstOrDefault(l => l.Lun == lun)
            ?? throw new CliException($"target {iqn} has no LUN {lun} (LUNs: {string.Join(", ", target.Luns.Select(l => l.Lun))})");
        return (target, served);
    }

    public async Task<ScrubOutcome> ScrubAsync(string iqn, ulong lun, double? rateMBps, IProgress<double> progress, CancellationToken ct)
    {
        var (target, served) = Find(iqn, lun);
        string key = $"{target.Iqn}/{lun}";
        if (!served.Settings.Integrity)
            throw new CliException($"{key} is served without integrity protection; there are no tags to scrub");
        if (!_scrubbing.TryAdd(key, true)) throw new CliException($"{key} is already being scrubbed");
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            if (served.BeginScrub(done.Task) is not { } retirement) throw RemovedWhileScrubbed(key);
            served.ScrubProgress = 0;
            var tracked = new InlineProgress(f => { served.ScrubProgress = f; progress.Report(f); });
            var volume = served.Volume ?? throw new CliException($"{key} is open on gateway {served.Ha?.OwnerGateway ?? "(none yet)"}, not on this one; scrub it there");
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct, retirement);
            ScrubOutcome outcome;
            try { outcome = await IntegrityWiring.ScrubAsync(volume, rateMBps, tracked, stop.Token); }
            catch (OperationCanceledException) when (served.Retired) { throw RemovedWhileScrubbed(key); }
            // A finished scrub checked every block: its findings are what LOG SENSE and metrics report from now on.
            served.Unit?.Health.RecordScrub(new Scsi.ScrubSummary(DateTimeOffset.UtcNow, outcome.BlocksChecked, outcome.Mismatches), outcome.BadLbas);
            _log.Information("Scrub of {Lun} finished: {Blocks} blocks checked, {Bad} bad", key, outcome.BlocksChecked, outcome.Mismatches);
            return outcome;
        }
        finally
        {
            served.EndScrub();
            _scrubbing.TryRemove(key, out _);
            served.ScrubProgress = null;
            done.TrySetResult();
        }
    }

    private static CliException RemovedWhileScrubbed(string key) =>
        new($"{key} was removed by a reload; the scrub stopped");

    // ---- online grow ---------------------------------------------------------------------------

    /// <summary>One change at a time: resizes and reloads never interleave.</summary>
    private readonly SemaphoreSlim _changing = new(1, 1);

    public async Task<ResizeOutcome> ResizeAsync(string iqn, ulong lun, long bytes, CancellationToken ct)
    {
        await _changing.WaitAsync(ct);
        try
        {
            var (target, served) = Find(iqn, lun);
            return await GrowAsync(target, served, bytes, ct);
        }
        finally { _changing.Release(); }
    }

    /// <summary>
    /// Grows one LUN: the volume first (durable when it returns), then every nexus of the LUN gets CAPACITY
    /// DATA HAS CHANGED, so initiators re-read the capacity. A smaller size is refused; nothing changes then.
    /// </summary>
    private async Task<ResizeOutcome> GrowAsync(ServedTarget target, ServedLun served, long bytes, CancellationToken ct)
    {
        string key = $"{target.Iqn}/{served.Lun}";
        var v = served.Volume ?? throw new CliException($"{key} is open on gateway {served.Ha?.OwnerGateway ?? "(none yet)"}, not on this one; resize it there");
        long old = (long)v.BlockCount * v.BlockSize;
        if (bytes % v.BlockSize != 0)
            throw new CliException($"{key}: {SizeParser.Format(bytes)} is not a whole number of {v.BlockSize}-byte blocks", ExitCodes.Usage);
        if (bytes < old)
            throw new CliException($"{key}: shrinking is refused: the LUN has {SizeParser.Format(old)} ({v.BlockCount} blocks) and {SizeParser.Format(bytes)} would cut off data initiators may hold; only growing is supported", ExitCodes.Usage);
        if (bytes == old) return new ResizeOutcome(target.Iqn, served.Lun, old, old, v.BlockCount);
        if (!v.CanGrow)
        {
            string why = served.Settings.Integrity
                ? $"its integrity volume cannot grow in place (its backing device {served.Settings.Path} has a fixed size, or the volume has been grown as often as its superblock records)"
                : $"its backing device {served.Settings.Path} cannot grow (a block device has a fixed size)";
            throw new CliException($"{key}: {why}");
        }
        var r = await v.GrowAsync((ulong)(bytes / v.BlockSize), ct);
        if (!r.IsOk) throw new CliException($"{key}: grow failed: {r.Detail ?? r.Status.ToString()}");
        served.Unit?.NotifyCapacityChanged();
        _log.Information("Grew {Lun} from {Old} to {New} ({Blocks} blocks); initiators get CAPACITY DATA HAS CHANGED",
            key, SizeParser.Format(old), SizeParser.Format(bytes), v.BlockCount);
        return new ResizeOutcome(target.Iqn, served.Lun, old, bytes, v.BlockCount);
    }
}
