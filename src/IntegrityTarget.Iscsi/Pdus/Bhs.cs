using System.Buffers.Binary;

namespace IntegrityTarget.Iscsi.Pdus;

/// <summary>iSCSI opcodes (RFC 7143 §11.1.1). Initiator opcodes 0x00-0x1f, target opcodes 0x20-0x3f.</summary>
public enum Opcode : byte
{
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskManagementRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    Snack = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskManagementResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2T = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

/// <summary>Reject PDU reasons (RFC 7143 §11.17.1).</summary>
public enum RejectReason : byte
{
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandReject = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    LongOperationReject = 0x0a,
    WaitingForLogout = 0x0c,
}

/// <summary>
/// Field accessors for the 48-byte Basic Header Segment. Reads and writes work on spans so that
/// nothing is allocated to look at a header.
/// </summary>
public static class Bhs
{
    public const int Length = 48;
    public const uint ReservedTag = 0xffffffff;

    public static Opcode Op(ReadOnlySpan<byte> h) => (Opcode)(h[0] & 0x3f);
    public static bool Immediate(ReadOnlySpan<byte> h) => (h[0] & 0x40) != 0;
    public static bool Final(ReadOnlySpan<byte> h) => (h[1] & 0x80) != 0;
    public static int TotalAhsBytes(ReadOnlySpan<byte> h) => h[4] * 4; // TotalAHSLength counts 4-byte words
    public static int DataSegmentLength(ReadOnlySpan<byte> h) => (h[5] << 16) | (h[6] << 8) | h[7];
    public static ulong Lun(ReadOnlySpan<byte> h) => BinaryPrimitives.ReadUInt64BigEndian(h[8..]);
    public static uint Itt(ReadOnlySpan<byte> h) => U32(h, 16);
    /// <summary>The 6-byte ISID of a login request/response (bytes 8-13).</summary>
    public static ulong Isid(ReadOnlySpan<byte> h) => BinaryPrimitives.ReadUInt64BigEndian(h[8..]) >> 16;
    public static uint U32(ReadOnlySpan<byte> h, int offset) => BinaryPrimitives.ReadUInt32BigEndian(h[offset..]);
    public static ushort U16(ReadOnlySpan<byte> h, int offset) => BinaryPrimitives.ReadUInt16BigEndian(h[offset..]);

    public static void SetDataSegmentLength(Span<byte> h, int length)
    {
        h[5] = (byte)(length >> 16); h[6] = (byte)(length >> 8); h[7] = (byte)length;
    }

    public static void SetU32(Span<byte> h, int offset, uint value) => BinaryPrimitives.WriteUInt32BigEndian(h[offset..], value);
    public static void SetU16(Span<byte> h, int offset, ushort value) => BinaryPrimitives.WriteUInt16BigEndian(h[offset..], value);
    public static void SetU64(Span<byte> h, int offset, ulong value) => BinaryPrimitives.WriteUInt64BigEndian(h[offset..], value);

    public static int Padded(int length) => (length + 3) & ~3;

    /// <summary>Serial number arithmetic (RFC 1982, 32 bits) used for CmdSN/StatSN comparisons.</summary>
    public static bool SnLess(uint a, uint b) => a != b && (int)(a - b) < 0;
    public static bool SnLessOrEqual(uint a, uint b) => a == b || (int)(a - b) < 0;
}
