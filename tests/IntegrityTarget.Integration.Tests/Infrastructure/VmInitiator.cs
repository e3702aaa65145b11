namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>../shared/tools/vm-initiator/run.sh: open-iscsi in a Linux guest under QEMU TCG.</summary>
public static class VmInitiator
{
    public static ToolResult Run(ServerProcess srv, int lun, Dictionary<string, string>? env = null, string? iqn = null)
    {
        Tools.RequireTool("qemu-system-x86_64");
        Tools.RequireTool("socat");
        var script = Paths.Require(Path.Combine(Paths.VmInitiatorDir, "run.sh"), "vm-initiator run.sh");
        env ??= new();
        env.TryAdd("VM_TIMEOUT", "600");
        env.TryAdd("VM_RUN_DIR", Path.Combine(srv.DataDir, "vm"));
        TestContext.Progress.WriteLine($"vm-initiator against {srv.Host}:{srv.Port} {iqn ?? srv.Iqn} LUN {lun} (1-2 min under TCG)");
        return Tools.Run("/bin/bash", [script, srv.Host, srv.Port.ToString(), iqn ?? srv.Iqn, lun.ToString()], TimeSpan.FromMinutes(12), env);
    }

    /// <summary>
    /// run.sh --multipath over several portals of one target: dm-multipath in the guest writes files while
    /// <paramref name="onLine"/> watches the marker lines (kill a gateway on "VMX-MP: READY").
    /// </summary>
    public static ToolResult RunMultipath(IReadOnlyList<ServerProcess> gateways, string iqn, int lun, string runDir,
        Dictionary<string, string>? env = null, Action<string>? onLine = null)
    {
        Tools.RequireTool("qemu-system-x86_64");
        Tools.RequireTool("socat");
        var script = Paths.Require(Path.Combine(Paths.VmInitiatorDir, "run.sh"), "vm-initiator run.sh");
        env ??= new();
        env.TryAdd("VM_TIMEOUT", "600");
        env["VM_RUN_DIR"] = runDir;
        var portals = string.Join(',', gateways.Select(g => $"{g.Host}:{g.Port}"));
        TestContext.Progress.WriteLine($"vm-initiator --multipath {portals} {iqn} LUN {lun} (about 2 min under TCG)");
        return Tools.Run("/bin/bash", [script, "--multipath", portals, iqn, lun.ToString()], TimeSpan.FromMinutes(12), env, onLine: onLine);
    }

    public static void AssertPass(ToolResult r)
    {
        var last = r.StdOut.TrimEnd().Split('\n').LastOrDefault()?.Trim();
        Assert.That(last, Is.EqualTo("VM-INITIATOR: PASS"), () => r.Describe(12000));
    }
}
