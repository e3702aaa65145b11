using System.Text.Json;
using System.Text.Json.Nodes;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Status;

namespace IntegrityTarget.Host.Cli;

public static class StatusVerb
{
    public const string Usage = """
        usage: integrity-target status [--json] [--socket PATH | --config FILE | --data-dir DIR]

        Asks the serving process (over its unix status socket, by default DATA_DIR/status.sock) for
        its targets, LUNs, sessions and per-LUN counters. Exit code 1 when no server answers.
        """;

    private static readonly Dictionary<string, bool> Known = new(StringComparer.OrdinalIgnoreCase)
    {
        ["socket"] = true, ["json"] = false,
    };

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CliContext ctx)
    {
        var va = VerbArgs.Parse("status", args, Known, passUnknown: true);
        if (va.Positionals.Count > 0) throw new CliException($"unexpected argument '{va.Positionals[0]}'", ExitCodes.Usage);
        string socket = CliHelpers.ResolveSocket(va, ctx);
        JsonObject? reply = null;
        // A hung server must not hang a health check: status answers from memory, so 15 s is plenty.
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ctx.Stop);
        timeout.CancelAfter(TimeSpan.FromSeconds(15));
        try
        {
            await foreach (var r in StatusClient.RequestAsync(socket, "{\"command\":\"status\"}", timeout.Token)) reply = r;
        }
        catch (OperationCanceledException) when (!ctx.Stop.IsCancellationRequested)
        {
            throw new CliException($"the serving process did not answer on {socket} within 15 s");
        }
        if (reply == null || (string?)reply["type"] != "status")
            throw new CliException((string?)reply?["error"] ?? "the server sent no status");
        if (va.Has("json"))
        {
            await ctx.Out.WriteLineAsync(reply["status"]!.ToJsonString(StatusJson.Indented));
            return ExitCodes.Ok;
        }
        var s = reply["status"].Deserialize<StatusSnapshot>(StatusJson.Options) ?? throw new CliException("the server sent an empty status");
        await ctx.Out.WriteLineAsync(Render(s));
        return ExitCodes.Ok;
    }

    public static string Render(StatusSnapshot s)
    {
        var w = new StringWriter();
        w.WriteLine($"integrity-target {s.Version}, pid {s.Pid}, up since {s.StartedUtc:u}, transport {s.Transport}");
        w.WriteLine($"portals: {string.Join(", ", s.Portals)}");
        foreach (var t in s.Targets)
        {
            w.WriteLine($"target {t.Iqn}{(t.Alias != null ? $" ({t.Alias})" : "")}  CHAP {(t.Chap ? "on" : "off")}  initiators {string.Join(",", t.AllowedInitiators)}");
            foreach (var l in t.Luns)
            {
                long C(string k) => l.Counters.TryGetValue(k, out var v) ? v : 0;
                w.WriteLine($"  LUN {l.Lun}: {l.Path}  {SizeParser.Format((long)l.Blocks * l.BlockSize)} ({l.Blocks} x {l.BlockSize})  " +
                            $"integrity {l.TagAlgorithm}  write-back {(l.WriteBack ? "on" : "off")}{(l.ReadOnly ? "  read-only" : "")}");
                w.WriteLine($"         reads {C("reads")} ({SizeParser.Format(C("bytesRead"))})  writes {C("writes")} ({SizeParser.Format(C("bytesWritten"))})  " +
                            $"mismatches {C("mismatches")} (distinct bad LBAs {C("distinctBadLbas")})  journal commits {C("journalCommits")}  flushes {C("flushes")}  unmaps {C("unmaps")}  device errors {C("deviceErrors")}");
                if (l.Ha != null)
                    w.WriteLine($"         gateways: this one is {l.Ha}{(l.OwnerGateway != null ? $", owner {l.OwnerGateway}" : "")}; volume opened here {l.Opens ?? 0} time(s)");
            }
        }
        if (s.Iscsi is { } i)
            w.WriteLine($"iscsi: logins {i.LoginsSucceeded} ok, {i.LoginsFailed} failed (CHAP {i.ChapFailures}, {i.LoginFailuresDelayed} answered after a delay); rejected PDUs {i.RejectedPdus}; " +
                        $"connections {i.ConnectionsOpen} open, {i.ConnectionsAccepted} accepted, {i.ConnectionsRefused} refused at the cap; accept errors {i.AcceptErrors}");
        w.WriteLine($"sessions: {s.Sessions.Count}");
        foreach (var session in s.Sessions) w.WriteLine($"  {session?.ToJsonString()}");
        return w.ToString().TrimEnd();
    }
}
