using IntegrityTarget.Host.Wiring;

namespace IntegrityTarget.Host.Cli;

public static class DumpVerb
{
    public const string Usage = """
        usage: integrity-target dump PATH

        Prints the superblock and journal state of the integrity volume in PATH (read-only).
        Exit code 1 when PATH holds no integrity volume.
        """;

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CliContext ctx)
    {
        var va = VerbArgs.Parse("dump", args, new Dictionary<string, bool>(), passUnknown: false);
        if (va.Positionals.Count != 1) throw new CliException("give exactly one PATH to dump", ExitCodes.Usage);
        string path = Path.GetFullPath(va.Positionals[0], ctx.WorkingDirectory);
        if (!File.Exists(path)) throw new CliException($"{path}: no such file or block device", ExitCodes.Usage);
        try
        {
            var (text, isVolume) = IntegrityWiring.Dump(path);
            await ctx.Out.WriteLineAsync(text.TrimEnd());
            if (!isVolume) throw new CliException($"{path} does not hold an integrity volume");
        }
        catch (Exception e) when (e is Storage.StorageException or IOException || IntegrityWiring.IsVolumeError(e))
        {
            throw new CliException(e.Message);
        }
        return ExitCodes.Ok;
    }
}
