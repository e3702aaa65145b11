using IntegrityTarget.Scsi;

namespace IntegrityTarget.Scsi.Tests;

public class UnitAttentionTests
{
    [Test]
    public void NewNexusGetsPowerOnResetOnceOnItsFirstCommand()
    {
        var h = new Harness();
        h.Target.NexusCreated(h.A);
        using var first = h.Exec(new byte[6]);
        SenseAssert.Is(first, 0x06, 0x29, 0x00);
        using var second = h.Exec(new byte[6]);
        Assert.That(second.Status, Is.EqualTo(ScsiStatus.Good));
    }

    [Test]
    public void InquiryAndReportLunsRunWithoutClearingTheUnitAttention()
    {
        var h = new Harness();
        h.Target.NexusCreated(h.A);
        using var inq = h.Exec([0x12, 0, 0, 0, 36, 0]);
        Assert.That(inq.Status, Is.EqualTo(ScsiStatus.Good));
        using var rl = h.Exec([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        Assert.That(rl.Status, Is.EqualTo(ScsiStatus.Good));
        using var tur = h.Exec(new byte[6]);
        SenseAssert.Is(tur, 0x06, 0x29, 0x00);
    }

    [Test]
    public void RequestSenseReturnsThePendingUnitAttentionAsDataAndClearsIt()
    {
        var h = new Harness();
        h.Target.NexusCreated(h.A);
        using var rs = h.Exec([0x03, 0, 0, 0, 252, 0]);
        Assert.That(rs.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(SenseAssert.Parse(rs.DataIn), Is.EqualTo(((byte)6, (byte)0x29, (byte)0)));
        using var desc = h.Exec([0x03, 1, 0, 0, 252, 0]);
        Assert.That(desc.DataIn.ToArray(), Is.EqualTo(new byte[] { 0x72, 0, 0, 0, 0, 0, 0, 0 }), "NO SENSE, descriptor format");
        using var tur = h.Exec(new byte[6]);
        Assert.That(tur.Status, Is.EqualTo(ScsiStatus.Good));
    }

    [Test]
    public void LogicalUnitResetGivesEveryNexusBusDeviceResetIncludingTheIssuer()
    {
        var h = new Harness();
        h.Quiet(h.A, h.B);
        h.Target.LogicalUnitReset(0, h.A);
        using var a = h.Exec(new byte[6], null, h.A);
        SenseAssert.Is(a, 0x06, 0x29, 0x03);
        using var b = h.Exec(new byte[6], null, h.B);
        SenseAssert.Is(b, 0x06, 0x29, 0x03);
    }

    [Test]
    public void CapacityChangeIsReportedToEveryNexus()
    {
        var h = new Harness();
        h.Quiet(h.A, h.B);
        h.Unit.NotifyCapacityChanged();
        using var a = h.Exec(new byte[6], null, h.A);
        SenseAssert.Is(a, 0x06, 0x2A, 0x09);
        using var b = h.Exec(new byte[6], null, h.B);
        SenseAssert.Is(b, 0x06, 0x2A, 0x09);
    }
}
