using System.Net;
using IntegrityTarget.Iscsi.Login;

namespace IntegrityTarget.Iscsi.Tests;

public class AuthThrottleTests
{
    private static readonly IPAddress A = IPAddress.Parse("192.0.2.1"), B = IPAddress.Parse("192.0.2.2");

    [Test]
    public void The_delay_doubles_with_each_failure_up_to_the_cap_and_a_success_resets_it()
    {
        var t = new AuthThrottle(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(500));
        var delays = new List<TimeSpan>();
        for (int i = 0; i < 5; i++) using (t.Failed("iqn.2026-11.test:x", A, out var d, out _)) delays.Add(d);
        Assert.That(delays.Select(d => d.TotalMilliseconds), Is.EqualTo(new double[] { 100, 200, 400, 500, 500 }));
        t.Succeeded("iqn.2026-11.test:x", A);
        using (t.Failed("iqn.2026-11.test:x", A, out var again, out var n))
        {
            Assert.That(again, Is.EqualTo(TimeSpan.FromMilliseconds(100)));
            Assert.That(n, Is.EqualTo(1));
        }
    }

    [Test]
    public void Failures_count_per_address_across_names_and_per_name_across_addresses()
    {
        var t = new AuthThrottle(TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(10));
        for (int i = 0; i < 3; i++) using (t.Failed($"iqn.2026-11.test:guess{i}", A, out _, out _)) { }
        using (t.Failed("iqn.2026-11.test:fresh", A, out var d, out _))
            Assert.That(d, Is.EqualTo(TimeSpan.FromMilliseconds(800)), "a new name from the same address inherits its failures");
        for (int i = 0; i < 2; i++) using (t.Failed("iqn.2026-11.test:victim", IPAddress.Parse($"198.51.100.{i + 1}"), out _, out _)) { }
        using (t.Failed("iqn.2026-11.test:victim", B, out var d2, out _))
            Assert.That(d2, Is.EqualTo(TimeSpan.FromMilliseconds(400)), "the same name from a new address inherits its failures");
    }

    [Test]
    public void At_most_four_failures_per_key_wait_at_once()
    {
        var t = new AuthThrottle(TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(10));
        var leases = Enumerable.Range(0, AuthThrottle.MaxWaitingPerKey).Select(i => t.Failed($"iqn.2026-11.test:n{i}", A, out _, out _)).ToList();
        Assert.That(t.IsSaturated("iqn.2026-11.test:other", A), Is.True, "the address has four failures waiting");
        Assert.That(t.IsSaturated("iqn.2026-11.test:other", B), Is.False);
        leases[0].Dispose();
        Assert.That(t.IsSaturated("iqn.2026-11.test:other", A), Is.False);
    }

    [Test]
    public void Guesses_under_a_victims_name_from_elsewhere_do_not_lock_the_victim_out()
    {
        var t = new AuthThrottle(TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(10));
        const string victim = "iqn.2026-11.test:victim";
        // Four guesses under the victim's (public) name wait, from four attacker addresses.
        var leases = Enumerable.Range(1, AuthThrottle.MaxWaitingPerKey)
            .Select(i => t.Failed(victim, IPAddress.Parse($"198.51.100.{i}"), out _, out _)).ToList();
        Assert.That(t.IsSaturated(victim, B), Is.False, "the real initiator's address never failed: its response is checked");
        Assert.That(t.IsSaturated(victim, IPAddress.Parse("198.51.100.1")), Is.True, "an address that failed waits for the name's guesses");
        using (t.Failed(victim, B, out _, out _)) { }
        Assert.That(t.IsSaturated(victim, B), Is.True, "once that address failed too, the name's saturation applies to it");
        foreach (var l in leases) l.Dispose();
        Assert.That(t.IsSaturated(victim, B), Is.False);
    }

    [Test]
    public void Zero_turns_the_delay_off()
    {
        var t = new AuthThrottle(TimeSpan.Zero, TimeSpan.Zero);
        using (t.Failed("iqn.2026-11.test:x", A, out var d, out _)) Assert.That(d, Is.EqualTo(TimeSpan.Zero));
        Assert.That(t.IsSaturated("iqn.2026-11.test:x", A), Is.False);
    }

    [Test]
    public void The_remembered_keys_are_bounded()
    {
        var t = new AuthThrottle(TimeSpan.FromMilliseconds(1), TimeSpan.FromMilliseconds(2), maxEntries: 100);
        for (int i = 0; i < 1000; i++) using (t.Failed($"iqn.2026-11.test:n{i}", IPAddress.Parse($"10.0.{i / 256}.{i % 256}"), out _, out _)) { }
        Assert.That(t.FailuresOf("iqn.2026-11.test:n999", IPAddress.Parse("10.0.3.231")), Is.EqualTo(1), "the newest are kept");
        Assert.That(t.FailuresOf("iqn.2026-11.test:n0", IPAddress.Parse("10.0.0.0")), Is.Zero, "the oldest were forgotten");
    }
}
