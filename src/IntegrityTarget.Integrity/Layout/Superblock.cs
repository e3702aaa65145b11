using System.Buffers.Binary;

namespace IntegrityTarget.Integrity;

/// <summary>
/// The superblock (on-disk format version 2): 4 KiB, CRC-32C of bytes 0..4091 at 4092. Two copies (A at
/// byte 0, B at 4096), each complete, with a sequence number: open uses the valid copy with the higher
/// sequence, and a rewrite (a grow) goes to the other copy with FUA, so the copy in use is never the one
/// being written and a torn write leaves the previous one.
/// </summary>
internal sealed class Superblock
{
    public static ReadOnlySpan<byte> Magic => "ITVOLUME"u8;
    public const uint CurrentVersion = 2;
    public const int Bytes = 4096;
    private const int CrcAt = Bytes - 4;
    private const int SegmentsAt = 184;
    private const int SegmentBytes = 40;

    public uint Version { get; init; } = CurrentVersion;
    public Guid Uuid { get; init; }
    /// <summary>Bumped by every rewrite; the higher of the two copies wins.</summary>
    public ulong Sequence { get; init; }
    public int BlockSize { get; init; }
    public uint AlgorithmId { get; init; }
    public int TagSize { get; init; }
    public int ChunkBytes { get; init; }
    public ulong LogicalBlocks { get; init; }
    public long LogicalChunks { get; init; }
    public long PhysicalSlots { get; init; }
    public long JournalOffset { get; init; }
    public long JournalBytes { get; init; }
    public long SpareSlots { get; init; }
    public long SlotBytes { get; init; }
    public int TagRegionBytes { get; init; }
    public uint Flags { get; init; }

    /// <summary>
    /// Flag bits this build understands (none yet: format writes 0). Open refuses any other bit, so a later build
    /// can mark a volume whose layout it changed (slot placement, say) and be sure this one will not misread it.
    /// </summary>
    public const uint KnownFlags = 0;
    public byte[] Salt { get; init; } = new byte[16];
    public byte[] KeyCheck { get; init; } = new byte[32];
    public long FormattedUnixSeconds { get; init; }
    public IReadOnlyList<Segment> Segments { get; init; } = [];

    public static Superblock From(Geometry g, Guid uuid, ulong sequence, byte[] salt, byte[] keyCheck, long formatted) => new()
    {
        Uuid = uuid, Sequence = sequence, BlockSize = g.BlockSize, AlgorithmId = (uint)g.Algorithm, TagSize = g.TagSize, ChunkBytes = g.ChunkBytes,
        LogicalBlocks = g.LogicalBlocks, LogicalChunks = g.LogicalChunks, PhysicalSlots = g.PhysicalSlots,
        JournalOffset = g.JournalOffset, JournalBytes = g.JournalBytes, SpareSlots = g.SpareSlots,
        SlotBytes = g.SlotBytes, TagRegionBytes = g.TagRegionBytes, Salt = salt, KeyCheck = keyCheck,
        FormattedUnixSeconds = formatted, Segments = g.Segments,
    };

    /// <summary>The same volume with a new geometry (after a grow) and the next sequence number.</summary>
    public Superblock With(Geometry g) => From(g, Uuid, Sequence + 1, Salt, KeyCheck, FormattedUnixSeconds);

    public byte[] Serialize()
    {
        if (Segments.Count > Geometry.MaxSegments) throw new InvalidOperationException($"at most {Geometry.MaxSegments} segments fit in a superblock");
        var b = new byte[Bytes];
        var s = b.AsSpan();
        Magic.CopyTo(s);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(s[12..], Bytes);
        Uuid.TryWriteBytes(s[16..32]);
        BinaryPrimitives.WriteUInt64LittleEndian(s[32..], Sequence);
        BinaryPrimitives.WriteInt32LittleEndian(s[40..], BlockSize);
        BinaryPrimitives.WriteUInt32LittleEndian(s[44..], AlgorithmId);
        BinaryPrimitives.WriteInt32LittleEndian(s[48..], TagSize);
        BinaryPrimitives.WriteInt32LittleEndian(s[52..], ChunkBytes);
        BinaryPrimitives.WriteUInt64LittleEndian(s[56..], LogicalBlocks);
        BinaryPrimitives.WriteInt64LittleEndian(s[64..], LogicalChunks);
        BinaryPrimitives.WriteInt64LittleEndian(s[72..], PhysicalSlots);
        BinaryPrimitives.WriteInt64LittleEndian(s[80..], JournalOffset);
        BinaryPrimitives.WriteInt64LittleEndian(s[88..], JournalBytes);
        BinaryPrimitives.WriteInt64LittleEndian(s[96..], SpareSlots);
        BinaryPrimitives.WriteInt64LittleEndian(s[104..], SlotBytes);
        BinaryPrimitives.WriteInt32LittleEndian(s[112..], TagRegionBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(s[116..], Flags);
        Salt.CopyTo(s[120..136]);
        KeyCheck.CopyTo(s[136..168]);
        BinaryPrimitives.WriteInt64LittleEndian(s[168..], FormattedUnixSeconds);
        BinaryPrimitives.WriteUInt32LittleEndian(s[176..], (uint)Segments.Count);
        for (int i = 0; i < Segments.Count; i++)
        {
            var seg = Segments[i];
            var d = s.Slice(SegmentsAt + i * SegmentBytes, SegmentBytes);
            BinaryPrimitives.WriteInt64LittleEndian(d, seg.FirstChunk);
            BinaryPrimitives.WriteInt64LittleEndian(d[8..], seg.Chunks);
            BinaryPrimitives.WriteInt64LittleEndian(d[16..], seg.FirstSlot);
            BinaryPrimitives.WriteInt64LittleEndian(d[24..], seg.Slots);
            BinaryPrimitives.WriteInt64LittleEndian(d[32..], seg.MapOffset);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(s[CrcAt..], Tagger.Crc(s[..CrcAt]));
        return b;
    }

    public static bool HasMagic(ReadOnlySpan<byte> sector) => sector.Length >= 8 && sector[..8].SequenceEqual(Magic);

    /// <summary>Parses one 4 KiB copy; returns null and a reason when it is not a usable superblock.</summary>
    public static Superblock? Parse(ReadOnlySpan<byte> s, out string? problem)
    {
        problem = null;
        if (!HasMagic(s)) { problem = "no integrity volume superblock (magic \"ITVOLUME\" missing)"; return null; }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(s[8..]);
        if (version == 1)
        {
            problem = "the volume was formatted by an older build (on-disk format version 1); this build reads version 2 only. " +
                      "Copy its data to a new volume with a build that reads version 1 (for example serve both and qemu-img convert)";
            return null;
        }
        if (version != CurrentVersion) { problem = $"unsupported on-disk format version {version} (this build reads version {CurrentVersion})"; return null; }
        if (s.Length < Bytes) { problem = "superblock truncated"; return null; }
        uint crc = BinaryPrimitives.ReadUInt32LittleEndian(s[CrcAt..]);
        if (crc != Tagger.Crc(s[..CrcAt])) { problem = $"superblock checksum mismatch (stored 0x{crc:x8}, computed 0x{Tagger.Crc(s[..CrcAt]):x8}): the superblock is damaged"; return null; }
        uint nseg = BinaryPrimitives.ReadUInt32LittleEndian(s[176..]);
        if (nseg is 0 or > Geometry.MaxSegments) { problem = $"bad geometry: {nseg} segments"; return null; }
        var segs = new List<Segment>((int)nseg);
        long sector = 0;
        for (int i = 0; i < nseg; i++)
        {
            var d = s.Slice(SegmentsAt + i * SegmentBytes, SegmentBytes);
            var seg = new Segment(BinaryPrimitives.ReadInt64LittleEndian(d), BinaryPrimitives.ReadInt64LittleEndian(d[8..]),
                BinaryPrimitives.ReadInt64LittleEndian(d[16..]), BinaryPrimitives.ReadInt64LittleEndian(d[24..]),
                BinaryPrimitives.ReadInt64LittleEndian(d[32..]), sector);
            if (seg.Chunks <= 0 || seg.Chunks > (1L << 40)) { problem = $"bad geometry: segment {i} has {seg.Chunks} chunks"; return null; }
            sector += seg.MapSectors;
            segs.Add(seg);
        }
        return new Superblock
        {
            Version = version,
            Uuid = new Guid(s[16..32]),
            Sequence = BinaryPrimitives.ReadUInt64LittleEndian(s[32..]),
            BlockSize = BinaryPrimitives.ReadInt32LittleEndian(s[40..]),
            AlgorithmId = BinaryPrimitives.ReadUInt32LittleEndian(s[44..]),
            TagSize = BinaryPrimitives.ReadInt32LittleEndian(s[48..]),
            ChunkBytes = BinaryPrimitives.ReadInt32LittleEndian(s[52..]),
            LogicalBlocks = BinaryPrimitives.ReadUInt64LittleEndian(s[56..]),
            LogicalChunks = BinaryPrimitives.ReadInt64LittleEndian(s[64..]),
            PhysicalSlots = BinaryPrimitives.ReadInt64LittleEndian(s[72..]),
            JournalOffset = BinaryPrimitives.ReadInt64LittleEndian(s[80..]),
            JournalBytes = BinaryPrimitives.ReadInt64LittleEndian(s[88..]),
            SpareSlots = BinaryPrimitives.ReadInt64LittleEndian(s[96..]),
            SlotBytes = BinaryPrimitives.ReadInt64LittleEndian(s[104..]),
            TagRegionBytes = BinaryPrimitives.ReadInt32LittleEndian(s[112..]),
            Flags = BinaryPrimitives.ReadUInt32LittleEndian(s[116..]),
            Salt = s[120..136].ToArray(),
            KeyCheck = s[136..168].ToArray(),
            FormattedUnixSeconds = BinaryPrimitives.ReadInt64LittleEndian(s[168..]),
            Segments = segs,
        };
    }

    /// <summary>Checks algorithm and geometry; returns the geometry or a reason.</summary>
    public Geometry? Validate(out string? problem)
    {
        problem = null;
        if ((Flags & ~KnownFlags) != 0)
        {
            problem = $"the volume uses on-disk features this build does not know (superblock flags 0x{Flags:x8}, known 0x{KnownFlags:x8}): " +
                      "a newer integrity-target formatted or changed it; open it with that build";
            return null;
        }
        if (!Enum.IsDefined(typeof(TagAlgorithm), (int)AlgorithmId)) { problem = $"unknown tag algorithm id {AlgorithmId} (known: 1 crc32c, 2 xxhash64, 3 hmac-sha256)"; return null; }
        var alg = (TagAlgorithm)AlgorithmId;
        if (BlockSize is not (512 or 4096)) { problem = $"bad geometry: block size {BlockSize} (must be 512 or 4096)"; return null; }
        if (ChunkBytes <= 0 || ChunkBytes % 4096 != 0 || ChunkBytes > (16 << 20)) { problem = $"bad geometry: chunk size {ChunkBytes}"; return null; }
        if (LogicalBlocks == 0 || JournalBytes < Geometry.MinJournalBytes || JournalBytes > (1L << 34) || JournalBytes % 4096 != 0)
        { problem = $"bad geometry: {LogicalBlocks} logical blocks, journal {JournalBytes} bytes"; return null; }
        if (SpareSlots < 0) { problem = $"bad geometry: {SpareSlots} spare slots"; return null; }
        var g = Geometry.FromStored(BlockSize, alg, LogicalBlocks, JournalBytes, SpareSlots, ChunkBytes, Segments, out problem);
        if (g == null) return null;
        if (g.TagSize != TagSize || g.LogicalChunks != LogicalChunks || g.PhysicalSlots != PhysicalSlots || g.JournalOffset != JournalOffset
            || g.SlotBytes != SlotBytes || g.TagRegionBytes != TagRegionBytes)
        {
            problem = "bad geometry: superblock offsets do not match its block size, block count and journal size";
            return null;
        }
        return g;
    }

    /// <summary>
    /// Reads both copies and picks the valid one with the higher sequence. <paramref name="other"/> says
    /// what is wrong with the copy not chosen (null when both agree), so open can report and repair it.
    /// Throws <see cref="IntegrityVolumeException"/> naming what is wrong when neither copy is usable.
    /// </summary>
    public static (Superblock Super, Geometry Geometry, int Copy, string? Other) ReadBest(ReadOnlySpan<byte> copyA, ReadOnlySpan<byte> copyB, string name)
    {
        var a = Parse(copyA, out var pa);
        var ga = a?.Validate(out pa);
        var b = Parse(copyB, out var pb);
        var gb = b?.Validate(out pb);
        if (ga == null && gb == null)
        {
            // A version 1 volume (or anything without a second copy) is explained by copy A alone.
            string why = pa == pb || !HasMagic(copyB) ? pa! : $"copy A: {pa}; copy B: {pb}";
            throw new IntegrityVolumeException($"{name}: cannot open: {why}");
        }
        if (ga != null && gb != null && a!.Uuid != b!.Uuid)
            throw new IntegrityVolumeException($"{name}: cannot open: the two superblock copies belong to different volumes ({a.Uuid} and {b.Uuid})");
        if (gb == null) return (a!, ga!, 0, $"superblock copy B is not usable ({pb})");
        if (ga == null) return (b!, gb, 1, $"superblock copy A is not usable ({pa})");
        if (a!.Sequence >= b!.Sequence) return (a, ga, 0, b.Sequence != a.Sequence ? $"superblock copy B is older (sequence {b.Sequence} < {a.Sequence})" : null);
        return (b, gb, 1, $"superblock copy A is older (sequence {a.Sequence} < {b.Sequence})");
    }

    public static long CopyOffset(int copy) => copy * (long)Bytes;
}
