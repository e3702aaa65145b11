using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using IntegrityTarget.Host.Status;
using IntegrityTarget.Host.Wiring;

namespace IntegrityTarget.Host.Cli;

public static class ScrubVerb
{
    public const string Usage = """
        usage: integrity-target scrub PATH [--key-file FILE] [--rate MBPS] [--json] [--ceph-conf FILE] [--ceph-id ID] ...
               integrity-target scrub --lun IQN/LUN [--rate MBPS] [--json] [--socket PATH | --config FILE | --data-dir DIR]

        Reads and verifies every block and lists the LBAs that fail verification.
        PATH: a volume that is not being served (offline): a file, block device or rbd:POOL/IMAGE.
        --lun: a LUN of the running server, scrubbed
        online through its status socket while initiators keep using it. --rate limits the read rate.
        Exit code 0 when every block verifies, 1 when bad blocks were found (or the scrub failed),
        2 for a usage error (e.g. a keyed volume without --key-file, or a wrong key).

        """ + CephArgs.Usage;

    private static readonly Dictionary<string, bool> Known = CephArgs.With(new(StringComparer.OrdinalIgnoreCase)
    {
        ["lun"] = true, ["rate"] = true, ["key-file"] = true, ["socket"] = true, ["json"] = false,
    });

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CliContext ctx)
    {
        var va = VerbArgs.Parse("scrub", args, Known, passUnknown: true);
        double? rate = null;
        if (va.Get("rate") is { } r)
        {
            if (!double.TryParse(r, NumberStyles.Float, CultureInfo.InvariantCulture, out var mbps) || mbps <= 0)
                throw new CliException($"--rate must be a positive number of MB/s, got {r}", ExitCodes.Usage);
            rate = mbps;
        }
        ScrubOutcome outcome;
        if (va.Get("lun") is { } lunArg)
        {
            if (va.Positionals.Count > 0) throw new CliException("give either PATH or --lun IQN/LUN, not both", ExitCodes.Usage);
            int slash = lunArg.LastIndexOf('/');
            if (slash <= 0 || !ulong.TryParse(lunArg[(slash + 1)..], out ulong lun))
                throw new CliException($"--lun must be IQN/LUN (e.g. iqn.2026-11.org.example:integrity/0), got '{lunArg}'", ExitCodes.Usage);
            string socket = CliHelpers.ResolveSocket(va, ctx);
            outcome = await CliHelpers.WithProgressAsync(ctx, $"Scrubbing {lunArg}", p => OnlineAsync(socket, lunArg[..slash], lun, rate, p, ctx.Stop));
        }
        else
        {
            if (va.Rest.Count > 0) throw new CliException($"unknown option {va.Rest[0]} (see: integrity-target help scrub)", ExitCodes.Usage);
            if (va.Positionals.Count != 1) throw new CliException("give a PATH to scrub offline, or --lun IQN/LUN for a served LUN", ExitCodes.Usage);
            var key = CliHelpers.ReadKeyFile(va.Get("key-file"), ctx);
            using var log = CliHelpers.QuietLogger(ctx);
            using var backing = Backing.For(va.Positionals[0], CephArgs.Options(va, ctx), ctx.WorkingDirectory);
            try
            {
                outcome = await CliHelpers.WithProgressAsync(ctx, $"Scrubbing {va.Positionals[0]}", p => IntegrityWiring.ScrubOfflineAsync(backing, key, rate, log, p, ctx.Stop));
            }
            catch (Exception e) when (e is Storage.StorageException or IOException || IntegrityWiring.IsVolumeError(e))
            {
                throw IntegrityWiring.ToCliError(e);
            }
        }
        await Report(outcome, va.Has("json"), ctx);
        return outcome.Clean ? ExitCodes.Ok : ExitCodes.Failure;
    }

    private static async Task<ScrubOutcome> OnlineAsync(string socket, string iqn, ulong lun, double? rate, IProgress<double> progress, CancellationToken ct)
    {
        var request = JsonSerializer.Serialize(new StatusRequest("scrub", iqn, lun, rate), StatusJson.Options);
        await foreach (var reply in StatusClient.RequestAsync(socket, request, ct))
        {
            switch ((string?)reply["type"])
            {
                case "progress":
                    progress.Report((double?)reply["fraction"] ?? 0);
                    break;
                case "scrub-result":
                    return reply["result"].Deserialize<ScrubOutcome>(StatusJson.Options)
                        ?? throw new CliException("the server sent an empty scrub result");
                default:
                    throw new CliException((string?)reply["error"] ?? reply.ToJsonString());
            }
        }
        throw new CliException("the server ended the scrub without a result");
    }

    private static async Task Report(ScrubOutcome o, bool json, CliContext ctx)
    {
        if (json)
        {
            await ctx.Out.WriteLineAsync(JsonSerializer.Serialize(o, StatusJson.Indented));
            return;
        }
        await ctx.Out.WriteLineAsync($"{o.Volume}: {o.BlocksChecked} blocks checked ({o.BlocksSkippedUnmapped} unmapped skipped) in {o.Seconds:0.0} s: " +
            $"{o.Mismatches} bad{(o.IoErrors > 0 ? $", {o.IoErrors} I/O errors" : "")}");
        foreach (var lba in o.BadLbas) await ctx.Out.WriteLineAsync($"bad LBA {lba}");
        if (o.BadLbas.Count < o.Mismatches) await ctx.Out.WriteLineAsync($"(first {o.BadLbas.Count} of {o.Mismatches} bad LBAs listed)");
    }
}
