using System.Buffers;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi.Tests;

public class DigestTests
{
    [Test]
    public void Crc32C_matches_the_standard_check_value_and_the_RFC_iSCSI_example()
    {
        Assert.That(Crc32C.Compute("123456789"u8), Is.EqualTo(0xE3069283u));
        // RFC 3720 B.4: 32 bytes of zeros give the CRC bytes aa 36 91 8a on the wire (LSB first).
        Assert.That(Crc32C.Compute(new byte[32]), Is.EqualTo(0x8A9136AAu));
        var split = new ReadOnlySequence<byte>(new byte[32]).Slice(0);
        Assert.That(Crc32C.Compute(split), Is.EqualTo(0x8A9136AAu));
    }

    private static async Task<(IscsiServer, FakeScsiTarget, MemoryInitiator)> DigestSessionAsync()
    {
        var scsi = new FakeScsiTarget();
        var server = TestTargets.Server(scsi);
        var i = new MemoryInitiator(server);
        await i.LoginAsync(extra: ["HeaderDigest=CRC32C", "DataDigest=CRC32C"]);
        Assert.That(i.HeaderDigest && i.DataDigest, Is.True);
        return (server, scsi, i);
    }

    [Test]
    public async Task Negotiated_digests_are_checked_on_input_and_produced_on_output()
    {
        var (server, scsi, i) = await DigestSessionAsync();
        await using var _ = server;
        var payload = TestTargets.Pattern(1000, 9); // not a multiple of 4: the digest covers the padding
        await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Write10(0, 2), 1024, write: true,
            immediateData: [.. payload, .. new byte[24]], headerDigest: true, dataDigest: true));
        Assert.That((await i.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.EqualTo(ScsiStatus.Good));
        await i.SendAsync(TestPdu.NopOut(0x10, 0xffffffff, i.CmdSN, "abcde"u8.ToArray(), headerDigest: true, dataDigest: true));
        var nop = await i.ExpectAsync(Opcode.NopIn); // the parser verifies both digests
        Assert.That(nop.Data, Is.EqualTo("abcde"u8.ToArray()));
        Assert.That(scsi.Disk(0).AsSpan(0, 1000).ToArray(), Is.EqualTo(payload));
    }

    [Test]
    public async Task Bad_header_digest_closes_the_connection_without_dispatching()
    {
        var (server, scsi, i) = await DigestSessionAsync();
        await using var _ = server;
        var pdu = TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, [0, 0, 0, 0, 0, 0], 0, headerDigest: true);
        pdu[48] ^= 0xff;
        await i.SendAsync(pdu);
        Assert.That(i.Sink.Closed, Is.True);
        Assert.That(scsi.Executed, Is.Empty);
    }

    [Test]
    public async Task Bad_data_digest_is_rejected_and_the_connection_carries_on()
    {
        var (server, _, i) = await DigestSessionAsync();
        await using var _s = server;
        var pdu = TestPdu.NopOut(0x11, 0xffffffff, i.CmdSN, "abcd"u8.ToArray(), headerDigest: true, dataDigest: true);
        pdu[^1] ^= 0x01;
        await i.SendAsync(pdu);
        var reject = await i.ExpectAsync(Opcode.Reject);
        Assert.That(reject.Header[2], Is.EqualTo((byte)RejectReason.DataDigestError));
        await i.SendAsync(TestPdu.NopOut(0x12, 0xffffffff, i.CmdSN, [], headerDigest: true, dataDigest: true));
        Assert.That((await i.ExpectAsync(Opcode.NopIn)).Itt, Is.EqualTo(0x12u));
    }
}
