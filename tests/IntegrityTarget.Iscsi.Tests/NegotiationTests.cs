using IntegrityTarget.Iscsi.Pdus;

namespace IntegrityTarget.Iscsi.Tests;

public class NegotiationTests
{
    private static async Task<Dictionary<string, string>> NegotiateAsync(IscsiServer server, bool discovery, params string[] keys)
    {
        var i = new MemoryInitiator(server);
        string[] all = discovery
            ? [$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery", .. keys]
            : [$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", .. keys];
        await i.SendAsync(TestPdu.Login(all, 1, 3, true));
        var r = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.LoginStatus, Is.EqualTo(0));
        return r.Keys();
    }

    [Test]
    public async Task Numeric_keys_take_the_minimum_or_maximum_per_the_table()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var k = await NegotiateAsync(server, false, "MaxBurstLength=16776192", "FirstBurstLength=4096", "MaxOutstandingR2T=100",
            "DefaultTime2Wait=5", "DefaultTime2Retain=10", "ErrorRecoveryLevel=2", "MaxConnections=8");
        Assert.That(k["MaxBurstLength"], Is.EqualTo("1048576"));
        Assert.That(k["FirstBurstLength"], Is.EqualTo("4096"));
        Assert.That(k["MaxOutstandingR2T"], Is.EqualTo("8"));
        Assert.That(k["DefaultTime2Wait"], Is.EqualTo("5"), "max()");
        Assert.That(k["DefaultTime2Retain"], Is.EqualTo("0"), "min()");
        Assert.That(k["ErrorRecoveryLevel"], Is.EqualTo("0"));
        Assert.That(k["MaxConnections"], Is.EqualTo("1"));
    }

    [Test]
    public async Task Boolean_keys_combine_with_and_or()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var k = await NegotiateAsync(server, false, "InitialR2T=No", "ImmediateData=Yes", "DataPDUInOrder=No", "DataSequenceInOrder=No", "IFMarker=Yes", "OFMarker=No");
        Assert.That(k["InitialR2T"], Is.EqualTo("No"));
        Assert.That(k["ImmediateData"], Is.EqualTo("Yes"));
        Assert.That(k["DataPDUInOrder"], Is.EqualTo("Yes"), "OR with our Yes");
        Assert.That(k["DataSequenceInOrder"], Is.EqualTo("Yes"));
        Assert.That(k["IFMarker"], Is.EqualTo("No"), "AND with our No");
        Assert.That(k["OFMarker"], Is.EqualTo("No"));
    }

    [Test]
    public async Task Digest_list_picks_the_initiators_first_supported_choice()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var k = await NegotiateAsync(server, false, "HeaderDigest=Foo,CRC32C,None", "DataDigest=None,CRC32C");
        Assert.That(k["HeaderDigest"], Is.EqualTo("CRC32C"));
        Assert.That(k["DataDigest"], Is.EqualTo("None"));
    }

    [Test]
    public async Task Unknown_keys_are_NotUnderstood_and_bad_values_Reject()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var k = await NegotiateAsync(server, false, "X-com.example.Thing=1", "MaxBurstLength=12", "ImmediateData=Maybe",
            "MaxRecvDataSegmentLength=abc", "HeaderDigest=MD5", "TargetAddress=1.2.3.4");
        Assert.That(k["X-com.example.Thing"], Is.EqualTo("NotUnderstood"));
        Assert.That(k["MaxBurstLength"], Is.EqualTo("Reject"));
        Assert.That(k["ImmediateData"], Is.EqualTo("Reject"));
        Assert.That(k["MaxRecvDataSegmentLength"], Is.EqualTo("Reject"));
        Assert.That(k["HeaderDigest"], Is.EqualTo("Reject"));
        Assert.That(k["TargetAddress"], Is.EqualTo("Reject"), "only the target declares it");
    }

    [Test]
    public async Task Session_keys_are_Irrelevant_in_a_discovery_session()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var k = await NegotiateAsync(server, true, "MaxBurstLength=65536", "ImmediateData=Yes", "InitialR2T=Yes", "HeaderDigest=None", "OFMarkInt=2048");
        Assert.That(k["MaxBurstLength"], Is.EqualTo("Irrelevant"));
        Assert.That(k["ImmediateData"], Is.EqualTo("Irrelevant"));
        Assert.That(k["InitialR2T"], Is.EqualTo("Irrelevant"));
        Assert.That(k["HeaderDigest"], Is.EqualTo("None"));
        Assert.That(k["OFMarkInt"], Is.EqualTo("Irrelevant"));
        Assert.That(k, Does.Not.ContainKey("TargetPortalGroupTag"), "TPGT is for normal sessions");
    }

    [Test]
    public async Task Initiator_MaxRecvDataSegmentLength_is_declarative_and_ours_is_declared_back()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), new IscsiServerOptions { MaxRecvDataSegmentLength = 131072 });
        var i = new MemoryInitiator(server);
        await i.LoginAsync(extra: "MaxRecvDataSegmentLength=4096");
        Assert.That(i.Connection.Parameters.InitiatorMaxRecvDataSegmentLength, Is.EqualTo(4096));
        Assert.That(i.Connection.Parameters.TargetMaxRecvDataSegmentLength, Is.EqualTo(131072));
    }

    [Test]
    public async Task Key_negotiated_twice_fails_the_login()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", "MaxBurstLength=65536"], 1, 3, false));
        await i.ExpectAsync(Opcode.LoginResponse);
        await i.SendAsync(TestPdu.Login(["MaxBurstLength=65536"], 1, 3, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0200));
    }

    [Test]
    public async Task Text_without_equals_sign_fails_as_initiator_error()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        var h = TestPdu.NewHeader(Opcode.LoginRequest, true, 0x87);
        await i.SendAsync(TestPdu.Frame(h, "InitiatorName\0garbage\0"u8.ToArray()));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0x0200));
    }

    [Test]
    public async Task Discovery_SendTargets_lists_all_targets_with_the_address_the_connection_came_in_on()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server, new System.Net.IPEndPoint(System.Net.IPAddress.Parse("192.168.7.9"), 3261));
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery"], 1, 3, true));
        Assert.That((await i.ExpectAsync(Opcode.LoginResponse)).LoginStatus, Is.EqualTo(0));
        await i.SendAsync(TestPdu.TextRequest(5, 1, TestPdu.Text("SendTargets=All")));
        var r = await i.ExpectAsync(Opcode.TextResponse);
        var text = System.Text.Encoding.UTF8.GetString(r.Data);
        Assert.That(text, Is.EqualTo($"TargetName={TestTargets.Iqn}\0TargetAddress=192.168.7.9:3261,1\0TargetName={TestTargets.Iqn2}\0TargetAddress=192.168.7.9:3261,1\0"));
        Assert.That(r.Flags & 0x80, Is.Not.Zero, "F bit");
        Assert.That(r.Ttt, Is.EqualTo(0xffffffff));
        Assert.That(r.Itt, Is.EqualTo(5u));
    }

    [Test]
    public async Task SendTargets_hides_targets_whose_ACL_excludes_the_initiator()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget(), acl: ["iqn.someone:else"]);
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery"], 1, 3, true));
        await i.ExpectAsync(Opcode.LoginResponse);
        await i.SendAsync(TestPdu.TextRequest(5, 1, TestPdu.Text("SendTargets=All")));
        var text = System.Text.Encoding.UTF8.GetString((await i.ExpectAsync(Opcode.TextResponse)).Data);
        Assert.That(text, Does.Not.Contain(TestTargets.Iqn + "\0"));
        Assert.That(text, Does.Contain(TestTargets.Iqn2));
    }

    [Test]
    public async Task SendTargets_in_a_normal_session_returns_only_that_target()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var i = new MemoryInitiator(server);
        await i.LoginAsync();
        await i.SendAsync(TestPdu.TextRequest(7, 1, TestPdu.Text("SendTargets=All", "Foo=Bar")));
        var r = await i.ExpectAsync(Opcode.TextResponse);
        var k = r.Keys();
        Assert.That(k["TargetName"], Is.EqualTo(TestTargets.Iqn));
        Assert.That(k["TargetAddress"], Is.EqualTo("10.1.2.3:3260,1"));
        Assert.That(k["Foo"], Is.EqualTo("NotUnderstood"));
    }

    [Test]
    public async Task Long_SendTargets_answer_is_continued_with_C_bit_within_the_initiators_MaxRecvDataSegmentLength()
    {
        var targets = Enumerable.Range(0, 40).Select(n => new IscsiTargetConfig { Iqn = $"iqn.2026-11.test:a-rather-long-target-name-number-{n:000}", Scsi = new FakeScsiTarget(1, 8) });
        await using var server = new IscsiServer(targets, new IscsiServerOptions(), TestTargets.Log);
        var i = new MemoryInitiator(server);
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery", "MaxRecvDataSegmentLength=512"], 1, 3, true));
        await i.ExpectAsync(Opcode.LoginResponse);
        await i.SendAsync(TestPdu.TextRequest(9, 1, TestPdu.Text("SendTargets=All")));
        var all = new List<byte>();
        int parts = 0;
        while (true)
        {
            var r = await i.ExpectAsync(Opcode.TextResponse);
            parts++;
            Assert.That(r.Data.Length, Is.LessThanOrEqualTo(512));
            all.AddRange(r.Data);
            if ((r.Flags & 0x80) != 0) break;
            Assert.That(r.Flags & 0x40, Is.Not.Zero, "C bit while more follows");
            await i.SendAsync(TestPdu.TextRequest(9, 1, [], r.Ttt));
        }
        Assert.That(parts, Is.GreaterThan(1));
        var text = System.Text.Encoding.UTF8.GetString(all.ToArray());
        Assert.That(text.Split('\0').Count(s => s.StartsWith("TargetName=")), Is.EqualTo(40));
    }
}
