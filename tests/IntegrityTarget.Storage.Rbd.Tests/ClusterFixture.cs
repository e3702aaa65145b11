using System.Diagnostics;
using IntegrityTarget.Storage.Rbd;
using IntegrityTarget.Tests.Shared;

namespace IntegrityTarget.Storage.Rbd.Tests;

/// <summary>Stops a cluster this test run started for itself (none when CEPH_CONF named one).</summary>
[SetUpFixture]
public class ClusterLifetime
{
    [OneTimeTearDown] public void Stop() => CephTestCluster.StopIfStarted();
}

/// <summary>Helpers for tests against the real cluster: options, fresh images, the rbd command.</summary>
internal static class Cluster
{
    public static CephClientOptions Options => new() { ConfFile = CephTestCluster.ConfPath, TimeoutSeconds = 20 };

    public static RbdImageSpec NewImage(string prefix, long bytes, string? features = null)
    {
        var spec = new RbdImageSpec("rbd", null, CephTestCluster.NewImageName(prefix));
        if (features == null)
        {
            using var c = RbdClient.Connect(Options);
            c.CreateImage(spec, bytes);
        }
        else Rbd("create", "--size", $"{bytes >> 20}M", "--image-feature", features, spec.Display);
        return spec;
    }

    public static void Remove(RbdImageSpec spec)
    {
        using var c = RbdClient.Connect(Options);
        if (c.ImageExists(spec)) c.RemoveImage(spec);
    }

    /// <summary>The rbd command against the test cluster; asserts success and returns stdout.</summary>
    public static string Rbd(params string[] args)
    {
        var psi = new ProcessStartInfo("rbd") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(CephTestCluster.ConfPath);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        Assert.That(p.WaitForExit(120_000), Is.True, "rbd " + string.Join(' ', args) + " timed out");
        Assert.That(p.ExitCode, Is.EqualTo(0), () => $"rbd {string.Join(' ', args)}: exit {p.ExitCode}\n{output}\n{err.Result}");
        return output;
    }
}
