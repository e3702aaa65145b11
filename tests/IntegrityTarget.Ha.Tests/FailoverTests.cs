using System.Buffers.Binary;
using IntegrityTarget.Scsi;
using static IntegrityTarget.Ha.Tests.Gateways;

namespace IntegrityTarget.Ha.Tests;

/// <summary>Two gateways over one shared store: ownership by the lock, forwarding, ALUA states, takeover.</summary>
public class FailoverTests
{
    private const string InitA = "iqn.2026-11.test:host-a", InitB = "iqn.2026-11.test:host-b";

    [Test]
    public async Task AFollowerForwardsEverythingToTheOwnerSoBothPathsSeeOneLogicalUnit()
    {
        var store = new SharedStore(4 << 20);
        var (a, b) = await StartPairAsync(store, AluaState.ActiveNonOptimized, null);
        await using var _a = a;
        await using var _b = b;
        Assert.That(b.Lun.OwnerGateway, Is.EqualTo("gw1"));

        var viaA = a.Nexus(InitA);
        var viaB = b.Nexus(InitA, isid: 2);
        a.Lun.NexusCreated(viaA);
        b.Lun.NexusCreated(viaB);

        // A write through the non-optimized path is executed by the owner and read back through the other path.
        var data = Pattern(7);
        using (var w = b.ExecPastUnitAttentions(viaB, Write10(5, 1), data)) Assert.That(w.Status, Is.EqualTo(ScsiStatus.Good), () => $"write via gw2: {Gateway.Sense(w)}");
        using (var r = a.ExecPastUnitAttentions(viaA, Read10(5, 1))) Assert.That(r.DataIn.ToArray(), Is.EqualTo(data));

        // A registration made through one gateway is seen through the other: one reservation state.
        var register = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(register.AsSpan(8), 0xBEEF);
        using (var reg = b.Exec(viaB, [0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], register)) Assert.That(reg.Status, Is.EqualTo(ScsiStatus.Good));
        using (var keys = a.Exec(viaA, [0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0]))
        {
            Assert.That(BinaryPrimitives.ReadUInt32BigEndian(keys.DataIn.Span[4..]), Is.EqualTo(8));
            Assert.That(BinaryPrimitives.ReadUInt64BigEndian(keys.DataIn.Span[8..]), Is.EqualTo(0xBEEFUL));
        }

        // Both paths report the same groups: the owner's active/optimized, the other's active/non-optimized.
        using var rtpgA = a.Exec(viaA, Rtpg());
        using var rtpgB = b.Exec(viaB, Rtpg());
        var expected = new List<(ushort, AluaState)> { (1, AluaState.ActiveOptimized), (2, AluaState.ActiveNonOptimized) };
        Assert.That(ParseRtpg(rtpgA.DataIn.Span), Is.EqualTo(expected));
        Assert.That(ParseRtpg(rtpgB.DataIn.Span), Is.EqualTo(expected));
        Assert.That(a.VolumeOpens + b.VolumeOpens, Is.EqualTo(1), "only the owner opened the volume");
    }

    /// <summary>The (association, type, value) designators of VPD page 83h.</summary>
    static List<(int Assoc, int Type, string Value)> Designators(Gateway g, ItNexus n)
    {
        using var r = g.ExecPastUnitAttentions(n, [0x12, 1, 0x83, 0x01, 0, 0]);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        var d = r.DataIn.Span;
        var list = new List<(int, int, string)>();
        for (int pos = 4; pos + 4 <= d.Length; pos += 4 + d[pos + 3])
            list.Add(((d[pos + 1] >> 4) & 3, d[pos + 1] & 0xF, Convert.ToHexString(d.Slice(pos + 4, d[pos + 3]))));
        return list;
    }

    [Test]
    public async Task AnOwnerThatTookTheLunBeforeItsTargetExistedNamesTheTargetDeviceLikeEveryOtherGateway()
    {
        // As the host does: the first gateway owns the LUN before its SCSI target is built.
        var store = new SharedStore(4 << 20);
        var gws = Layout(2);
        await using var a = await StartAsync(store, gws, "gw1", targetAfterStart: true);
        await using var b = await StartAsync(store, gws, "gw2");
        await b.WaitForRoleAsync(HaRole.Follower);
        var viaA = a.Nexus(InitA);
        var viaB = b.Nexus(InitA, isid: 2);
        a.Lun.NexusCreated(viaA);
        b.Lun.NexusCreated(viaB);
        var throughA = Designators(a, viaA);
        var throughB = Designators(b, viaB);
        Assert.That(throughA.Where(x => x.Assoc == 2), Has.Exactly(1).Matches<(int Assoc, int Type, string Value)>(x => x.Type == 8), "the target device name (SCSI name string)");
        // Only the target port's own designators (relative port, port group, port name) differ by path.
        Assert.That(throughA.Where(x => x.Assoc != 1), Is.EqualTo(throughB.Where(x => x.Assoc != 1)), "the logical unit and target device are named alike on both gateways");
    }

    [Test]
    public async Task AStandbyGatewayRefusesDataWithNotReadyStandbyButAnswersInquiryReadCapacityAndRtpg()
    {
        var store = new SharedStore(4 << 20);
        var (a, b) = await StartPairAsync(store, AluaState.Standby, null);
        await using var _a = a;
        await using var _b = b;
        var viaB = b.Nexus(InitB);
        b.Lun.NexusCreated(viaB);
        using (var w = b.ExecPastUnitAttentions(viaB, Write10(0, 1), Pattern(1))) Assert.That(Gateway.Sense(w), Is.EqualTo(((byte)2, (byte)4, (byte)0x0B)));
        using (var tur = b.Exec(viaB, new byte[6])) Assert.That(Gateway.Sense(tur), Is.EqualTo(((byte)2, (byte)4, (byte)0x0B)));
        using (var inq = b.Exec(viaB, [0x12, 0, 0, 0, 96, 0])) Assert.That(inq.Status, Is.EqualTo(ScsiStatus.Good));
        using (var cap = b.Exec(viaB, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
            Assert.That(BinaryPrimitives.ReadUInt32BigEndian(cap.DataIn.Span), Is.EqualTo((uint)(store.Memory.Length / BlockSize - 1)));
        using var rtpg = b.Exec(viaB, Rtpg());
        Assert.That(ParseRtpg(rtpg.DataIn.Span), Is.EqualTo(new List<(ushort, AluaState)> { (1, AluaState.ActiveOptimized), (2, AluaState.Standby) }));
    }

    [Test]
    public async Task WhenTheOwnerStopsTheOtherGatewayTakesOverOpensTheVolumeOnceAndRaisesAsymmetricAccessStateChanged()
    {
        var store = new SharedStore(4 << 20);
        var (a, b) = await StartPairAsync(store, AluaState.Standby, null);
        await using var _b = b;
        var viaA = a.Nexus(InitA);
        var viaB = b.Nexus(InitA, isid: 2);
        a.Lun.NexusCreated(viaA);
        b.Lun.NexusCreated(viaB);
        var data = Pattern(42);
        using (var w = a.ExecPastUnitAttentions(viaA, Write10(9, 1), data)) Assert.That(w.Status, Is.EqualTo(ScsiStatus.Good));

        await a.DisposeAsync(); // flushes, closes, releases the lock, closes the peer links
        await b.WaitForRoleAsync(HaRole.Owner);
        Assert.That(b.VolumeOpens, Is.EqualTo(1));
        using (var first = b.Exec(viaB, new byte[6])) Assert.That(Gateway.Sense(first), Is.EqualTo(((byte)6, (byte)0x2A, (byte)0x06)), "ASYMMETRIC ACCESS STATE CHANGED");
        using (var r = b.Exec(viaB, Read10(9, 1))) Assert.That(r.DataIn.ToArray(), Is.EqualTo(data));
        using var rtpg = b.Exec(viaB, Rtpg());
        Assert.That(ParseRtpg(rtpg.DataIn.Span), Is.EqualTo(new List<(ushort, AluaState)> { (1, AluaState.Standby), (2, AluaState.ActiveOptimized) }));
    }

    [Test]
    public async Task AnOwnerWhoseLockIsTakenAwayStopsServingAndFollowsTheNewOwner()
    {
        var store = new SharedStore(4 << 20);
        var (a, b) = await StartPairAsync(store, AluaState.Standby, null);
        await using var _a = a;
        await using var _b = b;

        // Another party breaks the owner's lock and takes it: the owner notices it was fenced, closes its
        // volume without another write, and neither gateway serves data until the lock is free again.
        var thief = store.Steal();
        await a.WaitForRoleAsync(HaRole.Unowned);
        await b.WaitForRoleAsync(HaRole.Unowned);
        Assert.That(a.Lun.Volume, Is.Null, "the fenced gateway closed its volume");
        var viaA = a.Nexus(InitA);
        a.Lun.NexusCreated(viaA);
        using (var w = a.ExecPastUnitAttentions(viaA, Write10(0, 1), Pattern(3)))
            Assert.That(Gateway.Sense(w), Is.EqualTo(((byte)2, (byte)4, (byte)0x0C)), "unavailable while nobody reachable owns the LUN");
        thief.Dispose();
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (a.Lun.Role != HaRole.Owner && b.Lun.Role != HaRole.Owner && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.That(new[] { a.Lun.Role, b.Lun.Role }, Is.EquivalentTo(new[] { HaRole.Owner, HaRole.Follower }).Or.EquivalentTo(new[] { HaRole.Owner, HaRole.Unowned }));
    }

    [Test]
    public async Task OnAnImageTheLockOfAnOwnerWhoseGatewayRefusesConnectionsIsBrokenWithoutWaitingForThePeerTimeout()
    {
        // An RBD-like store: a dead owner keeps its lock. Its gateway's port refuses connections, which proves the
        // process is gone, so the survivor breaks the lock at once instead of after the (here long) peer timeout.
        var store = new SharedStore(4 << 20) { LikeRbd = true };
        var gws = Layout(2);
        var longTimeout = TimeSpan.FromSeconds(60);
        var a = await StartAsync(store, gws, "gw1", peerTimeout: longTimeout);
        await a.WaitForRoleAsync(HaRole.Owner);
        await using var b = await StartAsync(store, gws, "gw2", peerTimeout: longTimeout);
        await b.WaitForRoleAsync(HaRole.Follower);
        store.NextHolderDiesHoldingTheLock();
        var died = System.Diagnostics.Stopwatch.StartNew();
        await a.DisposeAsync(); // its listener and links close, the lock stays
        Assert.That(store.Held, Is.True, "the dead owner's lock is still there");
        await b.WaitForRoleAsync(HaRole.Owner, TimeSpan.FromSeconds(10));
        Assert.That(died.Elapsed, Is.LessThan(longTimeout / 2), "taken over long before the peer timeout");
        Assert.That((store.Breaks, b.VolumeOpens), Is.EqualTo((1, 1)), "one lock broken, the volume opened once");
    }

    [Test]
    public async Task OnAnImageASilentOwnerIsNotBrokenBeforeThePeerTimeout()
    {
        // The owner's gateway is alive but unreachable: the other gateway cannot tell it from a partition, so it
        // waits a whole peer timeout (here: its link to the owner is never up, and the owner's port accepts).
        var store = new SharedStore(4 << 20) { LikeRbd = true };
        var gws = Layout(2);
        using var silent = new System.Net.Sockets.TcpListener(gws[0].Peer); // gw1's port: accepts, never answers
        silent.Start();
        var outsider = await store.LockFor("gw1").TryAcquireAsync(false, CancellationToken.None);
        await using var b = await StartAsync(store, gws, "gw2", peerTimeout: TimeSpan.FromSeconds(3));
        await Task.Delay(1000);
        Assert.That((b.Lun.Role, store.Breaks), Is.EqualTo((HaRole.Unowned, 0)), "not broken within the peer timeout");
        await b.WaitForRoleAsync(HaRole.Owner, TimeSpan.FromSeconds(10));
        Assert.That(store.Breaks, Is.EqualTo(1));
        GC.KeepAlive(outsider);
    }

    [Test]
    public async Task WithoutAReachableOwnerAGatewayReportsItsGroupUnavailableAndStillAnswersInquiry()
    {
        var store = new SharedStore(4 << 20);
        var gws = Layout(2);
        // Someone else holds the lock and gw1 is not running: gw2 can neither follow nor take over.
        var outsider = await store.LockFor("outsider").TryAcquireAsync(false, CancellationToken.None);
        await using var b = await StartAsync(store, gws, "gw2");
        await Task.Delay(300);
        Assert.That(b.Lun.Role, Is.EqualTo(HaRole.Unowned));
        var n = b.Nexus(InitB);
        b.Lun.NexusCreated(n);
        using (var w = b.ExecPastUnitAttentions(n, Write10(0, 1), Pattern(1))) Assert.That(Gateway.Sense(w), Is.EqualTo(((byte)2, (byte)4, (byte)0x0C)));
        using (var inq = b.Exec(n, [0x12, 1, 0x80, 0, 64, 0])) Assert.That(inq.Status, Is.EqualTo(ScsiStatus.Good));
        using (var rtpg = b.Exec(n, Rtpg())) Assert.That(ParseRtpg(rtpg.DataIn.Span), Does.Contain(((ushort)2, AluaState.Unavailable)));
        outsider.Device!.Dispose();
        await b.WaitForRoleAsync(HaRole.Owner);
    }

    [Test]
    public async Task ReservationsMadeThroughTheOwnerSurviveTheFailover()
    {
        var store = new SharedStore(4 << 20);
        var record = new MemoryRecord();
        var (a, b) = await StartPairAsync(store, AluaState.Standby, record);
        await using var _b = b;
        var viaA = a.Nexus(InitA);
        a.Lun.NexusCreated(viaA);
        var p = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), 0xC0FFEE);
        using (var r = a.ExecPastUnitAttentions(viaA, [0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], p)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        BinaryPrimitives.WriteUInt64BigEndian(p, 0xC0FFEE); BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), 0);
        using (var r = a.Exec(viaA, [0x5F, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0], p)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), "RESERVE write exclusive");
        await a.DisposeAsync();
        await b.WaitForRoleAsync(HaRole.Owner);
        var other = b.Nexus(InitB);
        b.Lun.NexusCreated(other);
        using (var res = b.ExecPastUnitAttentions(other, [0x5E, 1, 0, 0, 0, 0, 0, 0, 24, 0]))
        {
            Assert.That(BinaryPrimitives.ReadUInt64BigEndian(res.DataIn.Span[8..]), Is.EqualTo(0xC0FFEEUL));
            Assert.That(res.DataIn.Span[21], Is.EqualTo(1));
        }
        using var w = b.Exec(other, Write10(0, 1), Pattern(1));
        Assert.That(w.Status, Is.EqualTo(ScsiStatus.ReservationConflict), "the reservation still fences off other initiators");
    }

    [Test]
    public async Task ALogicalUnitResetThroughTheFollowerReachesEveryNexusOfTheOwnersUnit()
    {
        var store = new SharedStore(4 << 20);
        var (a, b) = await StartPairAsync(store, AluaState.ActiveNonOptimized, null);
        await using var _a = a;
        await using var _b = b;
        var viaA = a.Nexus(InitA);
        var viaB = b.Nexus(InitB);
        a.Lun.NexusCreated(viaA);
        b.Lun.NexusCreated(viaB);
        using (a.ExecPastUnitAttentions(viaA, new byte[6])) { }
        using (b.ExecPastUnitAttentions(viaB, new byte[6])) { }
        b.Target.LogicalUnitReset(0, viaB);
        await Task.Delay(200); // the reset travels as a notice over the link
        using (var ta = a.Exec(viaA, new byte[6])) Assert.That(Gateway.Sense(ta), Is.EqualTo(((byte)6, (byte)0x29, (byte)0x03)));
        using (var tb = b.Exec(viaB, new byte[6])) Assert.That(Gateway.Sense(tb), Is.EqualTo(((byte)6, (byte)0x29, (byte)0x03)));
    }

    [Test]
    public async Task APeerWithAnotherSecretOrAnotherConfigurationIsRefusedWithAReason()
    {
        var store = new SharedStore(4 << 20);
        var gws = Layout(2);
        await using var a = await StartAsync(store, gws, "gw1");
        await a.WaitForRoleAsync(HaRole.Owner);
        var wrongSecret = Options(gws, "gw2", AluaState.Standby, "another sixteen chars"u8.ToArray());
        var e = Assert.ThrowsAsync<PeerProtocolException>(async () =>
            await PeerLink.ConnectAsync(gws[0], wrongSecret, HaCoordinator.FingerprintOf("same config"), CancellationToken.None));
        Assert.That(e!.Message, Does.Contain("does not know the peer secret"));
        var otherConfig = Options(gws, "gw2", AluaState.Standby);
        e = Assert.ThrowsAsync<PeerProtocolException>(async () =>
            await PeerLink.ConnectAsync(gws[0], otherConfig, HaCoordinator.FingerprintOf("a different LUN list"), CancellationToken.None));
        Assert.That(e!.Message, Does.Contain("configurations differ"));
    }

    /// <summary>gw1 started first (it takes the lock and owns the LUN), then gw2 (it follows).</summary>
    private static async Task<(Gateway A, Gateway B)> StartPairAsync(SharedStore store, AluaState nonOwner, IntegrityTarget.Storage.IDurableRecord? reservations)
    {
        var gws = Layout(2);
        var a = await StartAsync(store, gws, "gw1", nonOwner, reservations: reservations);
        await a.WaitForRoleAsync(HaRole.Owner);
        var b = await StartAsync(store, gws, "gw2", nonOwner, reservations: reservations);
        await b.WaitForRoleAsync(HaRole.Follower);
        return (a, b);
    }

    private sealed class MemoryRecord : IntegrityTarget.Storage.IDurableRecord
    {
        private byte[]? _value;
        public string Name => "memory";
        public byte[]? Read() => _value;
        public void Write(ReadOnlySpan<byte> value) => _value = value.ToArray();
        public void Delete() => _value = null;
    }
}
