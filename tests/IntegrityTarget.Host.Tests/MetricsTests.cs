using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Metrics;
using IntegrityTarget.Host.Serving;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Host.Tests;

public class MetricsTests
{
    const string Iqn = "iqn.2026-11.org.example:metrics";

    static ServedLun Lun(ulong n, out PlainVolume volume)
    {
        var dev = new MemoryBlockDevice(1 << 20);
        volume = new PlainVolume(dev, 512, $"{Iqn}/{n}", ownsDevice: false);
        return new ServedLun(new LunSettings { Lun = n, Path = $"/nowhere/{n}.img", Serial = $"S{n}", KeyPath = $"Targets:0:Luns:{n}" }, volume, dev);
    }

    [Test]
    public async Task Each_lun_has_its_own_series_and_a_removed_lun_stops_being_exported()
    {
        var l0 = Lun(0, out var v0);
        var l1 = Lun(1, out _);
        var target = new ServedTarget(new TargetSettings { Iqn = Iqn, AllowedInitiators = ["*"], Luns = [l0.Settings, l1.Settings] }, [l0, l1]);
        var targets = new List<ServedTarget> { target };
        using var m = HostMetrics.Detached(() => targets, () => [], () => null);
        Assert.That((await v0.WriteAsync(0, new byte[4096], fua: false)).IsOk, Is.True);

        var text = await m.ExportAsync();
        Assert.That(text, Does.Contain($"integritytarget_lun_writes_total{{target=\"{Iqn}\",lun=\"0\"}} 1"));
        Assert.That(text, Does.Contain($"integritytarget_lun_written_bytes_total{{target=\"{Iqn}\",lun=\"0\"}} 4096"));
        Assert.That(text, Does.Contain($"integritytarget_lun_capacity_bytes{{target=\"{Iqn}\",lun=\"1\"}} 1048576"));
        Assert.That(text, Does.Not.Contain("lun_slots{"), "plain LUNs have no slots");

        target.Luns = [l0]; // as a reload that removed LUN 1 leaves it
        text = await m.ExportAsync();
        Assert.That(text, Does.Not.Contain("lun=\"1\""));
        Assert.That(text, Does.Contain("lun=\"0\""));
    }

    [TestCase((byte)0x28, 0)]
    [TestCase((byte)0x88, 0)]
    [TestCase((byte)0x2A, 1)]
    [TestCase((byte)0x93, 1)]
    [TestCase((byte)0x83, 1)]
    [TestCase((byte)0x12, 2)]
    [TestCase((byte)0x35, 2)]
    public void Commands_are_classed_as_read_write_or_other_by_opcode(byte opcode, int expected) =>
        Assert.That(TimedScsiTarget.ClassOf(opcode), Is.EqualTo(expected));
}
