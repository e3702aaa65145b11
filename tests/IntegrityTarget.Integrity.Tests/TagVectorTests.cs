using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;
using CsCheck;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// The crc32c tag and the journal checksum are on-disk formats: volumes formatted earlier must keep
/// verifying, so every optimisation of <see cref="Tagger"/> has to reproduce them bit for bit. The
/// known-answer values below were computed by the original four-chain BitOperations implementation
/// (commit da86ad0) before it was optimised; <see cref="Reference"/> is a plain restatement of that
/// algorithm used as an oracle for random inputs.
/// </summary>
public class TagVectorTests
{
    /// <summary>Deterministic test data (xorshift32), independent of System.Random.</summary>
    private static byte[] Data(int n, uint seed)
    {
        var b = new byte[n];
        uint x = seed * 2654435761u + 1;
        for (int i = 0; i < n; i++) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; b[i] = (byte)(x >> 3); }
        return b;
    }

    private static byte[] Salt(byte s)
    {
        var b = new byte[16];
        for (int i = 0; i < 16; i++) b[i] = (byte)(s + 7 * i);
        return b;
    }

    /// <summary>The pre-optimisation algorithm, written out simply: four CRC-32C chains over the four
    /// consecutive quarters, folded with the LBA into a CRC seeded from the salt.</summary>
    private static class Reference
    {
        public static uint Crc32C(uint crc, ReadOnlySpan<byte> data)
        {
            foreach (byte b in data) crc = BitOperations.Crc32C(crc, b);
            return crc;
        }

        public static uint Tag(uint seed, ulong lba, ReadOnlySpan<byte> data)
        {
            if (data.Length % 32 != 0 || data.Length == 0) return ~BitOperations.Crc32C(Crc32C(seed, data), lba);
            int q = data.Length / 4;
            uint c0 = Crc32C(~0u, data[..q]), c1 = Crc32C(~0u, data.Slice(q, q));
            uint c2 = Crc32C(~0u, data.Slice(2 * q, q)), c3 = Crc32C(~0u, data.Slice(3 * q, q));
            uint f = BitOperations.Crc32C(seed, lba);
            f = BitOperations.Crc32C(f, ((ulong)c1 << 32) | c0);
            f = BitOperations.Crc32C(f, ((ulong)c3 << 32) | c2);
            return ~f;
        }

        public static uint Seed(ReadOnlySpan<byte> salt) => Crc32C(~0u, salt);
    }

    [Test]
    public void Crc_is_standard_crc32c()
    {
        // The published CRC-32C check value; Crc guards the superblock, journal super and map sectors.
        Assert.That(Tagger.Crc("123456789"u8), Is.EqualTo(0xE3069283u));
        Assert.That(Tagger.Crc(ReadOnlySpan<byte>.Empty), Is.EqualTo(0u));
    }

    [TestCase(0x00, 512, 0x0ul, 0x35ABB27Du)]
    [TestCase(0x00, 512, 0x1ul, 0x3B44AA25u)]
    [TestCase(0x00, 512, 0x3039ul, 0xB38A6D03u)]
    [TestCase(0x00, 512, 0xFFFFFFFFFFFFFFFEul, 0x3296BEF6u)]
    [TestCase(0x00, 4096, 0x0ul, 0x1DBFCFB3u)]
    [TestCase(0x00, 4096, 0x1ul, 0x8D5A7805u)]
    [TestCase(0x00, 4096, 0x3039ul, 0xC2F1EA1Au)]
    [TestCase(0x00, 4096, 0xFFFFFFFFFFFFFFFEul, 0x9E2F3474u)]
    [TestCase(0x5A, 512, 0x0ul, 0xBE124F50u)]
    [TestCase(0x5A, 512, 0x1ul, 0xB0FD5708u)]
    [TestCase(0x5A, 512, 0x3039ul, 0x3833902Eu)]
    [TestCase(0x5A, 512, 0xFFFFFFFFFFFFFFFEul, 0xB92F43DBu)]
    [TestCase(0x5A, 4096, 0x0ul, 0x9606329Eu)]
    [TestCase(0x5A, 4096, 0x1ul, 0x06E38528u)]
    [TestCase(0x5A, 4096, 0x3039ul, 0x49481737u)]
    [TestCase(0x5A, 4096, 0xFFFFFFFFFFFFFFFEul, 0x1596C959u)]
    public void Crc32c_tag_known_answers(byte salt, int blockSize, ulong lba, uint expected)
    {
        var t = new Tagger(TagAlgorithm.Crc32c, Salt(salt), T.Key);
        var data = Data(blockSize, (uint)blockSize + (uint)lba);
        var tag = new byte[4];
        t.ComputeTag(lba, data, tag);
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(tag), Is.EqualTo(expected), "ComputeTag");
        Assert.That(Reference.Tag(Reference.Seed(Salt(salt)), lba, data), Is.EqualTo(expected), "reference");
        Assert.That(t.Verify(lba, data, tag), Is.True, "Verify");
        Assert.That(t.VerifyBlocks(lba, data, blockSize, tag, null), Is.EqualTo(-1), "VerifyBlocks");
    }

    [TestCase(0, 0xA719D1A1u)]
    [TestCase(1, 0x5D56F01Fu)]
    [TestCase(7, 0x6E07823Eu)]
    [TestCase(31, 0x67F4CA84u)]
    [TestCase(32, 0xDA94A320u)]
    [TestCase(33, 0x4F5EE634u)]
    [TestCase(64, 0xDA1BCD2Au)]
    [TestCase(96, 0x8696169Cu)]
    [TestCase(100, 0x636A1A77u)]
    [TestCase(160, 0x863EE4E3u)]
    [TestCase(224, 0x83E32A41u)]
    [TestCase(513, 0x2CE41D77u)]
    [TestCase(1184, 0xDAECB8D0u)]
    [TestCase(4095, 0x767D4F53u)]
    [TestCase(4097, 0xCE6C1F53u)]
    [TestCase(8192, 0x163EB883u)]
    [TestCase(65536, 0xBCD4D461u)]
    public void Journal_checksum_known_answers(int length, uint expected)
    {
        var t = new Tagger(TagAlgorithm.Crc32c, Salt(3), T.Key);
        var d = new byte[32];
        t.Checksum(Data(length, (uint)length), d);
        Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(d), Is.EqualTo(expected));
        Assert.That(d.AsSpan(4).ToArray(), Is.All.EqualTo((byte)0), "the rest of the 32-byte field stays zero");
    }

    [Test]
    public void Crc32c_tag_matches_reference_for_random_lengths_seeds_and_lbas()
    {
        // Lengths cover the one-chain fallback (not a multiple of 32), every multiple of 32 up to 2 KiB
        // (quarters that are not a multiple of any vector width) and larger blocks.
        Gen.Select(Gen.Int[0, 20_000], Gen.UInt, Gen.ULong, Gen.UInt)
            .Sample((n, seed, lba, dataSeed) =>
            {
                var data = Data(n, dataSeed);
                return Tagger.Crc32C4(seed, lba, data) == Reference.Tag(seed, lba, data);
            }, iter: 3000);
        for (int n = 0; n <= 2048; n += 8)
        {
            var data = Data(n, (uint)n * 31);
            Assert.That(Tagger.Crc32C4(0x12345678u, (ulong)n, data), Is.EqualTo(Reference.Tag(0x12345678u, (ulong)n, data)), $"length {n}");
        }
    }

    [Test]
    public void Crc32c_plain_matches_reference_for_every_small_length_and_offset()
    {
        var buf = Data(300, 9);
        for (int off = 0; off < 16; off++)
        for (int n = 0; n + off <= buf.Length; n++)
            Assert.That(Tagger.Crc32C(0xA5A5A5A5u, buf.AsSpan(off, n)), Is.EqualTo(Reference.Crc32C(0xA5A5A5A5u, buf.AsSpan(off, n))), $"offset {off} length {n}");
    }

    [TestCase(512)]
    [TestCase(4096)]
    public void VerifyBlocks_finds_the_first_bad_block_in_runs_of_1_to_256(int blockSize)
    {
        var t = new Tagger(TagAlgorithm.Crc32c, Salt(0x11), T.Key);
        const ulong lba0 = 0x1_0000_0000ul - 7; // runs cross the 32-bit LBA boundary
        var data = Data(256 * blockSize, 77);
        var tags = new byte[256 * 4];
        uint seed = Reference.Seed(Salt(0x11));
        for (int i = 0; i < 256; i++)
        {
            uint r = Reference.Tag(seed, lba0 + (ulong)i, data.AsSpan(i * blockSize, blockSize));
            BinaryPrimitives.WriteUInt32LittleEndian(tags.AsSpan(i * 4), r);
        }
        foreach (int n in new[] { 1, 2, 3, 5, 8, 17, 64, 255, 256 })
        {
            var run = data.AsSpan(0, n * blockSize);
            Assert.That(t.VerifyBlocks(lba0, run, blockSize, tags.AsSpan(0, n * 4), null), Is.EqualTo(-1), $"{n} good blocks");
            // Wrong LBA: every block fails, the first is reported.
            Assert.That(t.VerifyBlocks(lba0 + 1, run, blockSize, tags.AsSpan(0, n * 4), null), Is.EqualTo(0), $"{n} blocks, shifted LBA");
            foreach (int bad in new[] { 0, n / 2, n - 1 }.Distinct())
            {
                var copy = run.ToArray();
                copy[bad * blockSize + (bad * 131 % blockSize)] ^= 0x10;
                Assert.That(t.VerifyBlocks(lba0, copy, blockSize, tags.AsSpan(0, n * 4), null), Is.EqualTo(bad), $"{n} blocks, bad {bad}");
                var skip = new bool[n];
                skip[bad] = true;
                Assert.That(t.VerifyBlocks(lba0, copy, blockSize, tags.AsSpan(0, n * 4), skip), Is.EqualTo(-1), $"{n} blocks, bad {bad} skipped");
                if (bad + 1 < n)
                {
                    copy[(n - 1) * blockSize] ^= 1;
                    Assert.That(t.VerifyBlocks(lba0, copy, blockSize, tags.AsSpan(0, n * 4), skip), Is.EqualTo(n - 1), $"{n} blocks, bad {bad} skipped, last bad");
                }
            }
        }
    }
}
