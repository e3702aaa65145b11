using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Wiring;
using IntegrityTarget.Scsi;
using IntegrityTarget.Storage.Rbd;

namespace IntegrityTarget.Host.Tests;

/// <summary>Which LUNs log their device I/O errors in the SCSI layer: those whose volume and device log nothing themselves.</summary>
public class ScsiWiringTests
{
    static LunSettings Lun(bool integrity, string path) => new()
    {
        Lun = 0, Path = path, Serial = "S0", KeyPath = "Targets:0:Luns:0", Integrity = integrity,
        Rbd = RbdImageSpec.IsRbdPath(path) ? RbdImageSpec.Parse(path) : null,
    };

    [TestCase(false, "/srv/lun0.img", VolumeOperation.None, TestName = "A plain file LUN: the unit logs its device errors")]
    [TestCase(true, "/srv/lun0.img", VolumeOperation.Write | VolumeOperation.Flush, TestName = "An integrity LUN: the volume logs its journal and flush failures, the unit its read failures")]
    [TestCase(false, "rbd:pool/lun0", VolumeOperation.All, TestName = "A plain RBD LUN: the image logs every failed request")]
    [TestCase(true, "rbd:pool/lun0", VolumeOperation.All, TestName = "An integrity RBD LUN: the image logs every failed request")]
    public void The_unit_logs_device_errors_only_when_nothing_under_it_does(bool integrity, string path, VolumeOperation volumeLogs)
    {
        var options = ScsiWiring.UnitOptions("iqn.2026-12.test:t", Lun(integrity, path), ha: null);
        Assert.That(options.VolumeLogsDeviceErrors, Is.EqualTo(volumeLogs));
    }
}
