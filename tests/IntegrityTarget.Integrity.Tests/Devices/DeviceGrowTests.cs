using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Devices;

/// <summary>Growing each device: new bytes read as zeros, I/O past the old end works, shrinking is refused,
/// and the crash simulator loses a grow that was never made durable (with everything written past the old end).</summary>
public class DeviceGrowTests
{
    private const int S = 512;
    private static byte[] Fill(int bytes, byte value) => Enumerable.Repeat(value, bytes).ToArray();

    private static async Task GrowsAndServesTheNewRange(IBlockDevice dev)
    {
        long old = dev.Length;
        Assert.That(dev.CanGrow, Is.True);
        await dev.WriteAsync(old - S, Fill(S, 7), fua: false);
        Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await dev.WriteAsync(old, Fill(S, 1), fua: false), "past the end before the grow");

        await dev.GrowAsync(old * 3);
        Assert.That(dev.Length, Is.EqualTo(old * 3));
        var buf = new byte[2 * S];
        await dev.ReadAsync(old - S, buf);
        Assert.That(buf[..S].All(b => b == 7) && buf[S..].All(b => b == 0), Is.True, "old data kept, new bytes read as zeros");
        await dev.WriteAsync(old * 3 - S, Fill(S, 9), fua: true);
        await dev.ReadAsync(old * 3 - 2 * S, buf);
        Assert.That(buf[..S].All(b => b == 0) && buf[S..].All(b => b == 9), Is.True);

        await dev.GrowAsync(old * 3); // the same length: nothing to do
        Assert.That(dev.Length, Is.EqualTo(old * 3));
        var shrink = Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await dev.GrowAsync(old));
        Assert.That(shrink!.Message, Does.Contain("cannot shrink"));
        Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await dev.GrowAsync(old * 4 + 100));
        Assert.That(dev.Length, Is.EqualTo(old * 3), "a refused grow changes nothing");
    }

    [Test]
    public async Task File_device_grows_with_ftruncate_and_the_new_size_survives_reopening()
    {
        var dir = Directory.CreateTempSubdirectory("it-grow-");
        try
        {
            var path = Path.Combine(dir.FullName, "lun.img");
            using (var dev = FileBlockDevice.CreateSparse(path, 1 << 20))
            {
                await GrowsAndServesTheNewRange(dev);
                Assert.That(dev.GetAllocation(2 << 20).Allocated, Is.False, "the new range is a hole until written");
            }
            Assert.That(new FileInfo(path).Length, Is.EqualTo(3L << 20));
            using var again = FileBlockDevice.Open(path);
            Assert.That(again.Length, Is.EqualTo(3L << 20));
        }
        finally { dir.Delete(recursive: true); }
    }

    [Test]
    public Task Memory_device_grows() => GrowsAndServesTheNewRange(new MemoryBlockDevice(64 * S));

    [Test]
    public async Task Crash_simulator_grow_is_durable_when_it_returns()
    {
        var medium = new MemoryBlockDevice(64 * S);
        var dev = new CrashSimulatingDevice(medium);
        await GrowsAndServesTheNewRange(dev);
        Assert.That(dev.DurableLength, Is.EqualTo(192 * S));
        foreach (var mode in Enum.GetValues<CrashMode>())
            for (ulong seed = 0; seed < 8; seed++)
                Assert.That(dev.Crash(mode, seed).Length, Is.EqualTo(192L * S), $"{mode} seed {seed}");
    }

    [Test]
    public async Task A_grow_not_yet_flushed_may_be_lost_with_everything_written_past_the_old_end()
    {
        var dev = new CrashSimulatingDevice(new MemoryBlockDevice(64 * S));
        dev.GrowWithoutFlush(128 * S);
        Assert.That((dev.Length, dev.DurableLength), Is.EqualTo((128L * S, 64L * S)));
        await dev.WriteAsync(100 * S, Fill(S, 5), fua: false);
        var buf = new byte[2 * S];
        await dev.ReadAsync(99 * S, buf);
        Assert.That(buf[..S].All(b => b == 0) && buf[S..].All(b => b == 5), Is.True, "reads see the pending grow and the write past the old end");

        Assert.That(dev.Crash(CrashMode.Drop, 0).Length, Is.EqualTo(64L * S), "Drop loses the grow");
        var kept = dev.Crash(CrashMode.KeepAll, 0);
        Assert.That(kept.Length, Is.EqualTo(128L * S));
        var sector = new byte[S];
        kept.Read(100 * S, sector);
        Assert.That(sector.All(b => b == 5), Is.True);
        var lengths = Enumerable.Range(0, 64).Select(seed => dev.Crash(CrashMode.TearWrites, (ulong)seed).Length).ToHashSet();
        Assert.That(lengths, Is.EquivalentTo(new[] { 64L * S, 128L * S }), "torn crashes leave the old or the new length, nothing between");

        await dev.FlushAsync();
        Assert.That(dev.DurableLength, Is.EqualTo(128L * S));
        Assert.That(dev.Crash(CrashMode.Drop, 0).Length, Is.EqualTo(128L * S), "a flush makes the grow durable");
    }

    [Test]
    public async Task A_fua_write_past_the_old_end_makes_the_grow_durable()
    {
        var dev = new CrashSimulatingDevice(new MemoryBlockDevice(64 * S));
        dev.GrowWithoutFlush(128 * S);
        await dev.WriteAsync(10 * S, Fill(S, 1), fua: true);
        Assert.That(dev.DurableLength, Is.EqualTo(64L * S), "a FUA write inside the old length says nothing about the size");
        await dev.WriteAsync(120 * S, Fill(S, 2), fua: true);
        var img = dev.Crash(CrashMode.Drop, 0);
        Assert.That(img.Length, Is.EqualTo(128L * S));
        var sector = new byte[S];
        img.Read(120 * S, sector);
        Assert.That(sector.All(b => b == 2), Is.True);
    }

    [Test]
    public async Task Power_lost_between_truncate_and_fsync_leaves_either_length()
    {
        var medium = new MemoryBlockDevice(64 * S);
        var dev = new CrashSimulatingDevice(medium, record: true);
        await dev.WriteAsync(0, Fill(S, 3), fua: false);
        dev.CrashAfterOperations(2); // the write above is op 1; the grow's length change succeeds, its flush does not
        await dev.WriteAsync(S, Fill(S, 4), fua: false);
        var ex = Assert.ThrowsAsync<IOException>(async () => await dev.GrowAsync(256 * S));
        Assert.That(ex!.Message, Does.Contain("power loss"));
        Assert.That(dev.DurableLength, Is.EqualTo(64L * S));
        Assert.That(dev.Crash(CrashMode.Drop, 0).Length, Is.EqualTo(64L * S));
        Assert.That(dev.Crash(CrashMode.KeepAll, 0).Length, Is.EqualTo(256L * S));
        Assert.That(dev.RecordedOperations.Select(o => o.Kind), Is.EqualTo(new[] { DeviceOperationKind.Write, DeviceOperationKind.Write, DeviceOperationKind.Grow }));

        // Replaying the record of a complete grow (length, then flush) rebuilds the grown device.
        var full = new CrashSimulatingDevice(new MemoryBlockDevice(64 * S), record: true);
        await full.GrowAsync(96 * S);
        var replay = new CrashSimulatingDevice(new MemoryBlockDevice(64 * S));
        foreach (var op in full.RecordedOperations) replay.Replay(op);
        Assert.That((replay.Length, replay.DurableLength), Is.EqualTo((96L * S, 96L * S)));
    }
}
