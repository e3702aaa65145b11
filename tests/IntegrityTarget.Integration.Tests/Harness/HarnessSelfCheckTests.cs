using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Harness;

/// <summary>
/// Proves the test harness itself against tgt (a known target), so that a failure elsewhere
/// points at integrity-target and not at the test initiator or a tool wrapper.
/// </summary>
[TestFixture, Category("Harness")]
public class HarnessSelfCheckTests
{
    [Test]
    public void TestInitiator_writes_reads_flushes_and_parses_sense_against_tgt()
    {
        using var tgt = new RefTarget("16M");
        using var ini = new TestInitiator("127.0.0.1", tgt.Port);
        ini.Login(new LoginOptions { TargetName = RefTarget.TargetIqn });
        ini.ClearUnitAttention(RefTarget.Lun);
        var (blocks, bs) = ini.ReadCapacity(RefTarget.Lun);
        Assert.That((blocks, bs), Is.EqualTo((16UL * 1024 * 1024 / 512, 512)));

        var data = new byte[300 * 1024]; // more than FirstBurstLength: immediate data, then R2T/Data-Out
        new Random(7).NextBytes(data);
        Assert.That(ini.Write16(RefTarget.Lun, 100, data, bs, fua: true).Good, Is.True);
        Assert.That(ini.Write10(RefTarget.Lun, 5000, data.AsSpan(0, 4096), bs).Good, Is.True);
        Assert.That(ini.SynchronizeCache(RefTarget.Lun).Good, Is.True);
        var r = ini.Read16(RefTarget.Lun, 100, (uint)(data.Length / bs), bs);
        Assert.That(r.Good, Is.True, r.ToString);
        Assert.That(r.Data, Is.EqualTo(data));
        var r10 = ini.Read10(RefTarget.Lun, 5000, 8, bs);
        Assert.That(r10.Data, Is.EqualTo(data.AsSpan(0, 4096).ToArray()));

        // Past the end: CHECK CONDITION, ILLEGAL REQUEST / LBA OUT OF RANGE.
        var bad = ini.Read16(RefTarget.Lun, blocks, 1, bs);
        Assert.That(bad.Status, Is.EqualTo(0x02));
        Assert.That(bad.Sense, Is.Not.Null);
        Assert.That((bad.Sense!.Key, bad.Sense.Asc), Is.EqualTo(((byte)0x05, (byte)0x21)), bad.ToString);
        ini.Ping();
        ini.Logout();
    }

    [Test]
    public void TestInitiator_discovers_tgt_through_SendTargets()
    {
        using var tgt = new RefTarget("16M");
        using var ini = new TestInitiator("127.0.0.1", tgt.Port);
        ini.Login(new LoginOptions { Discovery = true });
        var st = ini.SendTargets();
        Assert.That(st, Does.Contain(("TargetName", RefTarget.TargetIqn)));
        ini.Logout();
    }

    [Test]
    public void TestInitiator_chap_and_mutual_chap_work_against_tgt_and_catch_a_lying_target()
    {
        using var tgt = new RefTarget("16M");
        tgt.AddChapAccount("alice", "alice-secret-0123");
        tgt.AddChapAccount("tbob", "bob-secret-4567", outgoing: true);
        using (var ini = new TestInitiator("127.0.0.1", tgt.Port))
        {
            ini.Login(new LoginOptions { TargetName = RefTarget.TargetIqn, ChapUser = "alice", ChapSecret = "alice-secret-0123", MutualUser = "tbob", MutualSecret = "bob-secret-4567" });
            ini.ClearUnitAttention(RefTarget.Lun);
            ini.Logout();
        }
        using (var ini = new TestInitiator("127.0.0.1", tgt.Port))
            Assert.That(() => ini.Login(new LoginOptions { TargetName = RefTarget.TargetIqn, ChapUser = "alice", ChapSecret = "alice-secret-0123", MutualSecret = "not-bobs-secret" }),
                Throws.InstanceOf<IOException>().With.Message.Contains("mutual"));
        using (var ini = new TestInitiator("127.0.0.1", tgt.Port))
        {
            var e = Assert.Throws<LoginFailedException>(() => ini.Login(new LoginOptions { TargetName = RefTarget.TargetIqn, ChapUser = "alice", ChapSecret = "wrong-secret-99" }))!;
            Assert.That((e.StatusClass, e.StatusDetail), Is.EqualTo(((byte)2, (byte)1)), "authentication failure");
        }
    }

    [Test]
    public void Sense_parser_reads_fixed_and_descriptor_INFORMATION()
    {
        var fixedSense = new byte[18];
        fixedSense[0] = 0xF0; fixedSense[2] = 0x03; fixedSense[3] = 0; fixedSense[4] = 0; fixedSense[5] = 0x12; fixedSense[6] = 0x34;
        fixedSense[7] = 10; fixedSense[12] = 0x11;
        var f = Sense.Parse(fixedSense)!;
        Assert.That((f.Key, f.Asc, f.Ascq, f.InfoValid, f.Information), Is.EqualTo(((byte)3, (byte)0x11, (byte)0, true, 0x1234UL)));

        var desc = new byte[8 + 12];
        desc[0] = 0x72; desc[1] = 0x03; desc[2] = 0x11; desc[7] = 12;
        desc[8] = 0x00; desc[9] = 0x0a; desc[10] = 0x80;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(desc.AsSpan(12), 0x1_0000_0001UL);
        var d = Sense.Parse(desc)!;
        Assert.That((d.Key, d.Asc, d.InfoValid, d.Information), Is.EqualTo(((byte)3, (byte)0x11, true, 0x1_0000_0001UL)));
    }
}
