using System.Buffers.Binary;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Scsi.Tests;

public class PrimaryCommandTests
{
    private Harness _h = null!;

    [SetUp]
    public void SetUp() { _h = new Harness(); _h.Quiet(_h.A, _h.B); }

    [Test]
    public void StandardInquiryClaimsSpc4WithHiSupCmdQueAndConfiguredIdentity()
    {
        using var r = _h.Exec([0x12, 0, 0, 0, 255, 0]);
        var d = r.DataIn.Span;
        Assert.That(d[0], Is.EqualTo(0x00));
        Assert.That(d[2], Is.EqualTo(0x06));
        Assert.That(d[3], Is.EqualTo(0x12));
        Assert.That(d[4], Is.EqualTo(d.Length - 5));
        Assert.That(d[7] & 0x02, Is.EqualTo(0x02));
        Assert.That(System.Text.Encoding.ASCII.GetString(d.Slice(8, 8)), Is.EqualTo("INTEGRTY"));
        Assert.That(System.Text.Encoding.ASCII.GetString(d.Slice(16, 16)), Is.EqualTo("IntegrityTarget "));
    }

    [Test]
    public void InquiryHonoursAllocationLength()
    {
        using var r = _h.Exec([0x12, 0, 0, 0, 5, 0]);
        Assert.That(r.DataIn.Length, Is.EqualTo(5));
        Assert.That(r.TransferLength, Is.EqualTo(5));
    }

    [Test]
    public void InquiryPageCodeWithoutEvpdIsInvalidFieldInCdb()
    {
        using var r = _h.Exec([0x12, 0, 0x80, 0, 255, 0]);
        SenseAssert.Is(r, 0x05, 0x24, 0x00);
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(r.Sense.Span[16..]), Is.EqualTo(2));
    }

    [Test]
    public void SupportedVpdPagesListsEveryPageOfTheTableAndEachAnswers()
    {
        using var r = _h.Exec([0x12, 1, 0x00, 0, 255, 0]);
        var pages = r.DataIn.Span[4..(4 + r.DataIn.Span[3])].ToArray();
        Assert.That(pages, Is.EqualTo(ScsiLogicalUnit.SupportedVpdPages.ToArray()));
        foreach (var p in pages)
        {
            using var pr = _h.Exec([0x12, 1, p, 0x04, 0, 0]);
            Assert.That(pr.Status, Is.EqualTo(ScsiStatus.Good), $"page {p:X2}");
            Assert.That(pr.DataIn.Span[1], Is.EqualTo(p));
            Assert.That(BinaryPrimitives.ReadUInt16BigEndian(pr.DataIn.Span[2..]) + 4, Is.EqualTo(pr.DataIn.Length));
        }
        using var missing = _h.Exec([0x12, 1, 0x86, 0, 255, 0]);
        SenseAssert.Is(missing, 0x05, 0x24, 0x00);
    }

    [Test]
    public void DeviceIdentificationCarriesAStableNaaDerivedFromTheSeed()
    {
        byte[] Naa(Harness h)
        {
            using var r = h.Exec([0x12, 1, 0x83, 0x04, 0, 0]);
            var d = r.DataIn.Span;
            Assert.That(d[4] & 0x0F, Is.EqualTo(1), "binary");
            Assert.That(d[5] & 0x0F, Is.EqualTo(3), "NAA");
            Assert.That(d[8] >> 4, Is.EqualTo(6), "NAA type 6");
            return d.Slice(8, 16).ToArray();
        }
        var first = Naa(_h);
        Assert.That(Naa(new Harness()), Is.EqualTo(first), "same seed, same id after a restart");
        Assert.That(Naa(new Harness(seed: "other")), Is.Not.EqualTo(first));
    }

    [Test]
    public void BlockLimitsReportTheVolumesAtomicLengthAndWriteAtomicHonoursIt()
    {
        var h = new Harness(atomicBlocks: 1024);
        h.Quiet(h.A);
        using var r = h.Exec([0x12, 1, 0xB0, 0, 255, 0]);
        var d = r.DataIn.Span;
        Assert.That(d[3], Is.EqualTo(0x3C));
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(d[44..]), Is.EqualTo(1024));
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(d[20..]), Is.EqualTo(ScsiLogicalUnit.MaxUnmapBlocks));
        var data = Harness.Pattern(4 * 512, 8);
        var c = new byte[16]; c[0] = 0x9C; BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), 3); c[13] = 4;
        using (var w = h.Exec(c, data)) Assert.That(w.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(h.Read(3, 4), Is.EqualTo(data));
        c[12] = 0x08; // 2052 blocks: above the atomic limit
        using var big = h.Exec(c, new byte[2052 * 512]);
        SenseAssert.Is(big, 0x05, 0x24, 0x00);
    }

    [Test]
    public void SmallAtomicUnitIsNotAdvertisedAndWriteAtomicIsThenUnsupported()
    {
        using var r = _h.Exec([0x12, 1, 0xB0, 0, 255, 0]);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(r.DataIn.Span[44..]), Is.Zero);
        var c = new byte[16]; c[0] = 0x9C; c[13] = 1;
        using var w = _h.Exec(c, new byte[512]);
        SenseAssert.Is(w, 0x05, 0x20, 0x00);
    }

    [Test]
    public void UnknownLunAnswersInquiryWithQualifierThreeAndOtherCommandsWithLogicalUnitNotSupported()
    {
        using var inq = _h.Exec([0x12, 0, 0, 0, 96, 0], lun: 5);
        Assert.That(inq.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(inq.DataIn.Span[0], Is.EqualTo(0x7F));
        using var tur = _h.Exec(new byte[6], lun: 5);
        SenseAssert.Is(tur, 0x05, 0x25, 0x00);
    }

    [Test]
    public void RequestSenseToAnUnknownLunReportsLogicalUnitNotSupportedAsData()
    {
        using var r = _h.Exec([0x03, 0, 0, 0, 18, 0], lun: 9);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(SenseAssert.Parse(r.DataIn), Is.EqualTo(((byte)5, (byte)0x25, (byte)0)));
    }

    [Test]
    public void ReportLunsWellKnownOnlyIsEmptyAndUnknownSelectReportIsInvalid()
    {
        using var wk = _h.Exec([0xA0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(wk.DataIn.Span), Is.Zero);
        using var bad = _h.Exec([0xA0, 0, 7, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        SenseAssert.Is(bad, 0x05, 0x24, 0x00);
    }

    [Test]
    public void ReportLunsListsTheTargetsLuns()
    {
        using var r = _h.Exec([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(r.DataIn.Span), Is.EqualTo(8));
        Assert.That(r.DataIn.Span.Slice(8, 8).ToArray(), Is.EqualTo(new byte[8]));
        using var small = _h.Exec([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]);
        SenseAssert.Is(small, 0x05, 0x24, 0x00);
    }

    [Test]
    public void UnsupportedOpcodeIsInvalidCommandOperationCode()
    {
        using var r = _h.Exec([0xC0, 0, 0, 0, 0, 0]);
        SenseAssert.Is(r, 0x05, 0x20, 0x00);
    }

    [Test]
    public void UnsupportedServiceActionIsInvalidFieldInCdb()
    {
        using var r = _h.Exec([0x5E, 0x05, 0, 0, 0, 0, 0, 0, 255, 0]);
        SenseAssert.Is(r, 0x05, 0x24, 0x00);
    }

    [Test]
    public void ReportSupportedOpcodesListsExactlyTheOpcodeTable()
    {
        using var r = _h.Exec([0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0]);
        var d = r.DataIn.Span;
        int len = (int)BinaryPrimitives.ReadUInt32BigEndian(d);
        var listed = new List<(byte, int)>();
        for (int pos = 4; pos < 4 + len; pos += 8)
        {
            bool sa = (d[pos + 5] & 1) != 0;
            listed.Add((d[pos], sa ? BinaryPrimitives.ReadUInt16BigEndian(d[(pos + 2)..]) : -1));
            Assert.That(d[pos + 5] & 0x02, Is.Zero, "no CTDP without RCTD");
        }
        Assert.That(listed, Is.EqualTo(OpcodeTable.AllCommands().Where(_h.Unit.Implements).Select(c => (c.Opcode, c.ServiceAction)).ToList()));
        for (int op = 0; op < 256; op++)
        {
            var e = OpcodeTable.Get((byte)op);
            if (e is { ServiceActions: null } && e.IsSupported && _h.Unit.Implements(e)) continue;
            if (e?.ServiceActions != null) continue;
            using var u = _h.Exec([0x12 == op ? (byte)0 : (byte)op, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            if (op != 0x12) SenseAssert.Is(u, 0x05, 0x20, 0x00);
        }
    }

    [Test]
    public void ReportSupportedOpcodesOneCommandReturnsTheTableUsageMaskAndTimeouts()
    {
        using var r = _h.Exec([0xA3, 0x0C, 0x81, 0x28, 0, 0, 0, 0, 1, 0, 0, 0]);
        var d = r.DataIn.Span;
        Assert.That(d[1], Is.EqualTo(0x80 | 0x03));
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(d[2..]), Is.EqualTo(10));
        Assert.That(d.Slice(4, 10).ToArray(), Is.EqualTo(OpcodeTable.Get(0x28)!.Usage));
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(d[14..]), Is.EqualTo(0x0A));
        using var withSa = _h.Exec([0xA3, 0x0C, 0x01, 0x9E, 0, 0, 0, 0, 1, 0, 0, 0]);
        SenseAssert.Is(withSa, 0x05, 0x24, 0x00);
        using var sa = _h.Exec([0xA3, 0x0C, 0x02, 0x9E, 0, 0x10, 0, 0, 1, 0, 0, 0]);
        Assert.That(sa.DataIn.Span[1] & 7, Is.EqualTo(3));
        using var unsupported = _h.Exec([0xA3, 0x0C, 0x01, 0xC0, 0, 0, 0, 0, 1, 0, 0, 0]);
        Assert.That(unsupported.DataIn.Span[1] & 7, Is.EqualTo(1));
    }

    [Test]
    public void CachingPageWceFollowsTheVolumeAndModeSelectChangesIt()
    {
        _h.Volume.WriteBack = true;
        var h = new Harness(); // WCE default comes from the volume at construction
        h.Quiet(h.A, h.B);
        using var ms = h.Exec([0x1A, 0x08, 0x08, 0, 255, 0]);
        var page = ms.DataIn.Span[4..];
        Assert.That(page[0], Is.EqualTo(0x08));
        Assert.That(page[2] & 0x04, Is.EqualTo(0x04), "WCE");
        var sel = ms.DataIn.ToArray(); sel[0] = 0; sel[4 + 2] &= 0xFB;
        using var r = h.Exec([0x15, 0x10, 0, 0, (byte)sel.Length, 0], sel);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(h.Volume.WriteBack, Is.False);
        using var other = h.Exec(new byte[6], null, h.B);
        SenseAssert.Is(other, 0x06, 0x2A, 0x01);
        using var self = h.Exec(new byte[6], null, h.A);
        Assert.That(self.Status, Is.EqualTo(ScsiStatus.Good), "the changing nexus gets no unit attention");
    }

    [Test]
    public void ModeSelectOfANonChangeableBitIsInvalidFieldInParameterList()
    {
        using var ms = _h.Exec([0x1A, 0x08, 0x0A, 0, 255, 0]);
        var sel = ms.DataIn.ToArray(); sel[0] = 0; sel[4 + 3] ^= 0x02; // QERR is not changeable
        using var r = _h.Exec([0x15, 0x10, 0, 0, (byte)sel.Length, 0], sel);
        SenseAssert.Is(r, 0x05, 0x26, 0x00);
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(r.Sense.Span[16..]), Is.EqualTo(7));
        Assert.That(r.Sense.Span[15] & 0x40, Is.Zero, "C/D = 0: the error is in the parameter list");
    }

    [Test]
    public void DSenseSwitchesSenseToDescriptorFormat()
    {
        using var ms = _h.Exec([0x1A, 0x08, 0x0A, 0, 255, 0]);
        var sel = ms.DataIn.ToArray(); sel[0] = 0; sel[4 + 2] |= 0x04;
        using var set = _h.Exec([0x15, 0x10, 0, 0, (byte)sel.Length, 0], sel);
        Assert.That(set.Status, Is.EqualTo(ScsiStatus.Good));
        using var r = _h.Exec(Harness.Read16(ulong.MaxValue, 1));
        Assert.That(r.Sense.ToArray(), Is.EqualTo(new byte[] { 0x72, 0x05, 0x21, 0x00, 0, 0, 0, 0 }));
    }

    [Test]
    public void TransportFailureSenseComesFromTheReasonTableInTheFormatDSenseSelects()
    {
        using (var fixedFormat = _h.Target.TransportFailure(0, ScsiError.Of(SenseReason.DataOffsetError)))
        {
            Assert.That(fixedFormat.Status, Is.EqualTo(ScsiStatus.CheckCondition));
            Assert.That(fixedFormat.Sense.ToArray(), Is.EqualTo(new byte[] { 0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x4B, 0x05, 0, 0, 0, 0 }));
        }
        using var ms = _h.Exec([0x1A, 0x08, 0x0A, 0, 255, 0]);
        var sel = ms.DataIn.ToArray(); sel[0] = 0; sel[4 + 2] |= 0x04;
        using var set = _h.Exec([0x15, 0x10, 0, 0, (byte)sel.Length, 0], sel);
        using var descriptor = _h.Target.TransportFailure(0, ScsiError.Of(SenseReason.ProtocolServiceCrcError));
        Assert.That(descriptor.Sense.ToArray(), Is.EqualTo(new byte[] { 0x72, 0x0B, 0x47, 0x05, 0, 0, 0, 0 }));
    }

    [Test]
    public void FixedSenseForLbaOutOfRangeIsExact()
    {
        using var r = _h.Exec(Harness.Read16(ulong.MaxValue, 1));
        Assert.That(r.Sense.ToArray(), Is.EqualTo(new byte[] { 0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0 }));
    }

    [Test]
    public void SoftwareWriteProtectRejectsWrites()
    {
        using var ms = _h.Exec([0x1A, 0x08, 0x0A, 0, 255, 0]);
        var sel = ms.DataIn.ToArray(); sel[0] = 0; sel[4 + 4] |= 0x08;
        using var set = _h.Exec([0x15, 0x10, 0, 0, (byte)sel.Length, 0], sel);
        using var w = _h.Exec(Harness.Write16(0, 1), new byte[512]);
        SenseAssert.Is(w, 0x07, 0x27, 0x00);
        using var ms2 = _h.Exec([0x1A, 0, 0x3F, 0, 255, 0]);
        Assert.That(ms2.DataIn.Span[2] & 0x80, Is.EqualTo(0x80), "WP in the device-specific parameter");
    }

    [Test]
    public void ModeSenseSavedValuesAreNotSupported()
    {
        using var r = _h.Exec([0x1A, 0, 0xFF, 0, 255, 0]);
        SenseAssert.Is(r, 0x05, 0x39, 0x00);
    }

    [Test]
    public void ModeSense10WithLongLbaGivesA16ByteBlockDescriptor()
    {
        using var r = _h.Exec([0x5A, 0x10, 0x3F, 0, 0, 0, 0, 0x10, 0, 0]);
        var d = r.DataIn.Span;
        Assert.That(d[4] & 1, Is.EqualTo(1));
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(d[6..]), Is.EqualTo(16));
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(d[8..]), Is.EqualTo(4096));
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(d[20..]), Is.EqualTo(512));
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(d) + 2, Is.EqualTo(d.Length));
    }
}
