using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi.Tests;

public class SessionTests
{
    private static readonly byte[] Tur = [0, 0, 0, 0, 0, 0];

    [Test]
    public async Task Commands_outside_the_CmdSN_window_are_dropped_silently()
    {
        var scsi = new FakeScsiTarget();
        await using var server = TestTargets.Server(scsi, new IscsiServerOptions { QueueDepth = 4 });
        var i = new MemoryInitiator(server);
        var login = await i.LoginAsync();
        Assert.That(login.MaxCmdSN - login.ExpCmdSN, Is.EqualTo(3u), "window = queue depth");
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), login.MaxCmdSN + 1, Tur, 0)); // too high
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), login.ExpCmdSN - 1, Tur, 0)); // too low
        Assert.That(await i.NextAsync(TimeSpan.FromMilliseconds(200)), Is.Null);
        Assert.That(scsi.Executed, Is.Empty);
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), login.ExpCmdSN, Tur, 0));
        var r = await i.ExpectAsync(Opcode.ScsiResponse);
        Assert.That(r.ExpCmdSN, Is.EqualTo(login.ExpCmdSN + 1));
    }

    [Test]
    public async Task Window_shrinks_while_commands_are_queued_and_reopens_as_they_complete()
    {
        var scsi = new FakeScsiTarget { Gate = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var server = TestTargets.Server(scsi, new IscsiServerOptions { QueueDepth = 4 });
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        for (int n = 0; n < 4; n++) await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, Tur, 0));
        // A NOP answer reports the closed window: MaxCmdSN = ExpCmdSN - 1.
        await i.SendAsync(TestPdu.NopOut(0x999, 0xffffffff, i.CmdSN));
        var nop = await i.ExpectAsync(Opcode.NopIn);
        Assert.That(nop.ExpCmdSN, Is.EqualTo(i.CmdSN));
        Assert.That(nop.MaxCmdSN, Is.EqualTo(i.CmdSN - 1 + 0u).Or.EqualTo(i.CmdSN - 1), "queue full, window closed");
        scsi.Gate.SetResult();
        uint lastMax = 0;
        for (int n = 0; n < 4; n++) lastMax = (await i.ExpectAsync(Opcode.ScsiResponse)).MaxCmdSN;
        Assert.That(lastMax, Is.EqualTo(i.CmdSN + 3), "all slots free again");
    }

    [Test]
    public async Task Commands_execute_concurrently_and_answer_as_they_complete()
    {
        var scsi = new FakeScsiTarget { Gate = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var server = TestTargets.Server(scsi);
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        for (int n = 0; n < 8; n++) await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, Tur, 0));
        Assert.That(() => scsi.Running, Is.EqualTo(8).After(5000, 10));
        scsi.Gate.SetResult();
        for (int n = 0; n < 8; n++) await i.ExpectAsync(Opcode.ScsiResponse);
    }

    [Test]
    public async Task Nop_out_ping_is_echoed_with_its_data()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        await i.SendAsync(TestPdu.NopOut(0x77, 0xffffffff, i.CmdSN, "nopping\0"u8.ToArray()));
        var r = await i.ExpectAsync(Opcode.NopIn);
        Assert.That(r.Itt, Is.EqualTo(0x77u));
        Assert.That(r.Ttt, Is.EqualTo(0xffffffffu));
        Assert.That(r.Data, Is.EqualTo("nopping\0"u8.ToArray()));
        await i.SendAsync(TestPdu.NopOut(0x78, 0xffffffff, i.CmdSN));
        Assert.That((await i.ExpectAsync(Opcode.NopIn)).Data, Is.Empty);
    }

    [Test]
    public async Task Target_pings_an_idle_connection_and_keeps_it_when_answered()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(),
            new IscsiServerOptions { NopInterval = TimeSpan.FromMilliseconds(100), NopTimeout = TimeSpan.FromSeconds(5) });
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        var ping = await i.ExpectAsync(Opcode.NopIn);
        Assert.That(ping.Itt, Is.EqualTo(0xffffffffu));
        Assert.That(ping.Ttt, Is.Not.EqualTo(0xffffffffu));
        await i.SendAsync(TestPdu.NopOut(0xffffffff, ping.Ttt, i.CmdSN));
        var next = await i.ExpectAsync(Opcode.NopIn); // pinged again later, still open
        Assert.That(next.Ttt, Is.Not.EqualTo(ping.Ttt));
        Assert.That(i.Sink.Closed, Is.False);
    }

    [Test]
    public async Task Target_drops_a_connection_whose_pings_go_unanswered()
    {
        var scsi = new FakeScsiTarget();
        await using var server = TestTargets.Server(scsi,
            new IscsiServerOptions { NopInterval = TimeSpan.FromMilliseconds(50), NopTimeout = TimeSpan.FromMilliseconds(200) });
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        await i.Connection.Closed.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(i.Sink.Closed, Is.True);
        Assert.That(scsi.Events, Has.Some.StartsWith("lost "));
        Assert.That(server.Sessions, Is.Empty);
    }

    [Test]
    public async Task Connection_that_never_logs_in_is_dropped()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), new IscsiServerOptions { LoginTimeout = TimeSpan.FromMilliseconds(100) });
        var i = new MemoryInitiator(server);
        await i.Connection.Closed.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.That(i.Sink.Closed, Is.True);
    }

    [Test]
    public async Task Logout_answers_after_in_flight_commands_and_ends_the_nexus()
    {
        var scsi = new FakeScsiTarget { Gate = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var server = TestTargets.Server(scsi);
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        uint itt = i.NextItt();
        await i.SendAsync(TestPdu.ScsiCommand(itt, i.CmdSN++, Tur, 0));
        var logout = i.SendAsync(TestPdu.Logout(0x55, i.CmdSN));
        Assert.That(await i.NextAsync(TimeSpan.FromMilliseconds(200)), Is.Null, "nothing before the command completes");
        scsi.Gate.SetResult();
        var first = await i.ExpectAsync(Opcode.ScsiResponse);
        Assert.That(first.Itt, Is.EqualTo(itt));
        await logout;
        var r = await i.ExpectAsync(Opcode.LogoutResponse);
        Assert.That(r.Header[2], Is.EqualTo(0));
        await i.Connection.Closed.WaitAsync(MemoryInitiator.Timeout);
        Assert.That(scsi.Events, Has.Some.StartsWith("lost "));
        Assert.That(server.Sessions, Is.Empty);
    }

    [Test]
    public async Task Logout_for_recovery_is_answered_not_supported()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        await i.SendAsync(TestPdu.Logout(0x55, i.CmdSN, reason: 2));
        Assert.That((await i.ExpectAsync(Opcode.LogoutResponse)).Header[2], Is.EqualTo(2));
        Assert.That(i.Sink.Closed, Is.False);
    }

    [Test]
    public async Task Same_initiator_and_ISID_reinstates_the_session_aborting_its_tasks()
    {
        var scsi = new FakeScsiTarget { Gate = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var server = TestTargets.Server(scsi);
        var old = new MemoryInitiator(server);
        var first = await old.LoginAsync();
        await old.SendAsync(TestPdu.ScsiCommand(old.NextItt(), old.CmdSN++, Tur, 0));
        Assert.That(() => scsi.Running, Is.EqualTo(1).After(5000, 10));

        var fresh = new MemoryInitiator(server);
        var second = await fresh.LoginAsync();
        Assert.That(old.Sink.Closed, Is.True, "old connection closed");
        Assert.That(scsi.Running, Is.Zero, "old task finished before the new session started");
        Assert.That(second.Tsih, Is.Not.EqualTo(first.Tsih));
        Assert.That(scsi.Events.Count(e => e.StartsWith("lost ")), Is.EqualTo(1));
        Assert.That(scsi.Events.Count(e => e.StartsWith("created ")), Is.EqualTo(2));
        Assert.That(server.Sessions.Single().Tsih, Is.EqualTo(second.Tsih));
    }

    [Test]
    public async Task Different_ISIDs_give_independent_sessions_to_the_same_target()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var a = new MemoryInitiator(server);
        var b = new MemoryInitiator(server);
        await a.LoginAsync(isid: 0x00023d000001);
        await b.LoginAsync(isid: 0x00023d000002);
        Assert.That(server.Sessions, Has.Count.EqualTo(2));
        await a.SendAsync(TestPdu.ScsiCommand(a.NextItt(), a.CmdSN++, Tur, 0));
        await b.SendAsync(TestPdu.ScsiCommand(b.NextItt(), b.CmdSN++, Tur, 0));
        await a.ExpectAsync(Opcode.ScsiResponse);
        await b.ExpectAsync(Opcode.ScsiResponse);
    }

    [Test]
    public async Task Shutdown_drains_in_flight_commands_then_closes()
    {
        var scsi = new FakeScsiTarget { Gate = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        var server = TestTargets.Server(scsi);
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, Tur, 0));
        var shutdown = server.ShutdownAsync(CancellationToken.None);
        Assert.That(shutdown.IsCompleted, Is.False);
        scsi.Gate.SetResult();
        await shutdown.WaitAsync(MemoryInitiator.Timeout);
        Assert.That((await i.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.EqualTo(ScsiStatus.Good));
        Assert.That(i.Sink.Closed, Is.True);
        Assert.That(server.CreateConnection(new MemorySink(), null, null), Is.Null, "no new connections while shut down");
    }

    [Test]
    public async Task Unsupported_opcodes_and_SNACK_get_Reject_command_not_supported()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        foreach (byte op in new byte[] { 0x10, 0x1c, 0x21, 0x3f })
        {
            var h = TestPdu.NewHeader((Opcode)op, immediate: true);
            await i.SendAsync(TestPdu.Frame(h, []));
            var r = await i.ExpectAsync(Opcode.Reject);
            Assert.That(r.Header[2], Is.EqualTo((byte)RejectReason.CommandNotSupported), $"opcode 0x{op:x2}");
            Assert.That(r.Data.Take(48), Is.EqualTo(h), "rejected header echoed");
        }
        await i.SendAsync(TestPdu.NopOut(0x20, 0xffffffff, i.CmdSN));
        await i.ExpectAsync(Opcode.NopIn);
    }

    [Test]
    public async Task Discovery_CHAP_is_required_when_configured()
    {
        var targets = new[] { new IscsiTargetConfig { Iqn = TestTargets.Iqn, Scsi = new FakeScsiTarget() } };
        await using var server = new IscsiServer(targets, new IscsiServerOptions { DiscoveryChap = new("d", "discovery-secret") }, TestTargets.Log);
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery", "AuthMethod=None"], 0, 1, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0201));
    }

    [Test]
    public void Invalid_options_and_duplicate_targets_are_reported_together()
    {
        var targets = new[]
        {
            new IscsiTargetConfig { Iqn = "iqn.x:a", Scsi = new FakeScsiTarget() },
            new IscsiTargetConfig { Iqn = "iqn.x:a", Scsi = new FakeScsiTarget() },
        };
        var ex = Assert.Throws<ArgumentException>(() => new IscsiServer(targets, new IscsiServerOptions { MaxBurstLength = 100, QueueDepth = 0 }, TestTargets.Log));
        Assert.That(ex!.Message, Does.Contain("MaxBurstLength").And.Contain("QueueDepth").And.Contain("configured twice"));
    }
}
