using System.Buffers.Binary;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Scsi.Tests;

public class LogSenseTests
{
    private Harness _h = null!;

    [SetUp]
    public void SetUp() { _h = new Harness(blocks: 8192); _h.Quiet(_h.A); }

    private static byte[] LogSense(byte page, byte subpage = 0, ushort pointer = 0, ushort alloc = 1024)
    {
        var c = new byte[10]; c[0] = 0x4D; c[2] = (byte)(0x40 | page); c[3] = subpage;
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(5), pointer);
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), alloc);
        return c;
    }

    /// <summary>Parameter code → value of a log page whose parameters are binary big-endian numbers.</summary>
    private static Dictionary<ushort, ulong> Parameters(ReadOnlySpan<byte> page)
    {
        var result = new Dictionary<ushort, ulong>();
        int end = 4 + BinaryPrimitives.ReadUInt16BigEndian(page[2..]);
        for (int pos = 4; pos < end;)
        {
            ushort code = BinaryPrimitives.ReadUInt16BigEndian(page[pos..]);
            int len = page[pos + 3];
            ulong v = 0;
            int n = code is 1 or 2 && page[0] == 0x8C ? 4 : len; // LBP resource counts are 4 bytes followed by SCOPE
            for (int i = 0; i < n; i++) v = (v << 8) | page[pos + 4 + i];
            result[code] = v;
            pos += 4 + len;
        }
        return result;
    }

    [Test]
    public void SupportedPagesListsProvisioningAndIntegrityAndEachAnswers()
    {
        using var r = _h.Exec(LogSense(0));
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        var d = r.DataIn.Span;
        Assert.That(d[4..(4 + BinaryPrimitives.ReadUInt16BigEndian(d[2..]))].ToArray(), Is.EqualTo(new byte[] { 0x00, 0x0C, 0x30 }));
        using var sub = _h.Exec(LogSense(0, 0xFF));
        Assert.That(sub.DataIn.Span[0], Is.EqualTo(0x40), "SPF");
        Assert.That(sub.DataIn.Span[4..].ToArray(), Is.EqualTo(new byte[] { 0x00, 0x00, 0x00, 0xFF, 0x0C, 0x00, 0x30, 0x00 }));
        foreach (byte page in new byte[] { 0x0C, 0x30 })
        {
            using var p = _h.Exec(LogSense(page));
            Assert.That(p.Status, Is.EqualTo(ScsiStatus.Good), $"page {page:X2}");
            Assert.That(p.DataIn.Span[0] & 0x3F, Is.EqualTo(page));
        }
        using var unknown = _h.Exec(LogSense(0x2F));
        SenseAssert.Is(unknown, 0x05, 0x24, 0x00);
    }

    [Test]
    public void ProvisioningPageCountsMappedAndUnmappedBlocks()
    {
        // PlainVolume over a memory device: everything reads as allocated except what was unmapped.
        var before = Parameters(_h.Exec(LogSense(0x0C)).DataIn.Span);
        Assert.That(before[1] + before[2], Is.EqualTo(8192UL), "available + used = capacity");
        _h.Unit.ProvisioningSource = _ => ValueTask.FromResult(new ProvisioningReport(UsedBlocks: 300, AvailableBlocks: 7000));
        using var r = _h.Exec(LogSense(0x0C));
        var p = Parameters(r.DataIn.Span);
        Assert.That(p[1], Is.EqualTo(7000UL));
        Assert.That(p[2], Is.EqualTo(300UL));
        Assert.That(r.DataIn.Span[4 + 8] & 0x03, Is.EqualTo(1), "scope: dedicated to the LU");
    }

    [Test]
    public void IntegrityPageCountsVerificationFailuresAndTheLastScrub()
    {
        _h.Write(0, Harness.Pattern(16 * 512, 1));
        _h.Volume.FailingLba = 7;
        using (var bad = _h.Exec(Harness.Read16(0, 16))) SenseAssert.Is(bad, 0x03, 0x11, 0x00);
        var p = Parameters(_h.Exec(LogSense(0x30)).DataIn.Span);
        Assert.That(p[2], Is.EqualTo(1UL), "distinct bad LBAs");
        Assert.That(p[3], Is.EqualTo(7UL), "lowest bad LBA");
        Assert.That(p[4], Is.EqualTo(0UL), "no scrub yet");

        var when = new DateTimeOffset(2026, 12, 7, 10, 0, 0, TimeSpan.Zero);
        _h.Unit.Health.RecordScrub(new ScrubSummary(when, 8192, 2), [7, 9]);
        p = Parameters(_h.Exec(LogSense(0x30)).DataIn.Span);
        Assert.That(p[2], Is.EqualTo(2UL));
        Assert.That(p[4], Is.EqualTo((ulong)when.ToUnixTimeSeconds()));
        Assert.That(p[5], Is.EqualTo(8192UL));
        Assert.That(p[6], Is.EqualTo(2UL));

        _h.Unit.Health.RecordScrub(new ScrubSummary(when.AddHours(1), 8192, 0), []);
        p = Parameters(_h.Exec(LogSense(0x30)).DataIn.Span);
        Assert.That(p[2], Is.EqualTo(0UL), "a clean scrub forgets blocks rewritten since");
        Assert.That(p[3], Is.EqualTo(ulong.MaxValue), "no bad LBA");
    }

    [Test]
    public void ParameterPointerAndAllocationLengthTrimTheAnswer()
    {
        using var r = _h.Exec(LogSense(0x30, pointer: 5));
        var p = Parameters(r.DataIn.Span);
        Assert.That(p.Keys, Is.EqualTo(new ushort[] { 5, 6 }));
        using var beyond = _h.Exec(LogSense(0x30, pointer: 7));
        SenseAssert.Is(beyond, 0x05, 0x24, 0x00);
        using var shortAlloc = _h.Exec(LogSense(0x30, alloc: 4));
        Assert.That(shortAlloc.DataIn.Length, Is.EqualTo(4));
        using var saveBit = _h.Exec([0x4D, 0x01, 0x70, 0, 0, 0, 0, 4, 0, 0]);
        SenseAssert.Is(saveBit, 0x05, 0x24, 0x00); // SP: parameters cannot be saved
    }
}
