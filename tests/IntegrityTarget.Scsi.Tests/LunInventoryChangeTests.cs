using System.Buffers.Binary;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Scsi.Tests;

/// <summary>
/// LUNs added to or removed from a served target (reload): every I_T nexus hears REPORTED LUNS DATA HAS
/// CHANGED (3F/0E), and a REPORT LUNS on a nexus clears it there (SAM-5 5.14, UA_INTLCK_CTRL 00b), so an
/// initiator that rescanned is not told again on each of its other LUNs.
/// </summary>
public class LunInventoryChangeTests
{
    static readonly byte[] ReportLuns = [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];

    static ScsiLogicalUnit NewUnit(ulong lun) =>
        new(lun, new FlakyVolume(256), new LogicalUnitOptions { Serial = $"S{lun}", IdentitySeed = $"unit{lun}" }, Serilog.Core.Logger.None);

    static Harness Served()
    {
        var h = new Harness();
        h.Target.NexusCreated(h.A);
        h.Target.NexusCreated(h.B);
        h.Quiet(h.A, h.B);
        return h;
    }

    [Test]
    public void A_new_lun_is_announced_and_REPORT_LUNS_clears_the_announcement_on_every_lun_of_that_nexus()
    {
        var h = Served();
        h.Target.AddUnit(NewUnit(1));

        using (var rl = h.Exec(ReportLuns))
        {
            Assert.That(rl.Status, Is.EqualTo(ScsiStatus.Good));
            Assert.That(BinaryPrimitives.ReadUInt32BigEndian(rl.DataIn.Span), Is.EqualTo(16), "two LUNs listed");
        }
        using (var tur = h.Exec(new byte[6])) Assert.That(tur.Status, Is.EqualTo(ScsiStatus.Good), "A rescanned: nothing left to report on LUN 0");
        using (var tur = h.Exec(new byte[6], lun: 1)) Assert.That(tur.Status, Is.EqualTo(ScsiStatus.Good), "nor on LUN 1");

        using (var ua = h.Exec(new byte[6], nexus: h.B)) SenseAssert.Is(ua, 0x06, 0x3F, 0x0E); // B has not rescanned yet
        using (var tur = h.Exec(new byte[6], nexus: h.B)) Assert.That(tur.Status, Is.EqualTo(ScsiStatus.Good), "reported once per LUN");
    }

    [Test]
    public void A_removed_lun_answers_LOGICAL_UNIT_NOT_SUPPORTED_and_the_others_announce_the_change()
    {
        var h = Served();
        h.Target.AddUnit(NewUnit(1));
        foreach (var n in new[] { h.A, h.B }) using (var rl = h.Exec(ReportLuns, nexus: n)) Assert.That(rl.Status, Is.EqualTo(ScsiStatus.Good));

        Assert.That(h.Target.RemoveUnit(1), Is.Not.Null);
        using (var gone = h.Exec(new byte[6], lun: 1)) SenseAssert.Is(gone, 0x05, 0x25, 0x00);
        using (var ua = h.Exec(new byte[6])) SenseAssert.Is(ua, 0x06, 0x3F, 0x0E);
        using (var rl = h.Exec(ReportLuns, nexus: h.B)) Assert.That(BinaryPrimitives.ReadUInt32BigEndian(rl.DataIn.Span), Is.EqualTo(8), "one LUN left");
        using (var tur = h.Exec(new byte[6], nexus: h.B)) Assert.That(tur.Status, Is.EqualTo(ScsiStatus.Good), "B rescanned");
    }

    [Test]
    public void REPORT_LUNS_to_a_lun_that_does_not_exist_clears_the_announcement_too()
    {
        var h = Served();
        h.Target.AddUnit(NewUnit(1));
        using (var rl = h.Exec(ReportLuns, lun: 9)) Assert.That(rl.Status, Is.EqualTo(ScsiStatus.Good));
        using (var tur = h.Exec(new byte[6])) Assert.That(tur.Status, Is.EqualTo(ScsiStatus.Good));
    }
}
