using System.Buffers;
using IntegrityTarget.Iscsi.Login;
using IntegrityTarget.Iscsi.Pdus;

namespace IntegrityTarget.Iscsi.Tests;

/// <summary>The login negotiator on its own: requests in, answers out, no connection or socket.</summary>
public class LoginNegotiatorTests
{
    private static (byte[] Header, ReadOnlySequence<byte> Data) Request(string[] keys, int csg, int nsg, bool transit)
    {
        var frame = TestPdu.Login(keys, csg, nsg, transit);
        return (frame[..48], new ReadOnlySequence<byte>(frame.AsMemory(48, (frame[5] << 16) | (frame[6] << 8) | frame[7])));
    }

    private static Dictionary<string, string> Keys(ArrayBufferWriter<byte> w) => new TestPdu(new byte[48], w.WrittenSpan.ToArray()).Keys();

    [Test]
    public async Task A_normal_login_in_one_request_completes_with_the_target_and_negotiated_values()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var parameters = new NegotiatedParameters();
        var login = new LoginNegotiator(server, parameters, TestTargets.Log);
        var (h, d) = Request([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", "MaxBurstLength=65536", "ImmediateData=No"], 1, 3, true);
        var response = new ArrayBufferWriter<byte>();
        var step = login.Process(h, d, response);
        Assert.That(step.Complete, Is.True);
        Assert.That(step.Flags, Is.EqualTo(0x80 | 0x04 | 0x03), "T, CSG=1, NSG=3");
        Assert.That(login.Target!.Iqn, Is.EqualTo(TestTargets.Iqn));
        Assert.That(login.InitiatorName, Is.EqualTo(TestTargets.Initiator));
        Assert.That(login.Isid, Is.EqualTo(0x00023d000001UL));
        Assert.That(parameters.MaxBurstLength, Is.EqualTo(65536));
        Assert.That(parameters.ImmediateData, Is.False);
        var keys = Keys(response);
        Assert.That(keys["MaxBurstLength"], Is.EqualTo("65536"));
        Assert.That(keys["TargetPortalGroupTag"], Is.EqualTo("1"));
    }

    [Test]
    public async Task A_security_stage_with_CHAP_does_not_complete_before_the_response_is_checked()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), chap: new("user", "secret-123456"));
        var login = new LoginNegotiator(server, new NegotiatedParameters(), TestTargets.Log);
        var (h, d) = Request([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", "AuthMethod=CHAP,None"], 0, 1, true);
        var response = new ArrayBufferWriter<byte>();
        var step = login.Process(h, d, response);
        Assert.That(step.Complete, Is.False);
        Assert.That(step.Flags & 0x80, Is.Zero, "no transit before authentication");
        Assert.That(Keys(response)["AuthMethod"], Is.EqualTo("CHAP"));
        var (h2, d2) = Request(["CHAP_N=user", "CHAP_R=0x00"], 0, 1, true);
        var failure = Assert.Throws<LoginFailure>(() => login.Process(h2, d2, new ArrayBufferWriter<byte>()))!;
        Assert.That(failure.Status, Is.EqualTo(LoginStatus.AuthenticationFailure), "CHAP_R before CHAP_A is out of order");
    }
}
