using System.Buffers.Binary;
using System.Text;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Robustness;

/// <summary>
/// Hostile bytes against the real server over TCP: every bad connection is refused (Reject, login failure,
/// error status) or closed, the process stays up, and a session opened before the fuzzing keeps
/// writing and reading correctly the whole time.
/// </summary>
[TestFixture, Category("Fuzz")]
public class FuzzTests
{
    ServerProcess _srv = null!;
    TestInitiator _witness = null!;
    Thread _witnessThread = null!;
    volatile bool _stop;
    long _witnessRounds;
    readonly List<string> _witnessErrors = new();

    [OneTimeSetUp]
    public void Start()
    {
        _srv = new ServerProcess(new ServerOptions { Size = "64MiB" }).Start();
        _witness = TestInitiator.Connect(_srv);
        _witness.ClearUnitAttention(0);
        _witnessThread = new Thread(WitnessLoop) { IsBackground = true, Name = "witness" };
        _witnessThread.Start();
    }

    /// <summary>Writes a changing pattern to a few blocks and reads each back, until the fixture ends.</summary>
    void WitnessLoop()
    {
        var buf = new byte[4096];
        for (long round = 0; !_stop; round++)
        {
            try
            {
                var lba = (ulong)(1000 + round % 64 * 8);
                BinaryPrimitives.WriteInt64BigEndian(buf, round);
                buf.AsSpan(8).Fill((byte)round);
                var w = _witness.Write16(0, lba, buf, 512, fua: round % 4 == 0);
                if (!w.Good) { lock (_witnessErrors) _witnessErrors.Add($"round {round}: write {w}"); }
                var r = _witness.Read16(0, lba, 8, 512);
                if (!r.Good || !r.Data.AsSpan().SequenceEqual(buf)) lock (_witnessErrors) _witnessErrors.Add($"round {round}: read {r} (data equal: {r.Data.AsSpan().SequenceEqual(buf)})");
                Interlocked.Increment(ref _witnessRounds);
            }
            catch (Exception e)
            {
                lock (_witnessErrors) _witnessErrors.Add($"round {round}: {e.GetType().Name}: {e.Message}");
                return;
            }
            Thread.Sleep(5);
        }
    }

    [OneTimeTearDown]
    public void Stop()
    {
        _stop = true;
        _witnessThread?.Join(TimeSpan.FromSeconds(30));
        try { _witness?.Logout(); } catch (IOException) { }
        _witness?.Dispose();
        if (_srv is null) return;
        try { _srv.Stop(); } finally { _srv.Dispose(); }
    }

    // ------------------------------------------------------------------ PDU builders (RFC 7143 layouts)

    static byte[] Bhs(byte opcodeAndI, byte flags = 0x80, uint itt = 1, uint cmdSn = 1, uint expStatSn = 0)
    {
        var b = new byte[48];
        b[0] = opcodeAndI; b[1] = flags;
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), cmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(28), expStatSn);
        return b;
    }

    static byte[] LoginBhs(int dataLength, byte ahsWords = 0)
    {
        var b = Bhs(0x43, 0x81); // immediate Login, T=1, CSG=0 NSG=1
        b[4] = ahsWords;
        b[5] = (byte)(dataLength >> 16); b[6] = (byte)(dataLength >> 8); b[7] = (byte)dataLength;
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), 0x80_1234_5678UL << 16);
        return b;
    }

    static byte[] Concat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();
    static byte[] Pad(byte[] d) => d.Length % 4 == 0 ? d : d.Concat(new byte[4 - d.Length % 4]).ToArray();
    static byte[] Keys(string s) => Encoding.ASCII.GetBytes(s);
    static byte[] LoginWith(byte[] data) => Concat(LoginBhs(data.Length), Pad(data));

    static readonly string GoodKeys = "InitiatorName=iqn.2026-11.org.example:fuzz\0SessionType=Normal\0TargetName=iqn.2026-11.org.example:integrity\0AuthMethod=None\0";

    /// <summary>Pre-login cases: (name, bytes, half-close after sending).</summary>
    public static IEnumerable<TestCaseData> PreLoginCases()
    {
        TestCaseData C(string name, byte[] bytes, bool halfClose) => new TestCaseData(bytes, halfClose).SetName("Prelogin_" + name);
        yield return C("truncated_header", LoginBhs(0)[..20], true);
        yield return C("header_then_truncated_data", Concat(LoginBhs(200), Keys(GoodKeys)[..50]), true);
        yield return C("data_segment_length_16MiB_announced", LoginBhs(0xffffff), false);
        yield return C("data_segment_length_over_login_limit", LoginWith(Keys(GoodKeys + new string('X', 70000) + "=1\0")), false);
        yield return C("ahs_length_255_words_on_login", Concat(LoginBhs(0, 255), new byte[1020]), false);
        var ahs = new byte[8]; BinaryPrimitives.WriteUInt16BigEndian(ahs, 0x4000); ahs[2] = 1;
        yield return C("ahs_inner_length_disagrees", Concat(LoginBhs(0, 2), ahs), false);
        yield return C("scsi_command_before_login", Concat(Bhs(0x01, 0xc1), new byte[0]), false);
        yield return C("reserved_opcode_0x1f", Bhs(0x1f), false);
        yield return C("target_opcode_0x21_from_initiator", Bhs(0x21), false);
        yield return C("login_without_initiator_name", LoginWith(Keys("SessionType=Normal\0TargetName=iqn.2026-11.org.example:integrity\0AuthMethod=None\0")), false);
        yield return C("login_unknown_target", LoginWith(Keys("InitiatorName=iqn.2026-11.org.example:fuzz\0SessionType=Normal\0TargetName=iqn.2026-11.org.example:nope\0AuthMethod=None\0")), false);
        yield return C("garbage_keys", LoginWith([0xff, 0xfe, (byte)'=', 0, (byte)'=', (byte)'=', 0, .. Keys("noequals\0=\0A=B=C\0"), 0xc3, 0x28, 0]), false);
        yield return C("keys_without_nul_terminator", LoginWith(Keys("InitiatorName=iqn.2026-11.org.example:fuzz")), false);
        yield return C("numeric_key_overflow", LoginWith(Keys(GoodKeys + "MaxRecvDataSegmentLength=999999999999999999999999\0")), false);
        yield return C("auth_method_bogus", LoginWith(Keys("InitiatorName=iqn.2026-11.org.example:fuzz\0SessionType=Normal\0TargetName=iqn.2026-11.org.example:integrity\0AuthMethod=Kerberos9\0")), false);
        var badStage = LoginWith(Keys(GoodKeys)); badStage[1] = 0x8f; // CSG=3 (reserved for login), NSG=3
        yield return C("login_stage_full_feature_as_csg", badStage, false);
        var badVersion = LoginWith(Keys(GoodKeys)); badVersion[2] = 0x7f; badVersion[3] = 0x7f;
        yield return C("unsupported_version", badVersion, false);
        var rnd = new Random(20261125);
        for (var i = 0; i < 6; i++)
        {
            var junk = new byte[rnd.Next(1, 65536)];
            rnd.NextBytes(junk);
            yield return C($"random_bytes_{i}", junk, true);
        }
        var junkAfterLoginHeader = new byte[4096]; rnd.NextBytes(junkAfterLoginHeader);
        yield return C("random_bytes_after_valid_login_header", Concat(LoginBhs(4096), junkAfterLoginHeader), false);
    }

    [TestCaseSource(nameof(PreLoginCases))]
    public void Malformed_input_before_login_is_refused_and_nothing_else_is_disturbed(byte[] bytes, bool halfClose)
    {
        var before = Interlocked.Read(ref _witnessRounds);
        using (var c = new TestInitiator(_srv.Host, _srv.Port, TimeSpan.FromSeconds(15)))
        {
            try { c.SendRaw(bytes); } catch (IOException) { /* the target may close while we still send */ }
            if (halfClose) { try { c.ShutdownSend(); } catch (System.Net.Sockets.SocketException) { } }
            AssertRefusedOrClosed(c);
        }
        AssertServerAndWitnessHealthy(before);
    }

    /// <summary>Cases inside a logged-in session: (name, builder that gets the live initiator).</summary>
    public static IEnumerable<TestCaseData> FullFeatureCases()
    {
        TestCaseData C(string name, Action<TestInitiator> send, bool mayDiscard = false) => new TestCaseData(send, mayDiscard).SetName("FullFeature_" + name);
        yield return C("reserved_opcode", i => i.SendPdu(Bhs(0x1d, 0x80, i.NextItt(), i.CmdSn, i.ExpStatSn), default));
        yield return C("data_segment_length_16MiB_announced", i =>
        {
            var b = Bhs(0x01, 0xa1, i.NextItt(), i.TakeCmdSn(), i.ExpStatSn);
            b[32] = 0x8a; // WRITE(16), 1 block
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(42), 1);
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), 512);
            var raw = b.ToArray(); raw[5] = 0xff; raw[6] = 0xff; raw[7] = 0xff;
            i.SendRaw(raw);
        });
        yield return C("immediate_data_larger_than_expected_length", i =>
        {
            var b = Bhs(0x01, 0xa1, i.NextItt(), i.TakeCmdSn(), i.ExpStatSn);
            b[32] = 0x8a; BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(42), 1);
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), 512);
            i.SendPdu(b, new byte[8192]);
        });
        yield return C("ahs_length_disagrees_with_bytes", i =>
        {
            var b = Bhs(0x01, 0xc1, i.NextItt(), i.TakeCmdSn(), i.ExpStatSn);
            b[4] = 4; // 16 bytes of AHS announced
            var ahs = new byte[16]; BinaryPrimitives.WriteUInt16BigEndian(ahs, 300); ahs[2] = 1; // extended CDB of 300 bytes
            i.SendRaw(Concat(b, ahs));
        });
        yield return C("data_out_for_unknown_task", i =>
        {
            var b = Bhs(0x05, 0x80, 0xdead_beef, 0, i.ExpStatSn);
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), 0x1234_5678);
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(40), 0x7fff_0000);
            i.SendPdu(b, new byte[512]);
        }, mayDiscard: true); // RFC 7143 lets a target drop data for tasks it does not (or no longer) know
        yield return C("data_out_beyond_the_r2t_and_far_past_the_buffer", i => DataOutAfterR2T(i, offset: 1 << 30, length: 4096));
        yield return C("data_out_more_bytes_than_the_r2t_asked", i => DataOutAfterR2T(i, offset: 0, length: 65536 + 4096));
        yield return C("text_request_garbage_keys", i =>
        {
            var b = Bhs(0x44, 0x80, i.NextItt(), i.CmdSn, i.ExpStatSn);
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), 0xffffffff);
            i.SendPdu(b, [0xff, (byte)'=', 0xfe, 0, (byte)'=', 0, .. Encoding.ASCII.GetBytes("SendTargets=" + new string('A', 5000) + "\0")]);
        });
        yield return C("random_bytes_mid_session", i =>
        {
            var junk = new byte[20000];
            new Random(42).NextBytes(junk);
            i.SendRaw(junk);
        });
    }

    /// <summary>Starts a 64 KiB WRITE with no immediate data, waits for the R2T, and answers it wrongly.</summary>
    static void DataOutAfterR2T(TestInitiator i, uint offset, int length)
    {
        var itt = i.NextItt();
        var b = Bhs(0x01, 0xa1, itt, i.TakeCmdSn(), i.ExpStatSn);
        b[32] = 0x8a; BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(34), 2000); BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(42), 128);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), 65536);
        i.SendPdu(b, default);
        var r2t = i.Receive();
        while (r2t.Opcode == 0x20) r2t = i.Receive(); // NOP-In pings
        Assert.That(r2t.Opcode, Is.EqualTo(0x31), "expected an R2T for a write without immediate data");
        var d = Bhs(0x05, 0x80, itt, 0, i.ExpStatSn);
        BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(20), r2t.U32(20));
        BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(40), offset);
        i.SendPdu(d, new byte[length]);
    }

    [TestCaseSource(nameof(FullFeatureCases))]
    public void Malformed_pdu_in_a_session_is_refused_and_other_sessions_carry_on(Action<TestInitiator> send, bool mayDiscard)
    {
        var before = Interlocked.Read(ref _witnessRounds);
        using (var c = TestInitiator.Connect(_srv, new LoginOptions { ImmediateData = false, InitiatorName = "iqn.2026-11.org.example:fuzzer" }, TimeSpan.FromSeconds(15)))
        {
            c.ClearUnitAttention(0);
            try { send(c); } catch (IOException) { }
            if (mayDiscard) AssertRefusedClosedOrHarmlesslyDiscarded(c);
            else AssertRefusedOrClosed(c);
        }
        AssertServerAndWitnessHealthy(before);
    }

    /// <summary>
    /// Within 15 s the target closes the connection or answers with a refusal: Reject, a failed login,
    /// a failed SCSI status, or a failed Text/Logout. Silence (a hang waiting for bytes that never come) fails.
    /// </summary>
    void AssertRefusedOrClosed(TestInitiator c)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        var seen = new List<string>();
        while (DateTime.UtcNow < deadline)
        {
            TestInitiator.Pdu p;
            try { p = c.Receive(); }
            catch (IOException e) when (e.InnerException is System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.TimedOut })
            {
                break;
            }
            catch (IOException) { return; } // closed or reset: refused
            catch (ObjectDisposedException) { return; }
            seen.Add($"0x{p.Opcode:X2}");
            switch (p.Opcode)
            {
                case 0x3f: return; // Reject
                case 0x23 when p.Bhs[36] != 0: return; // login refused with a status class
                case 0x23 or 0x24 when ContainsRefusal(p.Data): return; // key answered Reject / NotUnderstood / Irrelevant
                case 0x21 when p.Bhs[2] != 0 || p.Bhs[3] != 0: return; // SCSI response: failed
                case 0x25 when (p.Flags & 1) != 0 && p.Bhs[3] != 0: return;
                case 0x20: continue; // NOP-In: keep waiting
            }
        }
        Assert.Fail($"the target neither refused nor closed the connection within 15 s (PDUs seen: {string.Join(",", seen)})\n{_srv.Output(30)}");
    }

    /// <summary>
    /// For PDUs a target may legitimately drop: either refused/closed as above, or ignored while the same
    /// session still works (a ping is answered and a READ returns good data).
    /// </summary>
    void AssertRefusedClosedOrHarmlesslyDiscarded(TestInitiator c)
    {
        try
        {
            c.Ping();
        }
        catch (IOException) { return; } // closed, or a Reject arrived instead of the ping answer: refused
        var r = c.Read16(0, 1000, 8, 512);
        Assert.That(r.Good, Is.True, () => "after a discarded PDU the session must keep working: " + r);
    }

    static bool ContainsRefusal(byte[] keys)
    {
        var t = Encoding.ASCII.GetString(keys);
        return t.Contains("=Reject") || t.Contains("=NotUnderstood") || t.Contains("=Irrelevant");
    }

    void AssertServerAndWitnessHealthy(long roundsBefore)
    {
        Assert.That(_srv.IsRunning, Is.True, () => "integrity-target died\n" + _srv.Output());
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (Interlocked.Read(ref _witnessRounds) < roundsBefore + 3 && DateTime.UtcNow < deadline) Thread.Sleep(20);
        lock (_witnessErrors) Assert.That(_witnessErrors, Is.Empty, () => "the witness session was disturbed\n" + _srv.Output(30));
        Assert.That(Interlocked.Read(ref _witnessRounds), Is.GreaterThanOrEqualTo(roundsBefore + 3), "the witness session keeps making progress");
        // and a brand-new session still logs in and works
        using var fresh = TestInitiator.Connect(_srv, new LoginOptions { InitiatorName = "iqn.2026-11.org.example:after-fuzz" });
        fresh.ClearUnitAttention(0);
        Assert.That(fresh.Read16(0, 0, 8, 512).Good, Is.True);
        fresh.Logout();
    }
}
