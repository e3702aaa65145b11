using System.Text;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity;

// Offline inspection: dump the on-disk state, locate a block.
public sealed partial class IntegrityVolume
{
    /// <summary>
    /// Where block <paramref name="lba"/> of the volume on <paramref name="device"/> lives (data and tag
    /// byte offsets), read from the superblock, the chunk map and the journal's committed remaps, without
    /// opening the volume (e.g. to damage a block on purpose in a test, or to inspect it with dd). Remaps a
    /// recovery would still have to validate are taken as written. Null when the block is unmapped (reads
    /// as zeros). Throws <see cref="IntegrityVolumeException"/> when the device holds no readable volume.
    /// </summary>
    public static (long DataOffset, long TagOffset, int TagSize)? LocateBlock(IBlockDevice device, ulong lba)
    {
        var both = new byte[2 * Superblock.Bytes];
        ReadSync(device, 0, both);
        var (sb, g, _, _) = Superblock.ReadBest(both.AsSpan(0, Superblock.Bytes), both.AsSpan(Superblock.Bytes), device.Name);
        if (lba >= g.LogicalBlocks) throw new IntegrityVolumeException($"{device.Name}: LBA {lba} beyond the volume's {g.LogicalBlocks} blocks");
        var map = new long[g.LogicalChunks];
        LoadMap(device, g, map, out _);
        var js = new byte[512];
        ReadSync(device, g.JournalOffset, js);
        if (JournalSuper.Parse(js, g.JournalAreaBytes, out _) is JournalSuper jsb)
        {
            var tagger = g.Algorithm == Integrity.TagAlgorithm.HmacSha256 ? null : new Tagger(g.Algorithm, sb.Salt, default);
            foreach (var t in ScanJournal(device, g, tagger, jsb, out _, out _, out _))
                for (int i = 0; i < t.Records; i++)
                {
                    var r = TransactionCodec.ReadRecord(t.Buf, i);
                    if (r.IsRemap) map[(long)r.A] = (long)r.B;
                }
        }
        long e = map[(long)(lba / (ulong)g.BlocksPerChunk)];
        if (e == 0) return null;
        int idx = (int)(lba % (ulong)g.BlocksPerChunk);
        return (g.SlotOffset(e - 1) + (long)idx * g.BlockSize, g.TagOffset(e - 1, idx), g.TagSize);
    }

    /// <summary>
    /// One line saying where block <paramref name="lba"/> lives, for `dump --lba N`:
    /// "lba N: data at offset D, tag at offset T (S B)" or "lba N: unmapped (reads as zeros)".
    /// </summary>
    public static string DumpBlock(IBlockDevice device, ulong lba)
    {
        var loc = LocateBlock(device, lba);
        return loc is { } l
            ? $"lba {lba}: data at offset {l.DataOffset}, tag at offset {l.TagOffset} ({l.TagSize} B)"
            : $"lba {lba}: unmapped (reads as zeros)";
    }

    /// <summary>A tag function for measurements (benchmarks): (data, lba, tag destination).</summary>
    public delegate void TagFunction(ReadOnlySpan<byte> data, ulong lba, Span<byte> tag);

    public static TagFunction CreateTagger(TagAlgorithm alg, byte[] salt, byte[] key)
    {
        var t = new Tagger(alg, salt, key);
        return (d, l, tag) => t.ComputeTag(l, d, tag[..t.TagSize]);
    }

    /// <summary>
    /// Human-readable superblock, journal and map state. Reads only; never needs the key (keyed journal
    /// checksums are then checked for structure only). Goes as far as the damage allows.
    /// </summary>
    public static string Dump(IBlockDevice device)
    {
        var o = new StringBuilder();
        o.AppendLine($"device:            {device.Name} ({device.Length} bytes)");
        Superblock sb;
        Geometry g;
        try
        {
            if (device.Length < 2 * Superblock.Bytes) { o.AppendLine("superblock:        device too small"); return o.ToString(); }
            var both = new byte[2 * Superblock.Bytes];
            ReadSync(device, 0, both);
            for (int copy = 0; copy < 2; copy++)
            {
                var c = Superblock.Parse(both.AsSpan(copy * Superblock.Bytes, Superblock.Bytes), out var p);
                string state = c == null ? $"INVALID: {p}" : c.Validate(out var gp) == null ? $"geometry INVALID: {gp}" : $"ok, sequence {c.Sequence}";
                o.AppendLine($"superblock {(copy == 0 ? "A" : "B")}:      {state}");
            }
            int used;
            (sb, g, used, _) = Superblock.ReadBest(both.AsSpan(0, Superblock.Bytes), both.AsSpan(Superblock.Bytes), device.Name);
            o.AppendLine($"superblock:        checksum ok, version {sb.Version}, copy {(used == 0 ? "A" : "B")} in use (sequence {sb.Sequence})");
        }
        catch (IntegrityVolumeException e) { o.AppendLine($"superblock:        {e.Message}"); return o.ToString(); }
        catch (Exception e) { o.AppendLine($"superblock:        unreadable: {e.Message}"); return o.ToString(); }
        string alg = Enum.IsDefined(typeof(TagAlgorithm), (int)sb.AlgorithmId) ? Tagger.NameOf((TagAlgorithm)sb.AlgorithmId) : $"unknown ({sb.AlgorithmId})";
        o.AppendLine($"uuid:              {sb.Uuid}");
        o.AppendLine($"formatted:         {DateTimeOffset.FromUnixTimeSeconds(sb.FormattedUnixSeconds):u}");
        o.AppendLine($"block size:        {sb.BlockSize}");
        o.AppendLine($"logical blocks:    {sb.LogicalBlocks} ({(double)sb.LogicalBlocks * sb.BlockSize / (1 << 20):F1} MiB)");
        o.AppendLine($"tag algorithm:     {alg}, tag size {sb.TagSize} B{(sb.AlgorithmId == (uint)Integrity.TagAlgorithm.HmacSha256 ? " (keyed; key not stored, check value stored)" : "")}");
        o.AppendLine($"chunk size:        {sb.ChunkBytes} B, logical chunks {sb.LogicalChunks}, physical slots {sb.PhysicalSlots} of {sb.SlotBytes} B (tags {sb.TagRegionBytes} B), {sb.SpareSlots} spare");
        o.AppendLine($"journal:           offset {sb.JournalOffset}, {sb.JournalBytes} B");
        o.AppendLine($"map:               offset {g.Segments[0].MapOffset}, {g.Segments[0].MapBytes} B");
        o.AppendLine($"data:              offset {g.Segments[0].DataOffset}");
        if (g.Segments.Count > 1)
            foreach (var seg in g.Segments)
                o.AppendLine($"segment:           chunks {seg.FirstChunk}..{seg.FirstChunk + seg.Chunks - 1}, slots {seg.FirstSlot}..{seg.FirstSlot + seg.Slots - 1}, map at {seg.MapOffset} ({seg.MapBytes} B), data at {seg.DataOffset}");
        o.AppendLine($"salt:              {Convert.ToHexString(sb.Salt)}");
        if (device.Length < g.DeviceBytes) o.AppendLine($"geometry:          TRUNCATED: device has {device.Length} bytes, volume needs {g.DeviceBytes}");
        else o.AppendLine($"geometry:          ok (needs {g.DeviceBytes} bytes)");
        if (device.Length < g.Segments[0].DataOffset) return o.ToString();
        try
        {
            var js = new byte[512];
            ReadSync(device, g.JournalOffset, js);
            var jsb = JournalSuper.Parse(js, g.JournalAreaBytes, out var jp);
            if (jsb == null) o.AppendLine($"journal super:     INVALID: {jp}");
            else
            {
                var j = jsb.Value;
                o.AppendLine($"journal super:     version {j.Version}{(j.Version == JournalSuper.CompactVersion ? " (compact transactions)" : "")}, epoch {j.Epoch}, start sequence {j.StartSequence} at ring offset {j.StartOffset}, {j.Checkpoints} checkpoints{(j.HasEnd ? $", recovery in progress keeps sequences before {j.EndSequence}" : "")}");
                var tagger = g.Algorithm == Integrity.TagAlgorithm.HmacSha256 ? null : new Tagger(g.Algorithm, sb.Salt, default);
                var txns = ScanJournal(device, g, tagger, j, out bool torn, out bool corrupt, out string stop);
                long recs = 0, bytes = 0;
                foreach (var t in txns) { recs += t.Records; bytes += t.Total; }
                o.AppendLine($"journal:           {txns.Count} committed transactions to replay, {recs} records, {bytes} B used of {g.JournalAreaBytes}{(tagger == null ? " (keyed checksums not verified)" : "")}");
                if (txns.Count > 0)
                {
                    int markers = txns.Count(t => t.H.PriorDurable), remaps = 0;
                    foreach (var t in txns) for (int i = 0; i < t.Records; i++) if (TransactionCodec.ReadRecord(t.Buf, i).IsRemap) remaps++;
                    o.AppendLine($"                   sequences {txns[0].Seq}..{txns[^1].Seq}, {markers} markers, {remaps} remaps (recovery validates the last remap of each chunk after the last marker)");
                }
                o.AppendLine($"journal end:       {stop}{(torn ? " [torn transaction discarded]" : "")}{(corrupt ? " [DAMAGED transaction before an intact one]" : "")}");
            }
        }
        catch (Exception e) { o.AppendLine($"journal:           unreadable: {e.Message}"); }
        try
        {
            var map = new long[g.LogicalChunks];
            LoadMap(device, g, map, out var badSector);
            long mapped = 0;
            foreach (var e in map) if (e != 0) mapped++;
            o.AppendLine($"map:               {mapped} of {g.LogicalChunks} chunks mapped (at last checkpoint){(badSector is long b ? $"; DAMAGED map sector {b}" : "")}");
        }
        catch (Exception e) { o.AppendLine($"map:               unreadable: {e.Message}"); }
        return o.ToString();
    }
}
