using System.Text.RegularExpressions;

namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>Direct access to a LUN's backing file: find where a block's data lives, flip bytes.</summary>
public static class BackingFile
{
    /// <summary>Every offset (multiple of <paramref name="align"/>) where <paramref name="needle"/> occurs.</summary>
    public static List<long> FindAll(string path, byte[] needle, int align)
    {
        var hits = new List<long>();
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1 << 20);
        var buf = new byte[(4 << 20) + needle.Length];
        long basePos = 0;
        var carry = 0;
        while (true)
        {
            var n = f.Read(buf, carry, buf.Length - carry);
            var len = carry + n;
            for (var i = 0; i + needle.Length <= len; i++)
            {
                var off = basePos + i;
                if (off % align != 0) continue;
                if (buf.AsSpan(i, needle.Length).SequenceEqual(needle)) hits.Add(off);
            }
            if (n == 0) break;
            // keep the tail that could start a match across the boundary, aligned to the buffer start
            var keep = Math.Min(needle.Length - 1, len);
            Buffer.BlockCopy(buf, len - keep, buf, 0, keep);
            basePos += len - keep;
            carry = keep;
        }
        return hits.Distinct().ToList();
    }

    /// <summary>Inverts one byte in place and makes it durable, as a failing disk or a stray writer would.</summary>
    public static void FlipByte(string path, long offset)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        f.Position = offset;
        var b = f.ReadByte();
        f.Position = offset;
        f.WriteByte((byte)(b ^ 0xff));
        f.Flush(flushToDisk: true);
    }

    public static byte[] ReadAt(string path, long offset, int count)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        var b = new byte[count];
        f.Position = offset;
        f.ReadExactly(b);
        return b;
    }

    /// <summary>The volume geometry `integrity-target dump PATH` prints (data area, slot and tag sizes).</summary>
    public sealed record Geometry(long DataOffset, int ChunkBytes, long SlotBytes, int TagSize, int BlockSize)
    {
        /// <summary>
        /// Where the tag of the block stored at <paramref name="dataOffset"/> lives: a physical slot is the chunk's
        /// data followed by its tag region, one tag per block in order (as the dump's "slots of N B (tags T B)" says).
        /// </summary>
        public long TagOffsetFor(long dataOffset)
        {
            var inArea = dataOffset - DataOffset;
            Assert.That(inArea, Is.GreaterThanOrEqualTo(0), "the block's data is not in the data area");
            var slot = inArea / SlotBytes;
            var within = inArea % SlotBytes;
            Assert.That(within, Is.LessThan(ChunkBytes), "the block's data lies in a tag region");
            return DataOffset + slot * SlotBytes + ChunkBytes + within / BlockSize * TagSize;
        }
    }

    public static Geometry ReadGeometry(string path)
    {
        var r = ServerProcess.Cli(TimeSpan.FromSeconds(60), "dump", path);
        Assert.That(r.ExitCode, Is.EqualTo(0), () => r.Describe());
        long Num(string pattern)
        {
            var m = Regex.Match(r.StdOut, pattern, RegexOptions.Multiline);
            Assert.That(m.Success, Is.True, () => $"`integrity-target dump` output has no match for {pattern}\n{r.Describe()}");
            return long.Parse(m.Groups[1].Value);
        }
        return new Geometry(
            DataOffset: Num(@"^data:\s+offset (\d+)"),
            ChunkBytes: (int)Num(@"^chunk size:\s+(\d+) B"),
            SlotBytes: Num(@"physical slots \d+ of (\d+) B"),
            TagSize: (int)Num(@"tag size (\d+) B"),
            BlockSize: (int)Num(@"^block size:\s+(\d+)"));
    }

    /// <summary>
    /// Asks the integrity layer where LBA <paramref name="lba"/> lives: `integrity-target dump PATH --lba N`,
    /// parsing "data ... offset" and "tag ... offset" numbers (decimal or 0x hex). Null when the command does
    /// not offer that (yet); the message says what it printed.
    /// </summary>
    public static (long? Data, long? Tag, string Output) Locate(string path, ulong lba)
    {
        var r = ServerProcess.Cli(TimeSpan.FromSeconds(60), "dump", path, "--lba", lba.ToString());
        long? Find(string what)
        {
            var m = Regex.Match(r.Combined, what + @"[\w\s-]*?offset\s*[=:]?\s*(0x[0-9a-fA-F]+|\d+)", RegexOptions.IgnoreCase);
            if (!m.Success) return null;
            var v = m.Groups[1].Value;
            return v.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? Convert.ToInt64(v[2..], 16) : long.Parse(v);
        }
        return r.ExitCode == 0 ? (Find("data"), Find("tag"), r.Combined) : (null, null, r.Describe());
    }
}
