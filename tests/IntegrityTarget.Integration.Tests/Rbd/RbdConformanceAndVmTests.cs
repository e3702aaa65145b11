using IntegrityTarget.Integration.Tests.Conformance;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Rbd;

/// <summary>libiscsi's conformance suite on an RBD LUN (integrity on), as on files.</summary>
[TestFixture, Category("Conformance"), Category("Rbd")]
public class RbdConformanceTests
{
    [Test]
    public void Libiscsi_conformance_suite_ALL_has_no_failures_on_an_rbd_lun()
    {
        using var image = new RbdImage("cu");
        var o = image.Serve("1GiB");
        o.Extra.AddRange([$"--Targets:0:AllowedInitiators:0={ConformanceTests.Initiator1}", $"--Targets:0:AllowedInitiators:1={ConformanceTests.Initiator2}"]);
        using var srv = new ServerProcess(o).Start(TimeSpan.FromMinutes(2));
        var report = ConformanceTests.RunSuite(srv.Url(0), Path.Combine(TestContext.CurrentContext.WorkDirectory, "iscsi-test-cu.rbd.log"));
        var failed = string.Join(", ", report.Failed);
        Assert.Multiple(() =>
        {
            Assert.That(report.SummaryFailed, Is.EqualTo(0), () => "CUnit failures: " + failed);
            Assert.That(report.Failed, Is.Empty, () => "failed tests: " + failed);
            Assert.That(report.SummaryRan, Is.EqualTo(report.SummaryTotal), "every test ran");
        });
        Assert.That(srv.IsRunning, Is.True, () => "the server died during the suite\n" + srv.Output());
        srv.Stop();
    }
}

/// <summary>The Linux kernel initiator (open-iscsi in the vm-initiator guest) on an RBD LUN.</summary>
[TestFixture, Category("Vm"), Category("Rbd")]
public class RbdVmInitiatorTests
{
    [Test]
    public void Open_iscsi_logs_in_and_keeps_a_filesystem_on_an_rbd_lun()
    {
        using var image = new RbdImage("vm");
        using var srv = new ServerProcess(image.Serve("256MiB")).Start(TimeSpan.FromMinutes(2));
        var r = VmInitiator.Run(srv, 0, new() { ["VM_DATA_MB"] = "32", ["VM_SMALL_FILES"] = "100" });
        VmInitiator.AssertPass(r);
        Assert.That(srv.IsRunning, Is.True);
        srv.Stop();
    }
}
