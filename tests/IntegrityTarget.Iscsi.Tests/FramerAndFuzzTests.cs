using System.Buffers;
using CsCheck;
using IntegrityTarget.Iscsi.Pdus;

namespace IntegrityTarget.Iscsi.Tests;

public class FramerAndFuzzTests
{
    [Test]
    public void Framer_counts_TotalAHSLength_in_four_byte_words()
    {
        var h = TestPdu.NewHeader(Opcode.ScsiCommand);
        h[4] = 2; // 8 bytes of AHS
        var bytes = TestPdu.Frame(h, [1, 2, 3, 4, 5]);
        var withAhs = bytes[..48].Concat(new byte[] { 0, 5, 1, 0, 9, 9, 9, 9 }).Concat(bytes[48..]).ToArray();
        var framer = new PduFramer { MaxDataSegmentLength = 8192 };
        var pdu = new InboundPdu();
        var seq = new ReadOnlySequence<byte>(withAhs);
        Assert.That(framer.TryRead(ref seq, pdu, out _), Is.EqualTo(FrameResult.Pdu));
        Assert.That(pdu.AhsLength, Is.EqualTo(8));
        Assert.That(pdu.Data.ToArray(), Is.EqualTo(new byte[] { 1, 2, 3, 4, 5 }));
        Assert.That(seq.Length, Is.Zero, "padding consumed");
    }

    [Test]
    public void Framer_refuses_an_oversized_data_segment_from_the_header_alone()
    {
        var h = TestPdu.NewHeader(Opcode.ScsiCommand);
        h[5] = 0xff; h[6] = 0xff; h[7] = 0xff; // 16 MiB announced, none of it sent
        var framer = new PduFramer { MaxDataSegmentLength = 262144 };
        var seq = new ReadOnlySequence<byte>(h);
        Assert.That(framer.TryRead(ref seq, new InboundPdu(), out var error), Is.EqualTo(FrameResult.Error));
        Assert.That(error, Is.EqualTo(FrameError.DataSegmentTooLarge));
        Assert.That(framer.RefusedLength, Is.EqualTo(0xffffff));
    }

    [Test]
    public void Framer_waits_for_partial_PDUs_and_resumes_byte_by_byte()
    {
        var bytes = TestPdu.NopOut(5, 0xffffffff, 1, "hello"u8.ToArray());
        var framer = new PduFramer { MaxDataSegmentLength = 8192 };
        var pdu = new InboundPdu();
        for (int n = 0; n < bytes.Length; n++)
        {
            var seq = new ReadOnlySequence<byte>(bytes, 0, n);
            Assert.That(framer.TryRead(ref seq, pdu, out _), Is.EqualTo(FrameResult.NeedMoreData));
        }
        var all = new ReadOnlySequence<byte>(bytes);
        Assert.That(framer.TryRead(ref all, pdu, out _), Is.EqualTo(FrameResult.Pdu));
        Assert.That(pdu.Data.ToArray(), Is.EqualTo("hello"u8.ToArray()));
    }

    [Test]
    public void Fuzz_framer_never_throws_and_never_hands_out_more_than_the_limit()
    {
        Gen.Select(Gen.Byte.Array[0, 600], Gen.Int[1, 64]).Sample((bytes, chunk) =>
        {
            var framer = new PduFramer { MaxDataSegmentLength = 256, HeaderDigest = bytes.Length % 2 == 0, DataDigest = bytes.Length % 3 == 0 };
            var pdu = new InboundPdu();
            int fed = 0;
            var buffer = new List<byte>();
            while (fed < bytes.Length)
            {
                int n = Math.Min(chunk, bytes.Length - fed);
                buffer.AddRange(bytes.AsSpan(fed, n).ToArray());
                fed += n;
                var seq = new ReadOnlySequence<byte>(buffer.ToArray());
                while (true)
                {
                    var r = framer.TryRead(ref seq, pdu, out _);
                    if (r == FrameResult.Error) return;
                    if (r == FrameResult.NeedMoreData) break;
                    if (pdu.DataLength > 256) throw new Exception("data beyond the limit");
                }
                buffer = seq.ToArray().ToList();
            }
        }, iter: 300);
    }

    /// <summary>Hostile PDU streams against a connection: no exception escapes, and another session keeps working.</summary>
    [Test]
    public async Task Fuzz_hostile_PDUs_close_or_reject_while_other_sessions_carry_on()
    {
        var scsi = new FakeScsiTarget();
        await using var server = TestTargets.Server(scsi);
        var good = new MemoryInitiator(server);
        await good.LoginAsync(isid: 0x999);

        var genHeader = Gen.Byte.Array[48].Select(Gen.Byte[0, 0x3f], Gen.Int[0, 70000], Gen.Byte[0, 3], (h, op, len, ahs) =>
        {
            h[0] = op; h[4] = ahs;
            h[5] = (byte)(len >> 16); h[6] = (byte)(len >> 8); h[7] = (byte)len;
            return h;
        });
        var genStream = Gen.Select(Gen.Bool, genHeader.Array[1, 6], Gen.Byte.Array[0, 300]);
        int cases = 0;
        genStream.Sample((loginFirst, headers, tail) =>
        {
            cases++;
            var i = new MemoryInitiator(server);
            try
            {
                if (loginFirst) i.LoginAsync(isid: (ulong)(1000 + cases)).GetAwaiter().GetResult();
                foreach (var h in headers)
                {
                    int len = Math.Min((h[5] << 16) | (h[6] << 8) | h[7], 300);
                    i.SendAsync([.. h, .. tail.Take(len)]).GetAwaiter().GetResult();
                }
                i.SendAsync(tail).GetAwaiter().GetResult();
            }
            finally
            {
                i.Connection.CloseAsync("test done").GetAwaiter().GetResult();
            }
        }, iter: 150, threads: 1);

        await good.SendAsync(TestPdu.NopOut(0x42, 0xffffffff, good.CmdSN, "still here"u8.ToArray()));
        var r = await good.ExpectAsync(Opcode.NopIn);
        Assert.That(r.Data, Is.EqualTo("still here"u8.ToArray()));
        Assert.That(server.Sessions, Has.Count.EqualTo(1));
    }

    [Test]
    public async Task Fuzz_login_with_garbage_keys_ends_in_a_login_response_never_an_exception()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var genKey = Gen.String[Gen.Char.AlphaNumeric, 1, 20];
        var genValue = Gen.OneOf(Gen.String[Gen.Char, 0, 40], Gen.Const("CRC32C,None"), Gen.Const("Yes"), Gen.Const("4294967296"), Gen.Const("-1"));
        var known = Gen.OneOfConst("HeaderDigest", "DataDigest", "MaxBurstLength", "FirstBurstLength", "InitialR2T", "ImmediateData",
            "MaxOutstandingR2T", "ErrorRecoveryLevel", "MaxConnections", "AuthMethod", "CHAP_A", "CHAP_R", "SessionType", "TargetName",
            "MaxRecvDataSegmentLength", "DefaultTime2Wait", "OFMarker", "TargetAlias");
        var genPair = Gen.Select(Gen.OneOf(genKey, known), genValue, (k, v) => $"{k}={v.Replace("\0", "")}");
        Gen.Select(genPair.Array[0, 12], Gen.Int[0, 1], Gen.Int[0, 3], Gen.Bool).Sample((pairs, csg, nsg, transit) =>
        {
            var i = new MemoryInitiator(server);
            string[] keys = [$"InitiatorName={TestTargets.Initiator}", .. pairs];
            i.SendAsync(TestPdu.Login(keys, csg, nsg, transit, isid: 0x55)).GetAwaiter().GetResult();
            var r = i.NextAsync(TimeSpan.FromSeconds(5)).GetAwaiter().GetResult();
            if (r is null || r.Opcode != Opcode.LoginResponse) throw new Exception($"no login response for {string.Join(";", pairs)}");
            i.Connection.CloseAsync("done").GetAwaiter().GetResult();
        }, iter: 200, threads: 1);
    }
}
