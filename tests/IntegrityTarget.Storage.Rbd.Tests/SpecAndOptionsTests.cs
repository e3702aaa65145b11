using IntegrityTarget.Storage.Rbd;

namespace IntegrityTarget.Storage.Rbd.Tests;

public class SpecAndOptionsTests
{
    [TestCase("rbd:rbd/vm1", "rbd", null, "vm1")]
    [TestCase("rbd:fast/tenant-a/disk.0", "fast", "tenant-a", "disk.0")]
    [TestCase("RBD:rbd/vm1", "rbd", null, "vm1")]
    public void Lun_paths_name_pool_namespace_and_image(string path, string pool, string? ns, string image)
    {
        Assert.That(RbdImageSpec.TryParse(path, out var spec, out var error), Is.True, error);
        Assert.That((spec.Pool, spec.Namespace, spec.Image), Is.EqualTo((pool, ns, image)));
        Assert.That(RbdImageSpec.Parse(spec.ToString()), Is.EqualTo(spec), "the canonical form parses back");
    }

    [TestCase("rbd:vm1", "POOL/IMAGE")]
    [TestCase("rbd:", "POOL/IMAGE")]
    [TestCase("rbd:rbd/", "POOL/IMAGE")]
    [TestCase("rbd:a/b/c/d", "POOL/IMAGE")]
    [TestCase("rbd:rbd/vm 1", "spaces")]
    [TestCase("rbd:rbd/vm1@snap", "snapshots")]
    public void Malformed_rbd_paths_are_refused_with_the_expected_form(string path, string hint)
    {
        Assert.That(RbdImageSpec.TryParse(path, out _, out var error), Is.False);
        Assert.That(error, Does.Contain(hint));
    }

    [Test]
    public void File_paths_are_not_rbd_paths()
    {
        Assert.That(RbdImageSpec.IsRbdPath("/var/lib/lun0.img"), Is.False);
        Assert.That(RbdImageSpec.IsRbdPath("rbd.img"), Is.False);
        Assert.That(RbdImageSpec.IsRbdPath("rbd:rbd/x"), Is.True);
    }

    [Test]
    public void Defaults_are_the_ceph_clis_and_the_forced_settings_bound_every_wait()
    {
        var o = new CephClientOptions();
        Assert.That((o.Cluster, o.ClientId, o.ClientName, o.ConfFile, o.Keyring), Is.EqualTo(("ceph", "admin", "client.admin", (string?)null, (string?)null)));
        var forced = new CephClientOptions { TimeoutSeconds = 12 }.ForcedSettings().ToDictionary(x => x.Option, x => x.Value);
        Assert.That(forced["rados_osd_op_timeout"], Is.EqualTo("12"));
        Assert.That(forced["rados_mon_op_timeout"], Is.EqualTo("12"));
        Assert.That(forced["client_mount_timeout"], Is.EqualTo("12"));
        Assert.That(forced["rbd_cache"], Is.EqualTo("false"), "no write may complete from librbd's memory only");
        Assert.That(CephClientOptions.NormaliseClientId("client.iscsi"), Is.EqualTo("iscsi"));
        Assert.That(CephClientOptions.NormaliseClientId("iscsi"), Is.EqualTo("iscsi"));
    }
}
