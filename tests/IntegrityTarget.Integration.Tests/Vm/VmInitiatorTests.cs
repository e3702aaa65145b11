using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Vm;

/// <summary>The Linux kernel initiator (open-iscsi) in a VM: discovery, login, mkfs, write, re-login, verify.</summary>
[TestFixture, Category("Vm")]
public class VmInitiatorTests
{
    [Test]
    public void Open_iscsi_discovers_logs_in_and_keeps_a_filesystem_across_relogin()
    {
        using var srv = new ServerProcess(new ServerOptions { Size = "256MiB" }).Start();
        var r = VmInitiator.Run(srv, 0, new() { ["VM_DATA_MB"] = "32", ["VM_SMALL_FILES"] = "100" });
        VmInitiator.AssertPass(r);
        Assert.That(srv.IsRunning, Is.True);
        srv.Stop();
    }

    [Test]
    public void Open_iscsi_logs_in_with_mutual_chap()
    {
        const string User = "vm-user", Secret = "vm-secret-01234", TUser = "vm-target", TSecret = "vm-target-56789";
        var o = new ServerOptions { Size = "256MiB" };
        o.Extra.AddRange([$"--Targets:0:Chap:User={User}", $"--Targets:0:Chap:Secret={Secret}",
            $"--Targets:0:MutualChap:User={TUser}", $"--Targets:0:MutualChap:Secret={TSecret}"]);
        using var srv = new ServerProcess(o).Start();
        var r = VmInitiator.Run(srv, 0, new()
        {
            ["VM_DATA_MB"] = "16", ["VM_SMALL_FILES"] = "50", ["VM_DIRECT_READ"] = "0",
            ["VM_NODE_OPTS"] = $"node.session.auth.authmethod=CHAP node.session.auth.username={User} node.session.auth.password={Secret} " +
                               $"node.session.auth.username_in={TUser} node.session.auth.password_in={TSecret}",
        });
        VmInitiator.AssertPass(r);
        srv.Stop();
    }
}
