using System.Buffers.Binary;

namespace IntegrityTarget.Integrity;

/// <summary>
/// The superblock: 512 meaningful bytes in sector 0, CRC-32C at byte 508. It is written once, at format
/// (after everything else is durable, with FUA), and never rewritten, so it cannot be torn later; a
/// sector write is atomic under the crash model, so one copy suffices and a damaged copy is reported,
/// not silently replaced.
/// </summary>
internal sealed class Superblock
{
    public static ReadOnlySpan<byte> Magic => "ITVOLUME"u8;
    public const uint CurrentVersion = 1;

    public uint Version { get; init; } = CurrentVersion;
    public Guid Uuid { get; init; }
    public int BlockSize { get; init; }
    public uint AlgorithmId { get; init; }
    public int TagSize { get; init; }
    public int ChunkBytes { get; init; }
    public ulong LogicalBlocks { get; init; }
    public long LogicalChunks { get; init; }
    public long PhysicalChunks { get; init; }
    public long JournalOffset { get; init; }
    public long JournalBytes { get; init; }
    public long MapOffset { get; init; }
    public long MapBytes { get; init; }
    public long DataOffset { get; init; }
    public long SlotBytes { get; init; }
    public int TagRegionBytes { get; init; }
    public uint Flags { get; init; }
    public byte[] Salt { get; init; } = new byte[16];
    public byte[] KeyCheck { get; init; } = new byte[32];
    public long FormattedUnixSeconds { get; init; }

    public static Superblock From(Geometry g, Guid uuid, byte[] salt, byte[] keyCheck) => new()
    {
        Uuid = uuid, BlockSize = g.BlockSize, AlgorithmId = (uint)g.Algorithm, TagSize = g.TagSize, ChunkBytes = g.ChunkBytes,
        LogicalBlocks = g.LogicalBlocks, LogicalChunks = g.LogicalChunks, PhysicalChunks = g.PhysicalChunks,
        JournalOffset = g.JournalOffset, JournalBytes = g.JournalBytes, MapOffset = g.MapOffset, MapBytes = g.MapBytes,
        DataOffset = g.DataOffset, SlotBytes = g.SlotBytes, TagRegionBytes = g.TagRegionBytes, Salt = salt, KeyCheck = keyCheck,
        FormattedUnixSeconds = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
    };

    public byte[] Serialize()
    {
        var b = new byte[4096];
        var s = b.AsSpan();
        Magic.CopyTo(s);
        BinaryPrimitives.WriteUInt32LittleEndian(s[8..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(s[12..], 512);
        Uuid.TryWriteBytes(s[16..32]);
        BinaryPrimitives.WriteInt32LittleEndian(s[32..], BlockSize);
        BinaryPrimitives.WriteUInt32LittleEndian(s[36..], AlgorithmId);
        BinaryPrimitives.WriteInt32LittleEndian(s[40..], TagSize);
        BinaryPrimitives.WriteInt32LittleEndian(s[44..], ChunkBytes);
        BinaryPrimitives.WriteUInt64LittleEndian(s[48..], LogicalBlocks);
        BinaryPrimitives.WriteInt64LittleEndian(s[56..], LogicalChunks);
        BinaryPrimitives.WriteInt64LittleEndian(s[64..], PhysicalChunks);
        BinaryPrimitives.WriteInt64LittleEndian(s[72..], JournalOffset);
        BinaryPrimitives.WriteInt64LittleEndian(s[80..], JournalBytes);
        BinaryPrimitives.WriteInt64LittleEndian(s[88..], MapOffset);
        BinaryPrimitives.WriteInt64LittleEndian(s[96..], MapBytes);
        BinaryPrimitives.WriteInt64LittleEndian(s[104..], DataOffset);
        BinaryPrimitives.WriteInt64LittleEndian(s[112..], SlotBytes);
        BinaryPrimitives.WriteInt32LittleEndian(s[120..], TagRegionBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(s[124..], Flags);
        Salt.CopyTo(s[128..144]);
        KeyCheck.CopyTo(s[144..176]);
        BinaryPrimitives.WriteInt64LittleEndian(s[176..], FormattedUnixSeconds);
        BinaryPrimitives.WriteUInt32LittleEndian(s[508..], Tagger.Crc(s[..508]));
        return b;
    }

    public static bool HasMagic(ReadOnlySpan<byte> sector) => sector.Length >= 8 && sector[..8].SequenceEqual(Magic);

    /// <summary>Parses sector 0; returns null and a reason when it is not a usable superblock.</summary>
    public static Superblock? Parse(ReadOnlySpan<byte> s, out string? problem)
    {
        problem = null;
        if (!HasMagic(s)) { problem = "no integrity volume superblock (magic \"ITVOLUME\" missing)"; return null; }
        uint crc = BinaryPrimitives.ReadUInt32LittleEndian(s[508..]);
        if (crc != Tagger.Crc(s[..508])) { problem = $"superblock checksum mismatch (stored 0x{crc:x8}, computed 0x{Tagger.Crc(s[..508]):x8}): the superblock is damaged"; return null; }
        var sb = new Superblock
        {
            Version = BinaryPrimitives.ReadUInt32LittleEndian(s[8..]),
            Uuid = new Guid(s[16..32]),
            BlockSize = BinaryPrimitives.ReadInt32LittleEndian(s[32..]),
            AlgorithmId = BinaryPrimitives.ReadUInt32LittleEndian(s[36..]),
            TagSize = BinaryPrimitives.ReadInt32LittleEndian(s[40..]),
            ChunkBytes = BinaryPrimitives.ReadInt32LittleEndian(s[44..]),
            LogicalBlocks = BinaryPrimitives.ReadUInt64LittleEndian(s[48..]),
            LogicalChunks = BinaryPrimitives.ReadInt64LittleEndian(s[56..]),
            PhysicalChunks = BinaryPrimitives.ReadInt64LittleEndian(s[64..]),
            JournalOffset = BinaryPrimitives.ReadInt64LittleEndian(s[72..]),
            JournalBytes = BinaryPrimitives.ReadInt64LittleEndian(s[80..]),
            MapOffset = BinaryPrimitives.ReadInt64LittleEndian(s[88..]),
            MapBytes = BinaryPrimitives.ReadInt64LittleEndian(s[96..]),
            DataOffset = BinaryPrimitives.ReadInt64LittleEndian(s[104..]),
            SlotBytes = BinaryPrimitives.ReadInt64LittleEndian(s[112..]),
            TagRegionBytes = BinaryPrimitives.ReadInt32LittleEndian(s[120..]),
            Flags = BinaryPrimitives.ReadUInt32LittleEndian(s[124..]),
            Salt = s[128..144].ToArray(),
            KeyCheck = s[144..176].ToArray(),
            FormattedUnixSeconds = BinaryPrimitives.ReadInt64LittleEndian(s[176..]),
        };
        return sb;
    }

    /// <summary>Checks version, algorithm and geometry; returns the geometry or a reason.</summary>
    public Geometry? Validate(out string? problem)
    {
        problem = null;
        if (Version != CurrentVersion) { problem = $"unsupported on-disk format version {Version} (this build reads version {CurrentVersion})"; return null; }
        if (!Enum.IsDefined(typeof(TagAlgorithm), (int)AlgorithmId)) { problem = $"unknown tag algorithm id {AlgorithmId} (known: 1 crc32c, 2 xxhash64, 3 hmac-sha256)"; return null; }
        var alg = (TagAlgorithm)AlgorithmId;
        if (BlockSize is not (512 or 4096)) { problem = $"bad geometry: block size {BlockSize} (must be 512 or 4096)"; return null; }
        if (ChunkBytes <= 0 || ChunkBytes % 4096 != 0 || ChunkBytes > (16 << 20)) { problem = $"bad geometry: chunk size {ChunkBytes}"; return null; }
        if (LogicalBlocks == 0 || JournalBytes < Geometry.MinJournalBytes || JournalBytes > (1L << 34)) { problem = $"bad geometry: {LogicalBlocks} logical blocks, journal {JournalBytes} bytes"; return null; }
        var g = Geometry.Compute(BlockSize, alg, LogicalBlocks, JournalBytes, ChunkBytes);
        if (g.TagSize != TagSize || g.LogicalChunks != LogicalChunks || g.PhysicalChunks != PhysicalChunks || g.JournalOffset != JournalOffset
            || g.MapOffset != MapOffset || g.MapBytes != MapBytes || g.DataOffset != DataOffset || g.SlotBytes != SlotBytes || g.TagRegionBytes != TagRegionBytes)
        {
            problem = "bad geometry: superblock offsets do not match its block size, block count and journal size";
            return null;
        }
        return g;
    }
}
