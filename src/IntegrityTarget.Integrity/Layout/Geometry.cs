namespace IntegrityTarget.Integrity;

/// <summary>
/// Where everything lives on the device. Pure function of (block size, algorithm, logical blocks,
/// journal size), so open can recompute it and refuse a superblock whose offsets disagree.
/// </summary>
internal sealed class Geometry
{
    public const int ChunkBytesDefault = 128 * 1024;
    public const long SuperblockBytes = 4096;
    public const long MinJournalBytes = 1 << 20;
    public const int MapEntriesPerSector = 63; // 63 x 8 B entries + 4 B crc + 4 B pad = 512 B

    public int BlockSize { get; private init; }
    public TagAlgorithm Algorithm { get; private init; }
    public int TagSize { get; private init; }
    public int ChunkBytes { get; private init; }
    public int BlocksPerChunk => ChunkBytes / BlockSize;
    public ulong LogicalBlocks { get; private init; }
    public long LogicalChunks { get; private init; }
    public long PhysicalChunks { get; private init; }
    public long JournalOffset => SuperblockBytes;
    public long JournalBytes { get; private init; }
    /// <summary>Transactions live after the 4 KiB journal superblock.</summary>
    public long JournalAreaOffset => JournalOffset + 4096;
    public long JournalAreaBytes => JournalBytes - 4096;
    public long MapOffset => JournalOffset + JournalBytes;
    public long MapSectors => (LogicalChunks + MapEntriesPerSector - 1) / MapEntriesPerSector;
    public long MapBytes => RoundUp(MapSectors * 512, 4096);
    public long DataOffset => RoundUp(MapOffset + MapBytes, 64 * 1024);
    public int TagRegionBytes => (int)RoundUp((long)BlocksPerChunk * TagSize, 4096);
    public long SlotBytes => ChunkBytes + TagRegionBytes;
    public long DeviceBytes => DataOffset + PhysicalChunks * SlotBytes;

    public long SlotOffset(long phys) => DataOffset + phys * SlotBytes;
    public long TagOffset(long phys, int indexInChunk) => SlotOffset(phys) + ChunkBytes + (long)indexInChunk * TagSize;
    public int BlocksInChunk(long chunk) => (int)Math.Min((ulong)BlocksPerChunk, LogicalBlocks - (ulong)chunk * (ulong)BlocksPerChunk);

    public static long RoundUp(long v, long a) => (v + a - 1) / a * a;

    /// <summary>Spare physical slots for redirect-on-write: at least a few 1 MiB commands' worth, and about
    /// 3 % so a flush (which returns replaced slots) is needed only every few tens of MiB of large writes.</summary>
    public static long SpareChunks(long logicalChunks) => 32 + logicalChunks / 32;

    public static long DefaultJournalBytes(ulong logicalBlocks, int blockSize)
    {
        long logicalBytes = (long)logicalBlocks * blockSize;
        return Math.Clamp(RoundUp(logicalBytes / 32, 1 << 20), 2L << 20, 64L << 20);
    }

    public static Geometry Compute(int blockSize, TagAlgorithm alg, ulong logicalBlocks, long? journalBytes, int chunkBytes = ChunkBytesDefault)
    {
        int bpc = chunkBytes / blockSize;
        long chunks = (long)((logicalBlocks + (ulong)bpc - 1) / (ulong)bpc);
        return new Geometry
        {
            BlockSize = blockSize, Algorithm = alg, TagSize = Tagger.SizeOf(alg), ChunkBytes = chunkBytes,
            LogicalBlocks = logicalBlocks, LogicalChunks = chunks, PhysicalChunks = chunks + SpareChunks(chunks),
            JournalBytes = RoundUp(journalBytes ?? DefaultJournalBytes(logicalBlocks, blockSize), 4096),
        };
    }
}
