using System.Buffers.Binary;
using System.Text;
using IntegrityTarget.Iscsi.Pdus;

namespace IntegrityTarget.Iscsi.Tests;

/// <summary>A PDU as the test initiator sees it: header plus data segment (digests already checked/stripped).</summary>
public sealed record TestPdu(byte[] Header, byte[] Data)
{
    public Opcode Opcode => (Opcode)(Header[0] & 0x3f);
    public byte Flags => Header[1];
    public uint Itt => BinaryPrimitives.ReadUInt32BigEndian(Header.AsSpan(16));
    public uint Ttt => BinaryPrimitives.ReadUInt32BigEndian(Header.AsSpan(20));
    public uint StatSN => BinaryPrimitives.ReadUInt32BigEndian(Header.AsSpan(24));
    public uint ExpCmdSN => BinaryPrimitives.ReadUInt32BigEndian(Header.AsSpan(28));
    public uint MaxCmdSN => BinaryPrimitives.ReadUInt32BigEndian(Header.AsSpan(32));
    public uint U32(int offset) => BinaryPrimitives.ReadUInt32BigEndian(Header.AsSpan(offset));
    public ushort LoginStatus => (ushort)((Header[36] << 8) | Header[37]);
    public ushort Tsih => BinaryPrimitives.ReadUInt16BigEndian(Header.AsSpan(14));

    public Dictionary<string, string> Keys()
    {
        var d = new Dictionary<string, string>();
        foreach (var pair in Encoding.UTF8.GetString(Data).Split('\0', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = pair.IndexOf('=');
            d[pair[..eq]] = pair[(eq + 1)..];
        }
        return d;
    }

    public override string ToString() => $"{Opcode} flags=0x{Flags:x2} itt=0x{Itt:x8} data={Data.Length}";

    // ------------------------------------------------------------ builders (initiator side)

    public static byte[] NewHeader(Opcode op, bool immediate = false, byte flags = 0x80)
    {
        var h = new byte[48];
        h[0] = (byte)((byte)op | (immediate ? 0x40 : 0));
        h[1] = flags;
        return h;
    }

    public static byte[] Text(params string[] pairs) => Encoding.UTF8.GetBytes(string.Concat(pairs.Select(p => p + "\0")));

    public static byte[] Login(string[] keys, int csg, int nsg, bool transit, ulong isid = 0x00023d000001, ushort tsih = 0,
        uint itt = 1, uint cmdSN = 1, uint expStatSN = 0, bool cont = false)
    {
        var h = NewHeader(Opcode.LoginRequest, immediate: true,
            (byte)((transit ? 0x80 : 0) | (cont ? 0x40 : 0) | (csg << 2) | (transit ? nsg : 0)));
        for (int i = 0; i < 6; i++) h[8 + i] = (byte)(isid >> (40 - 8 * i));
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(14), tsih);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), cmdSN);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(28), expStatSN);
        return Frame(h, Text(keys));
    }

    public static byte[] ScsiCommand(uint itt, uint cmdSN, byte[] cdb, uint edtl, bool read = false, bool write = false,
        bool final = true, byte[]? immediateData = null, ulong lun = 0, bool immediate = false, bool headerDigest = false, bool dataDigest = false)
    {
        var h = NewHeader(Opcode.ScsiCommand, immediate, (byte)((final ? 0x80 : 0) | (read ? 0x40 : 0) | (write ? 0x20 : 0) | 1));
        BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(8), lun << 48);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(20), edtl);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), cmdSN);
        cdb.CopyTo(h.AsSpan(32));
        return Frame(h, immediateData ?? [], headerDigest, dataDigest);
    }

    public static byte[] DataOut(uint itt, uint ttt, uint dataSN, uint offset, byte[] data, bool final, bool headerDigest = false, bool dataDigest = false)
    {
        var h = NewHeader(Opcode.DataOut, false, (byte)(final ? 0x80 : 0));
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(20), ttt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(36), dataSN);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(40), offset);
        return Frame(h, data, headerDigest, dataDigest);
    }

    public static byte[] NopOut(uint itt, uint ttt, uint cmdSN, byte[]? data = null, bool immediate = true, bool headerDigest = false, bool dataDigest = false)
    {
        var h = NewHeader(Opcode.NopOut, immediate);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(20), ttt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), cmdSN);
        return Frame(h, data ?? [], headerDigest, dataDigest);
    }

    public static byte[] Tmf(uint itt, uint cmdSN, byte function, uint referencedItt = 0xffffffff, uint refCmdSN = 0, ulong lun = 0,
        bool headerDigest = false, bool dataDigest = false)
    {
        var h = NewHeader(Opcode.TaskManagementRequest, immediate: true, (byte)(0x80 | function));
        BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(8), lun << 48);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(20), referencedItt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), cmdSN);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(32), refCmdSN);
        return Frame(h, [], headerDigest, dataDigest);
    }

    public static byte[] TextRequest(uint itt, uint cmdSN, byte[] text, uint ttt = 0xffffffff)
    {
        var h = NewHeader(Opcode.TextRequest, immediate: true);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(20), ttt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), cmdSN);
        return Frame(h, text);
    }

    public static byte[] Logout(uint itt, uint cmdSN, byte reason = 0)
    {
        var h = NewHeader(Opcode.LogoutRequest, immediate: true, (byte)(0x80 | reason));
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), cmdSN);
        return Frame(h, []);
    }

    /// <summary>Header (+digest) + data padded to 4 (+digest).</summary>
    public static byte[] Frame(byte[] header, byte[] data, bool headerDigest = false, bool dataDigest = false)
    {
        header[5] = (byte)(data.Length >> 16); header[6] = (byte)(data.Length >> 8); header[7] = (byte)data.Length;
        var ms = new MemoryStream();
        ms.Write(header);
        if (headerDigest) WriteLe(ms, Crc32C.Compute(header));
        if (data.Length > 0)
        {
            ms.Write(data);
            var padded = new byte[(data.Length + 3) & ~3];
            data.CopyTo(padded, 0);
            ms.Write(padded.AsSpan(data.Length));
            if (dataDigest) WriteLe(ms, Crc32C.Compute(padded));
        }
        return ms.ToArray();
    }

    private static void WriteLe(Stream s, uint v)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, v);
        s.Write(b);
    }

    // ------------------------------------------------------------ parser (target side output)

    /// <summary>Parses one PDU from the front of <paramref name="bytes"/>; returns null when incomplete.</summary>
    public static TestPdu? TryParse(List<byte> bytes, bool headerDigest, bool dataDigest)
    {
        if (bytes.Count < 48) return null;
        var h = bytes.GetRange(0, 48).ToArray();
        int ahs = h[4] * 4;
        int dsl = (h[5] << 16) | (h[6] << 8) | h[7];
        int hd = headerDigest ? 4 : 0;
        int dd = dataDigest && dsl > 0 ? 4 : 0;
        int total = 48 + ahs + hd + ((dsl + 3) & ~3) + dd;
        if (bytes.Count < total) return null;
        var all = bytes.GetRange(0, total).ToArray();
        bytes.RemoveRange(0, total);
        if (headerDigest && BinaryPrimitives.ReadUInt32LittleEndian(all.AsSpan(48 + ahs)) != Crc32C.Compute(all.AsSpan(0, 48 + ahs)))
            throw new InvalidDataException("target sent a bad header digest");
        var data = all.AsSpan(48 + ahs + hd, dsl).ToArray();
        if (dd > 0 && BinaryPrimitives.ReadUInt32LittleEndian(all.AsSpan(total - 4)) != Crc32C.Compute(all.AsSpan(48 + ahs + hd, (dsl + 3) & ~3)))
            throw new InvalidDataException("target sent a bad data digest");
        return new TestPdu(h, data);
    }
}
