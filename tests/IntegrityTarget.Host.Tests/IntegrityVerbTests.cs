using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using Serilog;

namespace IntegrityTarget.Host.Tests;

/// <summary>format, dump and offline scrub on real files, and how serve treats what it finds in a LUN file.</summary>
public class IntegrityVerbTests
{
    private static readonly ILogger Log = new LoggerConfiguration().CreateLogger();

    [Test]
    public async Task Format_creates_a_volume_that_dump_describes_and_a_second_format_needs_force()
    {
        using var dir = new TempDir();
        var format = await CliRun.RunAsync(dir.Path, ["format", "v.img", "--size", "4MiB", "--block-size", "512"]);
        Assert.That(format.ExitCode, Is.EqualTo(0), format.AllOutput);
        Assert.That(format.Out.ToString(), Does.Contain("formatted: 8192 blocks of 512 bytes (4 MiB), crc32c tags"));

        var dump = await CliRun.RunAsync(dir.Path, ["dump", "v.img"]);
        Assert.That(dump.ExitCode, Is.EqualTo(0), dump.AllOutput);
        Assert.That(dump.Out.ToString(), Does.Contain("superblock:        checksum ok").And.Contain("crc32c"));

        var again = await CliRun.RunAsync(dir.Path, ["format", "v.img"]);
        Assert.That(again.ExitCode, Is.EqualTo(1));
        Assert.That(again.Err.ToString(), Does.Contain("already holds an integrity volume; add --force"));

        var forced = await CliRun.RunAsync(dir.Path, ["format", "v.img", "--force", "--tag-algorithm", "xxhash64"]);
        Assert.That(forced.ExitCode, Is.EqualTo(0), forced.AllOutput);
        Assert.That(forced.Out.ToString(), Does.Contain("xxhash64 tags"));
    }

    [Test]
    public async Task Format_takes_a_spare_pool_size_and_refuses_one_too_small_for_a_1MiB_write()
    {
        using var dir = new TempDir();
        var format = await CliRun.RunAsync(dir.Path, ["format", "v.img", "--size", "4MiB", "--spare-slots", "100"]);
        Assert.That(format.ExitCode, Is.EqualTo(0), format.AllOutput);
        Assert.That(format.Out.ToString(), Does.Contain("formatted: 8192 blocks of 512 bytes (4 MiB), crc32c tags, 100 spare slots"));
        var dump = await CliRun.RunAsync(dir.Path, ["dump", "v.img"]);
        Assert.That(dump.Out.ToString(), Does.Contain("physical slots 132 of").And.Contain("100 spare"));
        // An existing file without --size: the logical size is what fits beside that spare pool.
        var again = await CliRun.RunAsync(dir.Path, ["format", "v.img", "--force", "--spare-slots", "100"]);
        Assert.That(again.Out.ToString(), Does.Contain("formatted: 8192 blocks of 512 bytes (4 MiB), crc32c tags, 100 spare slots"), again.AllOutput);
        var defaults = await CliRun.RunAsync(dir.Path, ["format", "w.img", "--size", "4MiB"]);
        Assert.That(defaults.Out.ToString(), Does.Contain("crc32c tags, 33 spare slots"), "32 + 1/32 of the 32 chunks");

        foreach (var bad in new[] { "7", "0", "-3", "many", "1e3", "99999999999" })
        {
            var run = await CliRun.RunAsync(dir.Path, ["format", "x.img", "--size", "4MiB", "--spare-slots", bad]);
            Assert.That(run.ExitCode, Is.EqualTo(2), run.AllOutput);
            Assert.That(run.Err.ToString(), Does.Contain($"--spare-slots must be a whole number from 8 to 1073741824 (slots of 128 KiB; a 1 MiB write needs 8), got {bad}"));
            Assert.That(File.Exists(dir.File("x.img")), Is.False, "nothing created");
        }
    }

    [Test]
    public async Task Format_takes_a_journal_size_and_refuses_one_out_of_range()
    {
        using var dir = new TempDir();
        var defaults = await CliRun.RunAsync(dir.Path, ["format", "d.img", "--size", "4MiB"]);
        Assert.That(defaults.Out.ToString(), Does.Contain("33 spare slots, journal 2 MiB"), "the default: 1/32 of the LUN, at least 2 MiB");
        var format = await CliRun.RunAsync(dir.Path, ["format", "v.img", "--size", "4MiB", "--journal-size", "24MiB"]);
        Assert.That(format.ExitCode, Is.EqualTo(0), format.AllOutput);
        Assert.That(format.Out.ToString(), Does.Contain("formatted: 8192 blocks of 512 bytes (4 MiB), crc32c tags, 33 spare slots, journal 24 MiB"));
        Assert.That(new FileInfo(dir.File("v.img")).Length - new FileInfo(dir.File("d.img")).Length, Is.EqualTo(22L << 20), "the file holds the larger ring");
        var dump = await CliRun.RunAsync(dir.Path, ["dump", "v.img"]);
        Assert.That(dump.Out.ToString(), Does.Contain($"{24L << 20} B"), dump.AllOutput);
        var scrub = await CliRun.RunAsync(dir.Path, ["scrub", "v.img"]);
        Assert.That(scrub.ExitCode, Is.EqualTo(0), "the volume opens (journal recovered from the larger ring) and verifies: " + scrub.AllOutput);

        foreach (var bad in new[] { "512KiB", "2GiB", "0", "lots", "-1MiB" })
        {
            var run = await CliRun.RunAsync(dir.Path, ["format", "x.img", "--size", "4MiB", "--journal-size", bad]);
            Assert.That(run.ExitCode, Is.EqualTo(2), run.AllOutput);
            Assert.That(run.Err.ToString(), Does.Contain("--journal-size"), run.AllOutput);
            Assert.That(File.Exists(dir.File("x.img")), Is.False, "nothing created");
        }
        var small = await CliRun.RunAsync(dir.Path, ["format", "x.img", "--size", "4MiB", "--journal-size", "512KiB"]);
        Assert.That(small.Err.ToString(), Does.Contain("--journal-size must be from 1 MiB to 1 GiB, got 512KiB"));
    }

    [Test]
    public async Task Format_without_a_block_size_makes_the_blocks_a_LUN_gets_when_serve_creates_it()
    {
        using var dir = new TempDir();
        var format = await CliRun.RunAsync(dir.Path, ["format", "v.img", "--size", "4MiB"]);
        Assert.That(format.ExitCode, Is.EqualTo(0), format.AllOutput);
        Assert.That(format.Out.ToString(), Does.Contain("formatted: 8192 blocks of 512 bytes (4 MiB)"));
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--data-dir", dir.Path, "--lun", "new.img", "--size", "4MiB"]);
        Assert.That(problems.Errors(), Is.Empty);
        Assert.That(config!.Targets[0].Luns[0].BlockSize, Is.EqualTo(512));
    }

    [Test]
    public async Task Format_refuses_a_file_holding_other_data_unless_forced()
    {
        using var dir = new TempDir();
        var path = dir.File("raw.img");
        var bytes = new byte[4 << 20];
        bytes[12345] = 0x42;
        await File.WriteAllBytesAsync(path, bytes);

        var run = await CliRun.RunAsync(dir.Path, ["format", "raw.img"]);
        Assert.That(run.ExitCode, Is.EqualTo(1));
        Assert.That(run.Err.ToString(), Does.Contain("holds data that is not an integrity volume; add --force"));
        Assert.That((await File.ReadAllBytesAsync(path))[12345], Is.EqualTo(0x42), "the refused format changed nothing");
    }

    [Test]
    public async Task Dump_lba_prints_where_the_block_data_and_tag_are_stored()
    {
        using var dir = new TempDir();
        var path = Path.Combine(dir.Path, "l.img");
        Assert.That((await CliRun.RunAsync(dir.Path, ["format", "l.img", "--size", "2MiB", "--block-size", "4096"])).ExitCode, Is.EqualTo(0));
        var unmapped = await CliRun.RunAsync(dir.Path, ["dump", "l.img", "--lba", "3"]);
        Assert.That(unmapped.Out.ToString().Trim(), Is.EqualTo("LBA 3: unmapped (reads as zeros; no data or tag stored)"));

        var block = new byte[4096];
        Random.Shared.NextBytes(block);
        using (var device = FileBlockDevice.Open(path))
        {
            await using var volume = await IntegrityVolume.OpenAsync(device, new OpenOptions(), Log);
            Assert.That((await volume.WriteAsync(3, block, fua: true)).IsOk);
        }
        var mapped = await CliRun.RunAsync(dir.Path, ["dump", "l.img", "--lba", "3"]);
        Assert.That(mapped.ExitCode, Is.EqualTo(0), mapped.AllOutput);
        var m = System.Text.RegularExpressions.Regex.Match(mapped.Out.ToString(), @"^LBA 3: data offset (\d+), tag offset (\d+) \(tag size 4 B, block size 4096 B\)");
        Assert.That(m.Success, Is.True, mapped.AllOutput);
        var stored = new byte[4096];
        await using (var fs = File.OpenRead(path))
        {
            fs.Position = long.Parse(m.Groups[1].Value);
            await fs.ReadExactlyAsync(stored);
        }
        Assert.That(stored, Is.EqualTo(block), "the printed data offset holds the block");
    }

    [Test]
    public async Task Dump_of_a_file_without_a_volume_exits_1()
    {
        using var dir = new TempDir();
        await File.WriteAllBytesAsync(dir.File("zero.img"), new byte[1 << 20]);
        var run = await CliRun.RunAsync(dir.Path, ["dump", "zero.img"]);
        Assert.That(run.ExitCode, Is.EqualTo(1));
        Assert.That(run.Err.ToString(), Does.Contain("does not hold an integrity volume"));
    }

    [Test]
    public async Task Offline_scrub_passes_a_clean_volume_and_lists_the_exact_corrupted_lba()
    {
        using var dir = new TempDir();
        var path = Path.Combine(dir.Path, "s.img");
        Assert.That((await CliRun.RunAsync(dir.Path, ["format", "s.img", "--size", "2MiB", "--block-size", "512"])).ExitCode, Is.EqualTo(0));

        // Write blocks 0..15 through the volume, then flip one byte of block 5's data in the file.
        long offset;
        using (var device = FileBlockDevice.Open(path))
        {
            await using var volume = await IntegrityVolume.OpenAsync(device, new OpenOptions(), Log);
            var data = new byte[16 * 512];
            Random.Shared.NextBytes(data);
            Assert.That((await volume.WriteAsync(0, data, fua: true)).IsOk);
            Assert.That((await volume.FlushAsync()).IsOk);
            offset = volume.LocateBlock(5)!.Value.DataOffset;
        }
        var clean = await CliRun.RunAsync(dir.Path, ["scrub", "s.img"]);
        Assert.That(clean.ExitCode, Is.EqualTo(0), clean.AllOutput);
        Assert.That(clean.Out.ToString(), Does.Contain(": 0 bad"));

        await using (var fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            fs.Position = offset + 100;
            int b = fs.ReadByte();
            fs.Position = offset + 100;
            fs.WriteByte((byte)(b ^ 0xFF));
        }
        var bad = await CliRun.RunAsync(dir.Path, ["scrub", "s.img"]);
        Assert.That(bad.ExitCode, Is.EqualTo(1), bad.AllOutput);
        Assert.That(bad.Out.ToString(), Does.Contain(": 1 bad").And.Contain("bad LBA 5"));
        Assert.That(bad.Out.ToString(), Does.Not.Contain("bad LBA 4").And.Not.Contain("bad LBA 6"));
    }

    [Test]
    public async Task Serve_refuses_to_format_a_lun_file_that_holds_other_data()
    {
        using var dir = new TempDir();
        var path = dir.File("foreign.img");
        var bytes = new byte[2 << 20];
        bytes[0] = 1;
        await File.WriteAllBytesAsync(path, bytes);

        var run = await CliRun.RunAsync(dir.Path, ["serve", "--listen", "127.0.0.1:0", "--data-dir", ".", "--lun", "foreign.img"]);

        Assert.That(run.ExitCode, Is.EqualTo(1));
        Assert.That(run.Out.ToString(), Does.Contain("Targets:0:Luns:0 (" + path + "): the file holds data that is not an integrity volume, so it is not formatted implicitly"));
        Assert.That((await File.ReadAllBytesAsync(path))[0], Is.EqualTo(1), "nothing was written to the foreign file");
    }

    [Test]
    public async Task Serve_leaves_a_blank_file_alone_when_FormatIfBlank_is_false()
    {
        using var dir = new TempDir();
        await File.WriteAllBytesAsync(dir.File("blank.img"), new byte[2 << 20]);
        var run = await CliRun.RunAsync(dir.Path,
            ["serve", "--listen", "127.0.0.1:0", "--data-dir", ".", "--lun", "blank.img", "--Targets:0:Luns:0:FormatIfBlank", "false"]);
        Assert.That(run.ExitCode, Is.EqualTo(1));
        Assert.That(run.Out.ToString(), Does.Contain("the file is blank (all zeros) and FormatIfBlank is false"));
    }
}
