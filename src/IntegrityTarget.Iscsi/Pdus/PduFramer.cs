using System.Buffers;
using System.Buffers.Binary;

namespace IntegrityTarget.Iscsi.Pdus;

/// <summary>One received PDU. The header is copied into reused storage; <see cref="Data"/> is a slice of
/// the transport's receive buffer and is valid only until the handler that got it returns.</summary>
public sealed class InboundPdu
{
    public byte[] Header { get; } = new byte[Bhs.Length];
    /// <summary>Additional header segments (at most 255 words), e.g. an extended CDB.</summary>
    public byte[] Ahs { get; } = new byte[255 * 4];
    public int AhsLength { get; internal set; }
    public ReadOnlySequence<byte> Data { get; internal set; }
    /// <summary>False when the data digest did not match; the data must then be discarded (Reject reason 2).</summary>
    public bool DataDigestOk { get; internal set; } = true;

    public Opcode Opcode => Bhs.Op(Header);
    public int DataLength => (int)Data.Length;
}

public enum FrameResult { NeedMoreData, Pdu, Error }

public enum FrameError
{
    None,
    /// <summary>The header announced a data segment larger than we accept; refused before reading it.</summary>
    DataSegmentTooLarge,
    HeaderDigestMismatch,
}

/// <summary>
/// Splits a byte stream into PDUs with an explicit state machine:
/// BHS (48 bytes) → AHS (TotalAHSLength words) → header digest → data segment padded to 4 → data digest.
/// Nothing is handed out before the header digest is checked, and a header announcing a data segment
/// above <see cref="MaxDataSegmentLength"/> is refused at once, without waiting for (or buffering) its bytes.
/// The framer keeps no reference to the buffer between calls, so any transport that can present its
/// received bytes as a <see cref="ReadOnlySequence{T}"/> can use it.
/// </summary>
public sealed class PduFramer
{
    private enum State { AwaitHeader, AwaitHeaderDigest, AwaitData }

    private State _state = State.AwaitHeader;
    private int _ahsBytes;
    private int _dataLength;

    /// <summary>Largest data segment accepted (our MaxRecvDataSegmentLength; at least 8192 for login).</summary>
    public int MaxDataSegmentLength { get; set; } = 8192;
    public bool HeaderDigest { get; set; }
    public bool DataDigest { get; set; }

    /// <summary>Announced data segment length of the header that caused <see cref="FrameError.DataSegmentTooLarge"/>.</summary>
    public int RefusedLength { get; private set; }

    /// <summary>
    /// Tries to take one PDU off the front of <paramref name="buffer"/>. On <see cref="FrameResult.Pdu"/>
    /// the buffer is advanced past it. On <see cref="FrameResult.Error"/> the stream is unusable (the
    /// connection must be closed); <paramref name="pdu"/>.Header holds the offending header when there was one.
    /// </summary>
    public FrameResult TryRead(ref ReadOnlySequence<byte> buffer, InboundPdu pdu, out FrameError error)
    {
        error = FrameError.None;
        while (true)
        {
            switch (_state)
            {
                case State.AwaitHeader:
                    if (buffer.Length < Bhs.Length) return FrameResult.NeedMoreData;
                    buffer.Slice(0, Bhs.Length).CopyTo(pdu.Header);
                    _ahsBytes = Bhs.TotalAhsBytes(pdu.Header);
                    _dataLength = Bhs.DataSegmentLength(pdu.Header);
                    if (_dataLength > MaxDataSegmentLength)
                    {
                        RefusedLength = _dataLength;
                        error = FrameError.DataSegmentTooLarge;
                        return FrameResult.Error;
                    }
                    _state = State.AwaitHeaderDigest;
                    break;

                case State.AwaitHeaderDigest:
                {
                    int headerTotal = Bhs.Length + _ahsBytes + (HeaderDigest ? 4 : 0);
                    if (buffer.Length < headerTotal) return FrameResult.NeedMoreData;
                    if (HeaderDigest)
                    {
                        var covered = buffer.Slice(0, Bhs.Length + _ahsBytes);
                        Span<byte> d = stackalloc byte[4];
                        buffer.Slice(Bhs.Length + _ahsBytes, 4).CopyTo(d);
                        if (Crc32C.Compute(covered) != BinaryPrimitives.ReadUInt32LittleEndian(d))
                        {
                            _state = State.AwaitHeader;
                            error = FrameError.HeaderDigestMismatch;
                            return FrameResult.Error;
                        }
                    }
                    _state = State.AwaitData;
                    break;
                }

                case State.AwaitData:
                {
                    int headerTotal = Bhs.Length + _ahsBytes + (HeaderDigest ? 4 : 0);
                    bool digest = DataDigest && _dataLength > 0;
                    long total = headerTotal + Bhs.Padded(_dataLength) + (digest ? 4 : 0);
                    if (buffer.Length < total) return FrameResult.NeedMoreData;
                    pdu.AhsLength = _ahsBytes;
                    if (_ahsBytes > 0) buffer.Slice(Bhs.Length, _ahsBytes).CopyTo(pdu.Ahs);
                    pdu.Data = buffer.Slice(headerTotal, _dataLength);
                    pdu.DataDigestOk = true;
                    if (digest)
                    {
                        var padded = buffer.Slice(headerTotal, Bhs.Padded(_dataLength));
                        Span<byte> d = stackalloc byte[4];
                        buffer.Slice(headerTotal + Bhs.Padded(_dataLength), 4).CopyTo(d);
                        pdu.DataDigestOk = Crc32C.Compute(padded) == BinaryPrimitives.ReadUInt32LittleEndian(d);
                    }
                    buffer = buffer.Slice(total);
                    _state = State.AwaitHeader;
                    return FrameResult.Pdu;
                }
            }
        }
    }
}
