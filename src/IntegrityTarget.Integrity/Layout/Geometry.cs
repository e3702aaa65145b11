namespace IntegrityTarget.Integrity;

/// <summary>
/// A run of logical chunks with its own map area and its own slots, laid out as [map | slots] from
/// <see cref="MapOffset"/>. Format makes one; each online grow appends one at the device's end, so
/// nothing that exists moves. Chunk, slot and map-sector numbers are global across segments.
/// </summary>
internal sealed record Segment(long FirstChunk, long Chunks, long FirstSlot, long Slots, long MapOffset, long FirstMapSector)
{
    public long MapSectors => (Chunks + Geometry.MapEntriesPerSector - 1) / Geometry.MapEntriesPerSector;
    public long MapBytes => Geometry.RoundUp(MapSectors * 512, 4096);
    public long DataOffset => Geometry.RoundUp(MapOffset + MapBytes, Geometry.DataAlignment);
    public long End(long slotBytes) => DataOffset + Slots * slotBytes;
}

/// <summary>
/// Where everything lives on the device (on-disk format version 2): two superblock copies, the journal,
/// then segments. A pure function of (block size, algorithm, journal size, spare slots, the segments'
/// chunk and slot counts), so open recomputes it and refuses a superblock whose offsets disagree.
/// </summary>
internal sealed class Geometry
{
    public const int ChunkBytesDefault = 128 * 1024;
    public const long SuperblockBytes = 4096;
    /// <summary>Superblock copies A and B, then the journal.</summary>
    public const long JournalOffsetV2 = 2 * SuperblockBytes;
    public const long MinJournalBytes = 1 << 20;
    public const int MapEntriesPerSector = 63; // 63 x 8 B entries + 4 B crc + 4 B pad = 512 B
    public const long DataAlignment = 64 * 1024;
    public const int MaxSegments = 64;

    public int BlockSize { get; private init; }
    public TagAlgorithm Algorithm { get; private init; }
    public int TagSize { get; private init; }
    public int ChunkBytes { get; private init; }
    public int BlocksPerChunk => ChunkBytes / BlockSize;
    public ulong LogicalBlocks { get; private init; }
    public long LogicalChunks { get; private init; }
    public long PhysicalSlots { get; private init; }
    /// <summary>Slots beyond one per chunk: the write-back window of redirect-on-write.</summary>
    public long SpareSlots { get; private init; }
    public long JournalOffset => JournalOffsetV2;
    public long JournalBytes { get; private init; }
    /// <summary>Transactions live after the 4 KiB journal superblock, in a ring.</summary>
    public long JournalAreaOffset => JournalOffset + 4096;
    public long JournalAreaBytes => JournalBytes - 4096;
    public IReadOnlyList<Segment> Segments { get; private init; } = [];
    public long MapSectors => Segments[^1].FirstMapSector + Segments[^1].MapSectors;
    public int TagRegionBytes => (int)RoundUp((long)BlocksPerChunk * TagSize, 4096);
    public long SlotBytes => ChunkBytes + TagRegionBytes;
    public long DeviceBytes => Segments[^1].End(SlotBytes);

    public Segment SegmentOfSlot(long p)
    {
        var s = Segments;
        for (int i = s.Count - 1; i > 0; i--) if (p >= s[i].FirstSlot) return s[i];
        return s[0];
    }

    public Segment SegmentOfChunk(long c)
    {
        var s = Segments;
        for (int i = s.Count - 1; i > 0; i--) if (c >= s[i].FirstChunk) return s[i];
        return s[0];
    }

    public long SlotOffset(long p)
    {
        var s = SegmentOfSlot(p);
        return s.DataOffset + (p - s.FirstSlot) * SlotBytes;
    }

    public long TagOffset(long phys, int indexInChunk) => SlotOffset(phys) + ChunkBytes + (long)indexInChunk * TagSize;
    public int BlocksInChunk(long chunk) => (int)Math.Min((ulong)BlocksPerChunk, LogicalBlocks - (ulong)chunk * (ulong)BlocksPerChunk);

    /// <summary>The global map sector holding chunk <paramref name="c"/>'s entry, and the entry's index in it.</summary>
    public (long Sector, int Index) MapSectorOf(long c)
    {
        var s = SegmentOfChunk(c);
        long local = c - s.FirstChunk;
        return (s.FirstMapSector + local / MapEntriesPerSector, (int)(local % MapEntriesPerSector));
    }

    /// <summary>Byte offset of global map sector <paramref name="sector"/>, the first chunk it covers and how many.</summary>
    public (long Offset, long FirstChunk, int Chunks) MapSector(long sector)
    {
        var segs = Segments;
        var s = segs[0];
        for (int i = segs.Count - 1; i > 0; i--) if (sector >= segs[i].FirstMapSector) { s = segs[i]; break; }
        long local = sector - s.FirstMapSector;
        long first = s.FirstChunk + local * MapEntriesPerSector;
        return (s.MapOffset + local * 512, first, (int)Math.Min(MapEntriesPerSector, s.FirstChunk + s.Chunks - first));
    }

    public static long RoundUp(long v, long a) => (v + a - 1) / a * a;

    /// <summary>Default spare slots for redirect-on-write: at least a few 1 MiB commands' worth, and about
    /// 3 % so the pool of slots replaced within one write-back window covers bursts of large writes.</summary>
    public static long DefaultSpareSlots(long logicalChunks) => 32 + logicalChunks / 32;

    /// <summary>Fewest spare slots format accepts: a 1 MiB write of whole chunks takes this many free slots at once, and
    /// with every chunk mapped the spare pool is all there is (fewer, and such a write would wait forever).</summary>
    public const long MinSpareSlots = (1 << 20) / ChunkBytesDefault;

    public static long DefaultJournalBytes(ulong logicalBlocks, int blockSize)
    {
        long logicalBytes = (long)logicalBlocks * blockSize;
        // A 32nd of the LUN (space overhead stays ~3 %), 2 MiB to 256 MiB (64 MiB until 2026-12-07). Small random
        // writes wait in the ring (and in memory) until a background checkpoint copies them home, and the home
        // copies bound 4k random writes: fio on a 1 GiB LUN, on/off at QD32 0.65 with a 32 MiB ring, 0.89 with
        // 128 MiB, 0.85 with 256 MiB; p99 15 -> 4.5-4.9 ms. Recovery of a 255 MiB ring ~0.2 s. So LUNs of 8 GiB
        // and more (VM disks) get the larger ring; small ones keep their space; `format --journal-size` chooses.
        return Math.Clamp(RoundUp(logicalBytes / 32, 1 << 20), 2L << 20, 256L << 20);
    }

    public static long ChunksFor(ulong logicalBlocks, int blockSize, int chunkBytes = ChunkBytesDefault)
    {
        ulong bpc = (ulong)(chunkBytes / blockSize);
        return (long)((logicalBlocks + bpc - 1) / bpc);
    }

    /// <summary>A freshly formatted volume: one segment.</summary>
    public static Geometry Compute(int blockSize, TagAlgorithm alg, ulong logicalBlocks, long? journalBytes, long? spareSlots = null, int chunkBytes = ChunkBytesDefault)
    {
        long chunks = ChunksFor(logicalBlocks, blockSize, chunkBytes);
        long spare = spareSlots ?? DefaultSpareSlots(chunks);
        long journal = RoundUp(journalBytes ?? DefaultJournalBytes(logicalBlocks, blockSize), 4096);
        var seg = new Segment(0, chunks, 0, chunks + spare, JournalOffsetV2 + journal, 0);
        return Build(blockSize, alg, logicalBlocks, journal, spare, chunkBytes, [seg]);
    }

    private static Geometry Build(int blockSize, TagAlgorithm alg, ulong logicalBlocks, long journal, long spare, int chunkBytes, IReadOnlyList<Segment> segments) => new()
    {
        BlockSize = blockSize, Algorithm = alg, TagSize = Tagger.SizeOf(alg), ChunkBytes = chunkBytes,
        LogicalBlocks = logicalBlocks, LogicalChunks = segments[^1].FirstChunk + segments[^1].Chunks,
        PhysicalSlots = segments[^1].FirstSlot + segments[^1].Slots, SpareSlots = spare,
        JournalBytes = journal, Segments = segments,
    };

    /// <summary>
    /// The geometry after growing to <paramref name="newBlocks"/>: the partial last chunk (if any) fills up;
    /// chunks beyond the last one form a new segment at the device's end, with slots for them and for the
    /// spare the new size calls for (never less spare than before).
    /// </summary>
    public Geometry Grown(ulong newBlocks)
    {
        if (newBlocks <= LogicalBlocks) throw new ArgumentOutOfRangeException(nameof(newBlocks), "a grow must add blocks");
        long chunks = ChunksFor(newBlocks, BlockSize, ChunkBytes);
        long spare = Math.Max(SpareSlots, DefaultSpareSlots(chunks));
        var segs = Segments.ToList();
        if (chunks > LogicalChunks)
        {
            var last = segs[^1];
            long added = chunks - LogicalChunks;
            segs.Add(new Segment(LogicalChunks, added, PhysicalSlots, added + spare - SpareSlots, last.End(SlotBytes), last.FirstMapSector + last.MapSectors));
        }
        return Build(BlockSize, Algorithm, newBlocks, JournalBytes, spare, ChunkBytes, segs);
    }

    /// <summary>Rebuilds a geometry from a superblock's fields and checks that every offset is the one this
    /// format puts there; null and a reason otherwise.</summary>
    public static Geometry? FromStored(int blockSize, TagAlgorithm alg, ulong logicalBlocks, long journal, long spare, int chunkBytes,
        IReadOnlyList<Segment> segments, out string? problem)
    {
        problem = null;
        if (segments.Count is 0 or > MaxSegments) { problem = $"bad geometry: {segments.Count} segments (1..{MaxSegments})"; return null; }
        long chunk = 0, slot = 0, sector = 0, at = JournalOffsetV2 + journal;
        long slotBytes = chunkBytes + RoundUp((long)(chunkBytes / blockSize) * Tagger.SizeOf(alg), 4096);
        for (int i = 0; i < segments.Count; i++)
        {
            var s = segments[i];
            if (s.FirstChunk != chunk || s.FirstSlot != slot || s.FirstMapSector != sector || s.MapOffset != at || s.Chunks <= 0 || s.Slots < s.Chunks || s.Slots > (1L << 40))
            {
                problem = $"bad geometry: segment {i} (chunks {s.FirstChunk}+{s.Chunks}, slots {s.FirstSlot}+{s.Slots}, map at {s.MapOffset}) does not follow segment {i - 1}";
                return null;
            }
            // Damaged or crafted values must not wrap a 64-bit offset into a small one (1 EiB is far beyond any device).
            if ((decimal)s.MapOffset + (decimal)s.MapSectors * 512 + (decimal)s.Slots * slotBytes > (1L << 60))
            {
                problem = $"bad geometry: segment {i} ({s.Slots} slots of {slotBytes} bytes at {s.MapOffset}) ends beyond 1 EiB";
                return null;
            }
            chunk += s.Chunks; slot += s.Slots; sector += s.MapSectors; at = s.End(slotBytes);
        }
        if (chunk != ChunksFor(logicalBlocks, blockSize, chunkBytes)) { problem = $"bad geometry: segments hold {chunk} chunks, {logicalBlocks} blocks need {ChunksFor(logicalBlocks, blockSize, chunkBytes)}"; return null; }
        if (slot - chunk != spare) { problem = $"bad geometry: {slot} slots for {chunk} chunks, but {spare} spare slots recorded"; return null; }
        return Build(blockSize, alg, logicalBlocks, journal, spare, chunkBytes, segments);
    }
}
