using System.Runtime.InteropServices;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Crash;

internal enum CommandKind { Write, Read, Flush, Unmap, WriteZeroes }

/// <summary>One volume command of a workload, plus when it was issued and completed in the recorded run.</summary>
internal sealed class Command(int id, CommandKind kind, ulong lba, uint blocks, bool fua)
{
    public int Id { get; } = id;
    public CommandKind Kind { get; } = kind;
    public ulong Lba { get; } = lba;
    public uint Blocks { get; } = blocks;
    public bool Fua { get; } = fua;

    // Harness event order (one counter for starts and completions): "A completed before B was issued" is A.CompleteSeq < B.StartSeq.
    public long StartSeq { get; set; } = long.MaxValue;
    public long CompleteSeq { get; set; } = long.MaxValue;
    // Device operation count when issued/completed: every device call of this command has index in [StartOps, CompleteOps).
    public long StartOps { get; set; } = long.MaxValue;
    public long CompleteOps { get; set; } = long.MaxValue;
    public VolumeResult Result { get; set; }

    public bool ChangesData => Kind is CommandKind.Write or CommandKind.Unmap or CommandKind.WriteZeroes;
    public bool Touches(ulong lba) => ChangesData && lba >= Lba && lba < Lba + Blocks;
    public bool OrderedBefore(Command other) => CompleteSeq < other.StartSeq;

    public override string ToString() => Kind switch
    {
        CommandKind.Flush => $"#{Id} FLUSH",
        _ => $"#{Id} {Kind.ToString().ToUpperInvariant()}{(Fua ? "+FUA" : "")} lba {Lba}+{Blocks}",
    };
}

/// <summary>A random workload: batches of commands issued concurrently, each batch awaited before the next.</summary>
internal static class WorkloadGenerator
{
    /// <param name="maxWriteBlocks">Largest write, in blocks (1 MiB worth for the large-write path).</param>
    /// <param name="wholeChunk">Chance that a write is one or two whole, aligned chunks of <paramref name="chunkBlocks"/>
    /// (redirect-on-write remaps without a flush, interleaved with the rest).</param>
    public static List<Command[]> Generate(ulong seed, ulong volumeBlocks, uint maxWriteBlocks, int commands, int maxBatch, double wholeChunk = 0, uint chunkBlocks = 0)
    {
        var rng = new SplitMix64(seed);
        var batches = new List<Command[]>();
        ulong hot = Math.Min(64UL, volumeBlocks);
        int id = 0;
        while (id < commands)
        {
            int n = Math.Min(rng.NextInt(1, maxBatch), commands - id);
            var batch = new Command[n];
            for (int i = 0; i < n; i++)
            {
                double r = rng.NextDouble();
                var kind = r < 0.55 ? CommandKind.Write : r < 0.70 ? CommandKind.Read : r < 0.82 ? CommandKind.Flush
                    : r < 0.91 ? CommandKind.Unmap : CommandKind.WriteZeroes;
                if (kind == CommandKind.Flush) { batch[i] = new Command(++id, kind, 0, 0, false); continue; }
                double s = rng.NextDouble();
                uint blocks = s < 0.6 ? (uint)rng.NextInt(1, 4)
                    : s < 0.85 ? (uint)rng.NextInt(5, 32)
                    : s < 0.95 ? (uint)rng.NextInt(33, (int)Math.Max(33, maxWriteBlocks))
                    : maxWriteBlocks;
                blocks = (uint)Math.Min(blocks, Math.Min(maxWriteBlocks, volumeBlocks));
                // Half the commands land in a small hot region so ranges overlap often, across batches and within one.
                ulong lba = rng.Chance(0.5) && blocks <= hot
                    ? rng.Next(hot - blocks + 1)
                    : rng.Next(volumeBlocks - blocks + 1);
                if (kind == CommandKind.Write && wholeChunk > 0 && rng.Chance(wholeChunk))
                {
                    uint span = (uint)rng.NextInt(1, 2) * chunkBlocks;
                    ulong chunks = volumeBlocks / chunkBlocks;
                    // Most of them land on a few chunks, so slots are replaced again and again within one flush epoch.
                    ulong first = rng.Chance(0.7) ? rng.Next(Math.Min(3UL, chunks - span / chunkBlocks + 1)) : rng.Next(chunks - span / chunkBlocks + 1);
                    blocks = span;
                    lba = first * chunkBlocks;
                }
                bool fua = kind == CommandKind.Write && rng.Chance(0.2);
                batch[i] = new Command(++id, kind, lba, blocks, fua);
            }
            batches.Add(batch);
        }
        return batches;
    }
}

/// <summary>
/// Self-identifying block contents: each written block carries (command id, LBA, run tag) and a
/// pseudo-random body derived from them, so a read tells exactly which command's version a block
/// holds, and any torn mix of sectors, misdirected block or random garbage is recognised as such.
/// </summary>
internal sealed class BlockStamp(ulong runTag, int blockSize)
{
    public const long Zero = 0, Garbage = -1, ReadFailed = -2;

    public int BlockSize { get; } = blockSize;

    public void Fill(Span<byte> block, long commandId, ulong lba)
    {
        // Every 8-byte word depends on (run, command, LBA, sector, position): a sector of another version,
        // another block or another place in the block does not match.
        var words = MemoryMarshal.Cast<byte, ulong>(block);
        ulong key = SplitMix64.Hash(runTag ^ (ulong)commandId, lba);
        for (int s = 0; s < words.Length / 64; s++)
        {
            ulong k = SplitMix64.Mix(key + (ulong)s);
            var w = words.Slice(s * 64, 64);
            for (int i = 0; i < w.Length; i++) w[i] = k + (ulong)i * 0x9E3779B97F4A7C15UL;
        }
        words[0] = (ulong)commandId;
        words[1] = lba;
        words[2] = runTag;
    }

    /// <summary>Which version a block holds: <see cref="Zero"/>, a command id, or <see cref="Garbage"/> (with why).</summary>
    public long Identify(ReadOnlySpan<byte> block, ulong lba, Span<byte> scratch, out string? why)
    {
        why = null;
        if (!block.ContainsAnyExcept((byte)0)) return Zero;
        long id = BitConverter.ToInt64(block[0..8]);
        ulong hdrLba = BitConverter.ToUInt64(block[8..16]);
        ulong tag = BitConverter.ToUInt64(block[16..24]);
        if (tag != runTag || id <= 0) { why = "not any version written by this run (unknown header)"; return Garbage; }
        if (hdrLba != lba) { why = $"holds the block command #{id} wrote to LBA {hdrLba} (misplaced)"; return Garbage; }
        Fill(scratch, id, lba);
        if (!block.SequenceEqual(scratch[..block.Length]))
        {
            int firstBad = 0;
            while (block[firstBad] == scratch[firstBad]) firstBad++;
            why = $"starts as command #{id}'s version but differs from byte {firstBad} (sector {firstBad / 512}): torn or corrupt";
            return Garbage;
        }
        return id;
    }
}
