using System.Text.RegularExpressions;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Hostile;

/// <summary>
/// Names and CHAP user names from the network against the real server's log: a newline or a terminal
/// escape in them cannot start a forged log line or reach the terminal, and an initiator name that is
/// not an iSCSI name (RFC 3722) is refused as an initiator error.
/// </summary>
[TestFixture, Category("Hostile")]
public class LogInjectionTests
{
    const string Forged = "[12:00:00 ERR] FORGED by the initiator";

    static void AssertNoForgedLine(ServerProcess srv)
    {
        var lines = srv.ServerLines;
        Assert.That(lines.Where(l => l.StartsWith(Forged, StringComparison.Ordinal) || l.Contains("[2J")
                                     && l.Contains('\u001b')), Is.Empty, () => srv.Output(30));
        Assert.That(lines.Where(l => l.Any(c => char.IsControl(c))), Is.Empty, "no control character reaches the log");
    }

    [Test]
    public void An_initiator_name_with_a_newline_or_escape_is_refused_and_logged_escaped()
    {
        using var srv = new ServerProcess(new ServerOptions()).Start();
        var evil = "iqn.2026-11.org.example:evil\n" + Forged + "\u001b[2J";
        var e = Assert.Throws<LoginFailedException>(() => TestInitiator.Connect(srv, new LoginOptions { InitiatorName = evil }).Dispose())!;
        Assert.That(e.StatusClass, Is.EqualTo(2), "initiator error class");
        Assert.That(srv.WaitForLog(Regex.Escape("evil\\n" + Forged + "\\x1b[2J"), TimeSpan.FromSeconds(10)), Is.True,
            () => "the refusal is logged with the name escaped\n" + srv.Output(30));
        AssertNoForgedLine(srv);
        // A proper name still logs in.
        using var ok = TestInitiator.Connect(srv);
    }

    [Test]
    public void A_CHAP_user_name_with_a_newline_is_logged_escaped_when_the_login_fails()
    {
        var o = new ServerOptions();
        o.Extra.AddRange(["--Targets:0:Chap:User=client", "--Targets:0:Chap:Secret=correct-horse-1"]);
        using var srv = new ServerProcess(o).Start();
        var user = "client\n" + Forged;
        var e = Assert.Throws<LoginFailedException>(() =>
            TestInitiator.Connect(srv, new LoginOptions { ChapUser = user, ChapSecret = "correct-horse-1" }).Dispose())!;
        Assert.That((e.StatusClass, e.StatusDetail), Is.EqualTo(((byte)2, (byte)1)), "authentication failure");
        Assert.That(srv.WaitForLog(Regex.Escape("client\\n" + Forged), TimeSpan.FromSeconds(10)), Is.True, () => srv.Output(30));
        AssertNoForgedLine(srv);
    }
}
