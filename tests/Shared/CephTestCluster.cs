using System.Diagnostics;

namespace IntegrityTarget.Tests.Shared;

/// <summary>
/// The Ceph cluster RBD tests run against (linked into each test project that needs one). CEPH_CONF names it
/// (.ci/run starts ceph-mini and exports it); without CEPH_CONF, outside CI, the first test that asks starts a
/// throwaway ceph-mini cluster of its own and <see cref="StopIfStarted"/> removes it. Under CI=true a missing
/// cluster is a failure, never a skip.
/// </summary>
public static class CephTestCluster
{
    private static readonly Lazy<string> Conf = new(Resolve, LazyThreadSafetyMode.ExecutionAndPublication);
    private static string? _startedDir;

    /// <summary>Path of the cluster's ceph.conf (it also names the admin keyring).</summary>
    public static string ConfPath => Conf.Value;

    /// <summary>A fresh image name, unique per call, for tests that create their own images.</summary>
    public static string NewImageName(string prefix) => $"{prefix}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..12]}";

    private static bool InCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    private static string Resolve()
    {
        if (Environment.GetEnvironmentVariable("CEPH_CONF") is { Length: > 0 } conf)
        {
            if (!File.Exists(conf)) Assert.Fail($"CEPH_CONF={conf} does not exist (start a cluster: ceph-mini.sh start DIR)");
            return conf;
        }
        if (InCi) Assert.Fail("CI=true but CEPH_CONF is not set: .ci/run starts ceph-mini and exports CEPH_CONF for the RBD tests");
        var script = Path.Combine(SharedDir(), "tools", "ceph-mini", "ceph-mini.sh");
        if (!File.Exists(script)) Assert.Fail($"no CEPH_CONF and no ceph-mini at {script} (set SHARED_DIR or CEPH_CONF)");
        var dir = Path.Combine(Path.GetTempPath(), $"it-ceph-{Environment.ProcessId}");
        var psi = new ProcessStartInfo(script) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("start");
        psi.ArgumentList.Add(dir);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var lines = p.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        p.WaitForExit();
        if (p.ExitCode != 0 || lines.Length == 0) Assert.Fail($"ceph-mini.sh start {dir} failed (exit {p.ExitCode}):\n{err.Result}");
        _startedDir = dir;
        return lines[^1].Trim();
    }

    /// <summary>Stops and wipes the cluster this process started (nothing when CEPH_CONF named one).</summary>
    public static void StopIfStarted()
    {
        if (_startedDir is not { } dir) return;
        var script = Path.Combine(SharedDir(), "tools", "ceph-mini", "ceph-mini.sh");
        using var p = Process.Start(new ProcessStartInfo(script, ["stop", dir, "--wipe"]) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true })!;
        p.WaitForExit(120_000);
        _startedDir = null;
    }

    private static string SharedDir()
    {
        if (Environment.GetEnvironmentVariable("SHARED_DIR") is { Length: > 0 } s) return s;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (Directory.Exists(Path.Combine(d.FullName, "shared", "tools", "ceph-mini"))) return Path.Combine(d.FullName, "shared");
        return "/work/shared";
    }
}
