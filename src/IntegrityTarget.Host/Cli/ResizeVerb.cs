using System.Text.Json;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Status;

namespace IntegrityTarget.Host.Cli;

public static class ResizeVerb
{
    public const string Usage = """
        usage: integrity-target resize IQN/LUN SIZE [--socket PATH | --config FILE | --data-dir DIR]

        Grows a LUN of the running server while it is served (SIZE e.g. 20GiB, the new logical size).
        Initiators get CAPACITY DATA HAS CHANGED and see the new size on their next READ CAPACITY
        (Linux: iscsiadm -m node --rescan, then resize2fs / xfs_growfs). Shrinking is refused.
        Exit code 0 when the LUN has the new size, 1 when the server refused or failed, 2 on bad usage.
        """;

    private static readonly Dictionary<string, bool> Known = new(StringComparer.OrdinalIgnoreCase) { ["socket"] = true };

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CliContext ctx)
    {
        var va = VerbArgs.Parse("resize", args, Known, passUnknown: true);
        if (va.Positionals.Count != 2) throw new CliException("give IQN/LUN and SIZE, e.g. resize iqn.2026-11.org.example:integrity/0 20GiB", ExitCodes.Usage);
        var target = va.Positionals[0];
        int slash = target.LastIndexOf('/');
        if (slash <= 0 || !ulong.TryParse(target[(slash + 1)..], out ulong lun))
            throw new CliException($"'{target}' is not IQN/LUN (e.g. iqn.2026-11.org.example:integrity/0)", ExitCodes.Usage);
        if (!SizeParser.TryParse(va.Positionals[1], out long bytes, out var why)) throw new CliException($"SIZE {why}", ExitCodes.Usage);
        string socket = CliHelpers.ResolveSocket(va, ctx);
        var request = JsonSerializer.Serialize(new StatusRequest("resize", target[..slash], lun, Size: va.Positionals[1]), StatusJson.Options);
        await foreach (var reply in StatusClient.RequestAsync(socket, request, ctx.Stop))
        {
            if ((string?)reply["type"] != "resize-result") throw new CliException((string?)reply["error"] ?? reply.ToJsonString());
            var o = reply["result"].Deserialize<ResizeOutcome>(StatusJson.Options) ?? throw new CliException("the server sent an empty resize result");
            await ctx.Out.WriteLineAsync(o.NewBytes == o.OldBytes
                ? $"{o.Iqn}/{o.Lun} already has {SizeParser.Format(o.NewBytes)}"
                : $"{o.Iqn}/{o.Lun}: {SizeParser.Format(o.OldBytes)} -> {SizeParser.Format(o.NewBytes)} ({o.Blocks} blocks); initiators were told the capacity changed");
            return ExitCodes.Ok;
        }
        throw new CliException("the server did not answer the resize");
    }
}
