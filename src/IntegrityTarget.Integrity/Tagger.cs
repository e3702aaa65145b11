using System.Buffers;
using System.Collections.Concurrent;
using System.Buffers.Binary;
using System.IO.Hashing;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace IntegrityTarget.Integrity;

/// <summary>
/// Computes per-block tags over (LBA, data) and journal checksums. One instance per volume (holds the
/// key and salt); stateless per call, so safe from many threads.
/// </summary>
internal sealed class Tagger
{
    private readonly TagAlgorithm _alg;
    private readonly byte[] _key;
    private readonly uint _crcSeed;
    private readonly long _xxSeed;
    // Keyed HMAC states, reused: HMACSHA256.HashData would redo the key schedule (and we would copy the
    // block to append the LBA) for every block. Per volume, not static; IncrementalHash is single-user,
    // so each caller takes one out and puts it back.
    private readonly ConcurrentBag<IncrementalHash> _hmacs = new();

    public Tagger(TagAlgorithm alg, ReadOnlySpan<byte> salt, ReadOnlySpan<byte> key)
    {
        _alg = alg;
        _key = key.ToArray();
        // The salt makes tags volume-specific: a block copied from another volume does not verify.
        _crcSeed = Crc32C(0xFFFFFFFFu, salt);
        _xxSeed = BinaryPrimitives.ReadInt64LittleEndian(salt);
    }

    public TagAlgorithm Algorithm => _alg;
    public int TagSize => SizeOf(_alg);

    public static int SizeOf(TagAlgorithm alg) => alg switch
    {
        TagAlgorithm.Crc32c => 4,
        TagAlgorithm.XxHash64 => 8,
        TagAlgorithm.HmacSha256 => 32,
        _ => throw new ArgumentOutOfRangeException(nameof(alg), $"unknown tag algorithm {(int)alg}"),
    };

    public static string NameOf(TagAlgorithm alg) => alg switch
    {
        TagAlgorithm.Crc32c => "crc32c",
        TagAlgorithm.XxHash64 => "xxhash64",
        TagAlgorithm.HmacSha256 => "hmac-sha256",
        _ => $"unknown({(int)alg})",
    };

    public void ComputeTag(ulong lba, ReadOnlySpan<byte> data, Span<byte> tag)
    {
        switch (_alg)
        {
            case TagAlgorithm.Crc32c:
                BinaryPrimitives.WriteUInt32LittleEndian(tag, Crc32C4(_crcSeed, lba, data));
                break;
            case TagAlgorithm.XxHash64:
                // The LBA goes into the seed, so a block written to the wrong place fails.
                BinaryPrimitives.WriteUInt64LittleEndian(tag, XxHash64.HashToUInt64(data, _xxSeed ^ (long)lba));
                break;
            case TagAlgorithm.HmacSha256:
            {
                // HMAC(key, data || le64(LBA)), fed in two pieces to a keyed state that is reset, not re-keyed.
                var h = _hmacs.TryTake(out var pooled) ? pooled : IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, _key);
                Span<byte> le = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(le, lba);
                h.AppendData(data);
                h.AppendData(le);
                h.GetHashAndReset(tag);
                _hmacs.Add(h);
                break;
            }
        }
    }

    public bool Verify(ulong lba, ReadOnlySpan<byte> data, ReadOnlySpan<byte> stored)
    {
        Span<byte> t = stackalloc byte[32];
        ComputeTag(lba, data, t[..TagSize]);
        return t[..TagSize].SequenceEqual(stored);
    }

    /// <summary>
    /// Verifies consecutive blocks starting at <paramref name="lba0"/> against their packed tags; blocks
    /// marked in <paramref name="skip"/> are not checked. Returns the index of the first mismatch, or -1.
    /// crc32c compares the 4-byte tag as an integer, without the per-block dispatch of <see cref="Verify"/>.
    /// </summary>
    public int VerifyBlocks(ulong lba0, ReadOnlySpan<byte> data, int blockSize, ReadOnlySpan<byte> tags, bool[]? skip)
    {
        int n = data.Length / blockSize, ts = TagSize;
        if (_alg == TagAlgorithm.Crc32c)
        {
            for (int i = 0; i < n; i++)
            {
                if (skip != null && skip[i]) continue;
                uint want = BinaryPrimitives.ReadUInt32LittleEndian(tags.Slice(i * 4, 4));
                if (Crc32C4(_crcSeed, lba0 + (ulong)i, data.Slice(i * blockSize, blockSize)) != want) return i;
            }
            return -1;
        }
        for (int i = 0; i < n; i++)
        {
            if (skip != null && skip[i]) continue;
            if (!Verify(lba0 + (ulong)i, data.Slice(i * blockSize, blockSize), tags.Slice(i * ts, ts))) return i;
        }
        return -1;
    }

    /// <summary>Journal transaction checksum: keyed under HMAC so the journal cannot be forged either.</summary>
    public void Checksum(ReadOnlySpan<byte> data, Span<byte> dest32)
    {
        dest32.Clear();
        if (_alg == TagAlgorithm.HmacSha256) HMACSHA256.HashData(_key, data, dest32);
        else BinaryPrimitives.WriteUInt32LittleEndian(dest32, Crc32C4(_crcSeed, (ulong)data.Length, data));
    }

    /// <summary>
    /// Digest of a slot's tag region, carried by the remap record that points at the slot: XXH128 seeded from
    /// the salt, or (keyed volumes) the first 16 bytes of HMAC-SHA256 under the volume key, so nobody without
    /// the key can make an older tag region pass for the one a remap names.
    /// </summary>
    public UInt128 SlotDigest(ReadOnlySpan<byte> tagRegion)
    {
        if (_alg == TagAlgorithm.HmacSha256)
        {
            Span<byte> mac = stackalloc byte[32];
            HMACSHA256.HashData(_key, tagRegion, mac);
            return BinaryPrimitives.ReadUInt128LittleEndian(mac);
        }
        return XxHash128.HashToUInt128(tagRegion, _xxSeed);
    }

    /// <summary>HMAC(key, salt || "check"): lets open detect a wrong key without storing the key.</summary>
    public static byte[] KeyCheck(ReadOnlySpan<byte> key, ReadOnlySpan<byte> salt)
    {
        var src = new byte[salt.Length + 5];
        salt.CopyTo(src);
        "check"u8.CopyTo(src.AsSpan(salt.Length));
        return HMACSHA256.HashData(key.ToArray(), src);
    }

    /// <summary>CRC-32C (Castagnoli) using the SSE4.2/ARM crc instructions through BitOperations.</summary>
    public static uint Crc32C(uint crc, ReadOnlySpan<byte> data)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(data);
        foreach (ulong w in words) crc = BitOperations.Crc32C(crc, w);
        foreach (byte b in data[(words.Length * 8)..]) crc = BitOperations.Crc32C(crc, b);
        return crc;
    }

    /// <summary>
    /// The crc32c tag: CRC-32C over four interleaved quarters of the data (four independent dependency
    /// chains keep the CPU's CRC unit busy, about 3x a single chain), folded with the LBA into one
    /// salted CRC-32C. Every quarter keeps full CRC-32C error detection; the fold binds them to the LBA.
    /// Data whose length is not a multiple of 32 falls back to one chain.
    /// </summary>
    public static uint Crc32C4(uint seed, ulong lba, ReadOnlySpan<byte> data)
    {
        if (data.Length % 32 != 0 || data.Length == 0)
        {
            uint one = Crc32C(seed, data);
            return ~BitOperations.Crc32C(one, lba);
        }
        var w = MemoryMarshal.Cast<byte, ulong>(data);
        int q = w.Length / 4;
        var w0 = w[..q]; var w1 = w.Slice(q, q); var w2 = w.Slice(2 * q, q); var w3 = w.Slice(3 * q, q);
        uint c0 = 0xFFFFFFFFu, c1 = 0xFFFFFFFFu, c2 = 0xFFFFFFFFu, c3 = 0xFFFFFFFFu;
        for (int i = 0; i < q; i++)
        {
            c0 = BitOperations.Crc32C(c0, w0[i]);
            c1 = BitOperations.Crc32C(c1, w1[i]);
            c2 = BitOperations.Crc32C(c2, w2[i]);
            c3 = BitOperations.Crc32C(c3, w3[i]);
        }
        uint f = BitOperations.Crc32C(seed, lba);
        f = BitOperations.Crc32C(f, ((ulong)c1 << 32) | c0);
        f = BitOperations.Crc32C(f, ((ulong)c3 << 32) | c2);
        return ~f;
    }

    /// <summary>Plain CRC-32C of a buffer (for superblock, journal super and map sectors).</summary>
    public static uint Crc(ReadOnlySpan<byte> data) => ~Crc32C(0xFFFFFFFFu, data);
}
