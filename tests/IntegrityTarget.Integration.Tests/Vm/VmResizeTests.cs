using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Vm;

/// <summary>
/// Online grow seen by the Linux kernel initiator: the guest keeps a filesystem busy, the host grows the LUN
/// (`integrity-target resize`), the guest's `iscsiadm --rescan` shows the new size, resize2fs grows the
/// filesystem into it, and every checksum verifies (after dropping caches and after e2fsck).
/// </summary>
[TestFixture, Category("Vm")]
public class VmResizeTests
{
    [Test]
    public void Linux_initiator_sees_an_online_grow_after_rescan_and_resize2fs_grows_the_filesystem_with_data_intact()
    {
        using var srv = new ServerProcess(new ServerOptions { Size = "128MiB", Integrity = false }).Start();
        try
        {
            var script = Path.Combine(TestContext.CurrentContext.TestDirectory, "Vm", "resize-guest.sh");
            Assert.That(File.Exists(script), Is.True, script);
            var runDir = Path.Combine(srv.DataDir, "vm");
            var vm = Task.Run(() => VmInitiator.Run(srv, 0, new()
            {
                ["VM_EXTRA"] = script, ["VM_EXTRA_ONLY"] = "1", ["VM_EXTRA_TIMEOUT"] = "400", ["VM_RUN_DIR"] = runDir,
            }));

            // The host side: grow when the guest says its filesystem is busy.
            var report = Path.Combine(runDir, "report.log");
            var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(8);
            while (!(File.Exists(report) && File.ReadAllText(report).Contains("VMX-RESIZE: READY")) && !vm.IsCompleted && DateTime.UtcNow < deadline)
                Thread.Sleep(500);
            Assert.That(vm.IsCompleted, Is.False, () => "the guest ended before it was ready:\n" + vm.Result.Describe(12000));
            var grow = ServerProcess.Cli(TimeSpan.FromSeconds(60), "resize", $"{srv.Iqn}/0", "384MiB", "--socket", srv.StatusSocket);
            Assert.That(grow.ExitCode, Is.EqualTo(0), () => grow.Describe());

            var r = vm.GetAwaiter().GetResult();
            VmInitiator.AssertPass(r);
            Assert.That(r.StdOut, Does.Contain("VMX-RESIZE: GREW 262144 -> 786432 sectors"), () => r.Describe(12000));
            Assert.That(r.StdOut, Does.Contain("VMX-RESIZE: DONE"), () => r.Describe(12000));
            Assert.That(r.StdOut, Does.Not.Contain("FAILED"), () => r.Describe(12000));
            Assert.That(srv.IsRunning, Is.True);
            srv.Stop();
        }
        finally { try { Directory.Delete(srv.DataDir, true); } catch (IOException) { } }
    }
}
