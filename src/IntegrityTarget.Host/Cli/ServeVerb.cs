using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Serving;

namespace IntegrityTarget.Host.Cli;

public static class ServeVerb
{
    public const string Usage = """
        usage: integrity-target serve [--config FILE | --no-config] [--check] [--Key value ...] [aliases]

        Serves the configured targets until SIGTERM or SIGINT, then drains in-flight commands,
        flushes every volume and exits 0. Settings are layered: config file (or the built-in
        default when there is none) < environment (INTEGRITYTARGET_Key__Sub=value) < command line.
        Any key can be given as --Section:Key value, e.g. --Targets:0:Luns:0:WriteBack false.
        SIGHUP (or integrity-target reload) re-reads the same sources and applies what changed.

          --config FILE        JSON config (default: config/integrity-target.json if present,
                               unless the command line or environment describes targets)
          --no-config          ignore config/integrity-target.json, start from the built-in default
          --check              validate the configuration, print the problems, serve nothing

        aliases:
          --listen PORTAL      Portals:0                     --data-dir DIR    DataDirectory
          --iqn IQN            Targets:0:Iqn                 --log-level LVL   Logging:Level
          --lun FILE           Targets:0:Luns:0:Path         --log-file FILE   Logging:File
          --size SIZE          Targets:0:Luns:0:Size         --transport T     Transport (pipelines|dotnetty)
          --block-size N       Targets:0:Luns:0:BlockSize    --chap-user U     Targets:0:Chap:User
          --integrity BOOL     Targets:0:Luns:0:Integrity    --chap-secret S   Targets:0:Chap:Secret
          --tag-algorithm A    Targets:0:Luns:0:TagAlgorithm --allow IQN       Targets:0:AllowedInitiators:0
          --key-file FILE      Targets:0:Luns:0:KeyFile      --alias NAME      Targets:0:Alias
          --write-back BOOL    Targets:0:Luns:0:WriteBack    --read-only BOOL  Targets:0:Luns:0:ReadOnly
          --status-socket P    Status:Socket                 --metrics A:PORT  Metrics:Listen (Prometheus /metrics)
          --ceph-conf FILE     Ceph:ConfFile                 --ceph-id ID      Ceph:ClientId
          --ceph-keyring FILE  Ceph:Keyring                  --ceph-cluster N  Ceph:Cluster

        PORTAL is PORT, ADDR, ADDR:PORT, [IPv6] or [IPv6]:PORT: a port alone listens on 127.0.0.1, an
        address alone on port 3260, 0.0.0.0 (or *) on every IPv4 interface, port 0 on any free port.

        A LUN path rbd:POOL/IMAGE serves a Ceph RBD image (e.g. --lun rbd:rbd/vm1 --size 10GiB creates it).
        Paths are relative to DataDirectory, except --ceph-conf and --ceph-keyring on the command line,
        which are relative to the working directory (as rbd -c FILE reads them).

        example (one existing file, no config file):
          integrity-target serve --listen 127.0.0.1:3261 --data-dir . --lun disk.img --integrity false
        """;

    private static readonly IReadOnlyDictionary<string, bool> Flags = new Dictionary<string, bool>(StringComparer.OrdinalIgnoreCase)
    {
        ["check"] = false,
    };

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CliContext ctx)
    {
        var loaded = ConfigLoader.Load(new ConfigInput(args, ctx.Environment, ctx.WorkingDirectory), Flags);
        var (config, problems) = ConfigReader.Read(loaded);
        var errors = problems.Where(p => p.Severity == ProblemSeverity.Error).ToList();
        foreach (var w in problems.Where(p => p.Severity == ProblemSeverity.Warning)) await ctx.Err.WriteLineAsync(w.ToString());
        if (config == null)
        {
            await ctx.Err.WriteLineAsync($"integrity-target serve: the configuration has {errors.Count} problem{(errors.Count == 1 ? "" : "s")}; nothing was served:");
            foreach (var e in errors) await ctx.Err.WriteLineAsync("  " + e);
            return ExitCodes.Usage;
        }
        if (loaded.Flags.ContainsKey("check"))
        {
            foreach (var n in config.Notes) await ctx.Out.WriteLineAsync(n);
            await ctx.Out.WriteLineAsync($"configuration OK ({loaded.FileDisplayName ?? ConfigLoader.BuiltInDefaults}): " +
                $"{config.Targets.Count} target(s), {config.Targets.Sum(t => t.Luns.Count)} LUN(s), portals {string.Join(", ", config.Portals)}");
            return ExitCodes.Ok;
        }
        ctx.Reload.Claim(); // SIGHUP reloads from now on instead of ending the process
        var level = new Serilog.Core.LoggingLevelSwitch(LoggingSetup.ParseLevel(config.Logging.Level));
        using var logger = LoggingSetup.Create(config.Logging, ctx.Out, ReferenceEquals(ctx.Out, Console.Out), level);
        logger.Information("integrity-target {Version} starting with {Source}", TargetHost.Version, loaded.FileDisplayName ?? ConfigLoader.BuiltInDefaults);
        foreach (var n in config.Notes) logger.Information("{Note}", n);
        // A reload reads the same sources again: the same file, environment and command line.
        var input = new ConfigInput(args, ctx.Environment, ctx.WorkingDirectory);
        ReloadSource source = () =>
        {
            var again = ConfigLoader.Load(input, Flags);
            var (c, p) = ConfigReader.Read(again);
            return (c, p, again.FileDisplayName ?? ConfigLoader.BuiltInDefaults);
        };
        return await TargetHost.RunAsync(config, logger, ctx.Stop, new ReloadOptions(source, level, ctx.Reload));
    }
}
