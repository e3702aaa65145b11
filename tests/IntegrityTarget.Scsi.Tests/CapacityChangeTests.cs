using System.Buffers.Binary;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Scsi.Tests;

/// <summary>A LUN grown under its initiators: every nexus hears CAPACITY DATA HAS CHANGED once, then sees the new size.</summary>
public class CapacityChangeTests
{
    [Test]
    public async Task Every_nexus_gets_2A_09_once_and_READ_CAPACITY_then_reports_the_new_size()
    {
        var h = new Harness(blocks: 4096);
        h.Quiet(h.A, h.B);
        h.Write(4095, Harness.Pattern(512, 4));
        Assert.That((await h.Volume.GrowAsync(10000)).IsOk, Is.True);
        h.Unit.NotifyCapacityChanged();

        foreach (var n in new[] { h.A, h.B })
        {
            using (var ua = h.Exec(new byte[6], nexus: n)) SenseAssert.Is(ua, 0x06, 0x2A, 0x09);
            using (var tur = h.Exec(new byte[6], nexus: n)) Assert.That(tur.Status, Is.EqualTo(ScsiStatus.Good), "reported once");
            using var cap = h.Exec([0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], nexus: n);
            Assert.That(BinaryPrimitives.ReadUInt64BigEndian(cap.DataIn.Span), Is.EqualTo(9999UL));
        }
        Assert.That(h.Read(4095, 1), Is.EqualTo(Harness.Pattern(512, 4)), "data before the old end is untouched");
        Assert.That(h.Read(9999, 1), Is.EqualTo(new byte[512]), "the new end reads as zeros");
    }
}
