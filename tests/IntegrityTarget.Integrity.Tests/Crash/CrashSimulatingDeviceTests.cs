using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Crash;

public class CrashSimulatingDeviceTests
{
    private const int S = 512;

    private static byte[] Fill(int sectors, byte value) => Enumerable.Repeat(value, sectors * S).ToArray();

    private static byte SectorByte(MemoryBlockDevice d, long sector)
    {
        var b = new byte[S];
        d.Read(sector * S, b);
        Assert.That(b.All(x => x == b[0]), Is.True, $"sector {sector} is not uniform (torn inside a sector)");
        return b[0];
    }

    private static (CrashSimulatingDevice Dev, MemoryBlockDevice Medium) Make(int sectors = 64)
    {
        var medium = new MemoryBlockDevice(sectors * S, "medium");
        return (new CrashSimulatingDevice(medium), medium);
    }

    [Test]
    public async Task Reads_see_pending_writes_and_discards_before_any_flush()
    {
        var (dev, medium) = Make();
        await dev.WriteAsync(0, Fill(4, 7), fua: false);
        await dev.DiscardAsync(S, S);
        var buf = new byte[4 * S];
        await dev.ReadAsync(0, buf);
        Assert.That(buf[..S].All(b => b == 7) && buf[S..(2 * S)].All(b => b == 0) && buf[(2 * S)..].All(b => b == 7), Is.True);
        Assert.That(SectorByte(medium, 0), Is.EqualTo(0), "the medium must not change before a flush");
        Assert.That(dev.PendingSectors, Is.EqualTo(4));
    }

    [Test]
    public async Task Drop_loses_everything_since_the_last_flush_but_keeps_flushed_and_fua_data()
    {
        var (dev, _) = Make();
        await dev.WriteAsync(0, Fill(1, 1), fua: false);
        await dev.FlushAsync();
        await dev.WriteAsync(S, Fill(1, 2), fua: true);
        await dev.WriteAsync(2 * S, Fill(1, 3), fua: false);
        await dev.WriteAsync(0, Fill(1, 4), fua: false);
        var img = dev.Crash(CrashMode.Drop, 1);
        Assert.That(new[] { SectorByte(img, 0), SectorByte(img, 1), SectorByte(img, 2) }, Is.EqualTo(new byte[] { 1, 2, 0 }));
        var all = dev.Crash(CrashMode.KeepAll, 1);
        Assert.That(new[] { SectorByte(all, 0), SectorByte(all, 1), SectorByte(all, 2) }, Is.EqualTo(new byte[] { 4, 2, 3 }));
    }

    [Test]
    public async Task Fua_write_supersedes_an_older_pending_version_which_can_no_longer_resurface()
    {
        var (dev, _) = Make();
        await dev.WriteAsync(0, Fill(2, 1), fua: false);
        await dev.WriteAsync(0, Fill(2, 2), fua: false);
        await dev.WriteAsync(0, Fill(1, 9), fua: true);
        await dev.FlushAsync();
        Assert.That(SectorByte(dev.Crash(CrashMode.Drop, 0), 0), Is.EqualTo(9), "a flush must not replay versions older than the FUA write");
        await dev.WriteAsync(0, Fill(2, 1), fua: false);
        await dev.WriteAsync(0, Fill(2, 2), fua: false);
        await dev.WriteAsync(0, Fill(1, 9), fua: true);
        for (ulong seed = 0; seed < 50; seed++)
            foreach (var mode in Enum.GetValues<CrashMode>())
                Assert.That(SectorByte(dev.Crash(mode, seed), 0), Is.EqualTo(9), $"mode {mode} seed {seed}");
    }

    [Test]
    public async Task Discard_is_pending_until_flushed_so_the_range_may_revert()
    {
        var (dev, _) = Make();
        await dev.WriteAsync(0, Fill(2, 5), fua: true);
        await dev.DiscardAsync(0, 2 * S);
        Assert.That(SectorByte(dev.Crash(CrashMode.Drop, 0), 0), Is.EqualTo(5));
        Assert.That(SectorByte(dev.Crash(CrashMode.KeepAll, 0), 0), Is.EqualTo(0));
        await dev.FlushAsync();
        Assert.That(SectorByte(dev.Crash(CrashMode.Drop, 0), 1), Is.EqualTo(0));
    }

    [Test]
    public async Task KeepRandom_is_reproducible_from_the_seed_and_keeps_about_p_of_the_sectors()
    {
        var (dev, _) = Make(1024);
        await dev.WriteAsync(0, Fill(1024, 3), fua: false);
        byte[] Pattern(ulong seed, double p)
        {
            var img = dev.Crash(CrashMode.KeepRandom, seed, p);
            return Enumerable.Range(0, 1024).Select(i => SectorByte(img, i)).ToArray();
        }
        Assert.That(Pattern(42, 0.5), Is.EqualTo(Pattern(42, 0.5)), "same seed, same image");
        Assert.That(Pattern(42, 0.5), Is.Not.EqualTo(Pattern(43, 0.5)), "another seed, another image");
        int kept = Pattern(7, 0.25).Count(b => b == 3);
        Assert.That(kept, Is.InRange(180, 330), "p = 0.25 of 1024 sectors");
    }

    [Test]
    public async Task TearWrites_keeps_part_of_a_pending_write_and_older_versions_may_survive()
    {
        var (dev, _) = Make(64);
        await dev.WriteAsync(0, Fill(32, 1), fua: false);
        await dev.WriteAsync(0, Fill(32, 2), fua: false);
        var seen = new HashSet<byte>();
        bool torn = false;
        for (ulong seed = 0; seed < 200; seed++)
        {
            var img = dev.Crash(CrashMode.TearWrites, seed);
            var secs = Enumerable.Range(0, 32).Select(i => SectorByte(img, i)).ToArray();
            seen.UnionWith(secs);
            torn |= secs.Distinct().Count() > 1;
            Assert.That(Enumerable.Range(0, 32).Select(i => SectorByte(dev.Crash(CrashMode.TearWrites, seed), i)), Is.EqualTo(secs), $"seed {seed} reproducible");
        }
        Assert.That(seen, Is.EquivalentTo(new byte[] { 0, 1, 2 }), "each sector ends old, first or second version");
        Assert.That(torn, Is.True, "some seeds tear the writes");
    }

    [Test]
    public async Task CrashAfterOperations_fails_every_call_after_the_budget_without_changing_state()
    {
        var (dev, _) = Make();
        dev.CrashAfterOperations(2);
        await dev.WriteAsync(0, Fill(1, 1), fua: false);
        await dev.FlushAsync();
        var ex = Assert.ThrowsAsync<IOException>(async () => await dev.WriteAsync(S, Fill(1, 2), fua: true));
        Assert.That(ex!.Message, Does.Contain("power loss"));
        Assert.ThrowsAsync<IOException>(async () => await dev.FlushAsync());
        Assert.ThrowsAsync<IOException>(async () => await dev.ReadAsync(0, new byte[S]));
        Assert.That(dev.PowerLost, Is.True);
        Assert.That(dev.OperationCount, Is.EqualTo(2));
        var img = dev.Crash(CrashMode.KeepAll, 0);
        Assert.That(new[] { SectorByte(img, 0), SectorByte(img, 1) }, Is.EqualTo(new byte[] { 1, 0 }));
    }

    [Test]
    public async Task Counters_and_record_let_a_test_enumerate_persistence_points()
    {
        var (medium, _) = (new MemoryBlockDevice(64 * S), 0);
        var dev = new CrashSimulatingDevice(medium, record: true);
        await dev.WriteAsync(0, Fill(1, 1), fua: false);
        await dev.WriteAsync(S, Fill(1, 2), fua: true);
        await dev.DiscardAsync(0, S);
        await dev.FlushAsync();
        Assert.That((dev.OperationCount, dev.WriteCount, dev.FuaWriteCount, dev.DiscardCount, dev.FlushCount), Is.EqualTo((4L, 2L, 1L, 1L, 1L)));
        var rec = dev.RecordedOperations;
        Assert.That(rec.Select(o => (o.Kind, o.Fua)), Is.EqualTo(new[]
        {
            (DeviceOperationKind.Write, false), (DeviceOperationKind.Write, true), (DeviceOperationKind.Discard, false), (DeviceOperationKind.Flush, false),
        }));

        // Replaying a prefix reproduces the state at that crash point.
        var replay = new CrashSimulatingDevice(new MemoryBlockDevice(64 * S));
        foreach (var op in rec.Take(2)) replay.Replay(op);
        var img = replay.Crash(CrashMode.Drop, 0);
        Assert.That(new[] { SectorByte(img, 0), SectorByte(img, 1) }, Is.EqualTo(new byte[] { 0, 2 }));
    }

    [Test]
    public async Task Allocation_reflects_pending_writes_and_discards()
    {
        var (dev, _) = Make(256);
        Assert.That(dev.GetAllocation(0).Allocated, Is.False);
        await dev.WriteAsync(8 * S, Fill(1, 1), fua: false);
        Assert.That(dev.GetAllocation(0), Is.EqualTo((false, 8L * S)), "the hole ends at the pending write");
        Assert.That(dev.GetAllocation(8 * S).Allocated, Is.True);
    }

    [Test]
    public void Misaligned_io_is_refused_with_a_message_naming_the_range()
    {
        var (dev, _) = Make();
        var ex = Assert.Throws<ArgumentException>(() => dev.WriteAsync(100, new byte[S], false));
        Assert.That(ex!.Message, Does.Contain("not aligned to 512-byte sectors").And.Contain("[100, 612)"));
    }
}
