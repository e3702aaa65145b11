using System.Security.Cryptography;
using System.Text;
using IntegrityTarget.Iscsi.Pdus;

namespace IntegrityTarget.Iscsi.Tests;

public class LoginTests
{
    private static string ChapResponse(string idText, string secret, string challengeHex)
    {
        var challenge = Convert.FromHexString(challengeHex[2..]);
        var s = Encoding.UTF8.GetBytes(secret);
        byte[] input = [byte.Parse(idText), .. s, .. challenge];
        return "0x" + Convert.ToHexString(MD5.HashData(input));
    }

    [Test]
    public async Task Login_without_authentication_reaches_full_feature_phase_with_TPGT_and_TSIH()
    {
        var scsi = new FakeScsiTarget();
        await using var server = TestTargets.Server(scsi);
        var i = new MemoryInitiator(server);
        var r = await i.LoginAsync();
        var keys = r.Keys();
        Assert.That(keys["TargetPortalGroupTag"], Is.EqualTo("1"));
        Assert.That(keys["TargetAlias"], Is.EqualTo("disk"));
        Assert.That(keys["MaxRecvDataSegmentLength"], Is.EqualTo("262144"));
        Assert.That(r.Flags & 0x80, Is.Not.Zero, "T bit");
        Assert.That(r.Flags & 0x03, Is.EqualTo(3), "NSG = full feature phase");
        Assert.That(r.Tsih, Is.Not.Zero);
        Assert.That(i.Connection.IsFullFeature, Is.True);
        Assert.That(scsi.Events, Has.Some.StartsWith("created iqn.2026-11.test:initiator,i,0x00023d000001"));
        Assert.That(server.Sessions.Single().Tsih, Is.EqualTo(r.Tsih));
    }

    [Test]
    public async Task TPGT_is_returned_in_the_first_security_stage_response()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", "AuthMethod=None"], 0, 1, true));
        var r = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.Keys()["TargetPortalGroupTag"], Is.EqualTo("1"));
        Assert.That(r.Keys()["AuthMethod"], Is.EqualTo("None"));
        Assert.That(r.Flags, Is.EqualTo(0x80 | 0x01), "T=1 CSG=0 NSG=1");
    }

    [Test]
    public async Task Unknown_target_fails_with_0203_and_closes()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", "TargetName=iqn.2026-11.test:nope"], 1, 3, true));
        var r = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.LoginStatus, Is.EqualTo(0x0203));
        await i.Connection.Closed.WaitAsync(MemoryInitiator.Timeout);
        Assert.That(i.Sink.Closed, Is.True);
    }

    [Test]
    public async Task Missing_InitiatorName_fails_with_0207()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"TargetName={TestTargets.Iqn}"], 1, 3, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0207));
    }

    [Test]
    public async Task Missing_TargetName_in_a_normal_session_fails_with_0207()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}"], 1, 3, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0207));
    }

    [Test]
    public async Task Initiator_not_in_ACL_fails_with_0202()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), acl: ["iqn.2026-11.test:someone-else"]);
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}"], 1, 3, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0202));
    }

    [Test]
    public async Task ACL_wildcard_admits_anyone()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), acl: ["iqn.other:x", "*"]);
        await new MemoryInitiator(server).LoginAsync();
    }

    [Test]
    public async Task Unsupported_version_fails_with_0205()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        var pdu = TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}"], 1, 3, true);
        pdu[2] = 5; pdu[3] = 3;
        await i.SendAsync(pdu);
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0205));
    }

    [Test]
    public async Task Unknown_TSIH_fails_with_session_does_not_exist()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}"], 1, 3, true, tsih: 77));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x020a));
    }

    [Test]
    public async Task Invalid_stage_transition_fails_as_initiator_error()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}"], 1, 1, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0200));
    }

    [Test]
    public async Task Non_login_PDU_before_login_closes_with_0x020b()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.NopOut(1, 0xffffffff, 1));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x020b));
        Assert.That(i.Sink.Closed, Is.True);
    }

    [Test]
    public async Task Login_text_split_with_C_bit_is_reassembled()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}"], 1, 0, false, cont: true));
        var partial = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(partial.Data, Is.Empty);
        Assert.That(partial.LoginStatus, Is.EqualTo(0));
        await i.SendAsync(TestPdu.Login([$"TargetName={TestTargets.Iqn}"], 1, 3, true));
        var r = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.LoginStatus, Is.EqualTo(0));
        Assert.That(r.Tsih, Is.Not.Zero);
    }

    [Test]
    public async Task Declarative_keys_repeated_with_the_same_value_after_AuthMethod_None_are_accepted()
    {
        // libiscsi's second login request repeats InitiatorName and SessionType after the target chose AuthMethod=None.
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery", "AuthMethod=CHAP,None"], 0, 1, true));
        var r1 = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r1.Keys()["AuthMethod"], Is.EqualTo("None"));
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery", "HeaderDigest=None"], 1, 3, true));
        var r2 = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r2.LoginStatus, Is.EqualTo(0));
        Assert.That(i.Connection.IsFullFeature, Is.True);
    }

    [TestCase("SessionType=Normal", TestName = "Declarative_key_changed_during_login_fails_with_0200(SessionType)")]
    [TestCase("InitiatorName=iqn.2026-11.test:someone-else", TestName = "Declarative_key_changed_during_login_fails_with_0200(InitiatorName)")]
    public async Task Declarative_key_changed_during_login_fails_with_0200(string changed)
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery", "AuthMethod=None"], 0, 1, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0));
        await i.SendAsync(TestPdu.Login([changed], 1, 3, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0200));
        await i.Connection.Closed.WaitAsync(MemoryInitiator.Timeout);
    }

    private static async Task<(MemoryInitiator I, TestPdu Challenge)> ChapStartAsync(IscsiServer server)
    {
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", "AuthMethod=CHAP,None"], 0, 1, true));
        var r1 = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r1.Keys()["AuthMethod"], Is.EqualTo("CHAP"));
        Assert.That(r1.Flags & 0x80, Is.Zero, "no transit before authentication");
        await i.SendAsync(TestPdu.Login(["CHAP_A=7,5"], 0, 1, false));
        var r2 = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r2.Keys()["CHAP_A"], Is.EqualTo("5"));
        return (i, r2);
    }

    [Test]
    public async Task One_way_CHAP_with_the_right_secret_logs_in()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), chap: new("user", "secret-123456"));
        var (i, c) = await ChapStartAsync(server);
        var k = c.Keys();
        await i.SendAsync(TestPdu.Login(["CHAP_N=user", "CHAP_R=" + ChapResponse(k["CHAP_I"], "secret-123456", k["CHAP_C"])], 0, 1, true));
        var r = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.LoginStatus, Is.EqualTo(0));
        Assert.That(r.Flags, Is.EqualTo(0x81));
        Assert.That(r.Keys(), Does.Not.ContainKey("MaxRecvDataSegmentLength"), "no operational keys in the security stage (open-iscsi refuses them)");
        await i.SendAsync(TestPdu.Login(["HeaderDigest=None", "DataDigest=None"], 1, 3, true));
        var f = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(f.LoginStatus, Is.EqualTo(0));
        Assert.That(f.Keys()["MaxRecvDataSegmentLength"], Is.EqualTo("262144"));
        Assert.That(i.Connection.IsFullFeature, Is.True);
    }

    [Test]
    public async Task CHAP_with_a_bad_secret_fails_with_0201()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), chap: new("user", "secret-123456"));
        var (i, c) = await ChapStartAsync(server);
        var k = c.Keys();
        await i.SendAsync(TestPdu.Login(["CHAP_N=user", "CHAP_R=" + ChapResponse(k["CHAP_I"], "wrong-secret", k["CHAP_C"])], 0, 1, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0201));
        Assert.That(i.Sink.Closed, Is.True);
    }

    [Test]
    public async Task CHAP_without_MD5_in_CHAP_A_fails_with_0201()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), chap: new("user", "secret-123456"));
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", "AuthMethod=CHAP"], 0, 1, false));
        await i.ExpectAsync(Opcode.LoginResponse);
        await i.SendAsync(TestPdu.Login(["CHAP_A=56"], 0, 1, false));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0201));
    }

    [Test]
    public async Task Target_requiring_CHAP_refuses_AuthMethod_None()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), chap: new("user", "secret-123456"));
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", "AuthMethod=None"], 0, 1, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0201));
    }

    [Test]
    public async Task Target_requiring_CHAP_refuses_skipping_the_security_stage()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), chap: new("user", "secret-123456"));
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}"], 1, 3, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0201));
    }

    [Test]
    public async Task Mutual_CHAP_target_proves_its_secret()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), chap: new("user", "secret-123456"), mutual: new("target", "target-secret-9"));
        var (i, c) = await ChapStartAsync(server);
        var k = c.Keys();
        const string myChallenge = "0x00112233445566778899aabbccddeeff";
        await i.SendAsync(TestPdu.Login(["CHAP_N=user", "CHAP_R=" + ChapResponse(k["CHAP_I"], "secret-123456", k["CHAP_C"]), "CHAP_I=42", "CHAP_C=" + myChallenge], 0, 1, true));
        var r = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.LoginStatus, Is.EqualTo(0));
        Assert.That(r.Keys()["CHAP_N"], Is.EqualTo("target"));
        Assert.That(r.Keys()["CHAP_R"], Is.EqualTo(ChapResponse("42", "target-secret-9", myChallenge)).IgnoreCase);
    }

    [Test]
    public async Task Mutual_CHAP_reflecting_the_target_challenge_is_refused()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), chap: new("user", "secret-123456"), mutual: new("target", "target-secret-9"));
        var (i, c) = await ChapStartAsync(server);
        var k = c.Keys();
        await i.SendAsync(TestPdu.Login(["CHAP_N=user", "CHAP_R=" + ChapResponse(k["CHAP_I"], "secret-123456", k["CHAP_C"]), "CHAP_I=1", "CHAP_C=" + k["CHAP_C"]], 0, 1, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0201));
    }

    [Test]
    public async Task Mutual_CHAP_requested_but_not_configured_fails()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), chap: new("user", "secret-123456"));
        var (i, c) = await ChapStartAsync(server);
        var k = c.Keys();
        await i.SendAsync(TestPdu.Login(["CHAP_N=user", "CHAP_R=" + ChapResponse(k["CHAP_I"], "secret-123456", k["CHAP_C"]), "CHAP_I=1", "CHAP_C=0x0102030405060708"], 0, 1, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0201));
    }

    [Test]
    public void Chap_credentials_never_print_the_secret()
    {
        Assert.That(new ChapCredentials("u", "topsecret").ToString(), Does.Not.Contain("topsecret"));
    }
}
