using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi.Tests;

public class TaskManagementTests
{
    private const byte AbortTask = 1, AbortTaskSet = 2, ClearTaskSet = 4, LunReset = 5, WarmReset = 6, ColdReset = 7;

    private static async Task<(IscsiServer, FakeScsiTarget, MemoryInitiator)> BlockedSessionAsync()
    {
        var scsi = new FakeScsiTarget(2, 64) { Gate = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        var server = TestTargets.Server(scsi);
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        return (server, scsi, i);
    }

    [Test]
    public async Task Abort_task_answers_only_after_the_command_left_the_backend_and_suppresses_its_response()
    {
        var (server, scsi, i) = await BlockedSessionAsync();
        await using var _ = server;
        uint itt = i.NextItt();
        uint cmdSN = i.CmdSN++;
        await i.SendAsync(TestPdu.ScsiCommand(itt, cmdSN, TestTargets.Write10(0, 1), 512, write: true, immediateData: new byte[512]));
        Assert.That(() => scsi.Running, Is.EqualTo(1).After(5000, 10));
        await i.SendAsync(TestPdu.Tmf(0x900, i.CmdSN, AbortTask, itt, cmdSN));
        var r = await i.ExpectAsync(Opcode.TaskManagementResponse);
        Assert.That(r.Header[2], Is.EqualTo(0), "function complete");
        Assert.That(scsi.Running, Is.Zero, "command finished before the TMF response");
        Assert.That(scsi.TouchedAfterCancel, Is.False);
        Assert.That(await i.NextAsync(TimeSpan.FromMilliseconds(200)), Is.Null, "aborted command gets no response");
    }

    [Test]
    public async Task Abort_task_for_an_answered_command_says_task_does_not_exist()
    {
        var scsi = new FakeScsiTarget();
        await using var server = TestTargets.Server(scsi);
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        uint itt = i.NextItt(), cmdSN = i.CmdSN++;
        await i.SendAsync(TestPdu.ScsiCommand(itt, cmdSN, [0, 0, 0, 0, 0, 0], 0));
        await i.ExpectAsync(Opcode.ScsiResponse);
        await i.SendAsync(TestPdu.Tmf(0x900, i.CmdSN, AbortTask, itt, cmdSN));
        Assert.That((await i.ExpectAsync(Opcode.TaskManagementResponse)).Header[2], Is.EqualTo(1));
    }

    [Test]
    public async Task Abort_task_set_aborts_every_task_of_the_LUN_from_this_session()
    {
        var (server, scsi, i) = await BlockedSessionAsync();
        await using var _ = server;
        for (int n = 0; n < 3; n++) await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, [0, 0, 0, 0, 0, 0], 0));
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, [0, 0, 0, 0, 0, 0], 0, lun: 1));
        Assert.That(() => scsi.Running, Is.EqualTo(4).After(5000, 10));
        await i.SendAsync(TestPdu.Tmf(0x901, i.CmdSN, AbortTaskSet));
        Assert.That((await i.ExpectAsync(Opcode.TaskManagementResponse)).Header[2], Is.EqualTo(0));
        Assert.That(scsi.Running, Is.EqualTo(1), "LUN 1 task untouched");
        scsi.Gate!.SetResult();
        var r = await i.ExpectAsync(Opcode.ScsiResponse);
        Assert.That(r.Itt, Is.EqualTo(i.Itt - 1), "only the LUN 1 command answers");
    }

    [Test]
    public async Task Lun_reset_aborts_all_sessions_tasks_and_other_nexuses_get_task_aborted()
    {
        var scsi = new FakeScsiTarget(1, 64) { Gate = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var server = TestTargets.Server(scsi);
        var a = new MemoryInitiator(server);
        var b = new MemoryInitiator(server);
        await a.LoginAsync(isid: 1);
        await b.LoginAsync(isid: 2);
        uint bItt = b.NextItt();
        await a.SendAsync(TestPdu.ScsiCommand(a.NextItt(), a.CmdSN++, [0, 0, 0, 0, 0, 0], 0));
        await b.SendAsync(TestPdu.ScsiCommand(bItt, b.CmdSN++, [0, 0, 0, 0, 0, 0], 0));
        Assert.That(() => scsi.Running, Is.EqualTo(2).After(5000, 10));
        await a.SendAsync(TestPdu.Tmf(0x902, a.CmdSN, LunReset));
        Assert.That((await a.ExpectAsync(Opcode.TaskManagementResponse)).Header[2], Is.EqualTo(0));
        Assert.That(scsi.Running, Is.Zero);
        Assert.That(scsi.Events, Has.Member("lunreset 0"));
        var other = await b.ExpectAsync(Opcode.ScsiResponse);
        Assert.That(other.Itt, Is.EqualTo(bItt));
        Assert.That(other.Header[3], Is.EqualTo(ScsiStatus.TaskAborted));
    }

    [Test]
    public async Task Clear_task_set_and_warm_reset_complete_and_reach_the_SCSI_layer()
    {
        var (server, scsi, i) = await BlockedSessionAsync();
        await using var _ = server;
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, [0, 0, 0, 0, 0, 0], 0));
        Assert.That(() => scsi.Running, Is.EqualTo(1).After(5000, 10));
        await i.SendAsync(TestPdu.Tmf(0x903, i.CmdSN, ClearTaskSet));
        Assert.That((await i.ExpectAsync(Opcode.TaskManagementResponse)).Header[2], Is.EqualTo(0));
        Assert.That(scsi.Running, Is.Zero);
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, [0, 0, 0, 0, 0, 0], 0, lun: 1));
        Assert.That(() => scsi.Running, Is.EqualTo(1).After(5000, 10));
        await i.SendAsync(TestPdu.Tmf(0x904, i.CmdSN, WarmReset));
        Assert.That((await i.ExpectAsync(Opcode.TaskManagementResponse)).Header[2], Is.EqualTo(0));
        Assert.That(scsi.Running, Is.Zero);
        Assert.That(scsi.Events, Has.Member("targetreset"));
    }

    [Test]
    public async Task Cold_reset_is_not_supported_and_unknown_LUN_is_reported()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        await i.SendAsync(TestPdu.Tmf(0x905, i.CmdSN, ColdReset));
        Assert.That((await i.ExpectAsync(Opcode.TaskManagementResponse)).Header[2], Is.EqualTo(5));
        await i.SendAsync(TestPdu.Tmf(0x906, i.CmdSN, LunReset, lun: 9));
        Assert.That((await i.ExpectAsync(Opcode.TaskManagementResponse)).Header[2], Is.EqualTo(2));
    }

    [Test]
    public async Task Preempt_and_abort_from_the_SCSI_layer_aborts_the_listed_nexus_tasks()
    {
        var (server, scsi, i) = await BlockedSessionAsync();
        await using var _ = server;
        uint itt = i.NextItt();
        await i.SendAsync(TestPdu.ScsiCommand(itt, i.CmdSN++, [0, 0, 0, 0, 0, 0], 0));
        Assert.That(() => scsi.Running, Is.EqualTo(1).After(5000, 10));
        scsi.RaiseAbort(0, ["iqn.2026-11.test:initiator,i,0x00023d000001"]);
        var r = await i.ExpectAsync(Opcode.ScsiResponse);
        Assert.That(r.Itt, Is.EqualTo(itt));
        Assert.That(r.Header[3], Is.EqualTo(ScsiStatus.TaskAborted));
        Assert.That(scsi.Running, Is.Zero);
    }

    [Test]
    public async Task Abort_of_a_write_waiting_for_data_frees_it_and_later_DataOut_is_ignored()
    {
        var scsi = new FakeScsiTarget();
        await using var server = TestTargets.Server(scsi);
        var i = new MemoryInitiator(server);
        await i.LoginAsync(extra: ["InitialR2T=Yes", "ImmediateData=No"]);
        uint itt = i.NextItt(), cmdSN = i.CmdSN++;
        await i.SendAsync(TestPdu.ScsiCommand(itt, cmdSN, TestTargets.Write10(0, 1), 512, write: true));
        var r2t = await i.ExpectAsync(Opcode.R2T);
        await i.SendAsync(TestPdu.Tmf(0x907, i.CmdSN, AbortTask, itt, cmdSN));
        Assert.That((await i.ExpectAsync(Opcode.TaskManagementResponse)).Header[2], Is.EqualTo(0));
        await i.SendAsync(TestPdu.DataOut(itt, r2t.Ttt, 0, 0, new byte[512], true));
        Assert.That(await i.NextAsync(TimeSpan.FromMilliseconds(200)), Is.Null);
        Assert.That(scsi.Executed, Is.Empty);
        Assert.That(i.Connection.TasksInFlight, Is.Zero);
    }
}
