using System.Security.Cryptography;
using IntegrityTarget.Storage;
using Serilog;

namespace IntegrityTarget.Integrity;

// Probe, format and open.
public sealed partial class IntegrityVolume
{
    public static DeviceContent Probe(IBlockDevice device)
    {
        // Either superblock copy names an integrity volume: with copy A's sector lost, open still works from
        // copy B, so this must not call the device foreign (whose advice is a format that destroys it).
        for (int copy = 0; copy < 2; copy++)
        {
            long at = Superblock.CopyOffset(copy);
            if (device.Length < at + 512) break;
            var s = new byte[512];
            ReadSync(device, at, s);
            if (Superblock.HasMagic(s)) return DeviceContent.IntegrityVolume;
        }
        var buf = new byte[1 << 20];
        long pos = 0;
        while (pos < device.Length)
        {
            var (allocated, len) = device.GetAllocation(pos);
            if (len <= 0) break;
            if (allocated)
            {
                long end = pos + len;
                for (long p = pos; p < end; p += buf.Length)
                {
                    int n = (int)Math.Min(buf.Length, end - p);
                    ReadSync(device, p, buf.AsMemory(0, n));
                    if (buf.AsSpan(0, n).IndexOfAnyExcept((byte)0) >= 0) return DeviceContent.Unknown;
                }
            }
            pos += len;
        }
        return DeviceContent.Blank;
    }

    public static async ValueTask<IntegrityVolume> FormatAsync(IBlockDevice device, FormatOptions options, ILogger log, IProgress<double>? progress = null, CancellationToken ct = default)
    {
        string name = device.Name;
        CheckBlockSize(options.BlockSize, name);
        if (!Enum.IsDefined(options.Algorithm))
            throw new IntegrityVolumeException($"{name}: unknown tag algorithm {(int)options.Algorithm} (known: crc32c, xxhash64, hmac-sha256)");
        if (options.Algorithm == Integrity.TagAlgorithm.HmacSha256 && options.Key.Length < 16)
            throw new IntegrityVolumeException($"{name}: hmac-sha256 needs a key of at least 16 bytes (got {options.Key.Length})");
        if (options.JournalBytes is long jb && jb < Geometry.MinJournalBytes)
            throw new IntegrityVolumeException($"{name}: journal of {jb} bytes is too small (minimum {Geometry.MinJournalBytes})");
        if (options.SpareSlots is long sp && (sp < Geometry.MinSpareSlots && !options.AllowTinySparePool || sp < 1))
            throw new IntegrityVolumeException($"{name}: {sp} spare slots is too few: redirect-on-write needs at least {Geometry.MinSpareSlots} (a 1 MiB write of whole {Geometry.ChunkBytesDefault / 1024} KiB chunks takes {Geometry.MinSpareSlots} free slots at once); the default is 32 + 1/32 of the chunks");
        var content = Probe(device);
        if (!options.Force && content == DeviceContent.IntegrityVolume)
            throw new IntegrityVolumeException($"{name}: already holds an integrity volume; refusing to format it without Force");
        if (!options.Force && content == DeviceContent.Unknown)
            throw new IntegrityVolumeException($"{name}: holds data that is not an integrity volume (not all zeros); refusing to format it without Force");

        int bpc = Geometry.ChunkBytesDefault / options.BlockSize;
        ulong blocks = options.LogicalBlocks ?? LogicalBlocksFor(device.Length, options.BlockSize, options.Algorithm, options.JournalBytes, options.SpareSlots);
        if (blocks == 0)
        {
            long need = DeviceBytesFor((ulong)bpc, options.BlockSize, options.Algorithm, options.JournalBytes);
            throw new IntegrityVolumeException($"{name}: device of {device.Length} bytes is too small for an integrity volume with {options.BlockSize}-byte blocks (needs at least {need} bytes)");
        }
        var g = Geometry.Compute(options.BlockSize, options.Algorithm, blocks, options.JournalBytes, options.SpareSlots);
        if (g.DeviceBytes > device.Length)
            throw new IntegrityVolumeException($"{name}: device of {device.Length} bytes is too small for {blocks} blocks of {options.BlockSize} bytes (needs {g.DeviceBytes} bytes)");

        var salt = RandomNumberGenerator.GetBytes(16);
        var keyCheck = options.Algorithm == Integrity.TagAlgorithm.HmacSha256 ? Tagger.KeyCheck(options.Key.Span, salt) : new byte[32];
        var sb = Superblock.From(g, Guid.NewGuid(), 1, salt, keyCheck, DateTimeOffset.UtcNow.ToUnixTimeSeconds());

        // Kill any old superblock first (durably), so a crash mid-format never leaves an old superblock
        // describing half-wiped metadata. Then zero journal and map, release the data area, and write
        // the new superblock last, with FUA, once everything it describes is durable.
        progress?.Report(0);
        if (content != DeviceContent.Blank)
        {
            await device.WriteAsync(0, new byte[2 * Superblock.Bytes], fua: true, ct);
            await ZeroAsync(device, 0, g.Segments[0].DataOffset, ct);
            if (device.CanDeallocate)
            {
                long dataStart = g.Segments[0].DataOffset, dataBytes = device.Length - dataStart, step = 256L << 20;
                for (long p = 0; p < dataBytes; p += step)
                {
                    ct.ThrowIfCancellationRequested();
                    await device.DiscardAsync(dataStart + p, Math.Min(step, dataBytes - p), ct);
                    progress?.Report(0.9 * (p + step) / Math.Max(1, dataBytes));
                }
            }
        }
        await device.WriteAsync(g.JournalOffset, new JournalSuper(1, 1, 0, 0, 0).Serialize(), fua: false, ct);
        await device.FlushAsync(ct);
        // Copy B first, then A: either alone opens the volume (both carry sequence 1).
        var super = sb.Serialize();
        await device.WriteAsync(Superblock.CopyOffset(1), super, fua: true, ct);
        await device.WriteAsync(Superblock.CopyOffset(0), super, fua: true, ct);
        progress?.Report(1);
        log.Information("Formatted {Device} as integrity volume {Volume}: {Blocks} blocks of {BlockSize} B, {Algorithm}, journal {JournalBytes} B, chunk {ChunkBytes} B, uuid {Uuid}",
            name, options.Name ?? name, blocks, g.BlockSize, Tagger.NameOf(g.Algorithm), g.JournalBytes, g.ChunkBytes, sb.Uuid);
        var tuning = (options.Tuning ?? new OpenOptions()) with { Key = options.Key, Name = options.Name };
        if (options.TagCacheBytes is { } tc) tuning = tuning with { TagCacheBytes = tc };
        return await OpenAsync(device, tuning, log, ct);
    }

    /// <summary>Reads both superblock copies and picks the one to use (<see cref="Superblock.ReadBest"/>).</summary>
    private static async ValueTask<(Superblock Super, Geometry Geometry, int Copy, string? Other)> ReadSuperblockAsync(IBlockDevice device, CancellationToken ct)
    {
        var both = new byte[2 * Superblock.Bytes];
        await device.ReadAsync(0, both, ct);
        return Superblock.ReadBest(both.AsSpan(0, Superblock.Bytes), both.AsSpan(Superblock.Bytes), device.Name);
    }

    private static async ValueTask ZeroAsync(IBlockDevice dev, long offset, long length, CancellationToken ct)
    {
        var zeros = new byte[1 << 20];
        for (long p = 0; p < length; p += zeros.Length)
            await dev.WriteAsync(offset + p, zeros.AsMemory(0, (int)Math.Min(zeros.Length, length - p)), fua: false, ct);
    }

    /// <summary>
    /// Block size and logical block count from the superblock alone, without opening the volume (no journal
    /// replay, nothing written): what a gateway that does not hold the LUN reports. Null when the device holds
    /// no valid superblock.
    /// </summary>
    public static (int BlockSize, ulong LogicalBlocks)? ReadGeometry(IBlockDevice device)
    {
        if (device.Length < 2 * Superblock.Bytes) return null;
        var both = new byte[2 * Superblock.Bytes];
        ReadSync(device, 0, both);
        // The copy open would use (after a grow interrupted between the two copies, the newer one).
        try { var g = Superblock.ReadBest(both.AsSpan(0, Superblock.Bytes), both.AsSpan(Superblock.Bytes), device.Name).Geometry; return (g.BlockSize, g.LogicalBlocks); }
        catch (IntegrityVolumeException) { return null; }
    }

    public static async ValueTask<IntegrityVolume> OpenAsync(IBlockDevice device, OpenOptions options, ILogger log, CancellationToken ct = default)
    {
        string name = device.Name;
        if (device.Length < 2 * Superblock.Bytes)
            throw new IntegrityVolumeException($"{name}: device of {device.Length} bytes is too small to hold an integrity volume");
        var (sb, g, copy, other) = await ReadSuperblockAsync(device, ct);
        if (device.Length < g.DeviceBytes)
            throw new IntegrityVolumeException($"{name}: device is truncated: it has {device.Length} bytes but the volume ({g.LogicalBlocks} blocks of {g.BlockSize} B) needs {g.DeviceBytes}");
        if (g.Algorithm == Integrity.TagAlgorithm.HmacSha256)
        {
            if (options.Key.Length == 0)
                throw new IntegrityKeyException($"{name}: the volume uses hmac-sha256 and no key was given");
            if (!CryptographicOperations.FixedTimeEquals(Tagger.KeyCheck(options.Key.Span, sb.Salt), sb.KeyCheck))
                throw new IntegrityKeyException($"{name}: wrong key (the key check value stored on the volume does not match)");
        }
        var tagger = new Tagger(g.Algorithm, sb.Salt, g.Algorithm == Integrity.TagAlgorithm.HmacSha256 ? options.Key.Span : default);
        var v = new IntegrityVolume(device, sb, g, tagger, options, log);
        if (other != null)
        {
            // Both copies must describe the volume in use before anything can rewrite one of them again.
            v._log.Warning("{Volume}: {Problem}; rewriting it from copy {Copy}", v.Name, other, copy == 0 ? "A" : "B");
            await device.WriteAsync(Superblock.CopyOffset(1 - copy), sb.Serialize(), fua: true, ct);
        }
        await v.RecoverAsync(ct);
        v._committer = Task.Run(v.CommitterLoopAsync, CancellationToken.None);
        return v;
    }
}
