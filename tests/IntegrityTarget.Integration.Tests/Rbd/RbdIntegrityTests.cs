using System.Buffers.Binary;
using System.Text.RegularExpressions;
using IntegrityTarget.Integration.Tests.Infrastructure;
using IntegrityTarget.Integration.Tests.PowerCut;

namespace IntegrityTarget.Integration.Tests.Rbd;

/// <summary>
/// Integrity end to end on RBD: damage written into the image's RADOS objects behind the gateway's back is
/// found at the exact LBA (and nothing else is reported), and kill -9 of the gateway under load loses no
/// durable write and leaves every block readable after the restart (which recovers the journal from the image).
/// </summary>
[TestFixture, Category("Rbd"), Category("Integrity")]
public class RbdIntegrityTests
{
    const int Lun = 0, Bs = 512;

    static void AssertMediumError(ScsiResult r, ulong lba, string what)
    {
        Assert.That(r.Status, Is.EqualTo(0x02), () => $"{what}: CHECK CONDITION expected, got {r}");
        Assert.That((r.Sense!.Key, r.Sense.Asc, r.Sense.Ascq), Is.EqualTo(((byte)0x03, (byte)0x11, (byte)0x00)), () => $"{what}: MEDIUM ERROR 11/00, got {r.Sense}");
        Assert.That((r.Sense.InfoValid, r.Sense.Information), Is.EqualTo((true, lba)), () => $"{what}: INFORMATION = the damaged LBA, got {r.Sense}");
    }

    [Test]
    public void Damage_written_into_the_images_objects_is_found_at_exactly_the_damaged_lbas()
    {
        using var image = new RbdImage("corrupt");
        using var srv = new ServerProcess(image.Serve("64MiB")).Start(TimeSpan.FromMinutes(2));
        using var cleanup = new DirectoryCleanup(srv.DataDir);
        using var ini = TestInitiator.Connect(srv);
        ini.ClearUnitAttention(Lun);

        // 4 MiB of blocks that are unique in the image (random, with their LBA in front), written as whole 128 KiB
        // chunks: their data goes straight to its slot, so what is on the image is what reads return.
        const int Blocks = 8192;
        const ulong Base = 16384;
        var data = new byte[Blocks * Bs];
        new Random(Environment.TickCount).NextBytes(data);
        for (var i = 0; i < Blocks; i++) BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(i * Bs), Base + (ulong)i);
        for (var off = 0; off < data.Length; off += 128 * 1024)
            Assert.That(ini.Write16(Lun, Base + (ulong)(off / Bs), data.AsSpan(off, 128 * 1024), Bs, fua: true).Good, Is.True);
        Assert.That(ini.SynchronizeCache(Lun).Good, Is.True);

        // Where each block lives in the image: a copy (rbd export) gives the geometry (dump) and the data offsets.
        var copy = image.Export(Path.Combine(srv.DataDir, "export.img"));
        var geometry = BackingFile.ReadGeometry(copy);
        var rnd = new Random(4242);
        var victims = Enumerable.Range(0, 24).Select(_ => Base + (ulong)rnd.Next(Blocks)).Distinct().OrderBy(l => l).ToList();
        var damaged = new Dictionary<ulong, string>();
        foreach (var (lba, k) in victims.Select((l, k) => (l, k)))
        {
            var block = data.AsSpan((int)(lba - Base) * Bs, Bs).ToArray();
            var hits = BackingFile.FindAll(copy, block, Bs);
            Assert.That(hits, Has.Count.EqualTo(1), $"LBA {lba} is stored once, in its slot");
            // Two in three lose a data byte, one in three a tag byte.
            long at = k % 3 == 2 ? geometry.TagOffsetFor(hits[0]) + rnd.Next(geometry.TagSize) : hits[0] + rnd.Next(Bs);
            var b = BackingFile.ReadAt(copy, at, 1);
            image.WriteBehindTheGateway(at, [(byte)(b[0] ^ (1 << rnd.Next(8)))], srv.DataDir);
            damaged[lba] = k % 3 == 2 ? "tag" : "data";
        }
        TestContext.Out.WriteLine($"damaged {damaged.Count} blocks behind the gateway: {string.Join(", ", damaged.Select(d => $"{d.Key} ({d.Value})"))}");

        // Every block of the range, one READ each. Damaged data fails at its LBA. A block whose tag was damaged
        // returns its intact data while the gateway's tag cache holds the tag it wrote (README: the tag cache), or
        // fails at its LBA once that slot's tags were read from the image again (a failed read of another block
        // of the slot drops them); the scrub below and a restarted gateway find every damaged tag.
        var dataDamaged = damaged.Where(d => d.Value == "data").Select(d => d.Key).ToList();
        var detected = new List<ulong>();
        int tagsFailedOnRead = 0;
        var falsePositives = new List<string>();
        for (var i = 0; i < Blocks; i++)
        {
            var lba = Base + (ulong)i;
            var r = ini.Read16(Lun, lba, 1, Bs);
            if (dataDamaged.Contains(lba)) { AssertMediumError(r, lba, $"READ(16) of LBA {lba} (damaged data)"); detected.Add(lba); }
            else if (damaged.ContainsKey(lba) && !r.Good) { AssertMediumError(r, lba, $"READ(16) of LBA {lba} (damaged tag)"); tagsFailedOnRead++; }
            else if (!r.Good || !r.Data.AsSpan(0, Bs).SequenceEqual(data.AsSpan(i * Bs, Bs))) falsePositives.Add($"LBA {lba}: {r}");
        }
        Assert.That(falsePositives, Is.Empty, "no good block is reported or changed");
        Assert.That(detected, Is.EqualTo(dataDamaged), "every block with damaged data fails on read");

        // A large read stops at the first damaged block with the good blocks before it delivered (it starts after
        // any damaged tag below that block, which may or may not fail).
        var first = dataDamaged[0];
        var from = Math.Max(Math.Max(Base, first - 100), damaged.Keys.Where(l => l < first).Select(l => l + 1).DefaultIfEmpty(Base).Max());
        var big = ini.Read16(Lun, from, (uint)(first - from + 50), Bs);
        AssertMediumError(big, first, "READ(16) across the first damaged block");
        Assert.That(big.DataInBytes, Is.EqualTo((int)(first - from) * Bs));

        // The online scrub reads tags from the image: every damaged block, data or tag, and no other.
        var scrub = ServerProcess.Cli(TimeSpan.FromMinutes(5), "scrub", "--lun", $"{srv.Iqn}/0", "--socket", srv.StatusSocket);
        Assert.That(scrub.ExitCode, Is.EqualTo(1), () => "scrub exits 1 when it finds bad blocks\n" + scrub.Describe());
        var listed = Regex.Matches(scrub.StdOut, @"bad LBA (\d+)").Select(m => ulong.Parse(m.Groups[1].Value)).ToList();
        Assert.That(listed, Is.EqualTo(damaged.Keys.ToList()), () => "scrub: 100 % of the damaged blocks at their exact LBAs, no other\n" + scrub.Describe());

        // One Error line per distinct bad LBA (the reads, the large read and the scrub failed some of them twice),
        // and status counts every failure: each damaged-data read, the large read, and the scrub's finds.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (damaged.Keys.Any(l => srv.CountLog($@"Integrity verification failed .* LBA {l}\b") < 1) && DateTime.UtcNow < deadline) Thread.Sleep(50);
        Thread.Sleep(300); // a duplicate would arrive right after
        foreach (var lba in damaged.Keys)
            Assert.That(srv.CountLog($@"Integrity verification failed .* LBA {lba}\b"), Is.EqualTo(1), () => $"LBA {lba}\n" + srv.Output(40));
        var st = srv.Status();
        Assert.That(Regex.Match(st.StdOut, @"mismatches (\d+)").Groups[1].Value, Is.EqualTo((dataDamaged.Count + tagsFailedOnRead + 1 + damaged.Count).ToString()), () => st.Describe());
        Assert.That(st.StdOut, Does.Contain($"distinct bad LBAs {damaged.Count})"), () => st.Describe());

        // A restarted gateway (its tag cache empty) finds every damaged block on read, tags included.
        ini.Logout();
        srv.Stop();
        srv.Start(TimeSpan.FromMinutes(2));
        using var ini2 = TestInitiator.Connect(srv);
        ini2.ClearUnitAttention(Lun);
        foreach (var lba in damaged.Keys) AssertMediumError(ini2.Read16(Lun, lba, 1, Bs), lba, $"READ(16) of LBA {lba} ({damaged[lba]}) after a restart");

        // Rewriting heals a damaged block.
        var fresh = new byte[Bs];
        new Random(7).NextBytes(fresh);
        Assert.That(ini2.Write16(Lun, first, fresh, Bs, fua: true).Good, Is.True);
        var healed = ini2.Read16(Lun, first, 1, Bs);
        Assert.That(healed.Good && healed.Data.AsSpan(0, Bs).SequenceEqual(fresh), Is.True, healed.ToString);
        ini2.Logout();
        srv.Stop();
    }

    [Test]
    public void Kill_9_under_load_loses_no_durable_write_and_the_restarted_gateway_reads_every_block()
    {
        using var image = new RbdImage("crash");
        const int RegionBytes = 4 << 20;
        var srv = new ServerProcess(image.Serve("48MiB"));
        var regionBlocks = RegionBytes / Bs;
        var model = new PowerCutTests.Model(regionBlocks);
        // Each kill costs the restart about 30 s (the cluster must notice the dead lock holder): CI runs one,
        // RBD_KILLS=N runs more.
        var kills = int.TryParse(Environment.GetEnvironmentVariable("RBD_KILLS"), out var n) && n > 0 ? n : 1;
        try
        {
            for (var trial = 0; trial < kills; trial++)
            {
                var seed = 77_000 + trial;
                TestContext.Progress.WriteLine($"kill -9 {trial + 1}/{kills} of the RBD gateway under load, seed {seed}");
                srv.Start(TimeSpan.FromMinutes(2));
                var target = new PowerCutTests.Target(() => TestInitiator.Connect(srv, ioTimeout: TimeSpan.FromSeconds(30)), srv.Kill, n => srv.Output(n), Lun);
                PowerCutTests.RunLoadAndCrash(target, () => "no power cut: the process dies, the cluster keeps what it acknowledged", model, Bs, seed, regionBlocks);
                // The dead gateway's lock is broken by the next one once the cluster notices it is gone.
                srv.Start(TimeSpan.FromMinutes(3));
                Assert.That(srv.HasLog(@"is locked by client\.\d+ at .*asking for the lock"), Is.True, () => "the restart waited for the dead holder's lock\n" + srv.Output());
                PowerCutTests.Verify(target, model, Bs, regionBlocks, $"kill -9, seed {seed}");
                // Kill the verified gateway too, so the next round starts on a dead holder's lock again.
                if (trial + 1 < kills) srv.Kill(); else srv.Stop();
            }
        }
        finally
        {
            if (srv.IsRunning) srv.Kill();
            srv.Dispose();
        }
    }
}
