using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Ha;

// The peer link between two gateways: length-prefixed frames over TCP, big-endian. A gateway connects
// to every other gateway and forwards, over its own connection, the commands its initiators send for
// LUNs that the other gateway owns. The side that accepted the connection executes them.
//
//   frame   = u32 length (of type + body) | u8 type | body
//   string  = u16 byte count | UTF-8;   blob = u32 byte count | bytes
//
// Handshake (client first):  Hello{u16 version, string gateway, blob fingerprint, blob nonceC}
//                            Welcome{string gateway, blob nonceS, blob proofS} or Refused{string why}
//                            Proof{blob proofC}                 then the server sends Owned
// proofS = HMAC-SHA256(secret, "server" | nonceC | nonceS | fingerprint), proofC likewise with "client"
// and the nonces swapped: each side shows it knows the secret without sending it, and a replayed
// handshake fails because the other side's nonce is fresh.

internal enum PeerFrame : byte
{
    Hello = 1, Welcome = 2, Proof = 3, Refused = 4,
    /// <summary>server → client: the LUNs the server owns now: u16 count × (string target, u64 lun).</summary>
    Owned = 5,
    /// <summary>client → server: an I_T nexus of the client's: string target, u32 id, nexus.</summary>
    NexusUp = 10,
    /// <summary>client → server: string target, u32 id.</summary>
    NexusDown = 11,
    /// <summary>client → server: u64 request, string target, u64 lun, u32 nexus id, u8 direction, u8 attribute, u32 expected length, u64 task tag, blob cdb, blob data-out.</summary>
    Execute = 12,
    /// <summary>client → server: u64 request (the initiator aborted the task).</summary>
    Abort = 13,
    /// <summary>client → server: string target, u64 lun, u8 sense reason (LU reset 29/03, target reset 29/02).</summary>
    Reset = 14,
    /// <summary>server → client: u64 request, u8 flags (1 = not owner), u8 status, blob sense, blob data-in, s64 transfer length.</summary>
    Response = 20,
    /// <summary>server → client: string target, u64 lun, u16 count × string initiator port (PREEMPT AND ABORT).</summary>
    AbortTasks = 21,
    Ping = 30, Pong = 31,
}

/// <summary>Builds one frame in a pooled buffer.</summary>
internal sealed class FrameWriter
{
    private readonly ArrayBufferWriter<byte> _buf = new(256);

    public FrameWriter(PeerFrame type) { _buf.Advance(4); U8((byte)type); }

    public FrameWriter U8(byte v) { _buf.GetSpan(1)[0] = v; _buf.Advance(1); return this; }
    public FrameWriter U16(ushort v) { BinaryPrimitives.WriteUInt16BigEndian(_buf.GetSpan(2), v); _buf.Advance(2); return this; }
    public FrameWriter U32(uint v) { BinaryPrimitives.WriteUInt32BigEndian(_buf.GetSpan(4), v); _buf.Advance(4); return this; }
    public FrameWriter U64(ulong v) { BinaryPrimitives.WriteUInt64BigEndian(_buf.GetSpan(8), v); _buf.Advance(8); return this; }
    public FrameWriter S64(long v) => U64((ulong)v);

    public FrameWriter Str(string s)
    {
        int n = Encoding.UTF8.GetByteCount(s);
        if (n > ushort.MaxValue) throw new ArgumentException("string too long for the peer protocol", nameof(s));
        U16((ushort)n);
        Encoding.UTF8.GetBytes(s, _buf.GetSpan(n));
        _buf.Advance(n);
        return this;
    }

    public FrameWriter Blob(ReadOnlySpan<byte> b)
    {
        U32((uint)b.Length);
        b.CopyTo(_buf.GetSpan(b.Length));
        _buf.Advance(b.Length);
        return this;
    }

    public FrameWriter Nexus(ItNexus n) =>
        Str(n.InitiatorName).Str(n.InitiatorPortName).Str(n.TargetPortName).U16(n.RelativeTargetPortId).Blob(n.InitiatorTransportId);

    /// <summary>The finished frame (length prefix filled in).</summary>
    public ReadOnlyMemory<byte> Build()
    {
        var m = _buf.WrittenMemory;
        BinaryPrimitives.WriteUInt32BigEndian(System.Runtime.InteropServices.MemoryMarshal.AsMemory(m).Span, (uint)(m.Length - 4));
        return m;
    }
}

/// <summary>Reads the body of one frame; a short or malformed body throws <see cref="PeerProtocolException"/>.</summary>
internal ref struct FrameReader(ReadOnlySpan<byte> body)
{
    private ReadOnlySpan<byte> _rest = body;

    private ReadOnlySpan<byte> Take(int n)
    {
        if (_rest.Length < n) throw new PeerProtocolException("frame ends early");
        var s = _rest[..n];
        _rest = _rest[n..];
        return s;
    }

    public byte U8() => Take(1)[0];
    public ushort U16() => BinaryPrimitives.ReadUInt16BigEndian(Take(2));
    public uint U32() => BinaryPrimitives.ReadUInt32BigEndian(Take(4));
    public ulong U64() => BinaryPrimitives.ReadUInt64BigEndian(Take(8));
    public long S64() => (long)U64();
    public string Str() => Encoding.UTF8.GetString(Take(U16()));
    public byte[] Blob()
    {
        uint n = U32();
        if (n > int.MaxValue) throw new PeerProtocolException("blob too long");
        return Take((int)n).ToArray();
    }
    public ItNexus Nexus() => new(Str(), Str(), Str(), U16(), Blob());
}

public sealed class PeerProtocolException(string message) : Exception(message);
