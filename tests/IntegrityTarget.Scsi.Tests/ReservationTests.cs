using System.Buffers.Binary;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Scsi.Tests;

public class ReservationTests
{
    private Harness _h = null!;
    private const ulong KeyA = 0xA1A1, KeyB = 0xB2B2;

    [SetUp]
    public void SetUp() { _h = new Harness(); _h.Quiet(_h.A, _h.B); }

    private ScsiResponse ProutRaw(ItNexus n, int sa, ulong key, ulong saKey, byte type = 0, byte flags = 0)
    {
        var p = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(p, key);
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), saKey);
        p[20] = flags;
        return _h.Exec([0x5F, (byte)sa, type, 0, 0, 0, 0, 0, 24, 0], p, n);
    }

    private void Prout(ItNexus n, int sa, ulong key, ulong saKey, byte type = 0, byte flags = 0, byte expect = ScsiStatus.Good)
    {
        using var r = ProutRaw(n, sa, key, saKey, type, flags);
        Assert.That(r.Status, Is.EqualTo(expect), $"PROUT SA {sa} from {n.InitiatorName}");
    }

    private byte[] Prin(ItNexus n, int sa)
    {
        using var r = _h.Exec([0x5E, (byte)sa, 0, 0, 0, 0, 0, 0x10, 0, 0], null, n);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        return r.DataIn.ToArray();
    }

    private byte Status(ScsiResponse r) { using (r) return r.Status; }
    private byte ReadStatus(ItNexus n) => Status(_h.Exec(Harness.Read16(0, 1), null, n));
    private byte WriteStatus(ItNexus n) => Status(_h.Exec(Harness.Write16(0, 1), new byte[512], n));

    [TestCase((byte)1, true, false, true, false)]   // WE: others read, nobody else writes
    [TestCase((byte)3, false, false, false, false)] // EA
    [TestCase((byte)5, true, true, true, false)]    // WERO: registrants read and write
    [TestCase((byte)6, true, true, false, false)]   // EARO
    [TestCase((byte)7, true, true, true, false)]    // WEAR
    [TestCase((byte)8, true, true, false, false)]   // EAAR
    public void AccessOfOtherNexusFollowsTheReservationType(byte type, bool regRead, bool regWrite, bool unregRead, bool unregWrite)
    {
        Prout(_h.A, 6, 0, KeyA);
        Prout(_h.B, 6, 0, KeyB);
        Prout(_h.A, 1, KeyA, 0, type);
        Assert.That(ReadStatus(_h.A), Is.EqualTo(ScsiStatus.Good));
        Assert.That(WriteStatus(_h.A), Is.EqualTo(ScsiStatus.Good));
        Assert.That(ReadStatus(_h.B), Is.EqualTo(regRead ? ScsiStatus.Good : ScsiStatus.ReservationConflict), "registered read");
        Assert.That(WriteStatus(_h.B), Is.EqualTo(regWrite ? ScsiStatus.Good : ScsiStatus.ReservationConflict), "registered write");
        Prout(_h.B, 0, KeyB, 0);
        Assert.That(ReadStatus(_h.B), Is.EqualTo(unregRead ? ScsiStatus.Good : ScsiStatus.ReservationConflict), "unregistered read");
        Assert.That(WriteStatus(_h.B), Is.EqualTo(unregWrite ? ScsiStatus.Good : ScsiStatus.ReservationConflict), "unregistered write");
        Prout(_h.A, 2, KeyA, 0, type);
        Assert.That(WriteStatus(_h.B), Is.EqualTo(ScsiStatus.Good));
    }

    [Test]
    public void ReadKeysAndReadReservationReportRegistrationsAndHolder()
    {
        Prout(_h.A, 6, 0, KeyA);
        Prout(_h.B, 0, 0, KeyB);
        Prout(_h.A, 1, KeyA, 0, 1);
        var keys = Prin(_h.A, 0);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(keys), Is.EqualTo(2), "generation counts registrations");
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(keys.AsSpan(4)), Is.EqualTo(16));
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(keys.AsSpan(8)), Is.EqualTo(KeyA));
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(keys.AsSpan(16)), Is.EqualTo(KeyB));
        var res = Prin(_h.B, 1);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(res.AsSpan(4)), Is.EqualTo(16));
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(res.AsSpan(8)), Is.EqualTo(KeyA));
        Assert.That(res[21], Is.EqualTo(1));
    }

    [Test]
    public void ReadFullStatusCarriesTransportIdsAndHolderFlag()
    {
        Prout(_h.A, 6, 0, KeyA);
        Prout(_h.A, 1, KeyA, 0, 3);
        var fs = Prin(_h.A, 3);
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(fs.AsSpan(8)), Is.EqualTo(KeyA));
        Assert.That(fs[8 + 12] & 1, Is.EqualTo(1), "R_HOLDER");
        Assert.That(fs[8 + 13], Is.EqualTo(3));
        int tidLen = (int)BinaryPrimitives.ReadUInt32BigEndian(fs.AsSpan(8 + 20));
        Assert.That(fs.AsSpan(8 + 24, _h.A.InitiatorTransportId.Length).ToArray(), Is.EqualTo(_h.A.InitiatorTransportId));
        Assert.That(tidLen % 4, Is.Zero);
    }

    [Test]
    public void RegisterWithWrongKeyIsAConflictAndUnregisteredReserveIsAConflict()
    {
        Prout(_h.A, 0, 0, KeyA);
        Prout(_h.A, 0, 0x999, KeyB, expect: ScsiStatus.ReservationConflict);
        Prout(_h.B, 1, KeyB, 0, 1, expect: ScsiStatus.ReservationConflict);
    }

    [Test]
    public void UnregisteringTheHolderReleasesAnExclusiveReservationButNotAnAllRegistrantsOne()
    {
        Prout(_h.A, 6, 0, KeyA); Prout(_h.B, 6, 0, KeyB);
        Prout(_h.A, 1, KeyA, 0, 3);
        Prout(_h.A, 0, KeyA, 0);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(Prin(_h.B, 1).AsSpan(4)), Is.Zero);

        Prout(_h.A, 6, 0, KeyA);
        Prout(_h.A, 1, KeyA, 0, 8);
        Prout(_h.A, 0, KeyA, 0);
        var res = Prin(_h.B, 1);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(res.AsSpan(4)), Is.EqualTo(16));
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(res.AsSpan(8)), Is.Zero, "all-registrants reservations report key 0");
    }

    [Test]
    public void PreemptAndAbortRemovesTheOtherRegistrationTakesTheReservationAndAsksForAbort()
    {
        var aborted = new List<(ulong, IReadOnlyCollection<string>)>();
        _h.Target.AbortTasksRequested += (lun, ports) => aborted.Add((lun, ports));
        Prout(_h.A, 6, 0, KeyA); Prout(_h.B, 6, 0, KeyB);
        Prout(_h.B, 1, KeyB, 0, 1);
        Prout(_h.A, 5, KeyA, KeyB, 3);
        var res = Prin(_h.A, 1);
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(res.AsSpan(8)), Is.EqualTo(KeyA));
        Assert.That(res[21], Is.EqualTo(3));
        Assert.That(aborted, Has.Count.EqualTo(1));
        Assert.That(aborted[0].Item2, Is.EquivalentTo(new[] { _h.B.InitiatorPortName }));
        using var ua = _h.Exec(new byte[6], null, _h.B);
        SenseAssert.Is(ua, 0x06, 0x2A, 0x05);
        Assert.That(ReadStatus(_h.B), Is.EqualTo(ScsiStatus.ReservationConflict));
    }

    [Test]
    public void ClearRemovesEverythingAndTellsTheOthers()
    {
        Prout(_h.A, 6, 0, KeyA); Prout(_h.B, 6, 0, KeyB);
        Prout(_h.A, 1, KeyA, 0, 5);
        Prout(_h.A, 3, KeyA, 0);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(Prin(_h.A, 0).AsSpan(4)), Is.Zero);
        using var ua = _h.Exec(new byte[6], null, _h.B);
        SenseAssert.Is(ua, 0x06, 0x2A, 0x03);
    }

    [Test]
    public void ReleaseWithTheWrongTypeIsInvalidReleaseOfPersistentReservation()
    {
        Prout(_h.A, 6, 0, KeyA);
        Prout(_h.A, 1, KeyA, 0, 1);
        using var r = ProutRaw(_h.A, 2, KeyA, 0, 3);
        SenseAssert.Is(r, 0x05, 0x26, 0x04);
    }

    [Test]
    public void ReportCapabilitiesListsEveryReservationType()
    {
        var caps = Prin(_h.A, 2);
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(caps), Is.EqualTo(8));
        Assert.That(caps[4], Is.EqualTo(0xEA));
        Assert.That(caps[5], Is.EqualTo(0x01));
    }

    [Test]
    public void PersistentReserveInServiceActionsAboveThreeAreInvalid()
    {
        for (int sa = 4; sa < 0x20; sa++)
        {
            using var r = _h.Exec([0x5E, (byte)sa, 0, 0, 0, 0, 0, 0x10, 0, 0]);
            SenseAssert.Is(r, 0x05, 0x24, 0x00);
        }
    }

    [Test]
    public void EveryPersistentReserveOutServiceActionIsItsOwnOpcodeTableRowAndRegisterAndMoveIsInvalid()
    {
        var rows = OpcodeTable.Get(0x5F)!.ServiceActions!;
        string[] names = ["REGISTER", "RESERVE", "RELEASE", "CLEAR", "PREEMPT", "PREEMPT AND ABORT", "REGISTER AND IGNORE EXISTING KEY"];
        for (int sa = 0; sa < names.Length; sa++)
        {
            Assert.That(rows[sa], Is.Not.Null, $"SA {sa}");
            Assert.That(rows[sa]!.ServiceAction, Is.EqualTo(sa));
            Assert.That(rows[sa]!.Name, Is.EqualTo("PERSISTENT RESERVE OUT/" + names[sa]));
            Assert.That(rows[sa]!.IsSupported, Is.True);
        }
        Assert.That(rows.Skip(names.Length), Is.All.Null, "REGISTER AND MOVE and above are not supported");
        // Each row names its own service action in REPORT SUPPORTED OPERATION CODES (one command, by SA).
        using (var rsoc = _h.Exec([0xA3, 0x0C, 0x02, 0x5F, 0, 0x05, 0, 0, 0, 64, 0, 0]))
            Assert.That(rsoc.DataIn.Span[1] & 7, Is.EqualTo(3), "PREEMPT AND ABORT is supported as documented");
        using (var rsoc = _h.Exec([0xA3, 0x0C, 0x02, 0x5F, 0, 0x07, 0, 0, 0, 64, 0, 0]))
            Assert.That(rsoc.DataIn.Span[1] & 7, Is.EqualTo(1), "REGISTER AND MOVE is not supported");
        using var move = ProutRaw(_h.A, 7, 0, KeyA);
        SenseAssert.Is(move, 0x05, 0x24, 0x00);
    }

    [Test]
    public void AptplStateIsReloadedByANewUnitFromTheFile()
    {
        var file = Path.Combine(Path.GetTempPath(), $"pr-{Guid.NewGuid():N}.json");
        try
        {
            var h1 = new Harness(prFile: file);
            h1.Quiet(h1.A);
            var p = new byte[24];
            BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), KeyA); p[20] = 0x01;
            using (var r = h1.Exec([0x5F, 6, 0, 0, 0, 0, 0, 0, 24, 0], p)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
            BinaryPrimitives.WriteUInt64BigEndian(p, KeyA); BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), 0); p[20] = 0;
            using (var r = h1.Exec([0x5F, 1, 3, 0, 0, 0, 0, 0, 24, 0], p)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
            var h2 = new Harness(prFile: file);
            h2.Quiet(h2.A, h2.B);
            using var res = h2.Exec([0x5E, 1, 0, 0, 0, 0, 0, 0x10, 0, 0], null, h2.B);
            Assert.That(BinaryPrimitives.ReadUInt64BigEndian(res.DataIn.Span[8..]), Is.EqualTo(KeyA));
            Assert.That(res.DataIn.Span[21], Is.EqualTo(3));
            using var read = h2.Exec(Harness.Read16(0, 1), null, h2.B);
            Assert.That(read.Status, Is.EqualTo(ScsiStatus.ReservationConflict));
        }
        finally { File.Delete(file); }
    }

    /// <summary>A store in memory that can be told to fail, like a full disk or a lost RBD connection.</summary>
    private sealed class MemoryRecord : IntegrityTarget.Storage.IDurableRecord
    {
        public byte[]? Value;
        public bool Fail;
        public int Writes;
        public string Name => "memory";
        public byte[]? Read() => Value;
        public void Write(ReadOnlySpan<byte> value) { if (Fail) throw new IOException("disk full"); Value = value.ToArray(); Writes++; }
        public void Delete() { if (Fail) throw new IOException("disk full"); Value = null; }
    }

    [Test]
    public void WithFailoverEveryRegistrationAndTheReservationReachTheNextGatewayWithoutAptpl()
    {
        var store = new MemoryRecord();
        var gw1 = new Harness(prStore: store, prSurvivesFailover: true);
        gw1.Quiet(gw1.A, gw1.B);
        var p = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), KeyA);
        using (var r = gw1.Exec([0x5F, 6, 0, 0, 0, 0, 0, 0, 24, 0], p, gw1.A)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), KeyB);
        using (var r = gw1.Exec([0x5F, 6, 0, 0, 0, 0, 0, 0, 24, 0], p, gw1.B)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        BinaryPrimitives.WriteUInt64BigEndian(p, KeyA); BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), 0);
        using (var r = gw1.Exec([0x5F, 1, 5, 0, 0, 0, 0, 0, 24, 0], p, gw1.A)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(store.Writes, Is.EqualTo(3), "every change is stored, APTPL or not");

        // The other gateway opens the LUN after a failover: same registrations, same holder, same generation.
        var gw2 = new Harness(prStore: store, prSurvivesFailover: true);
        gw2.Quiet(gw2.A, gw2.B);
        using var keys = gw2.Exec([0x5E, 0, 0, 0, 0, 0, 0, 0x40, 0, 0], null, gw2.B);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(keys.DataIn.Span), Is.EqualTo(2), "generation");
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(keys.DataIn.Span[4..]), Is.EqualTo(16));
        using var res = gw2.Exec([0x5E, 1, 0, 0, 0, 0, 0, 0x10, 0, 0], null, gw2.B);
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(res.DataIn.Span[8..]), Is.EqualTo(KeyA));
        Assert.That(res.DataIn.Span[21], Is.EqualTo(5), "write exclusive, registrants only");
        using var caps = gw2.Exec([0x5E, 2, 0, 0, 0, 0, 0, 0, 8, 0], null, gw2.B);
        Assert.That(caps.DataIn.Span[3] & 1, Is.Zero, "PTPL_A stays what the initiator asked for");
        Assert.That(Status(gw2.Exec(Harness.Write16(0, 1), new byte[512], gw2.B)), Is.EqualTo(ScsiStatus.Good), "registrant writes");
        var stranger = Harness.MakeNexus("iqn.2026-11.test:c", 0x23D000000003);
        gw2.Quiet(stranger);
        Assert.That(Status(gw2.Exec(Harness.Write16(0, 1), new byte[512], stranger)), Is.EqualTo(ScsiStatus.ReservationConflict));

        // A LUN served by one gateway keeps only APTPL state, as before.
        var single = new MemoryRecord();
        var h = new Harness(prStore: single);
        h.Quiet(h.A);
        BinaryPrimitives.WriteUInt64BigEndian(p, 0); BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), KeyA);
        using (var r = h.Exec([0x5F, 6, 0, 0, 0, 0, 0, 0, 24, 0], p, h.A)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(single.Value, Is.Null);
    }

    [Test]
    public void AReservationChangeThatCannotBeStoredIsUndoneAndFails()
    {
        var store = new MemoryRecord();
        var h = new Harness(prStore: store, prSurvivesFailover: true);
        h.Quiet(h.A);
        var p = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), KeyA);
        using (var r = h.Exec([0x5F, 6, 0, 0, 0, 0, 0, 0, 24, 0], p)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        store.Fail = true;
        BinaryPrimitives.WriteUInt64BigEndian(p, KeyA); BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), 0);
        using (var r = h.Exec([0x5F, 1, 1, 0, 0, 0, 0, 0, 24, 0], p)) SenseAssert.Is(r, 0x04, 0x44, 0x00);
        store.Fail = false;
        using var res = h.Exec([0x5E, 1, 0, 0, 0, 0, 0, 0x10, 0, 0]);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(res.DataIn.Span[4..]), Is.Zero, "no reservation: it was rolled back");
        using var keys = h.Exec([0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]);
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(keys.DataIn.Span[8..]), Is.EqualTo(KeyA), "the earlier registration stays");
    }

    [Test]
    public void DurableFileReplacesItsRecordWholeAndLeavesNoTemporaryFiles()
    {
        var dir = Directory.CreateTempSubdirectory("durable-").FullName;
        try
        {
            var f = new IntegrityTarget.Storage.DurableFile(Path.Combine(dir, "lun0.img.pr.json"));
            Assert.That(f.Read(), Is.Null);
            f.Write("first"u8);
            f.Write("second, longer"u8);
            Assert.That(f.Read(), Is.EqualTo("second, longer"u8.ToArray()));
            Assert.That(Directory.GetFiles(dir), Has.Length.EqualTo(1));
            f.Delete();
            f.Delete();
            Assert.That(f.Read(), Is.Null);
            Assert.That(Directory.GetFiles(dir), Is.Empty);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Test]
    public void DamagedReservationFileStartsTheUnitWithoutReservations()
    {
        var file = Path.Combine(Path.GetTempPath(), $"pr-{Guid.NewGuid():N}.json");
        File.WriteAllText(file, "{not json");
        try
        {
            var h = new Harness(prFile: file);
            h.Quiet(h.A);
            using var keys = h.Exec([0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]);
            Assert.That(BinaryPrimitives.ReadUInt32BigEndian(keys.DataIn.Span[4..]), Is.Zero);
        }
        finally { File.Delete(file); }
    }

    [Test]
    public void Reserve6BlocksOtherNexusesUntilReleasedAndConflictsWithPersistentReservations()
    {
        using (var r = _h.Exec([0x16, 0, 0, 0, 0, 0], null, _h.A)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        using (var r = _h.Exec([0x16, 0, 0, 0, 0, 0], null, _h.A)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), "holder may reserve again");
        using (var r = _h.Exec([0x16, 0, 0, 0, 0, 0], null, _h.B)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.ReservationConflict));
        using (var r = _h.Exec([0x17, 0, 0, 0, 0, 0], null, _h.B)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), "release by a non-holder does nothing");
        using (var r = _h.Exec([0x1A, 0, 0x3F, 0, 255, 0], null, _h.B)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.ReservationConflict));
        using (var r = _h.Exec([0x12, 0, 0, 0, 36, 0], null, _h.B)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        _h.Target.LogicalUnitReset(0, _h.A);
        _h.Quiet(_h.A, _h.B); // the reset is reported to every nexus, the issuer included
        using (var r = _h.Exec([0x16, 0, 0, 0, 0, 0], null, _h.B)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), "LUN reset released it");
        using (var r = _h.Exec([0x17, 0, 0, 0, 0, 0], null, _h.B)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Prout(_h.A, 6, 0, KeyA);
        Prout(_h.A, 1, KeyA, 0, 1);
        using (var r = _h.Exec([0x16, 0, 0, 0, 0, 0], null, _h.A)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.ReservationConflict));
    }
}
