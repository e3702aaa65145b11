using System.Buffers.Binary;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi.Tests;

public class DataTransferTests
{
    private const int Block = FakeScsiTarget.BlockSize;

    private static async Task<(IscsiServer Server, FakeScsiTarget Scsi, MemoryInitiator I)> SessionAsync(
        IscsiServerOptions? options = null, params string[] keys)
    {
        var scsi = new FakeScsiTarget(2, 4096);
        var server = TestTargets.Server(scsi, options);
        var i = new MemoryInitiator(server);
        await i.LoginAsync(extra: keys);
        return (server, scsi, i);
    }

    /// <summary>Reads Data-In PDUs until the status arrives (in a Data-In with S or a SCSI Response).</summary>
    private static async Task<(byte[] Data, List<TestPdu> DataIns, TestPdu Status)> ReadResultAsync(MemoryInitiator i)
    {
        var data = new List<byte>();
        var pdus = new List<TestPdu>();
        while (true)
        {
            var p = await i.NextAsync() ?? throw new AssertionException("no response");
            if (p.Opcode == Opcode.DataIn)
            {
                Assert.That(p.U32(40), Is.EqualTo((uint)data.Count), "BufferOffset continues the data");
                Assert.That(p.U32(36), Is.EqualTo((uint)pdus.Count), "DataSN counts Data-In PDUs");
                data.AddRange(p.Data);
                pdus.Add(p);
                if ((p.Flags & 0x01) != 0) return (data.ToArray(), pdus, p);
                continue;
            }
            Assert.That(p.Opcode, Is.EqualTo(Opcode.ScsiResponse), $"unexpected {p}");
            return (data.ToArray(), pdus, p);
        }
    }

    [Test]
    public async Task Read_is_split_by_the_initiators_MaxRecvDataSegmentLength_and_MaxBurstLength()
    {
        var (server, scsi, i) = await SessionAsync(null, "MaxRecvDataSegmentLength=4096", "MaxBurstLength=16384");
        await using var _ = server;
        var content = TestTargets.Pattern(64 * Block, 1);
        content.CopyTo(scsi.Disk(0), 0);
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10(0, 64), 64 * Block, read: true));
        var (data, pdus, status) = await ReadResultAsync(i);
        Assert.That(data, Is.EqualTo(content));
        Assert.That(pdus, Has.All.Matches<TestPdu>(p => p.Data.Length <= 4096));
        Assert.That(pdus.Count, Is.EqualTo(8));
        // F marks the end of each 16 KiB sequence.
        Assert.That(pdus.Select(p => (p.Flags & 0x80) != 0), Is.EqualTo(new[] { false, false, false, true, false, false, false, true }));
        Assert.That(status.Flags & 0x01, Is.EqualTo(1), "status in the final Data-In");
        Assert.That(status.Header[3], Is.EqualTo(ScsiStatus.Good));
        Assert.That(status.Flags & 0x06, Is.Zero, "no residual");
    }

    [Test]
    public async Task Read_shorter_than_expected_reports_underflow_in_the_final_DataIn()
    {
        var (server, _, i) = await SessionAsync();
        await using var _s = server;
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10(0, 2), 4 * Block, read: true));
        var (data, _, status) = await ReadResultAsync(i);
        Assert.That(data.Length, Is.EqualTo(2 * Block));
        Assert.That(status.Flags & 0x02, Is.Not.Zero, "U bit");
        Assert.That(status.U32(44), Is.EqualTo((uint)(2 * Block)));
    }

    [Test]
    public async Task Read_longer_than_expected_is_truncated_and_reports_overflow()
    {
        var (server, _, i) = await SessionAsync();
        await using var _s = server;
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10(0, 4), 1 * Block, read: true));
        var (data, _, status) = await ReadResultAsync(i);
        Assert.That(data.Length, Is.EqualTo(Block));
        Assert.That(status.Flags & 0x04, Is.Not.Zero, "O bit");
        Assert.That(status.U32(44), Is.EqualTo((uint)(3 * Block)));
    }

    [Test]
    public async Task Check_condition_goes_in_a_SCSI_Response_with_length_prefixed_sense()
    {
        var (server, _, i) = await SessionAsync();
        await using var _s = server;
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10(100000, 1), Block, read: true));
        var (data, _, status) = await ReadResultAsync(i);
        Assert.That(data, Is.Empty);
        Assert.That(status.Opcode, Is.EqualTo(Opcode.ScsiResponse));
        Assert.That(status.Header[3], Is.EqualTo(ScsiStatus.CheckCondition));
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(status.Data), Is.EqualTo(18));
        Assert.That(status.Data[2 + 2] & 0x0f, Is.EqualTo(0x05), "ILLEGAL REQUEST");
        Assert.That(status.Data[2 + 12], Is.EqualTo(0x21));
    }

    [Test]
    public async Task Write_with_immediate_data_only_executes_at_once()
    {
        var (server, scsi, i) = await SessionAsync();
        await using var _s = server;
        var payload = TestTargets.Pattern(2 * Block, 2);
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Write10(10, 2), 2 * Block, write: true, immediateData: payload));
        var r = await i.ExpectAsync(Opcode.ScsiResponse);
        Assert.That(r.Header[3], Is.EqualTo(ScsiStatus.Good));
        Assert.That(scsi.Disk(0).AsSpan(10 * Block, 2 * Block).ToArray(), Is.EqualTo(payload));
    }

    [Test]
    public async Task Write_gathers_immediate_unsolicited_and_solicited_data_with_several_outstanding_R2Ts()
    {
        var (server, scsi, i) = await SessionAsync(null, "InitialR2T=No", "ImmediateData=Yes", "FirstBurstLength=8192", "MaxBurstLength=16384", "MaxOutstandingR2T=4");
        await using var _s = server;
        const int total = 128 * Block; // 64 KiB: 8 KiB first burst, then 56 KiB over R2Ts of 16 KiB
        var payload = TestTargets.Pattern(total, 3);
        uint itt = i.NextItt();
        await i.SendAsync(TestPdu.ScsiCommand(itt, i.CmdSN++, TestTargets.Write10(0, 128), total, write: true, final: false, immediateData: payload[..2048]));
        await i.SendAsync(TestPdu.DataOut(itt, 0xffffffff, 0, 2048, payload[2048..6144], final: false));
        await i.SendAsync(TestPdu.DataOut(itt, 0xffffffff, 1, 6144, payload[6144..8192], final: true));
        var r2ts = new List<TestPdu>();
        for (int n = 0; n < 4; n++) r2ts.Add(await i.ExpectAsync(Opcode.R2T));
        Assert.That(r2ts.Select(r => r.U32(40)), Is.EqualTo(new uint[] { 8192, 24576, 40960, 57344 }), "buffer offsets");
        Assert.That(r2ts.Select(r => r.U32(44)), Is.EqualTo(new uint[] { 16384, 16384, 16384, 8192 }), "desired lengths");
        Assert.That(r2ts.Select(r => r.U32(36)), Is.EqualTo(new uint[] { 0, 1, 2, 3 }), "R2TSN");
        Assert.That(r2ts.Select(r => r.Ttt).Distinct().Count(), Is.EqualTo(4));
        // Answer them out of order, each burst in two Data-Out PDUs.
        foreach (var r in r2ts.AsEnumerable().Reverse())
        {
            int off = (int)r.U32(40), len = (int)r.U32(44), half = len / 2;
            await i.SendAsync(TestPdu.DataOut(itt, r.Ttt, 0, (uint)off, payload[off..(off + half)], final: false));
            await i.SendAsync(TestPdu.DataOut(itt, r.Ttt, 1, (uint)(off + half), payload[(off + half)..(off + len)], final: true));
        }
        var status = await i.ExpectAsync(Opcode.ScsiResponse);
        Assert.That(status.Header[3], Is.EqualTo(ScsiStatus.Good));
        Assert.That(scsi.Disk(0).AsSpan(0, total).ToArray(), Is.EqualTo(payload));
        Assert.That(scsi.Executed.Single(c => c.Cdb.Span[0] == 0x2a).DataOut.Length, Is.EqualTo(total));
    }

    [Test]
    public async Task R2Ts_beyond_MaxOutstandingR2T_wait_for_a_burst_to_complete()
    {
        var (server, scsi, i) = await SessionAsync(null, "InitialR2T=Yes", "MaxBurstLength=4096", "MaxOutstandingR2T=2", "ImmediateData=No");
        await using var _s = server;
        const int total = 4 * 4096;
        var payload = TestTargets.Pattern(total, 4);
        uint itt = i.NextItt();
        await i.SendAsync(TestPdu.ScsiCommand(itt, i.CmdSN++, TestTargets.Write10(0, total / Block), total, write: true));
        var a = await i.ExpectAsync(Opcode.R2T);
        var b = await i.ExpectAsync(Opcode.R2T);
        Assert.That(await i.NextAsync(TimeSpan.FromMilliseconds(200)), Is.Null, "only two R2Ts outstanding");
        await i.SendAsync(TestPdu.DataOut(itt, a.Ttt, 0, 0, payload[..4096], true));
        var c = await i.ExpectAsync(Opcode.R2T);
        Assert.That(c.U32(40), Is.EqualTo(8192u));
        await i.SendAsync(TestPdu.DataOut(itt, b.Ttt, 0, 4096, payload[4096..8192], true));
        var d = await i.ExpectAsync(Opcode.R2T);
        await i.SendAsync(TestPdu.DataOut(itt, c.Ttt, 0, 8192, payload[8192..12288], true));
        await i.SendAsync(TestPdu.DataOut(itt, d.Ttt, 0, 12288, payload[12288..], true));
        Assert.That((await i.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.EqualTo(ScsiStatus.Good));
        Assert.That(scsi.Disk(0).AsSpan(0, total).ToArray(), Is.EqualTo(payload));
    }

    [TestCase("DataSN", TestName = "DataOut_with_wrong_DataSN_ends_the_command_with_check_condition_and_never_executes_it")]
    [TestCase("Offset", TestName = "DataOut_with_wrong_buffer_offset_ends_the_command_and_never_executes_it")]
    [TestCase("TooMuch", TestName = "DataOut_with_more_data_than_the_R2T_asked_ends_the_command_and_writes_nothing")]
    [TestCase("Ttt", TestName = "DataOut_with_an_unknown_TTT_ends_the_command_and_never_executes_it")]
    public async Task Bad_DataOut_is_rejected(string fault)
    {
        var (server, scsi, i) = await SessionAsync(null, "InitialR2T=Yes", "ImmediateData=No");
        await using var _s = server;
        uint itt = i.NextItt();
        await i.SendAsync(TestPdu.ScsiCommand(itt, i.CmdSN++, TestTargets.Write10(0, 2), 2 * Block, write: true));
        var r2t = await i.ExpectAsync(Opcode.R2T);
        var data = TestTargets.Pattern(fault == "TooMuch" ? 3 * Block : 2 * Block, 5);
        await i.SendAsync(fault switch
        {
            "DataSN" => TestPdu.DataOut(itt, r2t.Ttt, 7, 0, data, true),
            "Offset" => TestPdu.DataOut(itt, r2t.Ttt, 0, 0x7fff0000, data, true),
            "TooMuch" => TestPdu.DataOut(itt, r2t.Ttt, 0, 0, data, true),
            _ => TestPdu.DataOut(itt, r2t.Ttt + 1000, 0, 0, data, true),
        });
        var reject = await i.ExpectAsync(Opcode.Reject);
        Assert.That(reject.Header[2], Is.EqualTo((byte)RejectReason.ProtocolError));
        Assert.That(reject.Data.Length, Is.EqualTo(48), "the rejected header is returned");
        var response = await i.ExpectAsync(Opcode.ScsiResponse);
        Assert.That(response.Itt, Is.EqualTo(itt));
        Assert.That(response.Header[3], Is.EqualTo(ScsiStatus.CheckCondition));
        Assert.That(response.Data[2 + 2] & 0x0f, Is.EqualTo(0x0b), "ABORTED COMMAND");
        // ASC/ASCQ from the SCSI layer's reason table (SPC-4): data phase / data offset / too much write data.
        (byte, byte) expected = fault switch { "Offset" => (0x4b, 0x05), "TooMuch" => (0x4b, 0x02), _ => (0x4b, 0x00) };
        Assert.That((response.Data[2 + 12], response.Data[2 + 13]), Is.EqualTo(expected));
        Assert.That(scsi.Executed.Any(c => c.Cdb.Span[0] == 0x2a), Is.False);
        Assert.That(scsi.Disk(0).AsSpan(0, 3 * Block).ToArray(), Has.All.EqualTo((byte)0));
        // The connection carries on.
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, [0, 0, 0, 0, 0, 0], 0));
        Assert.That((await i.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.EqualTo(ScsiStatus.Good));
    }

    [Test]
    public async Task Unsolicited_DataOut_when_InitialR2T_is_Yes_is_refused()
    {
        var (server, scsi, i) = await SessionAsync(null, "InitialR2T=Yes");
        await using var _s = server;
        uint itt = i.NextItt();
        await i.SendAsync(TestPdu.ScsiCommand(itt, i.CmdSN++, TestTargets.Write10(0, 1), Block, write: true, final: false));
        var reject = await i.ExpectAsync(Opcode.Reject);
        Assert.That(reject.Header[2], Is.EqualTo((byte)RejectReason.InvalidPduField));
        Assert.That(scsi.Executed, Is.Empty);
    }

    [Test]
    public async Task Immediate_data_larger_than_FirstBurstLength_is_rejected()
    {
        var (server, scsi, i) = await SessionAsync(null, "FirstBurstLength=1024");
        await using var _s = server;
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Write10(0, 4), 4 * Block, write: true, immediateData: new byte[2048]));
        Assert.That((await i.ExpectAsync(Opcode.Reject)).Header[2], Is.EqualTo((byte)RejectReason.InvalidPduField));
        Assert.That(scsi.Executed, Is.Empty);
    }

    [Test]
    public async Task Writes_beyond_the_per_connection_buffer_budget_get_task_set_full()
    {
        var options = new IscsiServerOptions { MaxCommandDataLength = 1 << 20, MaxWriteBufferBytesPerConnection = 2 << 20 };
        var (server, scsi, i) = await SessionAsync(options, "InitialR2T=Yes", "ImmediateData=No");
        await using var _s = server;
        // Two 1 MiB writes waiting for data use the budget up; the third is refused, not buffered.
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Write10(0, 2048), 1 << 20, write: true));
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Write10(0, 2048), 1 << 20, write: true));
        uint third = i.NextItt();
        await i.SendAsync(TestPdu.ScsiCommand(third, i.CmdSN++, TestTargets.Write10(0, 2048), 1 << 20, write: true));
        TestPdu? status = null;
        for (int n = 0; n < 20 && status is null; n++)
        {
            var p = await i.NextAsync() ?? throw new AssertionException("no PDU");
            if (p.Opcode == Opcode.ScsiResponse) status = p;
        }
        Assert.That(status!.Itt, Is.EqualTo(third));
        Assert.That(status.Header[3], Is.EqualTo(ScsiStatus.TaskSetFull));
        Assert.That(scsi.Executed, Is.Empty);
        await i.Connection.CloseAsync("test done"); // the two writes never get their data
    }

    [Test]
    public async Task Lun_field_is_decoded_to_a_flat_number()
    {
        var (server, scsi, i) = await SessionAsync();
        await using var _s = server;
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, [0, 0, 0, 0, 0, 0], 0, lun: 1));
        await i.ExpectAsync(Opcode.ScsiResponse);
        var cmd = scsi.Executed.Single();
        Assert.That(cmd.Lun, Is.EqualTo(1UL));
        Assert.That(cmd.Nexus.InitiatorPortName, Is.EqualTo("iqn.2026-11.test:initiator,i,0x00023d000001"));
        Assert.That(cmd.Nexus.TargetPortName, Is.EqualTo("iqn.2026-11.test:disk,t,0x0001"));
        var tid = cmd.Nexus.InitiatorTransportId;
        Assert.That(tid[0], Is.EqualTo(0x45), "format 01b, protocol iSCSI");
        Assert.That(tid.Length % 4, Is.Zero);
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(tid.AsSpan(2)), Is.EqualTo(tid.Length - 4));
        Assert.That(System.Text.Encoding.ASCII.GetString(tid, 4, cmd.Nexus.InitiatorPortName.Length), Is.EqualTo(cmd.Nexus.InitiatorPortName));
        Assert.That(tid[4 + cmd.Nexus.InitiatorPortName.Length], Is.Zero, "NUL-terminated");
    }

    [Test]
    public async Task StatSN_increases_by_one_per_status_and_ExpStatSN_window_fields_are_filled()
    {
        var (server, _, i) = await SessionAsync();
        await using var _s = server;
        var statSNs = new List<uint>();
        for (int n = 0; n < 5; n++)
        {
            await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, [0, 0, 0, 0, 0, 0], 0));
            var r = await i.ExpectAsync(Opcode.ScsiResponse);
            statSNs.Add(r.StatSN);
            Assert.That(r.ExpCmdSN, Is.EqualTo(i.CmdSN));
            Assert.That(r.MaxCmdSN, Is.GreaterThanOrEqualTo(r.ExpCmdSN));
        }
        Assert.That(statSNs.Zip(statSNs.Skip(1), (a, b) => b - a), Has.All.EqualTo(1u));
    }
}
