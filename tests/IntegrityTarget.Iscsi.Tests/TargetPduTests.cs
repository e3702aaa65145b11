using System.Buffers.Binary;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Iscsi.Session;

namespace IntegrityTarget.Iscsi.Tests;

/// <summary>Each header builder against the byte offsets of RFC 7143 §11; no connection, no socket.</summary>
public class TargetPduTests
{
    private static byte[] Bytes(BhsBuffer h) => ((ReadOnlySpan<byte>)h).ToArray();
    private static uint U32(byte[] h, int o) => BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(o));
    private static ulong U64(byte[] h, int o) => BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(o));

    /// <summary>Bytes 4-7 (AHS, data segment length) and 24-35 (StatSN/ExpCmdSN/MaxCmdSN) belong to the send path.</summary>
    private static void AssertSendPathFieldsZero(byte[] h)
    {
        Assert.That(h.AsSpan(4, 4).ToArray(), Is.All.Zero, "TotalAHSLength and DataSegmentLength are the send path's");
        Assert.That(h.AsSpan(24, 12).ToArray(), Is.All.Zero, "StatSN, ExpCmdSN, MaxCmdSN are the send path's");
    }

    [Test]
    public void Scsi_response_11_4_status_response_residual_and_ExpDataSN()
    {
        var h = Bytes(TargetPdus.ScsiResponse(itt: 0x11223344, status: 0x02, response: 0x01, residualFlags: 0x02, residual: 512, expDataSN: 7));
        Assert.That(h[0], Is.EqualTo(0x21));
        Assert.That(h[1], Is.EqualTo(0x80 | 0x02), "bit 7 always 1; U = underflow");
        Assert.That(h[2], Is.EqualTo(0x01), "Response");
        Assert.That(h[3], Is.EqualTo(0x02), "Status");
        Assert.That(U32(h, 16), Is.EqualTo(0x11223344u), "ITT");
        Assert.That(U32(h, 20), Is.Zero, "SNACK Tag");
        Assert.That(U32(h, 36), Is.EqualTo(7u), "ExpDataSN");
        Assert.That(U32(h, 40), Is.Zero, "bidirectional read residual");
        Assert.That(U32(h, 44), Is.EqualTo(512u), "Residual Count");
        AssertSendPathFieldsZero(h);
    }

    [Test]
    public void Residual_flags_are_O_for_overflow_and_U_for_underflow()
    {
        Assert.That(TargetPdus.ResidualFlags(4096, 512), Is.EqualTo(0x04));
        Assert.That(TargetPdus.ResidualFlags(512, 4096), Is.EqualTo(0x02));
        Assert.That(TargetPdus.ResidualFlags(512, 512), Is.Zero);
    }

    [Test]
    public void Data_in_11_7_without_status_carries_lun_itt_reserved_ttt_datasn_and_offset()
    {
        var h = Bytes(TargetPdus.DataIn(lun: 0x0001_0000_0000_0000, itt: 5, dataSN: 3, offset: 65536, final: false));
        Assert.That(h[0], Is.EqualTo(0x25));
        Assert.That(h[1], Is.Zero, "no F, no S");
        Assert.That(U64(h, 8), Is.EqualTo(0x0001_0000_0000_0000UL), "LUN");
        Assert.That(U32(h, 16), Is.EqualTo(5u), "ITT");
        Assert.That(U32(h, 20), Is.EqualTo(0xffffffffu), "TTT reserved (no A bit)");
        Assert.That(U32(h, 36), Is.EqualTo(3u), "DataSN");
        Assert.That(U32(h, 40), Is.EqualTo(65536u), "Buffer Offset");
        Assert.That(U32(h, 44), Is.Zero);
        AssertSendPathFieldsZero(h);
        Assert.That(TargetPdus.AdvancesStatSN(h), Is.False);
    }

    [Test]
    public void Data_in_11_7_with_status_sets_F_S_status_and_residual_and_consumes_a_StatSN()
    {
        var h = Bytes(TargetPdus.DataIn(lun: 0, itt: 5, dataSN: 0, offset: 0, final: true, status: 0x00, residualFlags: 0x04, residual: 100));
        Assert.That(h[1], Is.EqualTo(0x80 | 0x04 | 0x01), "F, O, S");
        Assert.That(h[3], Is.Zero, "Status GOOD");
        Assert.That(U32(h, 44), Is.EqualTo(100u), "Residual Count");
        Assert.That(TargetPdus.AdvancesStatSN(h), Is.True);
    }

    [Test]
    public void R2T_11_8_lun_itt_ttt_r2tsn_offset_and_desired_length()
    {
        var h = Bytes(TargetPdus.R2T(lun: 0x0002_0000_0000_0000, itt: 9, ttt: 0x77, r2tSN: 2, offset: 131072, length: 65536));
        Assert.That(h[0], Is.EqualTo(0x31));
        Assert.That(h[1], Is.EqualTo(0x80));
        Assert.That(U64(h, 8), Is.EqualTo(0x0002_0000_0000_0000UL));
        Assert.That(U32(h, 16), Is.EqualTo(9u));
        Assert.That(U32(h, 20), Is.EqualTo(0x77u));
        Assert.That(U32(h, 36), Is.EqualTo(2u), "R2TSN");
        Assert.That(U32(h, 40), Is.EqualTo(131072u), "Buffer Offset");
        Assert.That(U32(h, 44), Is.EqualTo(65536u), "Desired Data Transfer Length");
        AssertSendPathFieldsZero(h);
        Assert.That(TargetPdus.AdvancesStatSN(h), Is.False);
    }

    [Test]
    public void Nop_in_11_19_reply_echoes_lun_and_itt_and_ping_carries_our_ttt()
    {
        var reply = Bytes(TargetPdus.NopInReply(lun: 0x0003_0000_0000_0000, itt: 0x42));
        Assert.That(reply[0], Is.EqualTo(0x20));
        Assert.That(reply[1], Is.EqualTo(0x80));
        Assert.That(U64(reply, 8), Is.EqualTo(0x0003_0000_0000_0000UL));
        Assert.That(U32(reply, 16), Is.EqualTo(0x42u));
        Assert.That(U32(reply, 20), Is.EqualTo(0xffffffffu));
        Assert.That(TargetPdus.AdvancesStatSN(reply), Is.True, "a reply to a NOP-Out with an ITT carries status numbering");
        AssertSendPathFieldsZero(reply);

        var ping = Bytes(TargetPdus.NopInPing(ttt: 0x1234));
        Assert.That(U32(ping, 16), Is.EqualTo(0xffffffffu), "ITT reserved");
        Assert.That(U32(ping, 20), Is.EqualTo(0x1234u), "TTT to be echoed");
        Assert.That(TargetPdus.AdvancesStatSN(ping), Is.False, "an unsolicited NOP-In does not advance StatSN");
    }

    [Test]
    public void Task_management_response_11_6()
    {
        var h = Bytes(TargetPdus.TaskManagementResponse(itt: 0xabc, response: 5));
        Assert.That(h[0], Is.EqualTo(0x22));
        Assert.That(h[1], Is.EqualTo(0x80));
        Assert.That(h[2], Is.EqualTo(5), "Response");
        Assert.That(U32(h, 16), Is.EqualTo(0xabcu));
        AssertSendPathFieldsZero(h);
    }

    [Test]
    public void Login_response_11_13_flags_isid_tsih_itt_and_status()
    {
        var h = Bytes(TargetPdus.LoginResponse(flags: 0x87, isid: 0x00023d000001, tsih: 0x1234, itt: 0x55, statusClass: 0x02, statusDetail: 0x01));
        Assert.That(h[0], Is.EqualTo(0x23));
        Assert.That(h[1], Is.EqualTo(0x87), "T, CSG=1, NSG=3");
        Assert.That(h[2], Is.Zero, "Version-max");
        Assert.That(h[3], Is.Zero, "Version-active");
        Assert.That(h.AsSpan(8, 6).ToArray(), Is.EqualTo(new byte[] { 0x00, 0x02, 0x3d, 0x00, 0x00, 0x01 }), "ISID");
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(14)), Is.EqualTo(0x1234), "TSIH");
        Assert.That(U32(h, 16), Is.EqualTo(0x55u), "ITT");
        Assert.That(h[36], Is.EqualTo(0x02), "Status-Class");
        Assert.That(h[37], Is.EqualTo(0x01), "Status-Detail");
        AssertSendPathFieldsZero(h);
        Assert.That(Bhs.Isid(h), Is.EqualTo(0x00023d000001UL));
    }

    [Test]
    public void Text_response_11_11_C_while_more_follows_else_F()
    {
        var more = Bytes(TargetPdus.TextResponse(itt: 3, ttt: 9, more: true));
        Assert.That(more[0], Is.EqualTo(0x24));
        Assert.That(more[1], Is.EqualTo(0x40));
        Assert.That(U32(more, 16), Is.EqualTo(3u));
        Assert.That(U32(more, 20), Is.EqualTo(9u));
        var last = Bytes(TargetPdus.TextResponse(itt: 3, ttt: 0xffffffff, more: false));
        Assert.That(last[1], Is.EqualTo(0x80));
        AssertSendPathFieldsZero(last);
    }

    [Test]
    public void Logout_response_11_15_response_and_times()
    {
        var h = Bytes(TargetPdus.LogoutResponse(itt: 8, response: 2, time2Wait: 2, time2Retain: 20));
        Assert.That(h[0], Is.EqualTo(0x26));
        Assert.That(h[1], Is.EqualTo(0x80));
        Assert.That(h[2], Is.EqualTo(2));
        Assert.That(U32(h, 16), Is.EqualTo(8u));
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(40)), Is.EqualTo(2), "Time2Wait");
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(42)), Is.EqualTo(20), "Time2Retain");
        AssertSendPathFieldsZero(h);
    }

    [Test]
    public void Reject_11_17_reason_and_reserved_itt()
    {
        var h = Bytes(TargetPdus.Reject(RejectReason.InvalidPduField));
        Assert.That(h[0], Is.EqualTo(0x3f));
        Assert.That(h[1], Is.EqualTo(0x80));
        Assert.That(h[2], Is.EqualTo(0x09));
        Assert.That(U32(h, 16), Is.EqualTo(0xffffffffu));
        AssertSendPathFieldsZero(h);
    }

    [Test]
    public async Task The_send_path_numbers_status_PDUs_fills_the_window_and_adds_digests_and_padding()
    {
        var sink = new MemorySink();
        var window = new CmdSnWindow(queueDepth: 4);
        window.Start(10);
        var sender = new PduSender(sink, window, TestTargets.Log);
        sender.StartStatSN(100);
        await sender.SendAsync(TargetPdus.R2T(0, 1, 2, 0, 0, 512), flush: false);        // StatSN 100, not advanced
        await sender.SendAsync(TargetPdus.TaskManagementResponse(1, 0));                    // StatSN 100, advances
        sender.HeaderDigest = sender.DataDigest = true;
        await sender.SendAsync(TargetPdus.NopInReply(0, 7), new byte[] { 1, 2, 3, 4, 5 }); // StatSN 101, digests, padded

        var r2t = await sink.NextAsync(false, false, MemoryInitiator.Timeout);
        var tmf = await sink.NextAsync(false, false, MemoryInitiator.Timeout);
        var nop = await sink.NextAsync(true, true, MemoryInitiator.Timeout);
        Assert.That(r2t!.StatSN, Is.EqualTo(100u));
        Assert.That(tmf!.StatSN, Is.EqualTo(100u));
        Assert.That(nop!.StatSN, Is.EqualTo(101u), "parsed with header and data digests checked");
        Assert.That(nop.Data, Is.EqualTo(new byte[] { 1, 2, 3, 4, 5 }));
        foreach (var p in new[] { r2t, tmf, nop })
        {
            Assert.That(p.ExpCmdSN, Is.EqualTo(10u));
            Assert.That(p.MaxCmdSN, Is.EqualTo(13u), "ExpCmdSN + queue depth - 1");
        }
    }
}
