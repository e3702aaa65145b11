using System.Diagnostics;

namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>
/// A throwaway ceph-mini cluster in a private network and mount namespace of its own (held open by a sleeping
/// process), with /etc/ceph there a tmpfs set up as on a Ceph admin node: a ceph.conf with the cluster's
/// [global] section (the monitors) and client.admin's keyring. Scripts run inside with <see cref="Run"/>, so
/// the `ceph`, `rbd` and `integrity-target` commands in them use the Ceph defaults exactly as a reader's shell
/// would, and nothing on the host (its /etc/ceph, 127.0.0.1, the test run's own cluster) is touched.
/// </summary>
public sealed class NamespacedCephCluster : IDisposable
{
    readonly Process _holder;
    readonly string _dir, _script;

    public NamespacedCephCluster(string dir)
    {
        _dir = dir;
        _script = Paths.Require(Path.Combine(Paths.SharedDir, "tools", "ceph-mini", "ceph-mini.sh"), "ceph-mini.sh");
        Tools.RequireTool("nsenter");
        // unshare execs sleep once the namespaces exist: the process is in them when its name is "sleep".
        _holder = Process.Start(new ProcessStartInfo(Tools.RequireTool("unshare"), ["--net", "--mount", "--", "sleep", "7200"]) { UseShellExecute = false })!;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (ReadComm() != "sleep" && !_holder.HasExited && DateTime.UtcNow < deadline) Thread.Sleep(20);
        Assert.That(ReadComm(), Is.EqualTo("sleep"), "the namespace holder (unshare --net --mount -- sleep) started");
        var setup = Path.Combine(Path.GetDirectoryName(dir)!, "ceph-admin-node.sh");
        File.WriteAllText(setup, $$"""
            set -euo pipefail
            ip link set lo up
            mkdir -p /etc/ceph
            mount -t tmpfs -o mode=0755 tmpfs /etc/ceph
            conf=$('{{_script}}' start '{{dir}}')
            awk '/^\[/ { g = ($0 == "[global]") } g' "$conf" > /etc/ceph/ceph.conf
            install -m 0600 '{{dir}}/ceph.client.admin.keyring' /etc/ceph/ceph.client.admin.keyring
            """);
        var r = Run(setup, TimeSpan.FromMinutes(4));
        if (r.ExitCode != 0)
        {
            Dispose();
            Assert.Fail("a throwaway Ceph cluster in a private namespace could not be started:\n" + r.Describe(8000));
        }
    }

    string? ReadComm()
    {
        try { return File.ReadAllText($"/proc/{_holder.Id}/comm").Trim(); }
        catch (IOException) { return null; }
    }

    /// <summary>Runs `bash SCRIPT` inside the cluster's namespaces.</summary>
    public ToolResult Run(string script, TimeSpan timeout) =>
        Tools.Run(Tools.RequireTool("nsenter"), ["-t", _holder.Id.ToString(), "--net", "--mount", "--", "bash", script], timeout);

    public void Dispose()
    {
        try
        {
            if (!_holder.HasExited)
                Tools.Run(Tools.RequireTool("nsenter"), ["-t", _holder.Id.ToString(), "--net", "--mount", "--", _script, "stop", _dir, "--wipe"], TimeSpan.FromMinutes(2));
        }
        finally
        {
            try { _holder.Kill(); _holder.WaitForExit(10_000); } catch (InvalidOperationException) { }
            _holder.Dispose();
        }
    }
}
