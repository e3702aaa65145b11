using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Scsi;

/// <summary>
/// Finds the logical units an EXTENDED COPY may name in other targets. The host implements it, because only
/// the host knows which targets an initiator may reach (ACLs, CHAP); the SCSI layer resolves units of its own
/// target itself and asks this for the rest.
/// </summary>
public interface ICopyTargetResolver
{
    /// <summary>
    /// The logical unit whose LU-associated designator equals <paramref name="designator"/> (the 4-byte
    /// designation descriptor header followed by the designator) and which the initiator of
    /// <paramref name="nexus"/> may access; null when there is none or the initiator may not reach it.
    /// </summary>
    ScsiLogicalUnit? Resolve(ItNexus nexus, ReadOnlySpan<byte> designator);
}

/// <summary>What RECEIVE COPY RESULTS (COPY STATUS) reports about one EXTENDED COPY of a nexus.</summary>
internal sealed class CopyStatus
{
    public const byte InProgress = 0, Completed = 1, CompletedWithErrors = 2;
    public volatile byte State = InProgress;
    public int SegmentsProcessed;
    public long BytesTransferred;
}

// The copy manager (SPC-4 6.4 EXTENDED COPY(LID1), 6.18 RECEIVE COPY RESULTS, 7.8.17 VPD 8Fh): block to
// block copies between logical units the same initiator may access, through the volumes (verified reads,
// journaled writes), so a copy can neither spread a corrupt block nor bypass a unit's range lock.
public sealed partial class ScsiLogicalUnit
{
    public const int MaxCscdDescriptors = 8;
    public const int MaxSegmentDescriptors = 32;
    public const int MaxDescriptorListLength = 1024;
    public const int MaxConcurrentCopies = 16;
    private const int CscdDescriptorLength = 32;
    private const int BlockToBlockSegmentLength = 28;
    private const byte IdentificationCscd = 0xE4, BlockToBlockSegment = 0x02;
    private const int CopyChunkBytes = 1 << 20;

    private readonly SemaphoreSlim _copySlots = new(MaxConcurrentCopies, MaxConcurrentCopies);

    /// <summary>Largest segment in bytes: the 16-bit block count of a block→block segment descriptor.</summary>
    private uint MaxSegmentBytes => (uint)(0xFFFF * BlockSize);

    /// <summary>Whether <paramref name="designator"/> (designation descriptor: header + value) names this unit (NAA or T10 vendor id, LU association).</summary>
    public bool MatchesDesignator(ReadOnlySpan<byte> designator)
    {
        if (designator.Length < 4) return false;
        int codeSet = designator[0] & 0x0F, assoc = (designator[1] >> 4) & 3, type = designator[1] & 0x0F, len = designator[3];
        if (assoc != 0 || designator.Length < 4 + len) return false;
        var value = designator.Slice(4, len);
        return type switch
        {
            3 => codeSet == 1 && value.SequenceEqual(_naa),
            1 => codeSet == 2 && value.SequenceEqual(T10Designator()),
            _ => false,
        };
    }

    private byte[] T10Designator()
    {
        string t10 = Options.VendorId.PadRight(8) + Options.Serial;
        return Encoding.ASCII.GetBytes(t10[..Math.Min(t10.Length, 200)]);
    }

    // ---- EXTENDED COPY(LID1) ------------------------------------------------------------------

    private readonly record struct Segment(int Offset, ushort Source, ushort Destination, bool DestinationCount, uint Blocks, ulong SourceLba, ulong DestinationLba);

    internal async ValueTask<Outcome> ExtendedCopy(Request r)
    {
        uint paramLen = BinaryPrimitives.ReadUInt32BigEndian(r.Cdb[10..]);
        if (paramLen == 0) return Outcome.Good; // SPC-4 6.4.1: nothing transferred, no state changed
        var data = r.Command.DataOut;
        if (paramLen < 16 || data.Length < 16) return ScsiError.Of(SenseReason.ParameterListLengthError);
        var parsed = ParseCopyParameters(data.Span[..(int)Math.Min(paramLen, (uint)data.Length)], out var header, out var cscds, out var segments);
        if (parsed.IsError) return parsed;

        CopyStatus? status = null;
        if (header.HoldsStatus && !r.Nexus.TryStartCopy(header.ListId, out status)) return ScsiError.Of(SenseReason.OperationInProgress);
        status ??= new CopyStatus();
        bool slot = false;
        try
        {
            await _copySlots.WaitAsync(r.Ct).ConfigureAwait(false);
            slot = true;
            var e = await RunSegments(r, data, cscds, segments, status).ConfigureAwait(false);
            status.State = e.IsError ? CopyStatus.CompletedWithErrors : CopyStatus.Completed;
            return e.IsError ? e : Outcome.Wrote(paramLen);
        }
        catch
        {
            status.State = CopyStatus.CompletedWithErrors; // never left "in progress", or its list ID would stay taken
            throw;
        }
        finally { if (slot) _copySlots.Release(); }
    }

    private readonly record struct CopyHeader(byte ListId, int Usage)
    {
        /// <summary>LIST ID USAGE 00b/10b: the list identifier is held for RECEIVE COPY RESULTS; 11b: not used.</summary>
        public bool HoldsStatus => Usage != 3;
    }

    /// <summary>Checks the whole parameter list before anything is copied (SPC-4 6.4.3): lengths, counts, descriptor types.</summary>
    private static ScsiError ParseCopyParameters(ReadOnlySpan<byte> p, out CopyHeader header, out List<int> cscds, out List<Segment> segments)
    {
        header = new CopyHeader(p[0], (p[1] >> 3) & 3);
        cscds = []; segments = [];
        if (header.Usage == 1) return ScsiError.Param(1, 3);
        int tdl = BinaryPrimitives.ReadUInt16BigEndian(p[2..]);
        uint sdl = BinaryPrimitives.ReadUInt32BigEndian(p[8..]);
        uint idl = BinaryPrimitives.ReadUInt32BigEndian(p[12..]);
        if ((long)tdl + sdl > MaxDescriptorListLength) return ScsiError.Of(SenseReason.ParameterListLengthError);
        if (16L + tdl + sdl + idl > p.Length) return ScsiError.Of(SenseReason.ParameterListLengthError); // truncated
        if (idl != 0) return ScsiError.Param(12); // no inline data is ever referenced (maximum inline data length 0)
        if (tdl % CscdDescriptorLength != 0) return ScsiError.Param(2);
        if (tdl / CscdDescriptorLength > MaxCscdDescriptors) return ScsiError.Of(SenseReason.TooManyTargetDescriptors);
        int segStart = 16 + tdl, segEnd = segStart + (int)sdl, count = 0;
        for (int off = segStart; off < segEnd; count++)
        {
            if (off + 4 > segEnd) return ScsiError.Of(SenseReason.ParameterListLengthError);
            off += 4 + BinaryPrimitives.ReadUInt16BigEndian(p[(off + 2)..]);
            if (off > segEnd) return ScsiError.Of(SenseReason.ParameterListLengthError);
        }
        if (count > MaxSegmentDescriptors) return ScsiError.Of(SenseReason.TooManySegmentDescriptors);
        for (int off = 16; off < segStart; off += CscdDescriptorLength)
        {
            if (p[off] != IdentificationCscd) return new ScsiError(SenseReason.UnsupportedTargetDescriptorType, FieldByte: off);
            cscds.Add(off);
        }
        for (int off = segStart; off < segEnd;)
        {
            int len = 4 + BinaryPrimitives.ReadUInt16BigEndian(p[(off + 2)..]);
            if (p[off] != BlockToBlockSegment) return new ScsiError(SenseReason.UnsupportedSegmentDescriptorType, FieldByte: off);
            if (len != BlockToBlockSegmentLength) return ScsiError.Param(off + 2);
            var d = p.Slice(off, len);
            segments.Add(new Segment(off, BinaryPrimitives.ReadUInt16BigEndian(d[4..]), BinaryPrimitives.ReadUInt16BigEndian(d[6..]),
                (d[1] & 0x02) != 0, BinaryPrimitives.ReadUInt16BigEndian(d[10..]),
                BinaryPrimitives.ReadUInt64BigEndian(d[12..]), BinaryPrimitives.ReadUInt64BigEndian(d[20..])));
            off += len;
        }
        return ScsiError.None;
    }

    /// <summary>
    /// Resolves a copy source/destination descriptor to a logical unit the initiator may access: units of this
    /// target first, then the host's resolver. Unknown or forbidden units are equally "not reachable".
    /// </summary>
    private ScsiLogicalUnit? ResolveCscd(ItNexus nexus, ReadOnlySpan<byte> cscd)
    {
        var designator = cscd.Slice(4, 24);
        if (MatchesDesignator(designator)) return this;
        return Target?.ResolveCopyTarget(nexus, designator);
    }

    private async ValueTask<ScsiError> RunSegments(Request r, ReadOnlyMemory<byte> data, List<int> cscds, List<Segment> segments, CopyStatus status)
    {
        // Other units this copy uses are entered like a command of theirs, so a reload that removes one of
        // them waits for the copy before closing its volume (and a retired one is not reachable).
        var resolved = new ScsiLogicalUnit?[cscds.Count];
        try { return await RunEachSegment(r, data, cscds, segments, status, resolved).ConfigureAwait(false); }
        finally { foreach (var u in resolved) if (u != null && u != this) u.Exit(); }
    }

    private async ValueTask<ScsiError> RunEachSegment(Request r, ReadOnlyMemory<byte> data, List<int> cscds, List<Segment> segments, CopyStatus status, ScsiLogicalUnit?[] resolved)
    {
        ScsiError Resolve(uint seg, ushort index, bool write, out ScsiLogicalUnit? lu)
        {
            lu = null;
            if (index >= cscds.Count) return ScsiError.Copy(SenseReason.CopyTargetNotReachable, seg);
            var cscd = data.Span.Slice(cscds[index], CscdDescriptorLength);
            if (resolved[index] == null && ResolveCscd(r.Command.Nexus, cscd) is { } found && (found == this || found.TryEnter()))
                resolved[index] = found;
            lu = resolved[index];
            if (lu == null) return ScsiError.Copy(SenseReason.CopyTargetNotReachable, seg);
            int diskBlockLength = (cscd[29] << 16) | (cscd[30] << 8) | cscd[31];
            if ((cscd[1] & 0x1F) != 0 || diskBlockLength != lu.BlockSize) return ScsiError.Copy(SenseReason.CopyTargetIncorrectType, seg);
            if (lu != this && lu.ConflictsForCopy(r.Command.Nexus, write)) return ScsiError.Conflict;
            if (write && lu.CheckWritable().IsError) return ScsiError.Copy(SenseReason.CopyDestinationWriteProtected, seg);
            return ScsiError.None;
        }

        for (int i = 0; i < segments.Count; i++)
        {
            var s = segments[i];
            uint seg = (uint)i;
            var e = Resolve(seg, s.Source, write: false, out var src);
            if (e.IsError) return e;
            e = Resolve(seg, s.Destination, write: true, out var dst);
            if (e.IsError) return e;
            long bytes = (long)s.Blocks * (s.DestinationCount ? dst!.BlockSize : src!.BlockSize);
            if (bytes % src!.BlockSize != 0 || bytes % dst!.BlockSize != 0 || bytes > MaxSegmentBytes)
                return ScsiError.Copy(SenseReason.CopyTargetIncorrectType, seg);
            ulong srcBlocks = (ulong)(bytes / src.BlockSize), dstBlocks = (ulong)(bytes / dst.BlockSize);
            if (!Cdb.InRange(s.SourceLba, srcBlocks, src.Volume.BlockCount) || !Cdb.InRange(s.DestinationLba, dstBlocks, dst.Volume.BlockCount))
                return ScsiError.Copy(SenseReason.CopyTargetNotReachable, seg);
            e = await CopySegment(r, seg, src, s.SourceLba, dst, s.DestinationLba, bytes, status).ConfigureAwait(false);
            if (e.IsError) return e;
            Interlocked.Increment(ref status.SegmentsProcessed);
        }
        return ScsiError.None;
    }

    /// <summary>
    /// Copies one segment in chunks: each chunk is read (and verified) from the source, then written to the
    /// destination under the destination's range lock, like any WRITE. Overlapping ranges on one unit copy
    /// from the end backwards when the destination lies above the source, so no chunk is read after it was
    /// overwritten.
    /// </summary>
    private async ValueTask<ScsiError> CopySegment(Request r, uint seg, ScsiLogicalUnit src, ulong srcLba, ScsiLogicalUnit dst, ulong dstLba, long bytes, CopyStatus status)
    {
        if (bytes == 0) return ScsiError.None; // NUMBER OF BLOCKS 0: the segment transfers nothing (SPC-4)
        int unit = Math.Max(src.BlockSize, dst.BlockSize);
        int chunk = (int)Math.Min(bytes, CopyChunkBytes / unit * unit);
        bool backwards = ReferenceEquals(src, dst) && dstLba > srcLba && dstLba < srcLba + (ulong)(bytes / src.BlockSize);
        var context = new IoContext(src.UnitName, r.Command.Nexus.InitiatorName, "EXTENDED COPY");
        var buf = ArrayPool<byte>.Shared.Rent(chunk);
        try
        {
            long chunks = (bytes + chunk - 1) / chunk;
            for (long k = 0; k < chunks; k++)
            {
                if (r.Ct.IsCancellationRequested) return ScsiError.Of(SenseReason.TaskAborted);
                long at = (backwards ? chunks - 1 - k : k) * chunk;
                int n = (int)Math.Min(chunk, bytes - at);
                ulong sLba = srcLba + (ulong)(at / src.BlockSize), dLba = dstLba + (ulong)(at / dst.BlockSize);
                var res = await src.Volume.ReadAsync(sLba, buf.AsMemory(0, n), context, r.Ct).ConfigureAwait(false);
                if (!res.IsOk)
                {
                    if (res.Status == VolumeStatus.IntegrityError) src.Health.RecordBadBlock(res.Lba);
                    else if (res.Status == VolumeStatus.IoError)
                        src.DeviceError(res, VolumeOperation.Read, sLba, (ulong)(n / src.BlockSize), context.Command, context.Initiator);
                    return res.Status switch
                    {
                        VolumeStatus.IntegrityError or VolumeStatus.IoError => ScsiError.Copy(SenseReason.CopySourceReadError, seg, res.Lba),
                        VolumeStatus.Cancelled => ScsiError.Of(SenseReason.TaskAborted),
                        _ => ScsiError.Copy(SenseReason.CopyTargetNotReachable, seg),
                    };
                }
                using (await dst._rangeLock.AcquireAsync(dLba, (ulong)(n / dst.BlockSize), r.Ct).ConfigureAwait(false))
                    res = await dst.Volume.WriteAsync(dLba, buf.AsMemory(0, n), fua: false, r.Ct).ConfigureAwait(false);
                if (!res.IsOk)
                {
                    if (res.Status == VolumeStatus.IoError)
                        dst.DeviceError(res, VolumeOperation.Write, dLba, (ulong)(n / dst.BlockSize), context.Command, context.Initiator);
                    return res.Status switch
                    {
                        VolumeStatus.IoError => ScsiError.Copy(SenseReason.CopyDestinationWriteError, seg, res.Lba),
                        VolumeStatus.NoSpace => ScsiError.Copy(SenseReason.CopyDestinationSpaceAllocationFailed, seg, res.Lba),
                        VolumeStatus.Cancelled => ScsiError.Of(SenseReason.TaskAborted),
                        _ => ScsiError.Copy(SenseReason.CopyTargetNotReachable, seg),
                    };
                }
                Interlocked.Add(ref status.BytesTransferred, n);
            }
            return ScsiError.None;
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    private static readonly CommandInfo CopyReadAccess = new() { Opcode = 0x83, Name = "EXTENDED COPY (source)", Usage = [0x83], Access = ReservationAccess.Read };
    private static readonly CommandInfo CopyWriteAccess = new() { Opcode = 0x83, Name = "EXTENDED COPY (destination)", Usage = [0x83], Access = ReservationAccess.Write };

    /// <summary>Whether a reservation on this unit forbids a copy on behalf of <paramref name="nexus"/> (of another unit) to read or write it.</summary>
    internal bool ConflictsForCopy(ItNexus nexus, bool write) =>
        IsReservationConflict(write ? CopyWriteAccess : CopyReadAccess, new NexusState(nexus));

    // ---- RECEIVE COPY RESULTS ------------------------------------------------------------------

    internal ValueTask<Outcome> ReceiveCopyResults(Request r)
    {
        long alloc = Cdb.AllocationLength32(r.Cdb, 10);
        switch (r.Cdb[1] & 0x1F)
        {
            case 0x00: // COPY STATUS
            {
                if (!r.Nexus.TryGetCopyStatus(r.Cdb[2], out var s)) return new(ScsiError.Cdb(2));
                var owner = Rent(12);
                var d = owner.Memory.Span;
                BinaryPrimitives.WriteUInt32BigEndian(d, 8);
                byte state = s.State;
                d[4] = state; // HDD = 0: no held data
                BinaryPrimitives.WriteUInt16BigEndian(d[5..], (ushort)Math.Min(Volatile.Read(ref s.SegmentsProcessed), ushort.MaxValue));
                long count = Interlocked.Read(ref s.BytesTransferred);
                byte units = 0; // 0 bytes, 1 KiB, 2 MiB, ... as needed to fit 32 bits
                while (count > uint.MaxValue) { count >>= 10; units++; }
                d[7] = units;
                BinaryPrimitives.WriteUInt32BigEndian(d[8..], (uint)count);
                // Status of a finished copy is given once, then discarded (SPC-4 6.18.3).
                if (state != CopyStatus.InProgress) r.Nexus.ForgetCopyStatus(r.Cdb[2]);
                return new(Reply(owner, 12, alloc));
            }
            case 0x03: // OPERATING PARAMETERS
            {
                byte[] implemented = [BlockToBlockSegment, IdentificationCscd];
                int len = 44 + implemented.Length;
                var owner = Rent(len);
                var d = owner.Memory.Span;
                BinaryPrimitives.WriteUInt32BigEndian(d, (uint)(len - 4));
                d[4] = 0x01; // SNLID: copies without a list identifier (LIST ID USAGE 11b) are supported
                BinaryPrimitives.WriteUInt16BigEndian(d[8..], MaxCscdDescriptors);
                BinaryPrimitives.WriteUInt16BigEndian(d[10..], MaxSegmentDescriptors);
                BinaryPrimitives.WriteUInt32BigEndian(d[12..], MaxDescriptorListLength);
                BinaryPrimitives.WriteUInt32BigEndian(d[16..], MaxSegmentBytes);
                // 20..31: no inline data, no held data, no stream devices
                BinaryPrimitives.WriteUInt16BigEndian(d[34..], MaxConcurrentCopies);
                d[36] = MaxConcurrentCopies;
                d[37] = (byte)System.Numerics.BitOperations.Log2((uint)BlockSize); // data segment granularity
                d[43] = (byte)implemented.Length;
                implemented.CopyTo(d[44..]);
                return new(Reply(owner, len, alloc));
            }
            default:
                return new(ScsiError.Cdb(1, 4));
        }
    }

    // ---- VPD page 8Fh: third-party copy ---------------------------------------------------------

    private int VpdThirdPartyCopy(Span<byte> p)
    {
        int pos = 4;
        // Supported commands: EXTENDED COPY(LID1) 83h/00h; RECEIVE COPY RESULTS 84h/00h (COPY STATUS), 84h/03h (OPERATING PARAMETERS).
        byte[] commands = [0x83, 1, 0x00, 0x84, 2, 0x00, 0x03];
        pos = ThirdPartyCopyDescriptor(p, pos, 0x0001, d => { d[0] = (byte)commands.Length; commands.CopyTo(d[1..]); return 1 + commands.Length; });
        pos = ThirdPartyCopyDescriptor(p, pos, 0x0004, d =>
        {
            BinaryPrimitives.WriteUInt16BigEndian(d[4..], MaxCscdDescriptors);
            BinaryPrimitives.WriteUInt16BigEndian(d[6..], MaxSegmentDescriptors);
            BinaryPrimitives.WriteUInt32BigEndian(d[8..], MaxDescriptorListLength);
            return 28; // maximum inline data length (12..15) stays 0
        });
        byte[] descriptors = [BlockToBlockSegment, IdentificationCscd];
        pos = ThirdPartyCopyDescriptor(p, pos, 0x0008, d => { d[0] = (byte)descriptors.Length; descriptors.CopyTo(d[1..]); return 1 + descriptors.Length; });
        pos = ThirdPartyCopyDescriptor(p, pos, 0x000C, d => 2); // no CSCD descriptor IDs above 07FFh (list length 0)
        uint maxSegment = MaxSegmentBytes;
        int granularity = System.Numerics.BitOperations.Log2((uint)BlockSize);
        pos = ThirdPartyCopyDescriptor(p, pos, 0x8001, d =>
        {
            BinaryPrimitives.WriteUInt32BigEndian(d, MaxConcurrentCopies);      // total concurrent copies
            BinaryPrimitives.WriteUInt32BigEndian(d[4..], MaxConcurrentCopies); // maximum identified concurrent copies
            BinaryPrimitives.WriteUInt32BigEndian(d[8..], maxSegment);
            d[12] = (byte)granularity;                                          // data segment granularity
            return 32; // inline data granularity (13) stays 0, 14..31 reserved
        });
        return pos;
    }

    /// <summary>One third-party copy descriptor: type, length (padded to a multiple of 4), body written by <paramref name="body"/>.</summary>
    private static int ThirdPartyCopyDescriptor(Span<byte> p, int pos, ushort type, SpanBody body)
    {
        BinaryPrimitives.WriteUInt16BigEndian(p[pos..], type);
        int len = (body(p[(pos + 4)..]) + 3) & ~3;
        BinaryPrimitives.WriteUInt16BigEndian(p[(pos + 2)..], (ushort)len);
        return pos + 4 + len;
    }

    private delegate int SpanBody(Span<byte> body);
}
