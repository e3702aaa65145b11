using System.Buffers;
using System.Buffers.Binary;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Scsi;

// SBC-3 block commands: everything that moves data to or from the volume.
public sealed partial class ScsiLogicalUnit
{
    /// <summary>Block Limits: largest WRITE SAME in blocks (as large as a transfer, so initiators that verify with one READ can).</summary>
    public uint MaxWriteSameBlocks => MaxTransferBlocks;
    /// <summary>Block Limits: UNMAP limits (SBC-3 6.5.3).</summary>
    public const uint MaxUnmapBlocks = 0x100000, MaxUnmapDescriptors = 256;
    /// <summary>Block Limits: largest COMPARE AND WRITE in blocks.</summary>
    public const byte MaxCompareAndWriteBlocks = 255;
    private const int ChunkBytes = 1 << 20;

    private int BlockSize => Volume.BlockSize;

    /// <summary>Byte index of the transfer length field, for INVALID FIELD IN CDB pointers.</summary>
    private static int LengthFieldByte(CdbLayout l) => l switch { CdbLayout.Rw6 => 4, CdbLayout.Rw10 => 7, CdbLayout.Rw12 => 6, CdbLayout.Rw16 => 10, CdbLayout.CompareAndWrite => 13, _ => 0 };

    private ScsiError CheckWritable() =>
        Options.ReadOnly || _mode.SoftwareWriteProtect ? ScsiError.Of(SenseReason.WriteProtected) : ScsiError.None;

    /// <summary>
    /// The checks a plain write command makes before touching data, in one order for all of them: LBA range,
    /// write protection, an empty transfer (done), the length limit. Null means go on and write.
    /// </summary>
    private Outcome? CheckWrite(in CdbFields f, uint maxBlocks, int lengthFieldByte)
    {
        if (!Cdb.InRange(f.Lba, f.Blocks, Volume.BlockCount)) return ScsiError.OutOfRange;
        var wp = CheckWritable();
        if (wp.IsError) return wp;
        if (f.Blocks == 0) return Outcome.Wrote(0);
        if (f.Blocks > maxBlocks) return ScsiError.Cdb(lengthFieldByte);
        return null;
    }

    /// <summary>
    /// The one mapping from volume results to sense (the volume already logged integrity failures). A block
    /// that failed verification is also remembered in <see cref="Health"/> (LOG SENSE, metrics); a device I/O
    /// error goes to <see cref="DeviceErrors"/> (counted; logged once unless the volume logs it), naming the
    /// volume call's range [<paramref name="lba"/>, <paramref name="lba"/>+<paramref name="blocks"/>).
    /// </summary>
    private ScsiError FromVolume(in VolumeResult res, VolumeOperation op, Request r, ulong lba, ulong blocks)
    {
        if (res.IsOk) return ScsiError.None;
        if (res.Status == VolumeStatus.IntegrityError) Health.RecordBadBlock(res.Lba);
        else if (res.Status == VolumeStatus.IoError) DeviceError(res, op, lba, blocks, r.Info.Name, r.Command.Nexus.InitiatorName);
        // A flush has no LBA to name: the sense of its failure is INTERNAL TARGET FAILURE.
        if (op == VolumeOperation.Flush && res.Status == VolumeStatus.IoError) return ScsiError.Of(SenseReason.InternalTargetFailure);
        return MapVolumeResult(res, op != VolumeOperation.Read);
    }

    internal void DeviceError(in VolumeResult res, VolumeOperation op, ulong lba, ulong blocks, string command, string initiator) =>
        DeviceErrors.Report(op, res.Lba, lba, blocks, res.Detail, UnitName, Volume.Name, command, initiator);

    private static ScsiError MapVolumeResult(in VolumeResult res, bool write) => res.Status switch
    {
        VolumeStatus.Ok => ScsiError.None,
        VolumeStatus.IntegrityError => ScsiError.WithInfo(SenseReason.UnrecoveredReadError, res.Lba),
        VolumeStatus.IoError => ScsiError.WithInfo(write ? SenseReason.WriteError : SenseReason.UnrecoveredReadError, res.Lba),
        VolumeStatus.NoSpace => ScsiError.Of(SenseReason.SpaceAllocationFailed),
        VolumeStatus.OutOfRange => ScsiError.OutOfRange,
        VolumeStatus.Cancelled => ScsiError.Of(SenseReason.TaskAborted),
        _ => ScsiError.Of(SenseReason.InternalTargetFailure),
    };

    private IoContext Context(in Request r) => r.Nexus.Context(this, r.Info);

    internal async ValueTask<Outcome> Read(Request r)
    {
        var f = r.Fields;
        if (!Cdb.InRange(f.Lba, f.Blocks, Volume.BlockCount)) return ScsiError.OutOfRange;
        if (f.Blocks == 0) return Outcome.Good;
        if (f.Blocks > MaxTransferBlocks) return ScsiError.Cdb(LengthFieldByte(r.Info.Layout));
        int len = checked((int)f.Blocks * BlockSize);
        var owner = Rent(len, clear: false);
        if (r.Ct.IsCancellationRequested) { owner.Dispose(); return ScsiError.Of(SenseReason.TaskAborted); }
        var res = await Volume.ReadAsync(f.Lba, owner.Memory[..len], Context(r), r.Ct).ConfigureAwait(false);
        if (res.IsOk) return Outcome.Data(owner, len);
        if (res.Status is VolumeStatus.IntegrityError or VolumeStatus.IoError)
        {
            // The good blocks before the failing one go to the initiator; TransferLength says how many, so the
            // transport reports the residual for the rest.
            ulong good = Math.Min(res.GoodBlocks, f.Blocks); // the volume counted them once; no re-deriving from the LBA
            int goodBytes = (int)good * BlockSize;
            return new Outcome(FromVolume(res, VolumeOperation.Read, r, f.Lba, f.Blocks), owner, goodBytes, goodBytes);
        }
        owner.Dispose();
        return FromVolume(res, VolumeOperation.Read, r, f.Lba, f.Blocks);
    }

    internal async ValueTask<Outcome> Write(Request r)
    {
        var f = r.Fields;
        if (CheckWrite(f, MaxTransferBlocks, LengthFieldByte(r.Info.Layout)) is { } early) return early;
        long want = (long)f.Blocks * BlockSize;
        var err = await WriteData(r, f.Lba, f.Fua, r.Command.DataOut, want).ConfigureAwait(false);
        return err.IsError ? err : Outcome.Wrote(want);
    }

    /// <summary>
    /// WRITE ATOMIC(16) and the Block Limits atomic fields are offered only when the volume's crash-atomic
    /// write covers what initiators (and libiscsi's conformance tests) expect to send atomically: up to 256
    /// blocks or the maximum transfer length. A smaller atomic unit is not advertised at all.
    /// </summary>
    public uint AtomicWriteBlocks => Volume.MaxAtomicWriteBlocks >= Math.Min(256u, MaxTransferBlocks) ? Math.Min(Volume.MaxAtomicWriteBlocks, MaxTransferBlocks) : 0;

    internal async ValueTask<Outcome> WriteAtomic(Request r)
    {
        var f = r.Fields;
        if (CheckWrite(f, AtomicWriteBlocks, 12) is { } early) return early;
        long want = (long)f.Blocks * BlockSize;
        // All or nothing: a short Data-Out is not written at all rather than written in part.
        if (r.Command.DataOut.Length < want) return ScsiError.Cdb(12);
        var err = await WriteData(r, f.Lba, f.Fua, r.Command.DataOut, want).ConfigureAwait(false);
        return err.IsError ? err : Outcome.Wrote(want);
    }

    /// <summary>
    /// Writes the whole blocks of Data-Out that arrived (at most <paramref name="want"/> bytes): with an iSCSI
    /// expected length shorter than the CDB's, only what was sent is written (the transport reports the residual).
    /// </summary>
    private async ValueTask<ScsiError> WriteData(Request r, ulong lba, bool fua, ReadOnlyMemory<byte> dataOut, long want)
    {
        long have = Math.Min(dataOut.Length, want);
        int whole = (int)(have / BlockSize * BlockSize);
        if (whole == 0) return ScsiError.None;
        if (r.Ct.IsCancellationRequested) return ScsiError.Of(SenseReason.TaskAborted);
        using var _ = await _rangeLock.AcquireAsync(lba, (ulong)(whole / BlockSize), r.Ct).ConfigureAwait(false);
        var res = await Volume.WriteAsync(lba, dataOut[..whole], fua, r.Ct).ConfigureAwait(false);
        return FromVolume(res, VolumeOperation.Write, r, lba, (ulong)(whole / BlockSize));
    }

    internal async ValueTask<Outcome> WriteAndVerify(Request r)
    {
        var f = r.Fields;
        if (!Cdb.InRange(f.Lba, f.Blocks, Volume.BlockCount)) return ScsiError.OutOfRange;
        if (f.ByteCheck == 2) return ScsiError.Cdb(1, 2);
        var wp = CheckWritable();
        if (wp.IsError) return wp;
        long want = (long)f.Blocks * BlockSize;
        if (f.Blocks == 0) return Outcome.Wrote(0);
        if (f.Blocks > MaxTransferBlocks) return ScsiError.Cdb(LengthFieldByte(r.Info.Layout));
        var err = await WriteData(r, f.Lba, false, r.Command.DataOut, want).ConfigureAwait(false);
        if (err.IsError) return err;
        // Verify what was written by reading it back through the volume's verifier.
        long written = Math.Min(r.Command.DataOut.Length, want) / BlockSize * BlockSize;
        var verify = await VerifyMedium(r, f.Lba, (ulong)(written / BlockSize)).ConfigureAwait(false);
        return verify.IsError ? verify : Outcome.Wrote(want);
    }

    internal async ValueTask<Outcome> Verify(Request r)
    {
        var f = r.Fields;
        if (!Cdb.InRange(f.Lba, f.Blocks, Volume.BlockCount)) return ScsiError.OutOfRange;
        if (f.ByteCheck == 2) return ScsiError.Cdb(1, 2);
        if (f.Blocks == 0) return Outcome.Good;
        if (f.Blocks > MaxTransferBlocks) return ScsiError.Cdb(LengthFieldByte(r.Info.Layout));
        if (f.ByteCheck == 0)
        {
            var e = await VerifyMedium(r, f.Lba, f.Blocks).ConfigureAwait(false);
            return e.IsError ? e : Outcome.Good;
        }
        long want = f.ByteCheck == 1 ? (long)f.Blocks * BlockSize : BlockSize;
        if (r.Command.DataOut.Length < want) return ScsiError.Cdb(LengthFieldByte(r.Info.Layout));
        var cmp = await CompareMedium(r, f.Lba, f.Blocks, r.Command.DataOut[..(int)want], singleBlock: f.ByteCheck == 3).ConfigureAwait(false);
        return cmp.IsError ? new Outcome(cmp, null, 0, want) : Outcome.Wrote(want);
    }

    /// <summary>Reads [lba, lba+blocks) through the volume (which verifies tags) in bounded chunks.</summary>
    private async ValueTask<ScsiError> VerifyMedium(Request r, ulong lba, ulong blocks)
    {
        if (blocks == 0) return ScsiError.None;
        int chunkBlocks = Math.Max(1, ChunkBytes / BlockSize);
        var buf = ArrayPool<byte>.Shared.Rent((int)Math.Min(blocks, (ulong)chunkBlocks) * BlockSize);
        try
        {
            for (ulong done = 0; done < blocks;)
            {
                if (r.Ct.IsCancellationRequested) return ScsiError.Of(SenseReason.TaskAborted);
                int n = (int)Math.Min(blocks - done, (ulong)chunkBlocks);
                var res = await Volume.ReadAsync(lba + done, buf.AsMemory(0, n * BlockSize), Context(r), r.Ct).ConfigureAwait(false);
                if (!res.IsOk) return FromVolume(res, VolumeOperation.Read, r, lba + done, (ulong)n);
                done += (ulong)n;
            }
            return ScsiError.None;
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    /// <summary>
    /// Compares the medium with <paramref name="expected"/> (one block repeated when <paramref name="singleBlock"/>).
    /// MISCOMPARE carries the byte offset of the first difference in the Data-Out buffer.
    /// </summary>
    private async ValueTask<ScsiError> CompareMedium(Request r, ulong lba, ulong blocks, ReadOnlyMemory<byte> expected, bool singleBlock)
    {
        int chunkBlocks = Math.Max(1, ChunkBytes / BlockSize);
        var buf = ArrayPool<byte>.Shared.Rent((int)Math.Min(blocks, (ulong)chunkBlocks) * BlockSize);
        try
        {
            for (ulong done = 0; done < blocks;)
            {
                if (r.Ct.IsCancellationRequested) return ScsiError.Of(SenseReason.TaskAborted);
                int n = (int)Math.Min(blocks - done, (ulong)chunkBlocks);
                int bytes = n * BlockSize;
                var res = await Volume.ReadAsync(lba + done, buf.AsMemory(0, bytes), Context(r), r.Ct).ConfigureAwait(false);
                if (!res.IsOk) return FromVolume(res, VolumeOperation.Read, r, lba + done, (ulong)n);
                for (int b = 0; b < n; b++)
                {
                    var have = buf.AsSpan(b * BlockSize, BlockSize);
                    long expectedOffset = singleBlock ? 0 : (long)(done + (ulong)b) * BlockSize;
                    var want = expected.Span.Slice((int)expectedOffset, BlockSize);
                    int diff = have.CommonPrefixLength(want);
                    if (diff < BlockSize)
                    {
                        long offset = (long)(done + (ulong)b) * BlockSize + diff;
                        if (singleBlock) offset = diff;
                        return ScsiError.WithInfo(SenseReason.Miscompare, (ulong)offset);
                    }
                }
                done += (ulong)n;
            }
            return ScsiError.None;
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    /// <summary>ORWRITE(16): each written byte is the OR of the medium and Data-Out, atomic against other writes.</summary>
    internal async ValueTask<Outcome> OrWrite(Request r)
    {
        var f = r.Fields;
        if (CheckWrite(f, MaxTransferBlocks, 10) is { } early) return early;
        long want = (long)f.Blocks * BlockSize;
        int bytes = (int)(Math.Min(r.Command.DataOut.Length, want) / BlockSize * BlockSize);
        if (bytes == 0) return Outcome.Wrote(want);
        if (r.Ct.IsCancellationRequested) return ScsiError.Of(SenseReason.TaskAborted);
        var buf = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            ulong blocks = (ulong)(bytes / BlockSize);
            using var _ = await _rangeLock.AcquireAsync(f.Lba, blocks, r.Ct).ConfigureAwait(false);
            var res = await Volume.ReadAsync(f.Lba, buf.AsMemory(0, bytes), Context(r), r.Ct).ConfigureAwait(false);
            if (!res.IsOk) return FromVolume(res, VolumeOperation.Read, r, f.Lba, blocks);
            OrInto(buf.AsSpan(0, bytes), r.Command.DataOut.Span[..bytes]);
            res = await Volume.WriteAsync(f.Lba, buf.AsMemory(0, bytes), f.Fua, r.Ct).ConfigureAwait(false);
            var e = FromVolume(res, VolumeOperation.Write, r, f.Lba, blocks);
            return e.IsError ? e : Outcome.Wrote(want);
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    private static void OrInto(Span<byte> dst, ReadOnlySpan<byte> src)
    {
        var d = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(dst);
        var s = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(src);
        for (int i = 0; i < d.Length; i++) d[i] |= s[i];
        for (int i = d.Length * 8; i < dst.Length; i++) dst[i] |= src[i];
    }

    internal ValueTask<Outcome> PreFetch(Request r)
    {
        var f = r.Fields;
        if (!Cdb.InRange(f.Lba, f.Blocks, Volume.BlockCount)) return new(ScsiError.OutOfRange);
        return new(Outcome.Good);
    }

    internal async ValueTask<Outcome> SynchronizeCache(Request r)
    {
        var f = r.Fields;
        if (!Cdb.InRange(f.Lba, f.Blocks, Volume.BlockCount)) return ScsiError.OutOfRange;
        if (r.Ct.IsCancellationRequested) return ScsiError.Of(SenseReason.TaskAborted);
        var res = await Volume.FlushAsync(r.Ct).ConfigureAwait(false);
        if (res.IsOk) return Outcome.Good;
        return FromVolume(res, VolumeOperation.Flush, r, 0, 0);
    }

    internal async ValueTask<Outcome> WriteSame(Request r)
    {
        var f = r.Fields;
        var cdb = r.Cdb;
        bool unmap = (cdb[1] & 0x08) != 0;
        bool ndob = cdb[0] == 0x93 && (cdb[1] & 0x01) != 0;
        int lenByte = LengthFieldByte(r.Info.Layout);
        // NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium" (WSNZ = 0 in Block Limits).
        ulong blocks = f.Blocks != 0 ? f.Blocks : (f.Lba <= Volume.BlockCount ? Volume.BlockCount - f.Lba : 0);
        if (!Cdb.InRange(f.Lba, blocks, Volume.BlockCount) || (f.Blocks == 0 && f.Lba >= Volume.BlockCount)) return ScsiError.OutOfRange;
        if (blocks > MaxWriteSameBlocks) return ScsiError.Cdb(lenByte);
        var wp = CheckWritable();
        if (wp.IsError) return wp;
        var data = r.Command.DataOut;
        if (ndob ? data.Length != 0 : data.Length != BlockSize) return ScsiError.Cdb(lenByte);
        long transfer = ndob ? 0 : BlockSize;
        if (blocks == 0) return Outcome.Wrote(transfer);
        if (r.Ct.IsCancellationRequested) return ScsiError.Of(SenseReason.TaskAborted);
        bool zero = ndob || !data.Span.ContainsAnyExcept((byte)0);
        using var _ = await _rangeLock.AcquireAsync(f.Lba, blocks, r.Ct).ConfigureAwait(false);
        VolumeResult res;
        // UNMAP = 1 lets the device server deallocate instead of writing (SBC-3 5.45); with LBPRZ the blocks
        // then read as zeros whatever the Data-Out held, which is what initiators that set it expect.
        if (unmap && Volume.SupportsUnmap) res = await Volume.UnmapAsync(f.Lba, blocks, r.Ct).ConfigureAwait(false);
        else if (zero) res = await Volume.WriteZeroesAsync(f.Lba, blocks, deallocate: false, r.Ct).ConfigureAwait(false);
        else res = await WriteRepeated(f.Lba, blocks, data, r.Ct).ConfigureAwait(false);
        var e = FromVolume(res, VolumeOperation.Write, r, f.Lba, blocks);
        return e.IsError ? e : Outcome.Wrote(transfer);
    }

    private async ValueTask<VolumeResult> WriteRepeated(ulong lba, ulong blocks, ReadOnlyMemory<byte> block, CancellationToken ct)
    {
        int chunkBlocks = (int)Math.Min(blocks, (ulong)Math.Max(1, ChunkBytes / BlockSize));
        var buf = ArrayPool<byte>.Shared.Rent(chunkBlocks * BlockSize);
        try
        {
            for (int i = 0; i < chunkBlocks; i++) block.Span.CopyTo(buf.AsSpan(i * BlockSize));
            for (ulong done = 0; done < blocks;)
            {
                int n = (int)Math.Min(blocks - done, (ulong)chunkBlocks);
                var res = await Volume.WriteAsync(lba + done, buf.AsMemory(0, n * BlockSize), false, ct).ConfigureAwait(false);
                if (!res.IsOk) return res;
                done += (ulong)n;
            }
            return VolumeResult.Success;
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    internal async ValueTask<Outcome> Unmap(Request r)
    {
        if (!Volume.SupportsUnmap) return ScsiError.Of(SenseReason.InvalidOpcode);
        var wp = CheckWritable();
        if (wp.IsError) return wp;
        int paramLen = BinaryPrimitives.ReadUInt16BigEndian(r.Cdb[7..]);
        if (paramLen == 0) return Outcome.Good;
        if (paramLen < 8) return ScsiError.Of(SenseReason.ParameterListLengthError);
        var p = r.Command.DataOut.Span[..Math.Min(paramLen, r.Command.DataOut.Length)];
        if (p.Length < 8) return ScsiError.Of(SenseReason.ParameterListLengthError);
        int bdLen = BinaryPrimitives.ReadUInt16BigEndian(p[2..]);
        int count = Math.Min(bdLen, p.Length - 8) / 16;
        if (count > MaxUnmapDescriptors) return ScsiError.Param(2);
        ulong total = 0;
        for (int i = 0; i < count; i++)
        {
            var d = p.Slice(8 + i * 16, 16);
            ulong lba = BinaryPrimitives.ReadUInt64BigEndian(d);
            uint n = BinaryPrimitives.ReadUInt32BigEndian(d[8..]);
            if (!Cdb.InRange(lba, n, Volume.BlockCount)) return ScsiError.OutOfRange;
            total += n;
        }
        if (total > MaxUnmapBlocks) return ScsiError.Param(8 + 8);
        for (int i = 0; i < count; i++)
        {
            if (r.Ct.IsCancellationRequested) return ScsiError.Of(SenseReason.TaskAborted);
            var d = r.Command.DataOut.Span.Slice(8 + i * 16, 16);
            ulong lba = BinaryPrimitives.ReadUInt64BigEndian(d);
            uint n = BinaryPrimitives.ReadUInt32BigEndian(d[8..]);
            if (n == 0) continue;
            using var _ = await _rangeLock.AcquireAsync(lba, n, r.Ct).ConfigureAwait(false);
            var res = await Volume.UnmapAsync(lba, n, r.Ct).ConfigureAwait(false);
            if (!res.IsOk) return FromVolume(res, VolumeOperation.Write, r, lba, n);
        }
        return Outcome.Wrote(paramLen);
    }

    internal async ValueTask<Outcome> GetLbaStatus(Request r)
    {
        ulong lba = BinaryPrimitives.ReadUInt64BigEndian(r.Cdb[2..]);
        long alloc = Cdb.AllocationLength32(r.Cdb, 10);
        if (lba >= Volume.BlockCount) return ScsiError.OutOfRange;
        int max = (int)Math.Clamp((alloc - 8) / 16, 1, 64);
        var owner = Rent(8 + max * 16);
        int n = 0;
        ulong cur = lba;
        while (n < max && cur < Volume.BlockCount)
        {
            var ext = await Volume.GetLbaStatusAsync(cur, r.Ct).ConfigureAwait(false);
            ulong len = Math.Min(Math.Max(ext.Blocks, 1), Volume.BlockCount - cur);
            len = Math.Min(len, uint.MaxValue);
            var d = owner.Memory.Span.Slice(8 + n * 16, 16);
            BinaryPrimitives.WriteUInt64BigEndian(d, cur);
            BinaryPrimitives.WriteUInt32BigEndian(d[8..], (uint)len);
            d[12] = ext.Mapped ? (byte)0 : (byte)1;
            n++; cur += len;
        }
        BinaryPrimitives.WriteUInt32BigEndian(owner.Memory.Span, (uint)(4 + n * 16));
        return Reply(owner, 8 + n * 16, alloc);
    }

    internal async ValueTask<Outcome> CompareAndWrite(Request r)
    {
        var f = r.Fields;
        if (!Cdb.InRange(f.Lba, f.Blocks, Volume.BlockCount)) return ScsiError.OutOfRange;
        if (f.Blocks > MaxCompareAndWriteBlocks || f.Blocks > MaxTransferBlocks) return ScsiError.Cdb(13);
        int half = (int)f.Blocks * BlockSize;
        var data = r.Command.DataOut;
        // Data-Out must be exactly verify + write halves; a mismatch (e.g. a 256-block request whose count
        // wrapped to 0 in the one-byte field) is rejected rather than guessed at.
        if (data.Length != 2 * half) return ScsiError.Cdb(13);
        if (f.Blocks == 0) return Outcome.Good;
        var wp = CheckWritable();
        if (wp.IsError) return wp;
        if (r.Ct.IsCancellationRequested) return ScsiError.Of(SenseReason.TaskAborted);
        // The range stays locked from the read to the write, so the compare and the write are atomic with
        // respect to every other write to these blocks on this LU.
        using var _ = await _rangeLock.AcquireAsync(f.Lba, f.Blocks, r.Ct).ConfigureAwait(false);
        var cmp = await CompareMedium(r, f.Lba, f.Blocks, data[..half], singleBlock: false).ConfigureAwait(false);
        if (cmp.IsError) return new Outcome(cmp, null, 0, 2 * half);
        if (r.Ct.IsCancellationRequested) return ScsiError.Of(SenseReason.TaskAborted);
        var res = await Volume.WriteAsync(f.Lba, data[half..], f.Fua, r.Ct).ConfigureAwait(false);
        var e = FromVolume(res, VolumeOperation.Write, r, f.Lba, f.Blocks);
        return e.IsError ? e : Outcome.Wrote(2 * half);
    }

    internal ValueTask<Outcome> ReadCapacity10(Request r)
    {
        var c = r.Cdb;
        if ((c[8] & 1) == 0 && BinaryPrimitives.ReadUInt32BigEndian(c[2..]) != 0) return new(ScsiError.Cdb(2));
        var owner = Rent(8);
        var s = owner.Memory.Span;
        ulong last = Volume.BlockCount - 1;
        BinaryPrimitives.WriteUInt32BigEndian(s, last > uint.MaxValue ? uint.MaxValue : (uint)last);
        BinaryPrimitives.WriteUInt32BigEndian(s[4..], (uint)BlockSize);
        return new(Outcome.Data(owner, 8));
    }

    internal ValueTask<Outcome> ReadCapacity16(Request r)
    {
        long alloc = Cdb.AllocationLength32(r.Cdb, 10);
        var owner = Rent(32);
        var s = owner.Memory.Span;
        BinaryPrimitives.WriteUInt64BigEndian(s, Volume.BlockCount - 1);
        BinaryPrimitives.WriteUInt32BigEndian(s[8..], (uint)BlockSize);
        s[13] = 0; // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: one logical block per physical block
        if (Volume.SupportsUnmap) s[14] = 0x80 | 0x40; // LBPME, LBPRZ: unmapped blocks read as zeros
        return new(Reply(owner, 32, alloc));
    }

    internal ValueTask<Outcome> ReadDefectData(Request r)
    {
        var c = r.Cdb;
        bool ten = c[0] == 0x37;
        long alloc = ten ? Cdb.AllocationLength16(c, 7) : Cdb.AllocationLength32(c, 6);
        int len = ten ? 4 : 8;
        var owner = Rent(len);
        // An empty defect list in the requested format: a virtual volume has no grown or primary defects.
        owner.Memory.Span[1] = (byte)((ten ? c[2] : c[1]) & 0x1F);
        return new(Reply(owner, len, alloc));
    }
}
