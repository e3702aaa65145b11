using System.Net;
using DotNetty.Common;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Transport;

namespace IntegrityTarget.Iscsi.Tests.Transport;

/// <summary>What only the DotNetty transport promises (the shared behaviour is in <see cref="TransportConformanceTests"/>).</summary>
public class DotNettyTransportTests
{
    [Test]
    public async Task Creating_the_transport_turns_DotNettys_leak_detector_off()
    {
        ResourceLeakDetector.Level = ResourceLeakDetector.DetectionLevel.Simple;
        await using var server = TestTargets.Server(new FakeScsiTarget());
        await using var transport = new DotNettyTransport(server, TestTargets.Log);
        Assert.That(ResourceLeakDetector.Level, Is.EqualTo(ResourceLeakDetector.DetectionLevel.Disabled));
    }

    [Test]
    public async Task A_stopped_transport_can_be_replaced_by_a_new_one_on_the_same_port()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var first = new DotNettyTransport(server, TestTargets.Log);
        await first.StartAsync([new IPEndPoint(IPAddress.Loopback, 0)], CancellationToken.None);
        var portal = first.BoundEndpoints.Single();
        await first.DisposeAsync();

        await using var second = new DotNettyTransport(server, TestTargets.Log);
        await second.StartAsync([portal], CancellationToken.None);
        using var i = await TcpInitiator.ConnectAsync(portal);
        await i.LoginAsync();
        await i.SendAsync(TestPdu.NopOut(0x21, 0xffffffff, i.CmdSN));
        Assert.That((await i.ExpectAsync(Opcode.NopIn)).Itt, Is.EqualTo(0x21u));
    }

    [Test]
    public async Task Starting_twice_is_refused_with_a_clear_error()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        await using var transport = new DotNettyTransport(server, TestTargets.Log);
        await transport.StartAsync([new IPEndPoint(IPAddress.Loopback, 0)], CancellationToken.None);
        var ex = Assert.ThrowsAsync<InvalidOperationException>(() => transport.StartAsync([new IPEndPoint(IPAddress.Loopback, 0)], CancellationToken.None));
        Assert.That(ex!.Message, Does.Contain("already started"));
    }
}
