using System.Diagnostics;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Hostile;

/// <summary>
/// Guessing CHAP secrets against the real server: each further wrong answer from the same initiator name
/// or address is answered later (growing, capped), the failures are logged with name and address and
/// counted in `status`, and once the right secret got in, the next login is answered at once again.
/// Assertions are on lower bounds of delays and on the server's own counters, never on speed.
/// </summary>
[TestFixture, Category("Hostile")]
public class ChapGuessingTests
{
    const string User = "client", Secret = "correct-horse-1";

    static TimeSpan TimeWrongLogin(ServerProcess srv, string initiator = "iqn.2026-11.org.example:test-initiator")
    {
        var sw = Stopwatch.StartNew();
        var e = Assert.Throws<LoginFailedException>(() =>
            TestInitiator.Connect(srv, new LoginOptions { InitiatorName = initiator, ChapUser = User, ChapSecret = "wrong-guess-0001" }).Dispose())!;
        Assert.That((e.StatusClass, e.StatusDetail), Is.EqualTo(((byte)2, (byte)1)), "authentication failure");
        return sw.Elapsed;
    }

    [Test]
    public void Wrong_CHAP_answers_come_later_and_later_and_a_login_after_a_success_comes_at_once()
    {
        var o = new ServerOptions();
        o.Extra.AddRange([$"--Targets:0:Chap:User={User}", $"--Targets:0:Chap:Secret={Secret}",
            "--Iscsi:ChapFailureDelayMilliseconds=400", "--Iscsi:ChapFailureMaxDelaySeconds=4"]);
        using var srv = new ServerProcess(o).Start();

        // 0.4, 0.8, 1.6, 3.2 s: the fourth wrong answer waits at least 3.2 s.
        var times = Enumerable.Range(0, 4).Select(_ => TimeWrongLogin(srv)).ToList();
        TestContext.Progress.WriteLine("wrong logins took " + string.Join(", ", times.Select(t => $"{t.TotalSeconds:0.00} s")));
        Assert.That(times[0], Is.GreaterThanOrEqualTo(TimeSpan.FromMilliseconds(380)));
        Assert.That(times[3], Is.GreaterThanOrEqualTo(TimeSpan.FromMilliseconds(3150)), "the fourth failure waits 8x the first");
        var afterGuesses = srv.IscsiCounters();
        Assert.That((long)afterGuesses["chapFailures"]!, Is.EqualTo(4), afterGuesses.ToJsonString());
        Assert.That((long)afterGuesses["loginFailuresDelayed"]!, Is.EqualTo(4), afterGuesses.ToJsonString());
        Assert.That(srv.WaitForLog(@"Login failed \(status 0x0201\) for iqn\.2026-11\.org\.example:test-initiator from 127\.0\.0\.1 to .*answered after 0\.4 s",
            TimeSpan.FromSeconds(10)), Is.True, () => "the failure names initiator and address\n" + srv.Output(30));
        Assert.That(srv.CountLog(@"Login failed \(status 0x0201\)"), Is.LessThan(4), () => "repeats within 10 s are folded\n" + srv.Output(30));

        // The right secret still gets in (a success is never delayed) and resets the count ...
        using (var ok = TestInitiator.Connect(srv, new LoginOptions { ChapUser = User, ChapSecret = Secret })) ok.Logout();
        var sw = Stopwatch.StartNew();
        using (var again = TestInitiator.Connect(srv, new LoginOptions { ChapUser = User, ChapSecret = Secret })) again.Logout();
        var clean = srv.IscsiCounters();
        Assert.That((long)clean["loginFailuresDelayed"]!, Is.EqualTo(4), "no delay for the logins with the right secret");
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(3)), "a login after a success is not held back");
        // ... for the address too: a wrong answer under another name from it is back at the first delay, not 4 s.
        var reset = TimeWrongLogin(srv, "iqn.2026-11.org.example:another-name");
        Assert.That(reset, Is.GreaterThanOrEqualTo(TimeSpan.FromMilliseconds(380)));
        Assert.That(srv.WaitForLog(@"another-name from 127\.0\.0\.1 .*answered after 0\.4 s \(1 failed authentications",
            TimeSpan.FromSeconds(10)), Is.True, () => "the success reset the address's count\n" + srv.Output(30));
        srv.Stop();
    }
}
