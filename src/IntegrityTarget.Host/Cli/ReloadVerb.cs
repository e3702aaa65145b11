using IntegrityTarget.Host.Status;

namespace IntegrityTarget.Host.Cli;

public static class ReloadVerb
{
    public const string Usage = """
        usage: integrity-target reload [--socket PATH | --config FILE | --data-dir DIR]

        Asks the running server to re-read its configuration (the same file, environment and command
        line it started with; SIGHUP does the same) and apply what changed: targets, LUNs, portals,
        ACL entries, CHAP secrets, LUN sizes (grow only) and the log level. Everything is checked
        first; on any problem nothing is changed and every problem is listed. Sessions of targets and
        LUNs that did not change go on undisturbed. Prints what was applied.
        Exit code 0 when the new configuration is in force, 1 when the server refused or cannot be reached.
        """;

    private static readonly Dictionary<string, bool> Known = new(StringComparer.OrdinalIgnoreCase) { ["socket"] = true };

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CliContext ctx)
    {
        var va = VerbArgs.Parse("reload", args, Known, passUnknown: true);
        if (va.Positionals.Count > 0) throw new CliException($"unexpected argument '{va.Positionals[0]}'", ExitCodes.Usage);
        string socket = CliHelpers.ResolveSocket(va, ctx);
        await foreach (var reply in StatusClient.RequestAsync(socket, "{\"command\":\"reload\"}", ctx.Stop))
        {
            if ((string?)reply["type"] != "reload-result") throw new CliException((string?)reply["error"] ?? reply.ToJsonString());
            var o = System.Text.Json.JsonSerializer.Deserialize<ReloadOutcome>(reply["result"], StatusJson.Options) ?? throw new CliException("the server sent an empty reload result");
            if (o.Applied.Count == 0) await ctx.Out.WriteLineAsync($"reloaded {o.Source}: nothing changed");
            else
            {
                await ctx.Out.WriteLineAsync($"reloaded {o.Source}:");
                foreach (var a in o.Applied) await ctx.Out.WriteLineAsync("  " + a);
            }
            return ExitCodes.Ok;
        }
        throw new CliException("the server did not answer the reload");
    }
}
