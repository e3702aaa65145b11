using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Wiring;

namespace IntegrityTarget.Host.Cli;

public static class FormatVerb
{
    public const string Usage = """
        usage: integrity-target format PATH [--block-size 512|4096] [--size SIZE]
                                            [--tag-algorithm crc32c|xxhash64|hmac-sha256] [--key-file FILE] [--force]
                                            [--spare-slots N] [--journal-size SIZE]
                                            [--ceph-conf FILE] [--ceph-id ID] [--ceph-keyring FILE] [--ceph-cluster NAME]

        Formats PATH (file, block device, or Ceph RBD image rbd:POOL/IMAGE) as an integrity volume. A
        missing file or image is created (sparse / thin) with room for SIZE of logical capacity (e.g.
        10GiB); an existing one is used whole. Blocks are 512 bytes unless --block-size 4096 (the
        default of a LUN's BlockSize too). Refuses one that already holds a volume or any other data
        unless --force (which destroys it). hmac-sha256 needs --key-file (at least 16 bytes); the key is
        never stored on the volume. --spare-slots N: slots of 128 KiB beyond one per chunk (default 32 +
        1/32 of the chunks, at least 8): the write-back window of whole-chunk overwrites, which reuse
        replaced slots only once the overwrite is flushed; a larger pool means fewer flushes between the
        initiator's own. The file or image is made larger by N slots, not the LUN. --journal-size SIZE:
        the journal ring (default 1/32 of the LUN, 2 MiB to 256 MiB; from 1 MiB to 1 GiB): small writes
        wait in it, and in memory, until they are copied home in the background, so a larger journal
        copies home less often and folds more rewrites of one slot together, for that much memory.

        """ + CephArgs.Usage;

    private static readonly Dictionary<string, bool> Known = CephArgs.With(new(StringComparer.OrdinalIgnoreCase)
    {
        ["block-size"] = true, ["size"] = true, ["tag-algorithm"] = true, ["key-file"] = true, ["force"] = false, ["spare-slots"] = true,
        ["journal-size"] = true,
    });

    /// <summary>A spare pool of 128 TiB of slots: beyond that the number is a typo, not a write-back window.</summary>
    private const long MaxSpareSlots = 1L << 30;

    /// <summary>Journaled small writes are also held in memory until they are home: a ring larger than this is a typo.</summary>
    private const long MaxJournalBytes = 1L << 30;

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CliContext ctx)
    {
        var va = VerbArgs.Parse("format", args, Known, passUnknown: false);
        if (va.Positionals.Count != 1) throw new CliException("give exactly one PATH to format (see: integrity-target help format)", ExitCodes.Usage);
        using var backing = Backing.For(va.Positionals[0], CephArgs.Options(va, ctx), ctx.WorkingDirectory);

        // The same default as a LUN's BlockSize when serve creates it, so `format X` then `serve --lun X` gives the
        // LUN that `serve --lun X --size ...` would (512-byte blocks, which every initiator takes; ESXi needs them).
        int blockSize = ConfigReader.DefaultBlockSize;
        if (va.Get("block-size") is { } bs && (!int.TryParse(bs, out blockSize) || blockSize is not (512 or 4096)))
            throw new CliException($"--block-size must be 512 or 4096, got {bs}", ExitCodes.Usage);
        long? size = null;
        if (va.Get("size") is { } sz)
        {
            if (!SizeParser.TryParse(sz, out long bytes, out var why)) throw new CliException($"--size {why}", ExitCodes.Usage);
            if (bytes < ConfigReader.MinLunBytes) throw new CliException($"--size {sz} is too small (at least {SizeParser.Format(ConfigReader.MinLunBytes)})", ExitCodes.Usage);
            if (bytes % blockSize != 0) throw new CliException($"--size {sz} is not a whole number of {blockSize}-byte blocks", ExitCodes.Usage);
            size = bytes;
        }
        string alg = TagAlgorithms.Crc32c;
        if (va.Get("tag-algorithm") is { } a && !TagAlgorithms.TryNormalise(a, out alg))
            throw new CliException($"unknown --tag-algorithm '{a}' (choose {string.Join(", ", TagAlgorithms.All)})", ExitCodes.Usage);
        var key = CliHelpers.ReadKeyFile(va.Get("key-file"), ctx);
        if (TagAlgorithms.NeedsKey(alg) && key.Length < ConfigReader.MinKeyBytes)
            throw new CliException($"{alg} needs --key-file with at least {ConfigReader.MinKeyBytes} bytes (e.g. head -c 32 /dev/urandom > lun.key)", ExitCodes.Usage);

        long? spare = null;
        if (va.Get("spare-slots") is { } ss)
        {
            if (!long.TryParse(ss, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long n) || n < Integrity.IntegrityVolume.MinSpareSlots || n > MaxSpareSlots)
                throw new CliException($"--spare-slots must be a whole number from {Integrity.IntegrityVolume.MinSpareSlots} to {MaxSpareSlots} (slots of 128 KiB; a 1 MiB write needs 8), got {ss}", ExitCodes.Usage);
            spare = n;
        }
        long? journal = null;
        if (va.Get("journal-size") is { } js)
        {
            if (!SizeParser.TryParse(js, out long bytes, out var why)) throw new CliException($"--journal-size {why}", ExitCodes.Usage);
            if (bytes < Integrity.IntegrityVolume.MinJournalBytes || bytes > MaxJournalBytes)
                throw new CliException($"--journal-size must be from {SizeParser.Format(Integrity.IntegrityVolume.MinJournalBytes)} to {SizeParser.Format(MaxJournalBytes)}, got {js}", ExitCodes.Usage);
            journal = bytes;
        }
        using var log = CliHelpers.QuietLogger(ctx);
        var request = new IntegrityWiring.FormatRequest(blockSize, alg, key, size, va.Has("force"), spare, journal);
        string summary;
        try
        {
            summary = await CliHelpers.WithProgressAsync(ctx, "Formatting", p => IntegrityWiring.FormatAsync(backing, request, log, p, ctx.Stop));
        }
        catch (Exception e) when (e is Storage.StorageException or IOException || IntegrityWiring.IsVolumeError(e))
        {
            throw new CliException(e.Message);
        }
        await ctx.Out.WriteLineAsync(summary);
        return ExitCodes.Ok;
    }
}
