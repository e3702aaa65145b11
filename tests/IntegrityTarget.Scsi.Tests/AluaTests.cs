using System.Buffers.Binary;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Scsi.Tests;

/// <summary>ALUA: TPGS in INQUIRY, REPORT TARGET PORT GROUPS, VPD 83h port designators, per-state command gates, 2A/06.</summary>
public class AluaTests
{
    private static readonly TargetPortGroup[] TwoGateways = [new(1, [1]), new(2, [2])];
    private Harness _h = null!;
    private ItNexus _onPort2 = null!;

    [SetUp]
    public void SetUp()
    {
        _h = new Harness(portGroups: TwoGateways);
        _onPort2 = Harness.MakeNexus("iqn.2026-11.test:a", 0x23D000000001, relativePort: 2);
        _h.Quiet(_h.A, _h.B, _onPort2);
    }

    private static byte[] Rtpg(bool extended, uint alloc = 1024)
    {
        var c = new byte[12];
        c[0] = 0xA3; c[1] = (byte)((extended ? 0x20 : 0) | 0x0A);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(6), alloc);
        return c;
    }

    /// <summary>(group id, state, status code, ports) of each descriptor of an RTPG answer.</summary>
    private static List<(ushort Id, AluaState State, byte Status, ushort[] Ports)> ParseRtpg(ReadOnlySpan<byte> d, out int headerLength)
    {
        int len = (int)BinaryPrimitives.ReadUInt32BigEndian(d) + 4;
        Assert.That(d.Length, Is.EqualTo(len), "RETURN DATA LENGTH counts everything after itself");
        headerLength = (d[4] & 0x70) == 0x10 ? 8 : 4;
        var groups = new List<(ushort, AluaState, byte, ushort[])>();
        for (int pos = headerLength; pos < len;)
        {
            int count = d[pos + 7];
            var ports = new ushort[count];
            for (int i = 0; i < count; i++) ports[i] = BinaryPrimitives.ReadUInt16BigEndian(d[(pos + 8 + 4 * i + 2)..]);
            Assert.That(d[pos + 1], Is.EqualTo(0x8F), "supports transitioning, unavailable, standby, active/non-optimized, active/optimized");
            groups.Add((BinaryPrimitives.ReadUInt16BigEndian(d[(pos + 2)..]), (AluaState)(d[pos] & 0x0F), d[pos + 5], ports));
            pos += 8 + 4 * count;
        }
        return groups;
    }

    [Test]
    public void StandardInquiryAdvertisesImplicitAluaOnly()
    {
        using var r = _h.Exec([0x12, 0, 0, 0, 96, 0]);
        Assert.That((r.DataIn.Span[5] >> 4) & 3, Is.EqualTo(1), "TPGS 01b: implicit only (no SET TARGET PORT GROUPS)");
        using var stpg = _h.Exec([0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0], new byte[4]);
        SenseAssert.Is(stpg, 0x05, 0x20, 0x00);
    }

    [Test]
    public void AUnitWithoutConfiguredGroupsReportsOneActiveOptimizedGroupHoldingPortOne()
    {
        var h = new Harness();
        h.Quiet(h.A);
        using var r = h.Exec(Rtpg(extended: false));
        var groups = ParseRtpg(r.DataIn.Span, out int header);
        Assert.That(header, Is.EqualTo(4));
        Assert.That(groups, Has.Count.EqualTo(1));
        Assert.That(groups[0].Id, Is.EqualTo(1));
        Assert.That(groups[0].State, Is.EqualTo(AluaState.ActiveOptimized));
        Assert.That(groups[0].Ports, Is.EqualTo(new ushort[] { 1 }));
        Assert.That(groups[0].Status, Is.Zero, "never changed");
    }

    [Test]
    public void BothFormatsListTheSameGroupsAndTheExtendedHeaderGivesTheTransitionTime()
    {
        _h.Unit.SetAccessStates(new Dictionary<ushort, AluaState> { [2] = AluaState.Standby });
        _h.Quiet(_h.A);
        using var plain = _h.Exec(Rtpg(extended: false));
        using var ext = _h.Exec(Rtpg(extended: true));
        var a = ParseRtpg(plain.DataIn.Span, out _);
        var b = ParseRtpg(ext.DataIn.Span, out int header);
        Assert.That(header, Is.EqualTo(8));
        Assert.That(ext.DataIn.Span[4], Is.EqualTo(0x10), "FORMAT TYPE 001b");
        Assert.That(ext.DataIn.Span[5], Is.EqualTo(30), "IMPLICIT TRANSITION TIME");
        Assert.That(b.Select(g => (g.Id, g.State, g.Status)), Is.EqualTo(a.Select(g => (g.Id, g.State, g.Status))));
        Assert.That(a.Select(g => (g.Id, g.State)), Is.EqualTo(new[] { ((ushort)1, AluaState.ActiveOptimized), ((ushort)2, AluaState.Standby) }));
        Assert.That(a.All(g => g.Status == 2), Is.True, "altered by implicit ALUA");
        Assert.That(a[1].Ports, Is.EqualTo(new ushort[] { 2 }));
    }

    [Test]
    public void ReportTargetPortGroupsTruncatesToTheAllocationLengthAndRefusesReservedFormats()
    {
        using var full = _h.Exec(Rtpg(false));
        using var four = _h.Exec(Rtpg(false, 4));
        Assert.That(four.DataIn.ToArray(), Is.EqualTo(full.DataIn[..4].ToArray()));
        using var cut = _h.Exec(Rtpg(false, 10));
        Assert.That(cut.DataIn.Length, Is.EqualTo(10));
        var bad = Rtpg(false); bad[1] = 0x40 | 0x0A;
        using var r = _h.Exec(bad);
        SenseAssert.Is(r, 0x05, 0x24, 0x00);
    }

    [TestCase(AluaState.Standby, (byte)0x0B)]
    [TestCase(AluaState.Unavailable, (byte)0x0C)]
    [TestCase(AluaState.Transitioning, (byte)0x0A)]
    public void DataCommandsThroughANonActiveGroupGetNotReadyWithTheStatesAscq(AluaState state, byte ascq)
    {
        _h.Unit.SetAccessStates(new Dictionary<ushort, AluaState> { [2] = state });
        _h.Quiet(_h.A, _onPort2);
        using (var read = _h.Exec(Harness.Read16(0, 1), null, _onPort2)) SenseAssert.Is(read, 0x02, 0x04, ascq);
        using (var write = _h.Exec(Harness.Write16(0, 1), new byte[512], _onPort2)) SenseAssert.Is(write, 0x02, 0x04, ascq);
        using (var tur = _h.Exec(new byte[6], null, _onPort2)) SenseAssert.Is(tur, 0x02, 0x04, ascq);
        using (var sync = _h.Exec([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], null, _onPort2)) SenseAssert.Is(sync, 0x02, 0x04, ascq);
        Assert.That(_h.Volume.Writes + _h.Volume.Reads + _h.Volume.Flushes, Is.Zero, "nothing reached the volume");
        // Port 1 is unaffected.
        using (var onPort1 = _h.Exec(Harness.Write16(0, 1), new byte[512], _h.A)) Assert.That(onPort1.Status, Is.EqualTo(ScsiStatus.Good));
    }

    [TestCase(AluaState.Standby)]
    [TestCase(AluaState.Unavailable)]
    [TestCase(AluaState.Transitioning)]
    public void InquiryReportLunsRtpgAndRequestSenseWorkInEveryState(AluaState state)
    {
        _h.Unit.SetAccessStates(new Dictionary<ushort, AluaState> { [2] = state });
        _h.Quiet(_onPort2);
        foreach (var cdb in new[] { new byte[] { 0x12, 0, 0, 0, 96, 0 }, [0x12, 1, 0x83, 0, 255, 0], [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], Rtpg(true), [0x03, 0, 0, 0, 252, 0] })
        {
            using var r = _h.Exec(cdb, null, _onPort2);
            Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), $"opcode {cdb[0]:X2} in {state}");
        }
    }

    [Test]
    public void StandbyStillAnswersModeSenseReadCapacityAndPersistentReservations()
    {
        _h.Unit.SetAccessStates(new Dictionary<ushort, AluaState> { [2] = AluaState.Standby });
        _h.Quiet(_onPort2);
        var register = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(register.AsSpan(8), 0xABCD);
        foreach (var (cdb, data) in new (byte[], byte[]?)[]
        {
            ([0x1A, 0, 0x3F, 0, 255, 0], null),
            ([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], null),
            ([0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], null),
            ([0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], register),
            ([0x5E, 0x00, 0, 0, 0, 0, 0, 0, 64, 0], null),
        })
        {
            using var r = _h.Exec(cdb, data, _onPort2);
            Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), $"opcode {cdb[0]:X2} in standby");
        }
        // ...but not in unavailable.
        _h.Unit.SetAccessStates(new Dictionary<ushort, AluaState> { [2] = AluaState.Unavailable });
        _h.Quiet(_onPort2);
        using var rc = _h.Exec([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], null, _onPort2);
        SenseAssert.Is(rc, 0x02, 0x04, 0x0C);
    }

    [Test]
    public void AStateChangeGivesEveryNexusOneAsymmetricAccessStateChangedUnitAttention()
    {
        Assert.That(_h.Unit.SetAccessStates(new Dictionary<ushort, AluaState> { [1] = AluaState.Standby, [2] = AluaState.ActiveOptimized }), Is.True);
        foreach (var n in new[] { _h.A, _h.B, _onPort2 })
        {
            using var first = _h.Exec(Rtpg(false), null, n);
            SenseAssert.Is(first, 0x06, 0x2A, 0x06);
            using var second = _h.Exec(Rtpg(false), null, n);
            Assert.That(second.Status, Is.EqualTo(ScsiStatus.Good), "reported once");
        }
        Assert.That(_h.Unit.SetAccessStates(new Dictionary<ushort, AluaState> { [2] = AluaState.ActiveOptimized }), Is.False, "no change");
        using var quiet = _h.Exec(new byte[6], null, _onPort2);
        Assert.That(quiet.Status, Is.EqualTo(ScsiStatus.Good), "no change, no unit attention");
        using var now = _h.Exec(Harness.Write16(0, 1), new byte[512], _h.A);
        SenseAssert.Is(now, 0x02, 0x04, 0x0B);
    }

    [Test]
    public void DeviceIdentificationNamesTheRelativePortAndItsGroupAndTheSameLuIdentityOnEveryPort()
    {
        (byte[] Naa, ushort RelPort, ushort Group) Designators(Harness h, ItNexus n)
        {
            using var r = h.Exec([0x12, 1, 0x83, 0, 255, 0], null, n);
            var d = r.DataIn.Span;
            byte[] naa = []; ushort rel = 0, group = 0;
            for (int pos = 4; pos < d.Length; pos += 4 + d[pos + 3])
            {
                int assoc = (d[pos + 1] >> 4) & 3, type = d[pos + 1] & 0x0F;
                if (assoc == 0 && type == 3) naa = d.Slice(pos + 4, d[pos + 3]).ToArray();
                if (assoc == 1 && type == 4) rel = BinaryPrimitives.ReadUInt16BigEndian(d[(pos + 6)..]);
                if (assoc == 1 && type == 5) { group = BinaryPrimitives.ReadUInt16BigEndian(d[(pos + 6)..]); Assert.That(d[pos], Is.EqualTo(0x51), "iSCSI, binary, PIV"); }
            }
            return (naa, rel, group);
        }
        var p1 = Designators(_h, _h.A);
        var p2 = Designators(_h, _onPort2);
        Assert.That((p1.RelPort, p1.Group), Is.EqualTo(((ushort)1, (ushort)1)));
        Assert.That((p2.RelPort, p2.Group), Is.EqualTo(((ushort)2, (ushort)2)));
        Assert.That(p2.Naa, Is.EqualTo(p1.Naa).And.Length.EqualTo(16));
        // Another process serving the same LUN with the same identity seed (a second gateway) reports the same NAA.
        var other = new Harness(portGroups: TwoGateways);
        other.Quiet(_onPort2);
        Assert.That(Designators(other, _onPort2).Naa, Is.EqualTo(p1.Naa));
    }

    [Test]
    public void PortGroupsThatShareAPortOrAnIdAreRejected()
    {
        var o = new LogicalUnitOptions { Serial = "S", IdentitySeed = "x", PortGroups = [new(1, [1, 2]), new(2, [2])] };
        Assert.That(o.Validate(), Has.Some.Contains("relative target port 2 is in more than one"));
        var dup = new LogicalUnitOptions { Serial = "S", IdentitySeed = "x", PortGroups = [new(1, [1]), new(1, [2])] };
        Assert.That(dup.Validate(), Has.Some.Contains("listed twice"));
        var zero = new LogicalUnitOptions { Serial = "S", IdentitySeed = "x", PortGroups = [new(0, [1])] };
        Assert.That(zero.Validate(), Has.Some.Contains("id 0 is reserved"));
    }
}
