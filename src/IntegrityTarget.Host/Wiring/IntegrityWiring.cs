using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Status;
using IntegrityTarget.Storage;
using Serilog;
using IntegrityTarget.Integrity;

namespace IntegrityTarget.Host.Wiring;

/// <summary>The host's only contact with the integrity layer: open/create/format a LUN, scrub, dump.</summary>
public static class IntegrityWiring
{
    /// <summary>What the format verb asks for.</summary>
    public sealed record FormatRequest(int BlockSize, string TagAlgorithm, byte[] Key, long? LogicalBytes, bool Force, long? SpareSlots = null, long? JournalBytes = null);

    private static TagAlgorithm Algorithm(string canonical) => canonical switch
    {
        TagAlgorithms.Crc32c => TagAlgorithm.Crc32c,
        TagAlgorithms.XxHash64 => TagAlgorithm.XxHash64,
        TagAlgorithms.HmacSha256 => TagAlgorithm.HmacSha256,
        _ => throw new CliException($"unknown tag algorithm '{canonical}'", ExitCodes.Usage),
    };

    public static bool IsVolumeError(Exception e) => e is IntegrityVolumeException;

    /// <summary>Integrity-volume figures for metrics and provisioning reports.</summary>
    public sealed record VolumeFigures(ulong Checkpoints, long Slots, long FreeSlots, ulong MappedBlocks);

    /// <summary>The figures of an integrity volume; null for a plain one.</summary>
    public static VolumeFigures? Figures(IBlockVolume volume) => volume is IntegrityVolume iv
        ? new VolumeFigures(iv.Checkpoints, iv.Slots, iv.FreeSlots, Math.Min(iv.BlockCount, (ulong)iv.MappedChunks * (ulong)iv.BlocksPerChunk))
        : null;

    /// <summary>
    /// What an offline verb reports for a storage or volume failure: a missing or wrong key is a usage
    /// error (exit 2, like format without --force); anything else is a runtime failure (exit 1).
    /// </summary>
    public static CliException ToCliError(Exception e) => e is IntegrityKeyException
        ? new CliException($"{e.Message}; give the volume's key with --key-file FILE", ExitCodes.Usage)
        : new CliException(e.Message);

    /// <summary>The one wording of the offline verbs for a file that is not an integrity volume.</summary>
    public static CliException NotAVolume(string path) =>
        new($"{path} does not hold an integrity volume");

    public static byte[] ReadKey(string? keyFile) => keyFile == null ? [] : File.ReadAllBytes(keyFile);

    public static async Task<(IBlockVolume Volume, IBlockDevice Device)> OpenLunAsync(LunSettings lun, string name, ILogger log, CancellationToken ct)
    {
        var alg = Algorithm(lun.TagAlgorithm);
        using var backing = Backing.For(lun);
        bool created = false;
        IBlockDevice device;
        if (!backing.Exists())
        {
            if (lun.SizeBytes is not { } size)
                throw new CliException($"{backing.Noun} {backing.Display} does not exist and no Size is given to create it");
            ulong blocks = (ulong)(size / lun.BlockSize);
            device = backing.Create(IntegrityVolume.DeviceBytesFor(blocks, lun.BlockSize, alg), log);
            created = true;
        }
        else device = backing.Open(readOnly: false, log);
        try
        {
            return (await OpenOnDeviceAsync(lun, device, created, name, log, ct), device);
        }
        catch
        {
            device.Dispose();
            if (created) backing.Delete(); // do not leave a half-made file or image that the next start would refuse
            throw;
        }
    }

    /// <summary>
    /// Opens the LUN's integrity volume on a device already opened (and locked) by the caller: replays the
    /// journal, or formats a blank device (always when <paramref name="created"/>, else when FormatIfBlank).
    /// </summary>
    public static async Task<IBlockVolume> OpenOnDeviceAsync(LunSettings lun, IBlockDevice device, bool created, string name, ILogger log, CancellationToken ct)
    {
        var alg = Algorithm(lun.TagAlgorithm);
        var key = ReadKey(lun.KeyFile);
        switch (IntegrityVolume.Probe(device))
        {
            case DeviceContent.IntegrityVolume:
            {
                var volume = await IntegrityVolume.OpenAsync(device, new OpenOptions { Key = key, WriteBack = lun.WriteBack, Name = name, TagCacheBytes = lun.TagCacheBytes }, log, ct);
                if (lun.BlockSizeConfigured && volume.BlockSize != lun.BlockSize)
                    log.Warning("{Lun}: the volume in {Path} was formatted with {Actual}-byte blocks; the configured BlockSize {Configured} does not apply",
                        name, lun.Path, volume.BlockSize, lun.BlockSize);
                return volume;
            }
            case DeviceContent.Blank when created || lun.FormatIfBlank:
            {
                var options = new FormatOptions
                {
                    BlockSize = lun.BlockSize, Algorithm = alg, Key = key, Name = name, TagCacheBytes = lun.TagCacheBytes,
                    LogicalBlocks = created && lun.SizeBytes is { } size ? (ulong)(size / lun.BlockSize) : null,
                };
                // FormatAsync opens the new volume under the LUN's name; write-back is a property of the
                // open volume, so no second open (and no second "Opened" log event) is needed.
                var volume = await IntegrityVolume.FormatAsync(device, options, log, null, ct);
                volume.WriteBack = lun.WriteBack;
                return volume;
            }
            case DeviceContent.Blank:
                throw new CliException($"the {Noun(lun)} is blank (all zeros) and FormatIfBlank is false; format it with: integrity-target format " + lun.Path);
            default:
                throw new CliException($"the {Noun(lun)} holds data that is not an integrity volume, so it is not formatted implicitly. " +
                    "Serve it without integrity (\"Integrity\": false, or --integrity false), or format it explicitly, " +
                    "which DESTROYS its contents: integrity-target format " + lun.Path + " --force");
        }
    }

    private static string Noun(LunSettings lun) => lun.Rbd != null ? "image" : "file";

    /// <summary>Block size, block count and thin provisioning from an integrity volume's header (no lock, no replay); null when it holds none.</summary>
    public static (int BlockSize, ulong Blocks, bool Thin)? ReadGeometry(IBlockDevice device) =>
        IntegrityVolume.ReadGeometry(device) is { } g ? (g.BlockSize, g.LogicalBlocks, true) : null;

    /// <summary>Device bytes to create for a new integrity LUN of the configured size.</summary>
    public static long DeviceBytesFor(LunSettings lun) =>
        IntegrityVolume.DeviceBytesFor((ulong)(lun.SizeBytes!.Value / lun.BlockSize), lun.BlockSize, Algorithm(lun.TagAlgorithm));

    public static async Task<ScrubOutcome> ScrubAsync(IBlockVolume volume, double? rateMBps, IProgress<double> progress, CancellationToken ct)
    {
        if (volume is not IntegrityVolume iv)
            throw new CliException($"{volume.Name} is served without integrity protection; there are no tags to scrub");
        var report = await iv.ScrubAsync(new ScrubOptions
        {
            MaxMBPerSecond = rateMBps,
            Progress = new InlineProgress<ScrubProgress>(p => progress.Report(p.Fraction)),
            Context = new IoContext(volume.Name, "(scrub)", "SCRUB"),
        }, ct);
        if (report.Cancelled) throw new OperationCanceledException("scrub cancelled");
        return new ScrubOutcome(volume.Name, report.BlocksChecked, report.BlocksSkippedUnmapped, report.Mismatches,
            report.BadLbas.ToList(), report.IoErrors, report.Duration.TotalSeconds);
    }

    public static async Task<ScrubOutcome> ScrubOfflineAsync(Backing backing, byte[] key, double? rateMBps, ILogger log, IProgress<double> progress, CancellationToken ct)
    {
        if (!backing.Exists()) throw new CliException(backing.Missing, ExitCodes.Usage);
        using var device = OpenExclusive(backing, "scrub", log);
        if (IntegrityVolume.Probe(device) != DeviceContent.IntegrityVolume) throw NotAVolume(backing.Display);
        await using var volume = await IntegrityVolume.OpenAsync(device, new OpenOptions { Key = key, WriteBack = false, Name = backing.Display }, log, ct);
        return await ScrubAsync(volume, rateMBps, progress, ct);
    }

    public static async Task<string> FormatAsync(Backing backing, FormatRequest request, ILogger log, IProgress<double> progress, CancellationToken ct)
    {
        var alg = Algorithm(request.TagAlgorithm);
        string path = backing.Display;
        bool created = false;
        IBlockDevice device;
        if (!backing.Exists())
        {
            if (request.LogicalBytes == null)
                throw new CliException($"{path} does not exist; give --size to create it", ExitCodes.Usage);
            device = backing.Create(IntegrityVolume.DeviceBytesFor((ulong)(request.LogicalBytes.Value / request.BlockSize), request.BlockSize, alg, request.JournalBytes, request.SpareSlots), log);
            created = true;
        }
        else device = OpenExclusive(backing, "format", log);
        using (device)
        {
            try
            {
                var content = IntegrityVolume.Probe(device);
                if (content != DeviceContent.Blank && !request.Force)
                    throw new CliException(content == DeviceContent.IntegrityVolume
                        ? $"{path} already holds an integrity volume; add --force to format over it (its data is lost)"
                        : $"{path} holds data that is not an integrity volume; add --force to format over it (its data is lost)");
                var options = new FormatOptions
                {
                    BlockSize = request.BlockSize, Algorithm = alg, Key = request.Key, Force = request.Force,
                    LogicalBlocks = request.LogicalBytes is { } b ? (ulong)(b / request.BlockSize) : null, SpareSlots = request.SpareSlots,
                    JournalBytes = request.JournalBytes,
                };
                await using var volume = await IntegrityVolume.FormatAsync(device, options, log, progress, ct);
                await volume.FlushAsync(ct);
                long spare = volume.Slots - (long)((volume.BlockCount + (ulong)volume.BlocksPerChunk - 1) / (ulong)volume.BlocksPerChunk);
                return $"{path}: formatted: {volume.BlockCount} blocks of {volume.BlockSize} bytes ({SizeParser.Format((long)volume.BlockCount * volume.BlockSize)}), {request.TagAlgorithm} tags, {spare} spare slots, journal {SizeParser.Format(volume.JournalBytes)}";
            }
            catch when (created)
            {
                device.Dispose();
                backing.Delete();
                throw;
            }
        }
    }

    /// <returns>The dump text, and whether the device holds an integrity volume at all.</returns>
    public static (string Text, bool IsVolume) Dump(Backing backing, ILogger log)
    {
        using var device = backing.Open(readOnly: true, log);
        return (IntegrityVolume.Dump(device), IntegrityVolume.Probe(device) == DeviceContent.IntegrityVolume);
    }

    /// <summary>
    /// Where one LBA's data and tag live in the file or image. Opens the volume like serve would (so a pending
    /// journal is replayed first), which needs it not to be served.
    /// </summary>
    public static async Task<string> LocateAsync(Backing backing, ulong lba, byte[] key, ILogger log, CancellationToken ct)
    {
        using var device = OpenExclusive(backing, "dump --lba", log);
        if (IntegrityVolume.Probe(device) != DeviceContent.IntegrityVolume) throw NotAVolume(backing.Display);
        await using var volume = await IntegrityVolume.OpenAsync(device, new OpenOptions { Key = key, WriteBack = false, Name = backing.Display }, log, ct);
        if (lba >= volume.BlockCount)
            throw new CliException($"LBA {lba} is beyond the volume's {volume.BlockCount} blocks", ExitCodes.Usage);
        return volume.LocateBlock(lba) is { } at
            ? $"LBA {lba}: data offset {at.DataOffset}, tag offset {at.TagOffset} (tag size {at.TagSize} B, block size {volume.BlockSize} B)"
            : $"LBA {lba}: unmapped (reads as zeros; no data or tag stored)";
    }

    private static IBlockDevice OpenExclusive(Backing backing, string verb, ILogger log)
    {
        try { return backing.Open(readOnly: false, log); }
        catch (Exception e) when (backing.IsInUse(e))
        {
            string what = backing is RbdBacking ? $"{e.Message}\n" : "";
            throw new CliException(verb == "scrub"
                ? $"{what}{backing.Display} is in use (served?); scrub a served LUN online with: integrity-target scrub --lun IQN/LUN"
                : $"{what}{backing.Display} is in use by another process (served?); stop it first");
        }
    }
}
