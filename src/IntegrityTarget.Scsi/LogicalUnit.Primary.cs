using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace IntegrityTarget.Scsi;

// SPC-4 primary commands: identification, sense, unit state, supported operations.
public sealed partial class ScsiLogicalUnit
{
    private const int MaxVpdLength = 1024;

    internal ValueTask<Outcome> TestUnitReady(Request r) => new(Outcome.Good);

    internal ValueTask<Outcome> StartStopUnit(Request r) => new(Outcome.Good); // not removable: always ready

    internal ValueTask<Outcome> PreventAllow(Request r) => new(Outcome.Good); // RMB = 0: nothing to lock

    internal ValueTask<Outcome> RequestSense(Request r)
    {
        bool desc = (r.Cdb[1] & 1) != 0;
        int alloc = r.Cdb[4];
        // With autosense (iSCSI) there is no deferred sense to keep; what is left to report is a pending UA.
        byte[] sense = r.Nexus.TryTakeUnitAttention(out var ua) ? SenseBuilder.Build(ua, desc) : SenseBuilder.NoSense(desc);
        var owner = Rent(sense.Length);
        sense.CopyTo(owner.Memory.Span);
        return new(Reply(owner, sense.Length, alloc));
    }

    internal ValueTask<Outcome> ReportLuns(Request r)
    {
        var o = ScsiTarget.ReportLuns(Target?.Luns ?? [Lun], r.Cdb, _buffers);
        if (!o.Error.IsError)
        {
            if (Target != null) Target.InventoryReported(r.Command.Nexus);
            else r.Nexus.ClearUnitAttention(SenseReason.ReportedLunsDataChanged);
        }
        return new(o);
    }

    // ---- INQUIRY and the VPD page table -------------------------------------------------------

    private delegate int VpdBuilder(ScsiLogicalUnit lu, in Request r, Span<byte> page);

    /// <summary>The VPD page table; page 00h is generated from it.</summary>
    private static readonly (byte Code, VpdBuilder Build)[] VpdPages =
    [
        (0x00, static (ScsiLogicalUnit lu, in Request r, Span<byte> p) => lu.VpdSupportedPages(p)),
        (0x80, static (ScsiLogicalUnit lu, in Request r, Span<byte> p) => lu.VpdSerial(p)),
        (0x83, static (ScsiLogicalUnit lu, in Request r, Span<byte> p) => lu.VpdDeviceIdentification(r, p)),
        (0x8F, static (ScsiLogicalUnit lu, in Request r, Span<byte> p) => lu.VpdThirdPartyCopy(p)),
        (0xB0, static (ScsiLogicalUnit lu, in Request r, Span<byte> p) => lu.VpdBlockLimits(p)),
        (0xB1, static (ScsiLogicalUnit lu, in Request r, Span<byte> p) => lu.VpdBlockCharacteristics(p)),
        (0xB2, static (ScsiLogicalUnit lu, in Request r, Span<byte> p) => lu.VpdLogicalBlockProvisioning(p)),
    ];

    public static IReadOnlyList<byte> SupportedVpdPages => VpdPages.Select(p => p.Code).ToArray();

    internal ValueTask<Outcome> Inquiry(Request r)
    {
        var c = r.Cdb;
        bool evpd = (c[1] & 1) != 0;
        int alloc = Cdb.AllocationLength16(c, 3);
        if (!evpd)
        {
            if (c[2] != 0) return new(ScsiError.Cdb(2));
            var std = Rent(StandardInquiryLength);
            WriteStandardInquiry(std.Memory.Span, Options, connected: true, tpgs: true);
            return new(Reply(std, StandardInquiryLength, alloc));
        }
        foreach (var (code, build) in VpdPages)
        {
            if (code != c[2]) continue;
            var owner = Rent(MaxVpdLength);
            var p = owner.Memory.Span;
            p[1] = code;
            int len = build(this, r, p);
            BinaryPrimitives.WriteUInt16BigEndian(p[2..], (ushort)(len - 4));
            return new(Reply(owner, len, alloc));
        }
        return new(ScsiError.Cdb(2));
    }

    internal const int StandardInquiryLength = 74;

    /// <summary>Standard INQUIRY data; <paramref name="connected"/> false gives peripheral qualifier 3 (no LU at this LUN).</summary>
    internal static void WriteStandardInquiry(Span<byte> s, LogicalUnitOptions? o, bool connected, bool tpgs = false)
    {
        s[..StandardInquiryLength].Clear();
        s[0] = connected ? (byte)0x00 : (byte)0x7F; // direct-access block device / qualifier 3, type 1Fh
        s[1] = 0x00;       // RMB = 0
        s[2] = 0x06;       // SPC-4
        s[3] = 0x12;       // HISUP, response data format 2
        s[4] = StandardInquiryLength - 5;
        s[5] = (byte)((tpgs ? 0x10 : 0x00) | (connected ? 0x08 : 0x00)); // TPGS 01b: implicit ALUA only; 3PC (EXTENDED COPY); PROTECT 0
        s[6] = 0x00;
        s[7] = 0x02;       // CMDQUE
        Ascii(s.Slice(8, 8), o?.VendorId ?? "INTEGRTY");
        Ascii(s.Slice(16, 16), o?.ProductId ?? "IntegrityTarget");
        Ascii(s.Slice(32, 4), o?.Revision ?? "0001");
        // Version descriptors: SAM-5, iSCSI (RFC 7143), SPC-4, SBC-3.
        ushort[] versions = [0x00A0, 0x0960, 0x0460, 0x04C0];
        for (int i = 0; i < versions.Length; i++) BinaryPrimitives.WriteUInt16BigEndian(s[(58 + 2 * i)..], versions[i]);
    }

    private static void Ascii(Span<byte> dst, string v)
    {
        dst.Fill((byte)' ');
        Encoding.ASCII.GetBytes(v.AsSpan(0, Math.Min(v.Length, dst.Length)), dst);
    }

    private int VpdSupportedPages(Span<byte> p)
    {
        for (int i = 0; i < VpdPages.Length; i++) p[4 + i] = VpdPages[i].Code;
        return 4 + VpdPages.Length;
    }

    private int VpdSerial(Span<byte> p)
    {
        int n = Encoding.ASCII.GetBytes(Options.Serial, p[4..]);
        return 4 + n;
    }

    private int VpdDeviceIdentification(in Request r, Span<byte> p)
    {
        int pos = 4;
        // NAA IEEE Registered Extended, associated with the logical unit.
        p[pos] = 0x01; p[pos + 1] = 0x03; p[pos + 3] = 16;
        _naa.CopyTo(p[(pos + 4)..]);
        pos += 20;
        // T10 vendor ID: vendor + serial, so the pair is unique even without the NAA.
        string t10 = Options.VendorId.PadRight(8) + Options.Serial;
        int t10Len = Math.Min(t10.Length, 200);
        p[pos] = 0x02; p[pos + 1] = 0x01; p[pos + 3] = (byte)t10Len;
        Encoding.ASCII.GetBytes(t10.AsSpan(0, t10Len), p[(pos + 4)..]);
        pos += 4 + t10Len;
        var nexus = r.Command.Nexus;
        // Relative target port identifier (association: target port, protocol iSCSI).
        p[pos] = 0x51; p[pos + 1] = 0x94; p[pos + 3] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(p[(pos + 6)..], nexus.RelativeTargetPortId);
        pos += 8;
        // Target port group of that port (association: target port): how an initiator's ALUA handler
        // finds which group's RTPG state applies to this path.
        if (GroupOf(nexus.RelativeTargetPortId) is { } group)
        {
            p[pos] = 0x51; p[pos + 1] = 0x95; p[pos + 3] = 4;
            BinaryPrimitives.WriteUInt16BigEndian(p[(pos + 6)..], group.Id);
            pos += 8;
        }
        pos = ScsiNameDesignator(p, pos, 0x98, nexus.TargetPortName);            // target port name
        if (Target != null) pos = ScsiNameDesignator(p, pos, 0xA8, Target.Name); // target device name
        return pos;
    }

    private static int ScsiNameDesignator(Span<byte> p, int pos, byte piv_assoc_type, string name)
    {
        int n = Math.Min(Encoding.UTF8.GetByteCount(name), 250);
        int len = (n + 1 + 3) & ~3; // null-terminated, padded to a multiple of 4
        if (pos + 4 + len > MaxVpdLength) return pos;
        p[pos] = 0x53; p[pos + 1] = piv_assoc_type; p[pos + 3] = (byte)len;
        var dst = p.Slice(pos + 4, len);
        dst.Clear();
        Encoding.UTF8.GetBytes(name.AsSpan(), dst[..n]);
        return pos + 4 + len;
    }

    private int VpdBlockLimits(Span<byte> p)
    {
        p[4] = 0;                                   // WSNZ = 0: WRITE SAME with 0 blocks means to the end
        p[5] = (byte)Math.Min(MaxCompareAndWriteBlocks, MaxTransferBlocks);
        BinaryPrimitives.WriteUInt16BigEndian(p[6..], 1);                // optimal transfer length granularity
        BinaryPrimitives.WriteUInt32BigEndian(p[8..], MaxTransferBlocks);
        BinaryPrimitives.WriteUInt32BigEndian(p[12..], Math.Min(MaxTransferBlocks, (uint)((1 << 20) / BlockSize)));
        BinaryPrimitives.WriteUInt32BigEndian(p[16..], MaxTransferBlocks); // max pre-fetch length
        if (Volume.SupportsUnmap)
        {
            BinaryPrimitives.WriteUInt32BigEndian(p[20..], MaxUnmapBlocks);
            BinaryPrimitives.WriteUInt32BigEndian(p[24..], MaxUnmapDescriptors);
            BinaryPrimitives.WriteUInt32BigEndian(p[28..], 1);             // optimal unmap granularity
        }
        BinaryPrimitives.WriteUInt64BigEndian(p[36..], MaxWriteSameBlocks);
        BinaryPrimitives.WriteUInt32BigEndian(p[44..], AtomicWriteBlocks); // atomic alignment/granularity 0: none required
        return 64;
    }

    private int VpdBlockCharacteristics(Span<byte> p)
    {
        BinaryPrimitives.WriteUInt16BigEndian(p[4..], 1); // MEDIUM ROTATION RATE: non-rotating
        return 64;
    }

    private int VpdLogicalBlockProvisioning(Span<byte> p)
    {
        if (Volume.SupportsUnmap)
        {
            p[4] = (byte)ThresholdExponent;   // unit of the LOG SENSE page 0Ch resource counts
            p[5] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU, LBPWS, LBPWS10, LBPRZ
            p[6] = 0x02;                      // provisioning type: thin
        }
        return 8;
    }

    // ---- REPORT SUPPORTED OPERATION CODES, generated from the opcode table ----------------------

    internal ValueTask<Outcome> ReportSupportedOpcodes(Request r)
    {
        var c = r.Cdb;
        bool rctd = (c[2] & 0x80) != 0;
        int options = c[2] & 0x07;
        byte reqOp = c[3];
        int reqSa = BinaryPrimitives.ReadUInt16BigEndian(c[4..]);
        long alloc = Cdb.AllocationLength32(c, 6);
        int tdLen = rctd ? 12 : 0;

        if (options == 0)
        {
            var all = OpcodeTable.AllCommands().Where(Implements).ToList();
            int len = 4 + all.Count * (8 + tdLen);
            var owner = Rent(len);
            var s = owner.Memory.Span;
            BinaryPrimitives.WriteUInt32BigEndian(s, (uint)(len - 4));
            int pos = 4;
            foreach (var e in all)
            {
                s[pos] = e.Opcode;
                if (e.ServiceAction >= 0) BinaryPrimitives.WriteUInt16BigEndian(s[(pos + 2)..], (ushort)e.ServiceAction);
                s[pos + 5] = (byte)((rctd ? 0x02 : 0) | (e.ServiceAction >= 0 ? 0x01 : 0));
                BinaryPrimitives.WriteUInt16BigEndian(s[(pos + 6)..], (ushort)e.CdbLength);
                pos += 8;
                if (rctd) { WriteTimeouts(s[pos..], e); pos += 12; }
            }
            return new(Reply(owner, len, alloc));
        }

        var entry = OpcodeTable.Get(reqOp);
        CommandInfo? target;
        switch (options)
        {
            case 1:
                if (entry?.ServiceActions != null) return new(ScsiError.Cdb(2, 0));
                target = entry?.Handler != null && Implements(entry) ? entry : null;
                break;
            case 2:
                if (entry != null && entry.ServiceActions == null) return new(ScsiError.Cdb(2, 1));
                target = entry?.ServiceActions != null && reqSa < 32 ? entry.ServiceActions[reqSa] : null;
                break;
            case 3:
                if (entry?.ServiceActions != null) target = reqSa < 32 ? entry.ServiceActions[reqSa] : null;
                else if (reqSa != 0) return new(ScsiError.Cdb(4));
                else target = entry?.Handler != null && Implements(entry) ? entry : null;
                break;
            default:
                return new(ScsiError.Cdb(2, 2));
        }
        int cdbLen = target?.CdbLength ?? 0;
        int total = 4 + cdbLen + (target != null ? tdLen : 0);
        var o = Rent(total);
        var d = o.Memory.Span;
        d[1] = (byte)((rctd && target != null ? 0x80 : 0) | (target != null ? 0x03 : 0x01));
        BinaryPrimitives.WriteUInt16BigEndian(d[2..], (ushort)cdbLen);
        if (target != null)
        {
            target.Usage.CopyTo(d[4..]);
            d[4] = target.Opcode;
            if (rctd) WriteTimeouts(d[(4 + cdbLen)..], target);
        }
        return new(Reply(o, total, alloc));
    }

    private static void WriteTimeouts(Span<byte> d, CommandInfo e)
    {
        BinaryPrimitives.WriteUInt16BigEndian(d, 0x000A);
        BinaryPrimitives.WriteUInt32BigEndian(d[4..], e.TimeoutSeconds);
        BinaryPrimitives.WriteUInt32BigEndian(d[8..], e.TimeoutSeconds);
    }
}
