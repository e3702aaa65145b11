using System.Buffers.Binary;

namespace IntegrityTarget.Scsi;

/// <summary>How LBA, transfer length and flags sit in a CDB; one layout per family of commands.</summary>
public enum CdbLayout : byte
{
    None,
    /// <summary>READ(6)/WRITE(6): 21-bit LBA, 8-bit length where 0 means 256 blocks.</summary>
    Rw6,
    /// <summary>10-byte: LBA bytes 2-5, group byte 6, length bytes 7-8.</summary>
    Rw10,
    /// <summary>12-byte: LBA bytes 2-5, length bytes 6-9, group byte 10.</summary>
    Rw12,
    /// <summary>16-byte: LBA bytes 2-9, length bytes 10-13, group byte 14.</summary>
    Rw16,
    /// <summary>COMPARE AND WRITE: LBA bytes 2-9, NUMBER OF LOGICAL BLOCKS byte 13.</summary>
    CompareAndWrite,
    /// <summary>WRITE ATOMIC(16): LBA bytes 2-9, ATOMIC BOUNDARY 10-11, length bytes 12-13, group byte 14.</summary>
    Atomic16,
}

/// <summary>The decoded addressing fields of a data-transfer CDB. LBAs are <c>ulong</c>, block counts <c>uint</c>.</summary>
public readonly record struct CdbFields(ulong Lba, uint Blocks, byte Flags, byte Group)
{
    public bool Fua => (Flags & 0x08) != 0;
    public bool Dpo => (Flags & 0x10) != 0;
    /// <summary>BYTCHK of VERIFY / WRITE AND VERIFY (bits 2:1 of byte 1).</summary>
    public int ByteCheck => (Flags >> 1) & 3;
    /// <summary>RDPROTECT / WRPROTECT / VRPROTECT (bits 7:5 of byte 1).</summary>
    public int Protect => Flags >> 5;
}

/// <summary>CDB decoding in one place.</summary>
public static class Cdb
{
    public static CdbFields Decode(CdbLayout layout, ReadOnlySpan<byte> c) => layout switch
    {
        CdbLayout.Rw6 => new(((ulong)(c[1] & 0x1F) << 16) | ((ulong)c[2] << 8) | c[3], c[4] == 0 ? 256u : c[4], 0, 0),
        CdbLayout.Rw10 => new(BinaryPrimitives.ReadUInt32BigEndian(c[2..]), BinaryPrimitives.ReadUInt16BigEndian(c[7..]), c[1], (byte)(c[6] & 0x1F)),
        CdbLayout.Rw12 => new(BinaryPrimitives.ReadUInt32BigEndian(c[2..]), BinaryPrimitives.ReadUInt32BigEndian(c[6..]), c[1], (byte)(c[10] & 0x1F)),
        CdbLayout.Rw16 => new(BinaryPrimitives.ReadUInt64BigEndian(c[2..]), BinaryPrimitives.ReadUInt32BigEndian(c[10..]), c[1], (byte)(c[14] & 0x1F)),
        CdbLayout.CompareAndWrite => new(BinaryPrimitives.ReadUInt64BigEndian(c[2..]), c[13], c[1], (byte)(c[14] & 0x1F)),
        CdbLayout.Atomic16 => new(BinaryPrimitives.ReadUInt64BigEndian(c[2..]), BinaryPrimitives.ReadUInt16BigEndian(c[12..]), c[1], (byte)(c[14] & 0x1F)),
        _ => default,
    };

    /// <summary>True when [lba, lba+blocks) lies inside a volume of <paramref name="capacity"/> blocks (no overflow).</summary>
    public static bool InRange(ulong lba, ulong blocks, ulong capacity) => IntegrityTarget.Storage.BlockRange.Contains(lba, blocks, capacity);

    /// <summary>
    /// Checks that no bit outside the command's CDB usage mask is set (reserved bits, unsupported flags such
    /// as RDPROTECT, NACA/LINK in CONTROL). Returns the offending byte/bit as INVALID FIELD IN CDB.
    /// </summary>
    public static ScsiError CheckReserved(ReadOnlySpan<byte> cdb, ReadOnlySpan<byte> usage)
    {
        for (int i = 1; i < usage.Length; i++)
        {
            int bad = cdb[i] & ~usage[i];
            if (bad != 0) return ScsiError.Cdb(i, 31 - System.Numerics.BitOperations.LeadingZeroCount((uint)bad));
        }
        return ScsiError.None;
    }

    public static int AllocationLength16(ReadOnlySpan<byte> c, int at) => BinaryPrimitives.ReadUInt16BigEndian(c[at..]);
    public static long AllocationLength32(ReadOnlySpan<byte> c, int at) => BinaryPrimitives.ReadUInt32BigEndian(c[at..]);
}
