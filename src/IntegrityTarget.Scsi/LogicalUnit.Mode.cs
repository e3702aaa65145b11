using System.Buffers.Binary;

namespace IntegrityTarget.Scsi;

/// <summary>Current mode parameters of one logical unit (shared by all nexuses, SPC-4 7.5).</summary>
internal sealed class ModeState
{
    public ModeState(bool writeBack) { WriteCacheEnabled = DefaultWce = writeBack; }
    public readonly bool DefaultWce;
    public volatile bool WriteCacheEnabled;
    public volatile bool DSense;
    public volatile bool SoftwareWriteProtect;
}

// MODE SENSE / MODE SELECT over one mode page table.
public sealed partial class ScsiLogicalUnit
{
    private readonly ModeState _mode;

    private enum PageControl { Current = 0, Changeable = 1, Default = 2, Saved = 3 }

    private delegate void PageBuilder(ScsiLogicalUnit lu, PageControl pc, Span<byte> page);
    private delegate void PageApplier(ScsiLogicalUnit lu, ReadOnlySpan<byte> page);

    /// <summary>The mode page table: code, page length (bytes after the 2-byte header), builder, applier.</summary>
    private static readonly (byte Code, byte Length, PageBuilder Build, PageApplier? Apply)[] ModePages =
    [
        (0x01, 0x0A, static (lu, pc, p) => { }, null), // read-write error recovery: defaults, nothing changeable
        (0x08, 0x12, static (lu, pc, p) =>
        {
            bool wce = pc switch { PageControl.Changeable => true, PageControl.Default => lu._mode.DefaultWce, _ => lu._mode.WriteCacheEnabled };
            p[2] = wce ? (byte)0x04 : (byte)0;       // WCE; RCD = 0 (read cache on)
        }, static (lu, p) =>
        {
            bool wce = (p[2] & 0x04) != 0;
            lu._mode.WriteCacheEnabled = wce;
            lu.Volume.WriteBack = wce;
        }),
        (0x0A, 0x0A, static (lu, pc, p) =>
        {
            if (pc == PageControl.Changeable) { p[2] = 0x04; p[4] = 0x08; return; } // D_SENSE, SWP
            bool cur = pc == PageControl.Current;
            p[2] = (byte)(cur && lu._mode.DSense ? 0x04 : 0);
            p[3] = 0x10;                               // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
            p[4] = (byte)(cur && lu._mode.SoftwareWriteProtect ? 0x08 : 0);
            BinaryPrimitives.WriteUInt16BigEndian(p[8..], 0xFFFF); // busy timeout: unlimited
        }, static (lu, p) =>
        {
            lu._mode.DSense = (p[2] & 0x04) != 0;
            lu._mode.SoftwareWriteProtect = (p[4] & 0x08) != 0;
        }),
        (0x1C, 0x0A, static (lu, pc, p) =>
        {
            if (pc != PageControl.Changeable) p[2] = 0x08; // DEXCPT: no informational exceptions reported
        }, null),
    ];

    internal ValueTask<Outcome> ModeSense(Request r)
    {
        var c = r.Cdb;
        bool six = c[0] == 0x1A;
        bool dbd = (c[1] & 0x08) != 0;
        bool llbaa = !six && (c[1] & 0x10) != 0;
        var pc = (PageControl)(c[2] >> 6);
        int page = c[2] & 0x3F, sub = c[3];
        int alloc = six ? c[4] : Cdb.AllocationLength16(c, 7);
        if (pc == PageControl.Saved) return new(ScsiError.Of(SenseReason.SavingParametersNotSupported));
        if (sub != 0 && sub != 0xFF) return new(ScsiError.Cdb(3));
        if (page != 0x3F && !ModePages.Any(m => m.Code == page)) return new(ScsiError.Cdb(2, 5));

        int hdr = six ? 4 : 8;
        int bdLen = dbd ? 0 : llbaa ? 16 : 8;
        int len = hdr + bdLen;
        foreach (var m in ModePages) if (page == 0x3F || m.Code == page) len += 2 + m.Length;
        var owner = Rent(len);
        var s = owner.Memory.Span;
        byte dsp = (byte)(0x10 | (Options.ReadOnly || _mode.SoftwareWriteProtect ? 0x80 : 0)); // DPOFUA, WP
        if (six) { s[0] = (byte)(len - 1); s[2] = dsp; s[3] = (byte)bdLen; }
        else
        {
            BinaryPrimitives.WriteUInt16BigEndian(s, (ushort)(len - 2));
            s[3] = dsp; s[4] = (byte)(llbaa ? 1 : 0);
            BinaryPrimitives.WriteUInt16BigEndian(s[6..], (ushort)bdLen);
        }
        int pos = hdr;
        if (bdLen != 0 && pc != PageControl.Changeable)
        {
            var bd = s.Slice(pos, bdLen);
            if (llbaa)
            {
                BinaryPrimitives.WriteUInt64BigEndian(bd, Volume.BlockCount);
                BinaryPrimitives.WriteUInt32BigEndian(bd[12..], (uint)BlockSize);
            }
            else
            {
                BinaryPrimitives.WriteUInt32BigEndian(bd, Volume.BlockCount > uint.MaxValue ? uint.MaxValue : (uint)Volume.BlockCount);
                BinaryPrimitives.WriteUInt32BigEndian(bd[4..], (uint)BlockSize); // density 0 + 24-bit block length
            }
        }
        pos += bdLen;
        foreach (var m in ModePages)
        {
            if (page != 0x3F && m.Code != page) continue;
            var p = s.Slice(pos, 2 + m.Length);
            p[0] = m.Code; p[1] = m.Length;
            m.Build(this, pc, p);
            pos += 2 + m.Length;
        }
        return new(Reply(owner, len, alloc));
    }

    internal ValueTask<Outcome> ModeSelect(Request r)
    {
        var c = r.Cdb;
        bool six = c[0] == 0x15;
        if ((c[1] & 0x01) != 0) return new(ScsiError.Cdb(1, 0)); // SP: nothing can be saved
        int paramLen = six ? c[4] : Cdb.AllocationLength16(c, 7);
        if (paramLen == 0) return new(Outcome.Good);
        var d = r.Command.DataOut.Span[..Math.Min(paramLen, r.Command.DataOut.Length)];
        int hdr = six ? 4 : 8;
        if (d.Length < hdr) return new(ScsiError.Of(SenseReason.ParameterListLengthError));
        int bdLen = six ? d[3] : BinaryPrimitives.ReadUInt16BigEndian(d[6..]);
        bool longLba = !six && (d[4] & 1) != 0;
        int bdSize = longLba ? 16 : 8;
        if (hdr + bdLen > d.Length) return new(ScsiError.Of(SenseReason.ParameterListLengthError));
        if (bdLen % bdSize != 0) return new(ScsiError.Param(six ? 3 : 7));
        for (int at = hdr; at < hdr + bdLen; at += bdSize)
        {
            uint blockLen = longLba ? BinaryPrimitives.ReadUInt32BigEndian(d[(at + 12)..]) : BinaryPrimitives.ReadUInt32BigEndian(d[(at + 4)..]) & 0xFFFFFF;
            if (blockLen != 0 && blockLen != BlockSize) return new(ScsiError.Param(at + (longLba ? 12 : 5)));
        }
        // Validate every page before applying any, so a bad list changes nothing.
        var pages = new List<(int Index, int At)>();
        Span<byte> current = stackalloc byte[256], mask = stackalloc byte[256];
        for (int pos = hdr + bdLen; pos < d.Length;)
        {
            if ((d[pos] & 0x40) != 0) return new(ScsiError.Param(pos, 6)); // no subpages
            if (pos + 2 > d.Length) return new(ScsiError.Of(SenseReason.ParameterListLengthError));
            int code = d[pos] & 0x3F;
            int idx = Array.FindIndex(ModePages, m => m.Code == code);
            if (idx < 0) return new(ScsiError.Param(pos, 5));
            var m = ModePages[idx];
            if (d[pos + 1] != m.Length) return new(ScsiError.Param(pos + 1));
            if (pos + 2 + m.Length > d.Length) return new(ScsiError.Of(SenseReason.ParameterListLengthError));
            var cur = current[..(2 + m.Length)]; cur.Clear(); m.Build(this, PageControl.Current, cur);
            var chg = mask[..(2 + m.Length)]; chg.Clear(); m.Build(this, PageControl.Changeable, chg);
            for (int i = 2; i < 2 + m.Length; i++)
            {
                int bad = (d[pos + i] ^ cur[i]) & ~chg[i];
                if (bad != 0) return new(ScsiError.Param(pos + i, 31 - System.Numerics.BitOperations.LeadingZeroCount((uint)bad)));
            }
            pages.Add((idx, pos));
            pos += 2 + m.Length;
        }
        bool changed = false;
        foreach (var (idx, at) in pages)
        {
            var m = ModePages[idx];
            var cur = current[..(2 + m.Length)]; cur.Clear(); m.Build(this, PageControl.Current, cur);
            var page = d.Slice(at, 2 + m.Length);
            if (page[2..].SequenceEqual(cur[2..])) continue;
            m.Apply?.Invoke(this, page);
            changed = true;
        }
        if (changed) UnitAttentionForOthers(r.Nexus, SenseReason.ModeParametersChanged);
        return new(Outcome.Wrote(paramLen));
    }
}
