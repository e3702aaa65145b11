using System.Runtime.CompilerServices;

namespace IntegrityTarget.Iscsi.Pdus;

/// <summary>
/// One 48-byte Basic Header Segment held by value (no array, no allocation): a builder returns it and
/// the send path copies it into the output, so it can be passed across awaits.
/// </summary>
[InlineArray(Bhs.Length)]
public struct BhsBuffer
{
    private byte _first;
}

/// <summary>
/// Header builders for every PDU the target sends (RFC 7143 §11), one per response type. Each fills
/// only what the PDU's own state decides; StatSN, ExpCmdSN and MaxCmdSN (bytes 24-35) and the data
/// segment length are left zero for <see cref="PduSender"/>, the one send path, which also decides from
/// the header whether the PDU consumes a StatSN. No sockets, no connection state: testable byte by byte.
/// </summary>
public static class TargetPdus
{
    // Flag bits of byte 1.
    private const byte Final = 0x80, Continue = 0x40, StatusBit = 0x01;

    private static BhsBuffer New(Opcode op, byte flags)
    {
        var b = default(BhsBuffer);
        b[0] = (byte)op;
        b[1] = flags;
        return b;
    }

    /// <summary>Residual flags of SCSI Response byte 1 / Data-In byte 1 (§11.4.5): O = overflow, U = underflow.</summary>
    public static byte ResidualFlags(long transferred, long expected) =>
        transferred > expected ? (byte)0x04 : transferred < expected ? (byte)0x02 : (byte)0;

    /// <summary>SCSI Response (§11.4): status, iSCSI response, residual, ExpDataSN (the Data-In PDUs sent before it).</summary>
    public static BhsBuffer ScsiResponse(uint itt, byte status, byte response, byte residualFlags, uint residual, uint expDataSN)
    {
        var h = New(Opcode.ScsiResponse, (byte)(Final | (residualFlags & 0x06)));
        h[2] = response;
        h[3] = status;
        Bhs.SetU32(h, 16, itt);
        Bhs.SetU32(h, 36, expDataSN);
        Bhs.SetU32(h, 44, residual);
        return h;
    }

    /// <summary>
    /// SCSI Data-In (§11.7). <paramref name="final"/> ends a sequence (F); with <paramref name="status"/>
    /// the PDU also carries the command's status (S), its residual, and consumes a StatSN.
    /// </summary>
    public static BhsBuffer DataIn(ulong lun, uint itt, uint dataSN, int offset, bool final,
        byte? status = null, byte residualFlags = 0, uint residual = 0)
    {
        var h = New(Opcode.DataIn, final ? Final : (byte)0);
        if (status is { } s)
        {
            h[1] |= (byte)(Final | StatusBit | (residualFlags & 0x06));
            h[3] = s;
            Bhs.SetU32(h, 44, residual);
        }
        Bhs.SetU64(h, 8, lun);
        Bhs.SetU32(h, 16, itt);
        Bhs.SetU32(h, 20, Bhs.ReservedTag);
        Bhs.SetU32(h, 36, dataSN);
        Bhs.SetU32(h, 40, (uint)offset);
        return h;
    }

    /// <summary>Ready To Transfer (§11.8): solicits <paramref name="length"/> bytes at <paramref name="offset"/>.</summary>
    public static BhsBuffer R2T(ulong lun, uint itt, uint ttt, uint r2tSN, int offset, int length)
    {
        var h = New(Opcode.R2T, Final);
        Bhs.SetU64(h, 8, lun);
        Bhs.SetU32(h, 16, itt);
        Bhs.SetU32(h, 20, ttt);
        Bhs.SetU32(h, 36, r2tSN);
        Bhs.SetU32(h, 40, (uint)offset);
        Bhs.SetU32(h, 44, (uint)length);
        return h;
    }

    /// <summary>NOP-In answering a NOP-Out ping (§11.19): echoes its LUN and ITT, TTT reserved.</summary>
    public static BhsBuffer NopInReply(ulong lun, uint itt)
    {
        var h = New(Opcode.NopIn, Final);
        Bhs.SetU64(h, 8, lun);
        Bhs.SetU32(h, 16, itt);
        Bhs.SetU32(h, 20, Bhs.ReservedTag);
        return h;
    }

    /// <summary>NOP-In the target sends to ping the initiator (§11.19): ITT reserved, our TTT to be echoed.</summary>
    public static BhsBuffer NopInPing(uint ttt)
    {
        var h = New(Opcode.NopIn, Final);
        Bhs.SetU32(h, 16, Bhs.ReservedTag);
        Bhs.SetU32(h, 20, ttt);
        return h;
    }

    /// <summary>Task Management Function Response (§11.6).</summary>
    public static BhsBuffer TaskManagementResponse(uint itt, byte response)
    {
        var h = New(Opcode.TaskManagementResponse, Final);
        h[2] = response;
        Bhs.SetU32(h, 16, itt);
        return h;
    }

    /// <summary>
    /// Login Response (§11.13): <paramref name="flags"/> holds T, C, CSG and NSG as in the request's byte 1;
    /// ISID and ITT come from the request; version max/active are 0 (the only version).
    /// </summary>
    public static BhsBuffer LoginResponse(byte flags, ulong isid, ushort tsih, uint itt, byte statusClass = 0, byte statusDetail = 0)
    {
        var h = New(Opcode.LoginResponse, flags);
        for (int i = 0; i < 6; i++) h[8 + i] = (byte)(isid >> (40 - 8 * i));
        Bhs.SetU16(h, 14, tsih);
        Bhs.SetU32(h, 16, itt);
        h[36] = statusClass;
        h[37] = statusDetail;
        return h;
    }

    /// <summary>Text Response (§11.11): C while more of the answer follows (then our TTT asks for it), else F.</summary>
    public static BhsBuffer TextResponse(uint itt, uint ttt, bool more)
    {
        var h = New(Opcode.TextResponse, more ? Continue : Final);
        Bhs.SetU32(h, 16, itt);
        Bhs.SetU32(h, 20, ttt);
        return h;
    }

    /// <summary>Logout Response (§11.15) with Time2Wait/Time2Retain.</summary>
    public static BhsBuffer LogoutResponse(uint itt, byte response, ushort time2Wait, ushort time2Retain)
    {
        var h = New(Opcode.LogoutResponse, Final);
        h[2] = response;
        Bhs.SetU32(h, 16, itt);
        Bhs.SetU16(h, 40, time2Wait);
        Bhs.SetU16(h, 42, time2Retain);
        return h;
    }

    /// <summary>Reject (§11.17): ITT reserved; the data segment is the rejected header.</summary>
    public static BhsBuffer Reject(RejectReason reason)
    {
        var h = New(Opcode.Reject, Final);
        h[2] = (byte)reason;
        Bhs.SetU32(h, 16, Bhs.ReservedTag);
        return h;
    }

    /// <summary>
    /// Whether sending this header consumes a StatSN (§4.2.2.2.2): every response carrying status does;
    /// R2T, Data-In without status and an unsolicited NOP-In carry the current StatSN without advancing it.
    /// </summary>
    public static bool AdvancesStatSN(ReadOnlySpan<byte> h) => Bhs.Op(h) switch
    {
        Opcode.R2T => false,
        Opcode.DataIn => (h[1] & StatusBit) != 0,
        Opcode.NopIn => Bhs.Itt(h) != Bhs.ReservedTag,
        _ => true,
    };
}
