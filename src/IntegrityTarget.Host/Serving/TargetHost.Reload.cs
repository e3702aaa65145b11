using System.Net;
using System.Text.Json;
using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Status;
using Serilog.Core;

namespace IntegrityTarget.Host.Serving;

/// <summary>Reads the configuration again: the same file, environment and command line the process started with.</summary>
public delegate (HostConfig? Config, IReadOnlyList<ConfigProblem> Problems, string Source) ReloadSource();

/// <summary>What serve hands the host so it can reload: where the configuration comes from, the log level, SIGHUP.</summary>
public sealed record ReloadOptions(ReloadSource Source, LoggingLevelSwitch Level, ReloadSignal Signal);

// Changes without a restart. A reload is all or nothing: the new configuration is read and checked in full
// (every problem reported at once), then everything that can fail is prepared (new LUN files opened, new
// portals bound); only when all of that worked is anything applied, in an order that cannot fail halfway
// except for an I/O error on a grow, which is then reported. Sessions of untouched targets and LUNs go on.
public sealed partial class TargetHost
{
    private static readonly TimeSpan UnitDrainTimeout = TimeSpan.FromSeconds(30);
    private ReloadOptions? _reload;

    private async Task ReloadOnSignalAsync(CancellationToken stop)
    {
        _log.Information("SIGHUP: reloading the configuration");
        try { await ReloadAsync(stop); }
        catch (CliException e) { _log.Error("Reload refused, nothing was changed: {Message}", e.Message); }
        catch (OperationCanceledException) { }
        catch (Exception e) { _log.Error(e, "Reload failed"); }
    }

    public async Task<ReloadOutcome> ReloadAsync(CancellationToken ct)
    {
        if (_reload == null || _frontEnd == null) throw new CliException("this process does not serve a configuration it could reload");
        if (_config.Ha != null)
            throw new CliException("reload is not supported for a gateway of a group (Ha): the gateways must agree on every LUN; change the configuration and restart the gateways one at a time");
        await _changing.WaitAsync(ct);
        try
        {
            var outcome = await ReloadCoreAsync(_reload, _frontEnd, ct);
            if (outcome.Applied.Count == 0) _log.Information("Reload of {Source}: nothing changed", outcome.Source);
            foreach (var a in outcome.Applied) _log.Information("Reload applied: {Change}", a);
            return outcome;
        }
        finally { _changing.Release(); }
    }

    private sealed record LunPlan(ServedTarget Target, LunSettings Settings);
    private sealed record GrowPlan(ServedTarget Target, ServedLun Lun, LunSettings Settings);

    private async Task<ReloadOutcome> ReloadCoreAsync(ReloadOptions reload, Wiring.FrontEnd front, CancellationToken ct)
    {
        var (next, problems, source) = reload.Source();
        var errors = problems.Where(p => p.Severity == ProblemSeverity.Error).Select(p => p.ToString()).ToList();
        if (next == null)
            throw new CliException($"{source} has {errors.Count} problem{(errors.Count == 1 ? "" : "s")}; nothing was changed:\n  " + string.Join("\n  ", errors), ExitCodes.Usage);

        // ---- 1. check the whole difference ---------------------------------------------------------
        var cur = _config;
        foreach (var (name, same) in new (string, bool)[]
        {
            ("DataDirectory", cur.DataDirectory == next.DataDirectory),
            ("Transport", cur.Transport == next.Transport),
            ("Status:Socket", cur.StatusSocket == next.StatusSocket),
            ("Metrics:Listen", Equals(cur.MetricsListen, next.MetricsListen)),
            ("Iscsi", Json(cur.Iscsi) == Json(next.Iscsi)),
            ("Logging:File", cur.Logging.File == next.Logging.File),
            ("Logging:Json", cur.Logging.Json == next.Logging.Json),
        })
            if (!same) errors.Add($"{name} cannot change while serving (restart the server to apply it)");

        var served = _targets.ToDictionary(t => t.Iqn, StringComparer.OrdinalIgnoreCase);
        var wanted = next.Targets.ToDictionary(t => t.Iqn, StringComparer.OrdinalIgnoreCase);
        var removedTargets = served.Values.Where(t => !wanted.ContainsKey(t.Iqn)).ToList();
        var addedTargets = next.Targets.Where(t => !served.ContainsKey(t.Iqn)).ToList();
        var removedLuns = new List<(ServedTarget Target, ServedLun Lun)>();
        var addedLuns = new List<LunPlan>();
        var grows = new List<GrowPlan>();
        var sizeOnly = new List<(ServedLun Lun, LunSettings Settings)>();
        var accessChanged = new List<(ServedTarget Target, TargetSettings Settings)>();
        foreach (var t in served.Values.Where(t => wanted.ContainsKey(t.Iqn)))
        {
            var nt = wanted[t.Iqn];
            if (!SameAccess(t.Settings, nt)) accessChanged.Add((t, nt));
            var newLuns = nt.Luns.ToDictionary(l => l.Lun);
            foreach (var l in t.Luns)
            {
                if (!newLuns.TryGetValue(l.Lun, out var nl)) { removedLuns.Add((t, l)); continue; }
                var fixedChange = FixedLunChange(l.Settings, nl);
                if (fixedChange != null)
                {
                    errors.Add($"{nl.KeyPath}: {fixedChange} of served LUN {t.Iqn}/{l.Lun} cannot change while it is served; remove the LUN in one reload and add it back in another (or restart)");
                    continue;
                }
                if (nl.SizeBytes == l.Settings.SizeBytes) { if (!ReferenceEquals(nl, l.Settings)) sizeOnly.Add((l, nl)); continue; }
                long have = (long)l.Volume!.BlockCount * l.Volume!.BlockSize;
                if (nl.SizeBytes is { } want && want > have)
                {
                    if (!l.Volume!.CanGrow)
                        errors.Add($"{nl.KeyPath}:Size: {t.Iqn}/{l.Lun} cannot grow online ({(l.Settings.Integrity ? "its integrity volume cannot grow in place" : "its backing device has a fixed size")})");
                    else grows.Add(new GrowPlan(t, l, nl));
                }
                else if (nl.SizeBytes is { } smaller && smaller < have)
                    errors.Add($"{nl.KeyPath}:Size: {SizeParser.Format(smaller)} is smaller than the {SizeParser.Format(have)} {t.Iqn}/{l.Lun} has; shrinking is refused");
                else sizeOnly.Add((l, nl));
            }
            foreach (var nl in nt.Luns.Where(nl => t.Luns.All(l => l.Lun != nl.Lun))) addedLuns.Add(new LunPlan(t, nl));
        }
        var gonePaths = removedLuns.Select(r => r.Lun.Settings.Path).Concat(removedTargets.SelectMany(t => t.Luns).Select(l => l.Settings.Path)).ToHashSet(StringComparer.Ordinal);
        foreach (var p in addedLuns.Select(a => a.Settings).Concat(addedTargets.SelectMany(t => t.Luns)))
            if (gonePaths.Contains(p.Path))
                errors.Add($"{p.KeyPath}: {p.Path} is still served by a LUN this reload removes; move a LUN in two reloads (remove, then add)");
        if (errors.Count > 0)
            throw new CliException($"{source}: {errors.Count} problem{(errors.Count == 1 ? "" : "s")}; nothing was changed:\n  " + string.Join("\n  ", errors), ExitCodes.Usage);

        // ---- 2. prepare what can fail: open new LUNs, bind new portals -------------------------------
        var opened = new List<(ServedLun Lun, bool Created)>();
        var newPortals = next.Portals.Where(p => !cur.Portals.Contains(p)).ToList();
        var boundPortals = new List<IPEndPoint>();
        var newTargets = new List<ServedTarget>();
        var newUnits = new List<(ServedTarget Target, ServedLun Lun)>();
        try
        {
            var failures = new List<string>();
            async Task<ServedLun?> Open(TargetSettings t, LunSettings l)
            {
                // An RBD image is never removed by a rollback (whoever made it, a rolled-back reload leaves it).
                bool existed = l.Rbd != null || File.Exists(l.Path);
                try
                {
                    var lun = await VolumeOpener.OpenAsync(t, l, _log, ct);
                    opened.Add((lun, !existed));
                    return lun;
                }
                catch (CliException e) { failures.Add(e.Message); return null; }
            }
            foreach (var t in addedTargets)
            {
                var luns = new List<ServedLun>();
                foreach (var l in t.Luns) if (await Open(t, l) is { } lun) luns.Add(lun);
                newTargets.Add(new ServedTarget(t, luns));
            }
            foreach (var a in addedLuns)
                if (await Open(wanted[a.Target.Iqn], a.Settings) is { } lun) newUnits.Add((a.Target, lun));
            foreach (var p in newPortals)
            {
                try { await front.AddPortalAsync(p, ct); boundPortals.Add(p); }
                catch (Exception e) when (Wiring.FrontEnd.IsBindFailure(e)) { failures.Add(e.Message); }
            }
            if (failures.Count > 0)
                throw new CliException($"{source}: {failures.Count} problem{(failures.Count == 1 ? "" : "s")}; nothing was changed:\n  " + string.Join("\n  ", failures));
        }
        catch
        {
            foreach (var p in boundPortals) await front.RemovePortalAsync(p);
            foreach (var (lun, created) in opened)
            {
                await CloseLunAsync(lun);
                if (created) try { File.Delete(lun.Settings.Path); } catch (IOException) { }
            }
            throw;
        }

        // ---- 3. apply ----------------------------------------------------------------------------
        var applied = new List<string>();
        foreach (var p in boundPortals) applied.Add($"portal {p} added");
        var level = LoggingSetup.ParseLevel(next.Logging.Level);
        if (reload.Level.MinimumLevel != level)
        {
            applied.Add($"log level {reload.Level.MinimumLevel} -> {level}");
            reload.Level.MinimumLevel = level;
        }
        var targets = _targets.ToList();
        foreach (var t in removedTargets)
        {
            await front.RemoveTargetAsync(t.Iqn); // closes its sessions
            targets.Remove(t);
            foreach (var l in t.Luns) await RetireLunAsync(l, ct);
            applied.Add($"target {t.Iqn} removed ({t.Luns.Count} LUN{(t.Luns.Count == 1 ? "" : "s")}; its sessions were closed)");
        }
        foreach (var t in newTargets)
        {
            front.AddTarget(t);
            targets.Add(t);
            applied.Add($"target {t.Iqn} added with LUN{(t.Luns.Count == 1 ? "" : "s")} {string.Join(", ", t.Luns.Select(l => l.Lun))}");
        }
        foreach (var (t, settings) in accessChanged)
        {
            var before = t.Settings;
            t.Settings = settings;
            int closed = await front.UpdateAccessAsync(t);
            applied.Add($"target {t.Iqn}: {DescribeAccessChange(before, settings)}{(closed > 0 ? $"; {closed} session{(closed == 1 ? "" : "s")} of initiators no longer allowed closed" : "")}");
        }
        foreach (var (t, l) in removedLuns)
        {
            t.Scsi!.RemoveUnit(l.Lun);
            t.Luns = t.Luns.Where(x => x != l).ToList();
            await RetireLunAsync(l, ct);
            applied.Add($"LUN {t.Iqn}/{l.Lun} removed ({l.Settings.Path}); its initiators get REPORTED LUNS DATA HAS CHANGED");
        }
        foreach (var (t, l) in newUnits)
        {
            var unit = front.BuildUnit(t, l);
            t.Luns = [.. t.Luns, l];
            t.Scsi!.AddUnit(unit);
            applied.Add($"LUN {t.Iqn}/{l.Lun} added ({l.Settings.Path}, {SizeParser.Format((long)l.Volume!.BlockCount * l.Volume!.BlockSize)}); its target's initiators get REPORTED LUNS DATA HAS CHANGED");
        }
        foreach (var (l, settings) in sizeOnly) l.Settings = settings;
        foreach (var t in targets) if (wanted.TryGetValue(t.Iqn, out var ts)) t.Settings = ts;
        foreach (var p in cur.Portals.Where(p => !next.Portals.Contains(p)))
        {
            await front.RemovePortalAsync(p);
            applied.Add($"portal {p} removed (its connections were closed)");
        }
        foreach (var g in grows)
        {
            try
            {
                var r = await GrowAsync(g.Target, g.Lun, g.Settings.SizeBytes!.Value, ct);
                g.Lun.Settings = g.Settings;
                applied.Add($"LUN {r.Iqn}/{r.Lun} grown {SizeParser.Format(r.OldBytes)} -> {SizeParser.Format(r.NewBytes)}");
            }
            catch (CliException e) { applied.Add($"LUN {g.Target.Iqn}/{g.Lun.Lun} NOT grown: {e.Message}"); }
        }
        _targets = targets;
        _config = next;
        return new ReloadOutcome(source, applied);
    }

    /// <summary>A LUN no longer served: its online scrub stops, its last commands finish, then it is flushed and closed.</summary>
    internal async Task RetireLunAsync(ServedLun l, CancellationToken ct)
    {
        await l.RetireAsync();
        if (l.Unit is { } u)
        {
            using var drain = CancellationTokenSource.CreateLinkedTokenSource(ct);
            drain.CancelAfter(UnitDrainTimeout);
            try { await u.DrainAsync(drain.Token); }
            catch (OperationCanceledException) { _log.Warning("{Volume}: commands still running after {Seconds} s; closing anyway", l.Volume!.Name, UnitDrainTimeout.TotalSeconds); }
        }
        var r = await l.Volume!.FlushAsync(CancellationToken.None);
        if (!r.IsOk) _log.Error("Flushing {Volume} before closing it failed: {Status} {Detail}", l.Volume!.Name, r.Status, r.Detail);
        await CloseLunAsync(l);
    }

    private async Task CloseLunAsync(ServedLun l)
    {
        try { await l.Volume!.DisposeAsync(); }
        catch (Exception e) { _log.Error(e, "Closing {Volume} failed", l.Volume!.Name); }
        l.Device?.Dispose();
    }

    private static string Json(object o) => JsonSerializer.Serialize(o);

    private static bool SameChap(ChapSettings? a, ChapSettings? b) => a == null ? b == null : b != null && a.User == b.User && a.Secret == b.Secret;

    private static bool SameAccess(TargetSettings a, TargetSettings b) =>
        a.Alias == b.Alias && SameChap(a.Chap, b.Chap) && SameChap(a.MutualChap, b.MutualChap) &&
        a.AllowedInitiators.Order(StringComparer.OrdinalIgnoreCase).SequenceEqual(b.AllowedInitiators.Order(StringComparer.OrdinalIgnoreCase), StringComparer.OrdinalIgnoreCase);

    /// <summary>What changed about a target's access, never showing a secret.</summary>
    private static string DescribeAccessChange(TargetSettings a, TargetSettings b)
    {
        var parts = new List<string>();
        var added = b.AllowedInitiators.Except(a.AllowedInitiators, StringComparer.OrdinalIgnoreCase).ToList();
        var removed = a.AllowedInitiators.Except(b.AllowedInitiators, StringComparer.OrdinalIgnoreCase).ToList();
        if (added.Count > 0) parts.Add("ACL + " + string.Join(", ", added));
        if (removed.Count > 0) parts.Add("ACL - " + string.Join(", ", removed));
        if (!SameChap(a.Chap, b.Chap)) parts.Add(b.Chap == null ? "CHAP off" : a.Chap == null ? "CHAP on" : "CHAP credentials changed");
        if (!SameChap(a.MutualChap, b.MutualChap)) parts.Add(b.MutualChap == null ? "mutual CHAP off" : "mutual CHAP credentials changed");
        if (a.Alias != b.Alias) parts.Add($"alias {b.Alias ?? "(none)"}");
        return string.Join("; ", parts);
    }

    /// <summary>The first setting of a served LUN that only a restart (or remove + add) may change; null when none differs.</summary>
    private static string? FixedLunChange(LunSettings a, LunSettings b) =>
        a.Path != b.Path ? "Path" :
        a.BlockSize != b.BlockSize ? "BlockSize" :
        a.Integrity != b.Integrity ? "Integrity" :
        a.TagAlgorithm != b.TagAlgorithm ? "TagAlgorithm" :
        a.KeyFile != b.KeyFile ? "KeyFile" :
        a.Serial != b.Serial ? "Serial" :
        a.WriteBack != b.WriteBack ? "WriteBack" :
        a.TagCacheBytes != b.TagCacheBytes ? "TagCache" :
        a.ReadOnly != b.ReadOnly ? "ReadOnly" : null;
}
