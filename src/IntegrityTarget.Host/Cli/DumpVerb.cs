using IntegrityTarget.Host.Wiring;

namespace IntegrityTarget.Host.Cli;

public static class DumpVerb
{
    public const string Usage = """
        usage: integrity-target dump PATH [--lba N [--key-file FILE]] [--ceph-conf FILE] [--ceph-id ID] ...

        Prints the superblock and journal state of the integrity volume in PATH (a file, block device or
        rbd:POOL/IMAGE; read-only). --lba N prints where block N's data and tag are stored (byte offsets
        in PATH); this opens the volume as serve would (replaying a pending journal), so PATH must not
        be served. Exit code 1 when PATH holds no integrity volume.

        """ + CephArgs.Usage;

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CliContext ctx)
    {
        var va = VerbArgs.Parse("dump", args, CephArgs.With(new(StringComparer.OrdinalIgnoreCase) { ["lba"] = true, ["key-file"] = true }), passUnknown: false);
        if (va.Positionals.Count != 1) throw new CliException("give exactly one PATH to dump", ExitCodes.Usage);
        using var backing = Backing.For(va.Positionals[0], CephArgs.Options(va, ctx), ctx.WorkingDirectory);
        string path = backing.Display;
        try
        {
            if (!backing.Exists()) throw new CliException(backing.Missing, ExitCodes.Usage);
            if (va.Get("lba") is { } lbaText)
            {
                if (!ulong.TryParse(lbaText, out ulong lba)) throw new CliException($"--lba must be a block number, got '{lbaText}'", ExitCodes.Usage);
                using var log = CliHelpers.QuietLogger(ctx);
                await ctx.Out.WriteLineAsync(await IntegrityWiring.LocateAsync(backing, lba, CliHelpers.ReadKeyFile(va.Get("key-file"), ctx), log, ctx.Stop));
                return ExitCodes.Ok;
            }
            using var quiet = CliHelpers.QuietLogger(ctx);
            var (text, isVolume) = IntegrityWiring.Dump(backing, quiet);
            await ctx.Out.WriteLineAsync(text.TrimEnd());
            if (!isVolume) throw IntegrityWiring.NotAVolume(path);
        }
        catch (Exception e) when (e is Storage.StorageException or IOException || IntegrityWiring.IsVolumeError(e))
        {
            throw IntegrityWiring.ToCliError(e);
        }
        return ExitCodes.Ok;
    }
}
