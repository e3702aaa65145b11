using IntegrityTarget.Host.Serving;

namespace IntegrityTarget.Host.Cli;

/// <summary>The integrity-target command: a table of verbs, each with its usage text and handler.</summary>
public static class Cli
{
    private sealed record Verb(string Name, string Summary, string Usage, Func<IReadOnlyList<string>, CliContext, Task<int>> Run);

    private static readonly Verb[] Verbs =
    [
        new("serve", "serve the configured targets over iSCSI until SIGTERM/SIGINT", ServeVerb.Usage, ServeVerb.RunAsync),
        new("format", "format a file or block device as an integrity volume", FormatVerb.Usage, FormatVerb.RunAsync),
        new("scrub", "verify every block of a volume (offline file, or a served LUN online)", ScrubVerb.Usage, ScrubVerb.RunAsync),
        new("dump", "print an integrity volume's superblock and journal state", DumpVerb.Usage, DumpVerb.RunAsync),
        new("status", "show targets, LUNs, sessions and counters of the serving process", StatusVerb.Usage, StatusVerb.RunAsync),
        new("resize", "grow a served LUN online (initiators are told the capacity changed)", ResizeVerb.Usage, ResizeVerb.RunAsync),
        new("reload", "make the running server re-read its configuration and apply the changes", ReloadVerb.Usage, ReloadVerb.RunAsync),
    ];

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CliContext ctx)
    {
        if (args.Count == 0)
        {
            await ctx.Err.WriteLineAsync(GeneralHelp());
            return ExitCodes.Usage;
        }
        string first = args[0];
        if (first is "--help" or "-h" or "help")
        {
            if (args.Count > 1 && Find(args[1]) is { } v) { await ctx.Out.WriteLineAsync(v.Usage); return ExitCodes.Ok; }
            if (args.Count > 1) { await ctx.Err.WriteLineAsync($"integrity-target: no verb '{args[1]}'\n\n{GeneralHelp()}"); return ExitCodes.Usage; }
            await ctx.Out.WriteLineAsync(GeneralHelp());
            return ExitCodes.Ok;
        }
        if (first is "--version" or "version")
        {
            await ctx.Out.WriteLineAsync($"integrity-target {TargetHost.Version}");
            return ExitCodes.Ok;
        }
        var verb = Find(first);
        if (verb == null)
        {
            await ctx.Err.WriteLineAsync($"integrity-target: unknown verb '{first}'\n\n{GeneralHelp()}");
            return ExitCodes.Usage;
        }
        var rest = args.Skip(1).ToList();
        if (rest.Any(a => a is "--help" or "-h")) { await ctx.Out.WriteLineAsync(verb.Usage); return ExitCodes.Ok; }
        try
        {
            return await verb.Run(rest, ctx);
        }
        catch (CliException e)
        {
            await ctx.Err.WriteLineAsync($"integrity-target {verb.Name}: {e.Message}");
            return e.ExitCode;
        }
        catch (OperationCanceledException) when (ctx.Stop.IsCancellationRequested)
        {
            await ctx.Err.WriteLineAsync($"integrity-target {verb.Name}: interrupted");
            return ExitCodes.Failure;
        }
    }

    private static Verb? Find(string name) => Verbs.FirstOrDefault(v => v.Name.Equals(name, StringComparison.OrdinalIgnoreCase));

    public static string GeneralHelp() =>
        "integrity-target: an iSCSI target serving integrity-protected LUNs\n\n" +
        "usage: integrity-target VERB [options]\n\n" +
        string.Join("\n", Verbs.Select(v => $"  {v.Name,-8} {v.Summary}")) + "\n\n" +
        "  help VERB       options of one verb\n" +
        "  --version       print the version\n\n" +
        "exit codes: 0 ok, 1 runtime failure (or bad blocks found by scrub), 2 bad configuration or usage";
}
