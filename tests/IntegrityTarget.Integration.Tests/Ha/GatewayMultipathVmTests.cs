using System.Diagnostics;
using System.Text.RegularExpressions;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Ha;

/// <summary>
/// A Linux guest with dm-multipath and the kernel's ALUA handler logs in to both gateways, sees one
/// multipath device with two ALUA path groups, and keeps writing files through it while the owning
/// gateway is killed with SIGKILL; fsck and every checksum must be clean afterwards.
/// </summary>
[TestFixture, Category("Vm"), Category("Ha")]
public class GatewayMultipathVmTests
{
    [TestCaseSource(typeof(GatewayBackings), nameof(GatewayBackings.Each))]
    public void Dm_multipath_keeps_a_filesystem_through_the_death_of_the_owning_gateway(string backing)
    {
        using var image = backing == "rbd" ? new RbdImage("ha-vm") : null;
        using var pair = new GatewayPair("standby", size: "512MiB", image: image).Start();
        var runDir = Path.Combine(pair.Gw2.DataDir, "vm");
        var conf = Path.Combine(pair.Gw2.DataDir, "multipath.conf");
        File.WriteAllText(conf, MultipathConfWithReadmeDeviceSection());
        long killedAt = 0;
        var r = VmInitiator.RunMultipath([pair.Gw1, pair.Gw2], pair.Iqn, 0, runDir,
            new() { ["VMX_MP_SECONDS"] = "40", ["VMX_MP_POLICY"] = "alua", ["VM_MP_CONF"] = conf },
            line =>
            {
                if (line.Trim() != "VMX-MP: READY" || killedAt != 0) return;
                killedAt = Stopwatch.GetTimestamp();
                pair.Gw1.Kill();
                TestContext.Progress.WriteLine("VMX-MP: READY seen: the owning gateway gw1 was killed with SIGKILL");
            });
        TestContext.Out.WriteLine(string.Join('\n', r.StdOut.Split('\n').Where(l =>
            l.Contains("VMX-MP") || l.Contains("STEP") || l.Contains("stall") || l.Contains("alua") || l.Contains("hwhandler") || l.Contains("prio="))));
        VmInitiator.AssertPass(r);
        Assert.That(killedAt, Is.Not.Zero, "the guest never reported READY, so no gateway was killed");
        Assert.That(r.StdOut, Does.Contain("dh_state=alua"), "the kernel's ALUA handler drives the paths");
        Assert.That(r.StdOut, Does.Match(@"hwhandler='1 alua'"), "one multipath map with the ALUA hardware handler");
        Assert.That(r.StdOut, Does.Match(@"prio=50 status=\w+[\s\S]*prio=1 status="), "two path groups: the owner's (active/optimized, 50) and the standby gateway's (1)");
        Assert.That(Regex.IsMatch(r.StdOut, @"STEP mp-failover-seen: PASS"), Is.True);
        Assert.That(pair.Gw2.HasLog(GatewayPair.OwnerLog), Is.True, "gw2 took the LUN over");
        Assert.That(pair.Gw2.CountLog(@"Opened .*: replayed \d+ journal transactions"), Is.EqualTo(1), "the journal was replayed once, by gw2");
        pair.Gw2.Stop();
    }

    /// <summary>
    /// The guest's multipath.conf: what a host without udev needs (the WWID read from sysfs, every device
    /// taken) and, for the target, exactly the device section README.md gives, so the README's
    /// settings are the ones that carry the filesystem through the failover.
    /// </summary>
    static string MultipathConfWithReadmeDeviceSection()
    {
        var readme = File.ReadAllText(Path.Combine(Paths.RepoRoot, "README.md")).Replace("\r\n", "\n");
        var section = readme.IndexOf("\n### Linux dm-multipath\n", StringComparison.Ordinal);
        Assert.That(section, Is.GreaterThan(0), "README.md has a Linux dm-multipath section");
        var start = readme.IndexOf("\n```\n", section, StringComparison.Ordinal);
        var end = readme.IndexOf("\n```\n", start + 5, StringComparison.Ordinal);
        Assert.That(start > 0 && end > start, Is.True, "the dm-multipath section has a multipath.conf block");
        var devices = readme[(start + 5)..(end + 1)];
        Assert.That(devices, Does.Contain("devices {").And.Contain("vendor").And.Contain("\"1 alua\""));
        return $$"""
            defaults {
                    user_friendly_names     yes
                    find_multipaths         greedy
                    uid_attribute           ""
                    polling_interval        2
            }
            blacklist {
            }
            {{devices}}
            """;
    }
}
