using System.Security.Cryptography;
using System.Text;
using IntegrityTarget.Iscsi.Pdus;

namespace IntegrityTarget.Iscsi.Tests;

public class CounterTests
{
    [Test]
    public async Task Logins_sessions_and_connections_are_counted_and_closing_gives_them_back()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var a = new MemoryInitiator(server);
        await a.LoginAsync();
        var d = new MemoryInitiator(server);
        await d.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery"], 1, 3, true));
        Assert.That((await d.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0));

        var s = server.Counters.Snapshot();
        Assert.That(s.LoginsSucceeded, Is.EqualTo(2));
        Assert.That(s.LoginsFailed, Is.Zero);
        Assert.That(s.ConnectionsOpen, Is.EqualTo(2));
        Assert.That(s.ConnectionsAccepted, Is.EqualTo(2));
        Assert.That(s.SessionsPerTarget[TestTargets.Iqn], Is.EqualTo(1));
        Assert.That(s.SessionsPerTarget[IscsiCounters.DiscoveryKey], Is.EqualTo(1));

        await a.Connection.OnTransportClosedAsync();
        await d.Connection.OnTransportClosedAsync();
        s = server.Counters.Snapshot();
        Assert.That(s.ConnectionsOpen, Is.Zero);
        Assert.That(s.SessionsPerTarget[TestTargets.Iqn], Is.Zero);
        Assert.That(s.SessionsPerTarget[IscsiCounters.DiscoveryKey], Is.Zero);
    }

    [Test]
    public async Task A_reinstated_session_is_counted_once()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        await new MemoryInitiator(server).LoginAsync();
        await new MemoryInitiator(server).LoginAsync(); // same initiator and ISID: reinstates the first
        Assert.That(server.Counters.Snapshot().SessionsPerTarget[TestTargets.Iqn], Is.EqualTo(1));
    }

    [Test]
    public async Task A_wrong_CHAP_response_counts_as_a_failed_login_and_a_CHAP_failure()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), chap: new("user", "secret-123456"));
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", "AuthMethod=CHAP"], 0, 1, false));
        await i.ExpectAsync(Opcode.LoginResponse);
        await i.SendAsync(TestPdu.Login(["CHAP_A=5"], 0, 1, false));
        var k = (await i.ExpectAsync(Opcode.LoginResponse)).Keys();
        var wrong = "0x" + Convert.ToHexString(MD5.HashData([byte.Parse(k["CHAP_I"]), .. Encoding.UTF8.GetBytes("not-the-secret"), .. Convert.FromHexString(k["CHAP_C"][2..])]));
        await i.SendAsync(TestPdu.Login(["CHAP_N=user", "CHAP_R=" + wrong], 0, 1, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0201));
        var s = server.Counters.Snapshot();
        Assert.That(s.LoginsFailed, Is.EqualTo(1));
        Assert.That(s.ChapFailures, Is.EqualTo(1));
        Assert.That(s.LoginsSucceeded, Is.Zero);
    }

    [Test]
    public async Task A_rejected_PDU_is_counted()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        await i.SendAsync(TestPdu.Frame(TestPdu.NewHeader(Opcode.Snack), []));
        await i.ExpectAsync(Opcode.Reject);
        Assert.That(server.Counters.Snapshot().RejectedPdus, Is.EqualTo(1));
    }
}

public class LogLimiterTests
{
    [Test]
    public void One_message_per_key_per_interval_and_the_next_one_says_how_many_were_held_back()
    {
        var l = new LogLimiter(TimeSpan.FromMilliseconds(300));
        Assert.That(l.ShouldLog("a", out var s0), Is.True);
        Assert.That(s0, Is.Zero);
        Assert.That(l.ShouldLog("a", out _), Is.False);
        Assert.That(l.ShouldLog("a", out _), Is.False);
        Assert.That(l.ShouldLog("b", out _), Is.True, "keys are limited separately");
        Thread.Sleep(400);
        Assert.That(l.ShouldLog("a", out var s1), Is.True);
        Assert.That(s1, Is.EqualTo(2));
        Assert.That(l.TotalSuppressed, Is.EqualTo(2));
    }

    [Test]
    public void Many_keys_in_one_interval_are_capped_overall()
    {
        var l = new LogLimiter(TimeSpan.FromMinutes(1), maxPerInterval: 5, maxKeys: 100);
        int logged = Enumerable.Range(0, 1000).Count(i => l.ShouldLog("key" + i, out _));
        Assert.That(logged, Is.EqualTo(5));
        Assert.That(l.TotalSuppressed, Is.EqualTo(995));
    }
}

public class ConnectionLimitTests
{
    [Test]
    public async Task A_connection_beyond_the_limit_is_refused_and_counted_and_open_ones_keep_working()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), new IscsiServerOptions { ConnectionLimit = 2 });
        var a = new MemoryInitiator(server);
        await a.LoginAsync();
        _ = new MemoryInitiator(server);
        Assert.Throws<InvalidOperationException>(() => _ = new MemoryInitiator(server), "the third is refused (CreateConnection returns null)");
        Assert.That(server.Counters.Snapshot().ConnectionsRefused, Is.EqualTo(1));
        await a.SendAsync(TestPdu.ScsiCommand(a.NextItt(), a.CmdSN++, [0, 0, 0, 0, 0, 0], 0));
        Assert.That((await a.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.Zero, "the logged-in session is still served");
    }

    [Test]
    public async Task When_too_many_connections_are_logging_in_the_oldest_is_closed_to_make_room()
    {
        var options = new IscsiServerOptions { ConnectionLimit = 40 }; // 10 may be logging in at once
        await using var server = TestTargets.Server(new FakeScsiTarget(), options);
        var idle = Enumerable.Range(0, options.PendingLoginLimit).Select(_ => new MemoryInitiator(server)).ToList();
        var real = new MemoryInitiator(server);
        await idle[0].Connection.Closed.WaitAsync(MemoryInitiator.Timeout);
        Assert.That(idle.Skip(1).All(i => !i.Connection.IsClosed), Is.True, "only the oldest one goes");
        await real.LoginAsync();
        Assert.That(server.Counters.Snapshot().PendingLoginsEvicted, Is.EqualTo(1));
        var more = new[] { new MemoryInitiator(server), new MemoryInitiator(server) }; // the second finds 10 logging in again
        await idle[1].Connection.Closed.WaitAsync(MemoryInitiator.Timeout);
        Assert.That(real.Connection.IsClosed, Is.False, "a logged-in connection is never closed to make room");
        Assert.That(more.All(m => !m.Connection.IsClosed), Is.True);
    }

    [TestCase(null, 1024L, 512, false)]
    [TestCase(null, 20000L, 4096, false)]
    [TestCase(null, 20L, 16, false)]
    [TestCase(300, 1024L, 300, false)]
    [TestCase(2000, 1024L, 960, true)]
    [TestCase(2000, null, 2000, false)]
    public void The_connection_limit_follows_the_file_descriptor_limit(int? configured, long? soft, int expected, bool warns)
    {
        int limit = IntegrityTarget.Transport.FileDescriptorLimit.ConnectionLimit(configured, soft, out var warning);
        Assert.That(limit, Is.EqualTo(expected));
        Assert.That(warning, warns ? Does.Contain("RLIMIT_NOFILE 1024").And.Contain("using 960") : Is.Null);
    }
}
