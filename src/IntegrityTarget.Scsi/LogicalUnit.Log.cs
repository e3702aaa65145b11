using System.Buffers.Binary;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Scsi;

/// <summary>Thin-provisioning resources of a logical unit, in logical blocks (LOG SENSE page 0Ch).</summary>
public readonly record struct ProvisioningReport(ulong UsedBlocks, ulong AvailableBlocks);

// LOG SENSE (SPC-4 6.7): a table of log pages like the VPD table; page 00h and 00h/FFh are generated from it.
public sealed partial class ScsiLogicalUnit
{
    /// <summary>Vendor-specific log page with the integrity counters (documented in README, "LOG SENSE").</summary>
    public const byte IntegrityLogPage = 0x30;
    private const byte LbpLogPage = 0x0C;
    private const int MaxLogPageLength = 1024;

    /// <summary>
    /// Where LOG SENSE page 0Ch gets used and available resources. The host sets it (it knows the backing
    /// file and its filesystem); without it the unit walks the volume's mapping and counts every unmapped
    /// block as available.
    /// </summary>
    public Func<CancellationToken, ValueTask<ProvisioningReport>>? ProvisioningSource { get; set; }

    private delegate ValueTask<int> LogPageBuilder(ScsiLogicalUnit lu, Request r, Memory<byte> page);

    private static readonly (byte Page, byte Subpage, LogPageBuilder Build)[] LogPages =
    [
        (0x00, 0x00, static (lu, r, p) => new(lu.LogSupportedPages(p.Span, subpages: false))),
        (0x00, 0xFF, static (lu, r, p) => new(lu.LogSupportedPages(p.Span, subpages: true))),
        (LbpLogPage, 0x00, static (lu, r, p) => lu.LogProvisioning(r, p)),
        (IntegrityLogPage, 0x00, static (lu, r, p) => new(lu.LogIntegrity(p.Span))),
    ];

    /// <summary>Pages this unit offers: provisioning only when it is thin, integrity only when blocks carry tags.</summary>
    private bool Offers(byte page) => page switch
    {
        LbpLogPage => Volume.SupportsUnmap,
        IntegrityLogPage => Volume.TagAlgorithm != "none",
        _ => true,
    };

    internal async ValueTask<Outcome> LogSense(Request r)
    {
        byte page = (byte)(r.Cdb[2] & 0x3F), subpage = r.Cdb[3];
        ushort pointer = BinaryPrimitives.ReadUInt16BigEndian(r.Cdb[5..]);
        int alloc = Cdb.AllocationLength16(r.Cdb, 7);
        foreach (var (code, sub, build) in LogPages)
        {
            if (code != page || sub != subpage || !Offers(code)) continue;
            var owner = Rent(MaxLogPageLength);
            var mem = owner.Memory;
            int len = await build(this, r, mem).ConfigureAwait(false);
            var s = mem.Span;
            s[0] = (byte)(code | (sub != 0 ? 0x40 : 0) | (code != 0 ? 0x80 : 0)); // SPF; DS: parameters are never saved
            s[1] = sub;
            // PARAMETER POINTER: only parameters whose code is at least the pointer (page 00h has no parameters).
            if (pointer != 0)
            {
                if (code == 0) { owner.Dispose(); return ScsiError.Cdb(5); }
                len = DropParametersBelow(s[..len], pointer);
                if (len < 0) { owner.Dispose(); return ScsiError.Cdb(5); }
            }
            BinaryPrimitives.WriteUInt16BigEndian(s[2..], (ushort)(len - 4));
            return Reply(owner, len, alloc);
        }
        // A known page with an unknown subpage points at the SUBPAGE CODE byte, anything else at PAGE CODE.
        return LogPages.Any(x => x.Page == page && Offers(page)) ? ScsiError.Cdb(3) : ScsiError.Cdb(2);
    }

    /// <summary>Removes parameters whose code is below <paramref name="pointer"/>; -1 when none is left.</summary>
    private static int DropParametersBelow(Span<byte> page, ushort pointer)
    {
        int keepFrom = 4;
        while (keepFrom < page.Length && BinaryPrimitives.ReadUInt16BigEndian(page[keepFrom..]) < pointer)
            keepFrom += 4 + page[keepFrom + 3];
        if (keepFrom >= page.Length) return -1;
        page[keepFrom..].CopyTo(page[4..]);
        return page.Length - (keepFrom - 4);
    }

    private int LogSupportedPages(Span<byte> p, bool subpages)
    {
        int pos = 4;
        foreach (var (code, sub, _) in LogPages)
        {
            if (!Offers(code) || (!subpages && sub != 0)) continue;
            p[pos++] = code;
            if (subpages) p[pos++] = sub;
        }
        return pos;
    }

    /// <summary>One log parameter: code, control byte (binary format), length, big-endian value.</summary>
    private static int LogParameter(Span<byte> p, int pos, ushort code, ulong value, int valueBytes)
    {
        BinaryPrimitives.WriteUInt16BigEndian(p[pos..], code);
        p[pos + 2] = 0x03; // FORMAT AND LINKING = 11b: binary format list
        p[pos + 3] = (byte)valueBytes;
        for (int i = 0; i < valueBytes; i++) p[pos + 4 + i] = (byte)(value >> (8 * (valueBytes - 1 - i)));
        return pos + 4 + valueBytes;
    }

    /// <summary>
    /// SBC-3 logical block provisioning log page: available (0001h) and used (0002h) LBA mapping resources,
    /// in units of 2^THRESHOLD EXPONENT blocks (VPD page B2h), scope "dedicated to this logical unit".
    /// </summary>
    private async ValueTask<int> LogProvisioning(Request r, Memory<byte> page)
    {
        var report = ProvisioningSource != null
            ? await ProvisioningSource(r.Ct).ConfigureAwait(false)
            : await CountMappedBlocksAsync(r.Ct).ConfigureAwait(false);
        int shift = ThresholdExponent;
        var p = page.Span;
        int pos = 4;
        foreach (var (code, blocks) in new[] { ((ushort)1, report.AvailableBlocks), ((ushort)2, report.UsedBlocks) })
        {
            BinaryPrimitives.WriteUInt16BigEndian(p[pos..], code);
            p[pos + 2] = 0x03;
            p[pos + 3] = 8;
            BinaryPrimitives.WriteUInt32BigEndian(p[(pos + 4)..], (uint)Math.Min(blocks >> shift, uint.MaxValue));
            p[pos + 8] = 0x01; // SCOPE: dedicated to this logical unit
            pos += 12;
        }
        return pos;
    }

    /// <summary>Resource counts are in 2^exponent blocks; the smallest exponent that keeps the capacity within 32 bits.</summary>
    internal int ThresholdExponent
    {
        get
        {
            int e = 0;
            while ((Volume.BlockCount >> e) > uint.MaxValue) e++;
            return e;
        }
    }

    /// <summary>Walks the volume's mapping (GET LBA STATUS extents): used = mapped blocks, available = the rest.</summary>
    public async ValueTask<ProvisioningReport> CountMappedBlocksAsync(CancellationToken ct)
    {
        ulong cap = Volume.BlockCount, mapped = 0;
        for (ulong lba = 0; lba < cap;)
        {
            var ext = await Volume.GetLbaStatusAsync(lba, ct).ConfigureAwait(false);
            ulong n = Math.Min(Math.Max(ext.Blocks, 1), cap - lba);
            if (ext.Mapped) mapped += n;
            lba += n;
        }
        return new ProvisioningReport(mapped, cap - mapped);
    }

    /// <summary>Codes of the integrity log page's parameters (README, "LOG SENSE").</summary>
    public static class IntegrityLogParameter
    {
        public const ushort VerificationFailures = 1, DistinctBadLbas = 2, LowestBadLba = 3,
            LastScrubFinished = 4, LastScrubBlocksChecked = 5, LastScrubBadBlocks = 6;
    }

    private int LogIntegrity(Span<byte> p)
    {
        var scrub = Health.LastScrub;
        int pos = 4;
        pos = LogParameter(p, pos, IntegrityLogParameter.VerificationFailures, (ulong)Volume.Counters.Mismatches, 8);
        pos = LogParameter(p, pos, IntegrityLogParameter.DistinctBadLbas, (ulong)Health.DistinctBadLbas, 8);
        pos = LogParameter(p, pos, IntegrityLogParameter.LowestBadLba, Health.LowestBadLba ?? ulong.MaxValue, 8);
        pos = LogParameter(p, pos, IntegrityLogParameter.LastScrubFinished, scrub == null ? 0 : (ulong)scrub.FinishedUtc.ToUnixTimeSeconds(), 8);
        pos = LogParameter(p, pos, IntegrityLogParameter.LastScrubBlocksChecked, scrub?.BlocksChecked ?? 0, 8);
        pos = LogParameter(p, pos, IntegrityLogParameter.LastScrubBadBlocks, (ulong)(scrub?.BadBlocks ?? 0), 8);
        return pos;
    }
}
