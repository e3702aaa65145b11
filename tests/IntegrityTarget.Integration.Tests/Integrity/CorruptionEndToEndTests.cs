using System.Buffers.Binary;
using System.Text.RegularExpressions;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Integrity;

/// <summary>
/// Issue 4 end to end: damage one block's data or tag in the backing file of a served LUN and watch every
/// client see exactly that LBA fail as MEDIUM ERROR 11/00, with the good blocks before it delivered.
/// </summary>
[TestFixture, Category("Integrity")]
public class CorruptionEndToEndTests
{
    const int Lun = 0;

    /// <summary>A served LUN with a known chunk of unique blocks written and flushed.</summary>
    sealed class Scenario : IDisposable
    {
        public ServerProcess Srv = null!;
        public TestInitiator Ini = null!;
        public string File = null!;
        public int Bs;
        public ulong Base;
        public byte[] Data = null!; // contents of Base .. Base+Count-1
        public int Count;
        public BackingFile.Geometry Geometry = null!;
        public byte[] Block(ulong lba) => Data.AsSpan((int)(lba - Base) * Bs, Bs).ToArray();
        public void Dispose()
        {
            Ini?.Dispose();
            Srv?.Dispose();
            if (Srv != null && Environment.GetEnvironmentVariable("KEEP_TEST_DATA") != "1")
                try { Directory.Delete(Srv.DataDir, true); } catch (IOException) { }
        }
    }

    /// <param name="tagCache">The LUN's TagCache ("0" = off: every read reads its tags from the file); null = the default.</param>
    static Scenario Setup(int blockSize, string size = "64MiB", string? tagCache = null)
    {
        var s = new Scenario { Bs = blockSize };
        var dir = Directory.CreateTempSubdirectory("it-corrupt-").FullName;
        s.File = Path.Combine(dir, "lun0.img");
        // Formatted offline first (the format verb), so `dump` can tell the geometry before the server locks the file.
        var fmt = ServerProcess.Cli(TimeSpan.FromMinutes(1), "format", s.File, "--size", size, "--block-size", blockSize.ToString());
        Assert.That(fmt.ExitCode, Is.EqualTo(0), () => fmt.Describe());
        s.Geometry = BackingFile.ReadGeometry(s.File);
        Assert.That(s.Geometry.BlockSize, Is.EqualTo(blockSize));
        var o = new ServerOptions { Size = null, BlockSize = blockSize, LunPath = s.File };
        if (tagCache != null) o.Extra.AddRange(["--Targets:0:Luns:0:TagCache", tagCache]);
        s.Srv = new ServerProcess(o, dataDir: dir).Start();
        s.Ini = TestInitiator.Connect(s.Srv);
        s.Ini.ClearUnitAttention(Lun);
        s.Count = 256 * 1024 / blockSize;
        s.Base = (ulong)(10 * s.Count);
        s.Data = new byte[s.Count * blockSize];
        new Random(unchecked((int)DateTime.UtcNow.Ticks)).NextBytes(s.Data); // unique per run, so a search finds only this write
        for (var i = 0; i < s.Count; i++) BinaryPrimitives.WriteUInt64BigEndian(s.Data.AsSpan(i * blockSize), s.Base + (ulong)i);
        for (var off = 0; off < s.Data.Length; off += 64 * 1024)
        {
            var w = s.Ini.Write16(Lun, s.Base + (ulong)(off / blockSize), s.Data.AsSpan(off, 64 * 1024), blockSize, fua: true);
            Assert.That(w.Good, Is.True, w.ToString);
        }
        Assert.That(s.Ini.SynchronizeCache(Lun).Good, Is.True);
        return s;
    }

    /// <summary>Where the data (and tag) of <paramref name="lba"/> live now: the layout API, else a search for its unique bytes.</summary>
    static (long Data, long? Tag) Locate(Scenario s, ulong lba)
    {
        var (data, tag, output) = BackingFile.Locate(s.File, lba);
        if (data is { } d)
        {
            Assert.That(BackingFile.ReadAt(s.File, d, s.Bs), Is.EqualTo(s.Block(lba)), "dump --lba data offset holds the block\n" + output);
            return (d, tag);
        }
        TestContext.Out.WriteLine($"integrity-target dump --lba gave no data offset; searching the file instead.\n{output}");
        var hits = BackingFile.FindAll(s.File, s.Block(lba), s.Bs);
        Assert.That(hits, Is.Not.Empty, $"the data of LBA {lba} is not stored in plain form in {s.File}");
        // Several hits (a journal copy and the home copy): the last one in the file is the data area.
        var home = hits.Max();
        return (home, tag ?? s.Geometry.TagOffsetFor(home));
    }

    static void AssertMediumError(ScsiResult r, ulong lba, string what)
    {
        Assert.That(r.Status, Is.EqualTo(0x02), () => $"{what}: CHECK CONDITION expected, got {r}");
        Assert.That(r.Sense, Is.Not.Null, what + ": sense data");
        Assert.That((r.Sense!.Key, r.Sense.Asc, r.Sense.Ascq), Is.EqualTo(((byte)0x03, (byte)0x11, (byte)0x00)), () => $"{what}: MEDIUM ERROR / UNRECOVERED READ ERROR, got {r.Sense}");
        Assert.That(r.Sense.InfoValid, Is.True, () => $"{what}: INFORMATION valid, {r.Sense}");
        Assert.That(r.Sense.Information, Is.EqualTo(lba), () => $"{what}: INFORMATION = failing LBA, {r.Sense}");
    }

    static int MismatchCount(ServerProcess srv)
    {
        var st = srv.Status();
        Assert.That(st.ExitCode, Is.EqualTo(0), () => st.Describe());
        var m = Regex.Match(st.StdOut, @"mismatch\w*\W+(\d+)", RegexOptions.IgnoreCase);
        Assert.That(m.Success, Is.True, () => "status prints a mismatch counter\n" + st.Describe());
        return int.Parse(m.Groups[1].Value);
    }

    static int FailureLogLines(ServerProcess srv, ulong lba) =>
        srv.CountLog($@"(?i)(mismatch|integrity|verif|checksum|tag).*\b{lba}\b|\b{lba}\b.*(mismatch|integrity|verif|checksum|tag)");

    [TestCase("data", 512)]
    [TestCase("data", 4096)]
    [TestCase("tag", 512)]
    public void Damaged_block_reads_as_medium_error_at_its_lba_and_heals_on_rewrite(string what, int bs)
    {
        // With the tag cache off, a damaged tag is seen by the next read too (with it: the next test).
        using var s = Setup(bs, tagCache: what == "tag" ? "0" : null);
        var bad = s.Base + 37;
        var (dataOff, tagOff) = Locate(s, bad);
        if (what == "data") BackingFile.FlipByte(s.File, dataOff + 100);
        else
        {
            BackingFile.FlipByte(s.File, tagOff!.Value);
        }
        var logsBefore = FailureLogLines(s.Srv, bad);

        // READ covering it: the 7 good blocks before it arrive, then 03/11/00 with INFORMATION = the LBA.
        var r = s.Ini.Read16(Lun, bad - 7, 16, bs);
        AssertMediumError(r, bad, "READ(16)");
        Assert.That(r.DataInBytes, Is.EqualTo(7 * bs), "the good blocks before the failing one are delivered");
        Assert.That(r.Data.AsSpan(0, 7 * bs).ToArray(), Is.EqualTo(s.Data.AsSpan((int)(bad - 7 - s.Base) * bs, 7 * bs).ToArray()));
        Assert.That(r.Underflow && r.Residual == (uint)(9 * bs), Is.True, () => "residual counts the undelivered blocks: " + r);

        // Exactly one log event and one counted mismatch for that read.
        Assert.That(s.Srv.WaitForLog($@"\b{bad}\b", TimeSpan.FromSeconds(5)), Is.True, () => "a log line names the LBA\n" + s.Srv.Output());
        Thread.Sleep(300); // a duplicate would arrive right after the first
        Assert.That(FailureLogLines(s.Srv, bad) - logsBefore, Is.EqualTo(1), () => "exactly one log event per failure\n" + s.Srv.Output());
        Assert.That(MismatchCount(s.Srv), Is.EqualTo(1));

        // READ(10) and VERIFY(16) report the same LBA; blocks around it are fine.
        AssertMediumError(s.Ini.Read10(Lun, (uint)bad, 1, bs), bad, "READ(10)");
        AssertMediumError(s.Ini.Execute(Lun, TestInitiator.Cdb16(0x8f, bad - 2, 4)), bad, "VERIFY(16)");
        var before = s.Ini.Read16(Lun, s.Base, 37, bs);
        Assert.That(before.Good, Is.True, before.ToString);
        Assert.That(before.Data, Is.EqualTo(s.Data.AsSpan(0, 37 * bs).ToArray()));
        var after = s.Ini.Read16(Lun, bad + 1, (uint)(s.Count - 38), bs);
        Assert.That(after.Good, Is.True, after.ToString);
        Assert.That(after.Data, Is.EqualTo(s.Data.AsSpan(38 * bs).ToArray()));

        // Rewriting the block heals it.
        var fresh = new byte[bs];
        new Random(5).NextBytes(fresh);
        Assert.That(s.Ini.Write16(Lun, bad, fresh, bs, fua: true).Good, Is.True);
        var healed = s.Ini.Read16(Lun, bad - 1, 3, bs);
        Assert.That(healed.Good, Is.True, healed.ToString);
        Assert.That(healed.Data.AsSpan(bs, bs).ToArray(), Is.EqualTo(fresh));
        s.Srv.Stop();
    }

    /// <summary>
    /// With the tag cache (the default), a read checks the data against the tag the server wrote: a tag damaged
    /// in the file behind its back does not fail reads of intact data, but the online scrub, which always reads
    /// tags from the file, names the LBA; from then on reads fail there too, as they do after a restart (the cache
    /// starts empty). A VM retrying the block makes one Error line, and status counts every event but one LBA.
    /// </summary>
    [Test]
    public void A_tag_damaged_behind_the_server_is_found_by_scrub_and_then_by_every_read()
    {
        using var s = Setup(512);
        var bad = s.Base + 77;
        BackingFile.FlipByte(s.File, Locate(s, bad).Tag!.Value);
        var r = s.Ini.Read16(Lun, bad - 1, 3, 512);
        Assert.That(r.Good && r.Data.AsSpan().SequenceEqual(s.Data.AsSpan((int)(bad - 1 - s.Base) * 512, 3 * 512)), Is.True, () => "intact data verifies against the cached tag: " + r);

        var scrub = ServerProcess.Cli(TimeSpan.FromMinutes(2), "scrub", "--lun", $"{s.Srv.Iqn}/0", "--socket", s.Srv.StatusSocket);
        Assert.That(scrub.ExitCode, Is.EqualTo(1), () => "scrub exits 1 when it finds bad blocks\n" + scrub.Describe());
        Assert.That(scrub.StdOut, Does.Contain($"bad LBA {bad}"), () => scrub.Describe());
        for (int i = 0; i < 5; i++) AssertMediumError(s.Ini.Read16(Lun, bad, 1, 512), bad, $"READ(16) #{i} after the scrub");
        Assert.That(s.Srv.WaitForLog($@"Integrity verification failed .*\b{bad}\b", TimeSpan.FromSeconds(5)), Is.True, () => s.Srv.Output());
        Thread.Sleep(300);
        Assert.That(s.Srv.CountLog($@"Integrity verification failed .*\b{bad}\b"), Is.EqualTo(1), () => "one Error line for the LBA, however often it fails\n" + s.Srv.Output());
        var st = s.Srv.Status();
        Assert.That(st.StdOut, Does.Match(@"mismatches 6 \(distinct bad LBAs 1\)"), () => st.Describe());

        s.Ini.Logout();
        s.Srv.Stop();
        s.Srv.Start();
        s.Ini = TestInitiator.Connect(s.Srv);
        s.Ini.ClearUnitAttention(Lun);
        AssertMediumError(s.Ini.Read16(Lun, bad - 3, 8, 512), bad, "READ(16) after a restart");
        s.Srv.Stop();
    }

    [Test]
    public void Unmapping_a_damaged_block_makes_it_read_as_zeros()
    {
        using var s = Setup(512);
        var bad = s.Base + 99;
        BackingFile.FlipByte(s.File, Locate(s, bad).Data + 7);
        AssertMediumError(s.Ini.Read16(Lun, bad, 1, 512), bad, "READ(16) before UNMAP");
        var u = s.Ini.Unmap(Lun, bad, 1);
        Assert.That(u.Good, Is.True, u.ToString);
        var r = s.Ini.Read16(Lun, bad - 1, 3, 512);
        Assert.That(r.Good, Is.True, r.ToString);
        Assert.That(r.Data.AsSpan(512, 512).ToArray(), Is.All.EqualTo((byte)0), "unmapped block reads zeros");
        Assert.That(r.Data.AsSpan(0, 512).ToArray(), Is.EqualTo(s.Block(bad - 1)), "neighbours keep their data");
        Assert.That(r.Data.AsSpan(1024, 512).ToArray(), Is.EqualTo(s.Block(bad + 1)));
        s.Srv.Stop();
    }

    [Test, Category("Qemu")]
    public void Qemu_io_gets_EIO_for_exactly_the_damaged_block()
    {
        using var s = Setup(512);
        var bad = s.Base + 200;
        BackingFile.FlipByte(s.File, Locate(s, bad).Data + 300);
        s.Ini.Logout();
        var qemuIo = Tools.RequireTool("qemu-io");
        ToolResult Read(long off, int len) => Tools.Run(qemuIo, ["-f", "raw", "-c", $"read {off} {len}", s.Srv.Url(0)], TimeSpan.FromMinutes(2));
        var badOff = (long)bad * 512;

        var hit = Read(badOff, 512);
        Assert.That(hit.Combined, Does.Contain("Input/output error"), () => hit.Describe());
        var covering = Read(badOff - 4096, 8192);
        Assert.That(covering.Combined, Does.Contain("Input/output error"), () => covering.Describe());
        foreach (var (off, len) in new[] { (badOff - 512, 512), (badOff + 512, 512), ((long)s.Base * 512, (int)(badOff - (long)s.Base * 512)) })
        {
            var ok = Read(off, len);
            Assert.That(ok.ExitCode == 0 && !ok.Combined.Contains("error", StringComparison.OrdinalIgnoreCase), Is.True, () => "neighbouring range reads fine\n" + ok.Describe());
        }
        s.Srv.Stop();
    }

    [Test, Category("Vm")]
    public void Linux_kernel_logs_a_critical_medium_error_for_the_damaged_sector()
    {
        using var s = Setup(512);
        var bad = s.Base + 5;
        BackingFile.FlipByte(s.File, Locate(s, bad).Data + 1);
        s.Ini.Logout();
        var r = VmInitiator.Run(s.Srv, lun: 0, env: new()
        {
            ["VM_EXTRA"] = Path.Combine(Paths.VmInitiatorDir, "examples", "read-sector.sh"),
            ["VM_EXTRA_ONLY"] = "1", ["VMX_SECTOR"] = (bad - 2).ToString(), ["VMX_COUNT"] = "8", ["VMX_EXPECT"] = "error",
        });
        VmInitiator.AssertPass(r);
        Assert.That(r.StdOut, Does.Match($@"critical medium error, dev sd[a-z]+, sector {bad}\b"), () => "the kernel names the damaged sector\n" + r.Describe(12000));
        s.Srv.Stop();
    }
}
