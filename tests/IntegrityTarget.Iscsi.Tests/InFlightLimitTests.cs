using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi.Tests;

/// <summary>What one connection and the whole process may hold for commands whose answers are not taken.</summary>
public class InFlightLimitTests
{
    private const int Block = FakeScsiTarget.BlockSize;
    private static readonly byte[] Tur = [0, 0, 0, 0, 0, 0];

    private static IscsiServerOptions Small(long budget = 1L << 30, long perConnection = 64L << 20, int immediate = 16) => new()
    {
        MaxBurstLength = 16 * 1024, FirstBurstLength = 8 * 1024, MaxCommandDataLength = 64 * 1024,
        MaxWriteBufferBytesPerConnection = 1 << 20, MaxInFlightBytes = budget, MaxQueuedReadBytesPerConnection = perConnection,
        MaxImmediateCommands = immediate,
    };

    [Test]
    public async Task Immediate_commands_beyond_the_limit_are_rejected_and_the_rest_still_run()
    {
        var scsi = new FakeScsiTarget { Gate = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var server = TestTargets.Server(scsi, Small(immediate: 3));
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        for (int n = 0; n < 4; n++) await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN, Tur, 0, immediate: true));
        var reject = await i.ExpectAsync(Opcode.Reject);
        Assert.That(reject.Header[2], Is.EqualTo((byte)RejectReason.ImmediateCommandReject));
        Assert.That(server.Counters.Snapshot().ImmediateCommandsRejected, Is.EqualTo(1));
        scsi.Gate.SetResult();
        for (int n = 0; n < 3; n++) Assert.That((await i.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.EqualTo(ScsiStatus.Good));
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN, Tur, 0, immediate: true));
        Assert.That((await i.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.EqualTo(ScsiStatus.Good), "finished ones free their places");
    }

    [Test]
    public async Task A_command_beyond_the_process_budget_gets_TASK_SET_FULL_and_the_budget_is_given_back()
    {
        var scsi = new FakeScsiTarget { Gate = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        await using var server = TestTargets.Server(scsi, Small(budget: 64 * 1024));
        var a = new MemoryInitiator(server);
        await a.LoginAsync();
        var b = new MemoryInitiator(server);
        await b.LoginAsync(isid: 0x00023d000002);
        await a.SendAsync(TestPdu.ScsiCommand(a.NextItt(), a.CmdSN++, TestTargets.Read10(0, 64), 32 * 1024, read: true));
        await b.SendAsync(TestPdu.ScsiCommand(b.NextItt(), b.CmdSN++, TestTargets.Read10(0, 64), 32 * 1024, read: true));
        Assert.That(() => server.Budget.Used, Is.EqualTo(64 * 1024).After(5000, 10));
        await b.SendAsync(TestPdu.ScsiCommand(b.NextItt(), b.CmdSN++, TestTargets.Read10(64, 64), 32 * 1024, read: true));
        Assert.That((await b.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.EqualTo(ScsiStatus.TaskSetFull), "over the budget of both sessions together");
        Assert.That(server.Counters.Snapshot().CommandsRefusedOverBudget, Is.EqualTo(1));
        scsi.Gate.SetResult();
        await a.ExpectAsync(Opcode.DataIn);
        await b.ExpectAsync(Opcode.DataIn);
        Assert.That(() => server.Budget.Used, Is.Zero.After(5000, 10));
        Assert.That(server.Counters.Snapshot().InFlightPeakBytes, Is.EqualTo(64 * 1024));
    }

    [Test]
    public async Task A_connection_whose_answers_are_not_taken_stops_reading_until_they_are()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), Small(perConnection: 64 * 1024));
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        i.Sink.FlushGate = new(TaskCreationOptions.RunContinuationsAsynchronously); // the initiator reads nothing
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10(0, 64), 32 * 1024, read: true));
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10(64, 64), 32 * 1024, read: true));
        var third = i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10(128, 64), 32 * 1024, read: true));
        await Task.Delay(300);
        Assert.That(third.IsCompleted, Is.False, "64 KiB of answers wait: the connection reads nothing more");
        Assert.That(server.Counters.Snapshot().BackPressureWaits, Is.EqualTo(1));
        i.Sink.FlushGate.SetResult(); // the initiator reads again
        await third.WaitAsync(MemoryInitiator.Timeout);
        int answers = 0;
        while (answers < 3) if ((await i.NextAsync())?.Opcode == Opcode.DataIn) answers++; else Assert.That(answers, Is.LessThan(3));
        Assert.That(() => server.Budget.Used, Is.Zero.After(5000, 10));
    }

    [Test]
    public async Task Closing_a_connection_whose_answers_are_stuck_gives_back_everything_it_held()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), Small());
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        i.Sink.FlushGate = new(TaskCreationOptions.RunContinuationsAsynchronously);
        for (int n = 0; n < 4; n++)
            await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10((uint)(n * 64), 64), 32 * 1024, read: true));
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN, TestTargets.Read10(512, 64), 32 * 1024, read: true, immediate: true));
        Assert.That(() => server.Budget.Used, Is.GreaterThan(0).After(5000, 10));
        var close = i.Connection.OnTransportClosedAsync();
        await close.WaitAsync(TimeSpan.FromSeconds(20)); // a send stuck behind the peer is cut off after a grace period
        Assert.That(server.Budget.Used, Is.Zero);
        Assert.That(i.Connection.TasksInFlight, Is.Zero);
        Assert.That(server.Counters.Snapshot().ConnectionsOpen, Is.Zero);
    }
}
