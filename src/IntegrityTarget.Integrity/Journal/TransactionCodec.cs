using IntegrityTarget.Storage;
using System.Buffers.Binary;

namespace IntegrityTarget.Integrity;

/// <summary>
/// Journal transaction layout: [128-byte header | 40-byte records | block payloads], starting and ending on the
/// ring's alignment (4 KiB in journal version 2 and on RBD; 512 B in the compact form of journal version 3, docs
/// "On-disk format"), one checksum over all of it (CRC-32C, or HMAC-SHA256 under a keyed volume).
/// Header: magic "ITTXN002", seq u64, epoch u32, flags u32, total bytes u32, record count u32, header
/// bytes u32, header CRC-32C u32 (of bytes 0..35, so a torn transaction's header is still trusted), checksum[32] at 40. Record: type u16, count u16, pad u32, a u64, b u64, digest[16].
/// </summary>
internal static class Txn
{
    public static ReadOnlySpan<byte> Magic => "ITTXN002"u8;
    public const int FixedHeader = 128;
    public const int RecordBytes = 40;
    public const int HeaderCrcAt = 36, ChecksumAt = 40, ChecksumBytes = 32;
    public const ushort TypeData = 1, TypeRemap = 2;
    /// <summary>Header flag: when this transaction was written, every earlier one and every slot their remaps
    /// point at had been flushed. Such a transaction is a <em>marker</em>: recovery validates nothing before
    /// it, and a damaged predecessor followed by it is corruption, not a lost write-back tail.</summary>
    public const uint FlagPriorDurable = 1;
    /// <summary>The version-2 alignment, and the largest a transaction's header is rounded to.</summary>
    public const int Aligned = 4096;
    /// <summary>The smallest alignment (a sector): the compact form's.</summary>
    public const int Compact = 512;
    /// <summary>A payload of at least this many bytes keeps the 4 KiB header (large writes keep their layout).</summary>
    public const long LargePayload = 64 << 10;

    /// <summary>The form a transaction with <paramref name="payloadBytes"/> of journaled blocks takes in a ring aligned to
    /// <paramref name="align"/>: compact only for a small write's payload; one without payload (remaps of whole-chunk writes,
    /// markers) or with a large one keeps the 4 KiB form, so the 1 MiB write path writes exactly what version 2 wrote.</summary>
    public static int FormOf(long payloadBytes, int align) => payloadBytes > 0 && payloadBytes < LargePayload ? align : Aligned;

    /// <summary>Header + records, rounded to the transaction's form (<see cref="FormOf"/>).</summary>
    public static int HeaderBytes(int records, long payloadBytes = 0, int align = Aligned) =>
        (int)Geometry.RoundUp(FixedHeader + (long)records * RecordBytes, FormOf(payloadBytes, align));

    /// <summary>A transaction's bytes in the ring: header bytes + payload, rounded to its form (<see cref="FormOf"/>).</summary>
    public static long TotalBytes(int records, long dataBlocks, int blockSize, int align = Aligned) =>
        Geometry.RoundUp(HeaderBytes(records, dataBlocks * blockSize, align) + dataBlocks * blockSize, FormOf(dataBlocks * blockSize, align));

    /// <summary>Whether a header's sizes are ones some writer of version 2 or 3 produces: header bytes a 512 B multiple
    /// from the records' end up to that rounded to 4 KiB, total a 512 B multiple, at least the header bytes.</summary>
    public static bool PlausibleSizes(int records, int headerBytes, int total) =>
        records >= 0 && records <= (int.MaxValue - FixedHeader) / RecordBytes
        && headerBytes % Compact == 0 && headerBytes >= FixedHeader + (long)records * RecordBytes && headerBytes <= HeaderBytes(records)
        && total % Compact == 0 && total >= headerBytes;
}

/// <summary>One record. Data: <see cref="Count"/> blocks from LBA <see cref="A"/>, home slot <see cref="B"/>, their
/// images in the payload in record order. Remap: chunk <see cref="A"/> → map entry <see cref="B"/> (slot + 1, or 0 =
/// unmapped), <see cref="Digest"/> = the slot's tag-region digest.</summary>
internal readonly record struct TxnRecord(ushort Type, ushort Count, ulong A, ulong B, UInt128 Digest)
{
    public static TxnRecord Data(ulong lba, int blocks, long homeSlot) => new(Txn.TypeData, checked((ushort)blocks), lba, (ulong)homeSlot, 0);
    public static TxnRecord Remap(long chunk, long entry, UInt128 digest) => new(Txn.TypeRemap, 0, (ulong)chunk, (ulong)entry, digest);
    public bool IsData => Type == Txn.TypeData;
    public bool IsRemap => Type == Txn.TypeRemap;
}

internal readonly record struct TxnHeader(ulong Seq, uint Epoch, uint Flags, int Total, int Records, int HeaderBytes)
{
    public bool PriorDurable => (Flags & Txn.FlagPriorDurable) != 0;
}

/// <summary>Encodes and decodes transactions; the committer, recovery and dump all go through here.</summary>
internal static class TransactionCodec
{
    public static void WriteHeader(Span<byte> txn, in TxnHeader h)
    {
        txn[..Txn.FixedHeader].Clear();
        Txn.Magic.CopyTo(txn);
        BinaryPrimitives.WriteUInt64LittleEndian(txn[8..], h.Seq);
        BinaryPrimitives.WriteUInt32LittleEndian(txn[16..], h.Epoch);
        BinaryPrimitives.WriteUInt32LittleEndian(txn[20..], h.Flags);
        BinaryPrimitives.WriteInt32LittleEndian(txn[24..], h.Total);
        BinaryPrimitives.WriteInt32LittleEndian(txn[28..], h.Records);
        BinaryPrimitives.WriteInt32LittleEndian(txn[32..], h.HeaderBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(txn[Txn.HeaderCrcAt..], Tagger.Crc(txn[..Txn.HeaderCrcAt]));
    }

    public static void WriteRecord(Span<byte> txn, int i, in TxnRecord r)
    {
        var d = txn.Slice(Txn.FixedHeader + i * Txn.RecordBytes, Txn.RecordBytes);
        BinaryPrimitives.WriteUInt16LittleEndian(d, r.Type);
        BinaryPrimitives.WriteUInt16LittleEndian(d[2..], r.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(d[4..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(d[8..], r.A);
        BinaryPrimitives.WriteUInt64LittleEndian(d[16..], r.B);
        BinaryPrimitives.WriteUInt128LittleEndian(d[24..], r.Digest);
    }

    public static TxnRecord ReadRecord(ReadOnlySpan<byte> txn, int i)
    {
        var d = txn.Slice(Txn.FixedHeader + i * Txn.RecordBytes, Txn.RecordBytes);
        return new TxnRecord(BinaryPrimitives.ReadUInt16LittleEndian(d), BinaryPrimitives.ReadUInt16LittleEndian(d[2..]),
            BinaryPrimitives.ReadUInt64LittleEndian(d[8..]), BinaryPrimitives.ReadUInt64LittleEndian(d[16..]), BinaryPrimitives.ReadUInt128LittleEndian(d[24..]));
    }

    /// <summary>Computes the checksum over the whole transaction (checksum field zeroed) and stores it.</summary>
    public static void Seal(Span<byte> txn, Tagger tagger)
    {
        var field = txn.Slice(Txn.ChecksumAt, Txn.ChecksumBytes);
        field.Clear();
        Span<byte> sum = stackalloc byte[Txn.ChecksumBytes];
        tagger.Checksum(txn, sum);
        sum.CopyTo(field);
    }

    /// <summary>Whether the stored checksum matches (the buffer is left as it was).</summary>
    public static bool CheckSeal(Span<byte> txn, Tagger tagger)
    {
        var field = txn.Slice(Txn.ChecksumAt, Txn.ChecksumBytes);
        Span<byte> stored = stackalloc byte[Txn.ChecksumBytes], computed = stackalloc byte[Txn.ChecksumBytes];
        field.CopyTo(stored);
        field.Clear();
        tagger.Checksum(txn, computed);
        stored.CopyTo(field);
        return stored.SequenceEqual(computed);
    }

    /// <summary>Parses the fixed header (the first 512 B sector of a transaction); null and why when it is not one,
    /// or when its sizes are impossible for a ring of <paramref name="ringBytes"/>.</summary>
    public static TxnHeader? ReadHeader(ReadOnlySpan<byte> hdr, long ringBytes, out string why)
    {
        if (!hdr[..8].SequenceEqual(Txn.Magic)) { why = "no transaction header"; return null; }
        if (BinaryPrimitives.ReadUInt32LittleEndian(hdr[Txn.HeaderCrcAt..]) != Tagger.Crc(hdr[..Txn.HeaderCrcAt])) { why = "transaction header checksum mismatch"; return null; }
        var h = new TxnHeader(BinaryPrimitives.ReadUInt64LittleEndian(hdr[8..]), BinaryPrimitives.ReadUInt32LittleEndian(hdr[16..]),
            BinaryPrimitives.ReadUInt32LittleEndian(hdr[20..]), BinaryPrimitives.ReadInt32LittleEndian(hdr[24..]),
            BinaryPrimitives.ReadInt32LittleEndian(hdr[28..]), BinaryPrimitives.ReadInt32LittleEndian(hdr[32..]));
        if (!Txn.PlausibleSizes(h.Records, h.HeaderBytes, h.Total) || h.Total > ringBytes)
        { why = $"transaction {h.Seq} header has impossible sizes"; return null; }
        why = "";
        return h;
    }

    /// <summary>Structural check of a sealed transaction's records against the geometry (a valid checksum makes
    /// this a formality); returns why not, or null.</summary>
    public static string? CheckRecords(ReadOnlySpan<byte> txn, in TxnHeader h, Geometry g)
    {
        long dataBlocks = 0;
        for (int i = 0; i < h.Records; i++)
        {
            var r = ReadRecord(txn, i);
            if (r.IsData)
            {
                ulong bpc = (ulong)g.BlocksPerChunk;
                if (r.Count == 0 || !BlockRange.Contains(r.A, r.Count, g.LogicalBlocks) || r.A / bpc != (r.A + r.Count - 1) / bpc || r.B >= (ulong)g.PhysicalSlots)
                    return $"transaction {h.Seq} record {i} out of range";
                dataBlocks += r.Count;
            }
            else if (r.IsRemap)
            {
                if (r.A >= (ulong)g.LogicalChunks || r.B > (ulong)g.PhysicalSlots) return $"transaction {h.Seq} record {i} out of range";
            }
            else return $"transaction {h.Seq} record {i} has unknown type {r.Type}";
        }
        if (h.HeaderBytes + dataBlocks * g.BlockSize > h.Total) return $"transaction {h.Seq} payload larger than the transaction";
        return null;
    }

    /// <summary>Byte offset of each data record's payload, in record order (remaps get -1).</summary>
    public static int[] PayloadOffsets(ReadOnlySpan<byte> txn, in TxnHeader h, int blockSize)
    {
        var at = new int[h.Records];
        int p = h.HeaderBytes;
        for (int i = 0; i < h.Records; i++)
        {
            var r = ReadRecord(txn, i);
            if (r.IsData) { at[i] = p; p += r.Count * blockSize; }
            else at[i] = -1;
        }
        return at;
    }
}
