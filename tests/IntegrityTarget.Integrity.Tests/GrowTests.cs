using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>Online grow (issue 14 item 3): new segments at the device's end, superblock copies rewritten in turn,
/// old or new size after a crash at any step, every block readable and verified.</summary>
public class GrowTests
{
    private const int Bs = 4096;

    private static async Task<byte[]> ReadAll(IntegrityVolume v)
    {
        var all = new byte[(int)v.BlockCount * Bs];
        var r = await v.ReadAsync(0, all);
        Assert.That(r.IsOk, $"every block reads and verifies: {r}");
        return all;
    }

    [Test]
    public async Task A_grown_volume_keeps_its_data_reads_zeros_in_the_new_range_and_serves_it_after_reopening()
    {
        var sink = new CapturingSink();
        using var dev = T.Memory(256);
        await using (var v = await IntegrityVolume.FormatAsync(dev, T.Format(), sink.Logger()))
        {
            Assert.That(v.CanGrow, Is.True);
            await T.WriteOk(v, 0, T.Pattern(0, 256, Bs, 1));
            await T.WriteOk(v, 250, T.Pattern(250, 3, Bs, 2));
            long before = dev.Length;
            var r = await v.GrowAsync(1000);
            Assert.That(r.IsOk, r.ToString());
            Assert.That(v.BlockCount, Is.EqualTo(1000UL));
            Assert.That(dev.Length, Is.GreaterThan(before), "the device grew");
            var all = await ReadAll(v);
            Assert.That(all.AsSpan(0, 250 * Bs).ToArray(), Is.EqualTo(T.Pattern(0, 250, Bs, 1)));
            Assert.That(all.AsSpan(250 * Bs, 3 * Bs).ToArray(), Is.EqualTo(T.Pattern(250, 3, Bs, 2)));
            Assert.That(all.AsSpan(256 * Bs).ContainsAnyExcept((byte)0), Is.False, "the new range reads as zeros");
            Assert.That(await v.GetLbaStatusAsync(256), Is.EqualTo(new LbaExtent(256, 744, false)));
            await T.WriteOk(v, 990, T.Pattern(990, 10, Bs, 3));
            await T.WriteOk(v, 300, T.Pattern(300, 100, Bs, 4));
            await T.WriteOk(v, 302, T.Pattern(302, 1, Bs, 5)); // journaled, into a slot of the new segment
        }
        Assert.That(IntegrityVolume.Dump(dev), Does.Contain("superblock A:      ok, sequence 2").And.Contain("superblock B:      ok, sequence 2").And.Contain("segment:"));
        await using (var v = await IntegrityVolume.OpenAsync(dev, T.Open(), sink.Logger()))
        {
            Assert.That(v.BlockCount, Is.EqualTo(1000UL));
            Assert.That(await T.ReadOk(v, 990, 10), Is.EqualTo(T.Pattern(990, 10, Bs, 3)));
            Assert.That(await T.ReadOk(v, 301, 1), Is.EqualTo(T.Pattern(301, 1, Bs, 4)));
            Assert.That(await T.ReadOk(v, 302, 1), Is.EqualTo(T.Pattern(302, 1, Bs, 5)));
            Assert.That(await T.ReadOk(v, 250, 3), Is.EqualTo(T.Pattern(250, 3, Bs, 2)));
            Assert.That((await v.GrowAsync(2000)).IsOk, "and again: a third segment");
            Assert.That(await T.ReadOk(v, 990, 10), Is.EqualTo(T.Pattern(990, 10, Bs, 3)));
        }
        Assert.That(sink.Failures, Is.Empty);
    }

    [Test]
    public async Task The_partial_last_chunk_fills_up_with_blocks_that_read_as_zeros_and_verify()
    {
        using var dev = T.Memory(100);
        await using var v = await IntegrityVolume.FormatAsync(dev, new FormatOptions { BlockSize = Bs, LogicalBlocks = 100 }, new CapturingSink().Logger());
        await T.WriteOk(v, 96, T.Pattern(96, 4, Bs, 1));  // the whole (short) last chunk: a slot of 32 blocks
        await T.WriteOk(v, 97, T.Pattern(97, 1, Bs, 2));  // journaled into it
        Assert.That((await v.FlushAsync()).IsOk);
        Assert.That((await v.GrowAsync(120)).IsOk, "within the last chunk: no new segment");
        Assert.That(await T.ReadOk(v, 96, 24), Is.EqualTo(T.Pattern(96, 1, Bs, 1).Concat(T.Pattern(97, 1, Bs, 2)).Concat(T.Pattern(98, 2, Bs, 1)).Concat(new byte[20 * Bs]).ToArray()));
        Assert.That((await v.GrowAsync(200)).IsOk);
        Assert.That(await T.ReadOk(v, 96, 104), Is.EqualTo(T.Pattern(96, 1, Bs, 1).Concat(T.Pattern(97, 1, Bs, 2)).Concat(T.Pattern(98, 2, Bs, 1)).Concat(new byte[100 * Bs]).ToArray()));
    }

    [Test]
    public async Task Shrinking_the_same_size_and_a_device_that_cannot_grow_are_refused_with_a_reason()
    {
        using var mem = T.Memory(256);
        await using var v = await IntegrityVolume.FormatAsync(mem, T.Format(), new CapturingSink().Logger());
        var shrink = await v.GrowAsync(100);
        Assert.That((shrink.Status, shrink.Detail), Is.EqualTo((VolumeStatus.Unsupported, "mem: cannot shrink from 256 to 100 blocks: shrinking a volume is not supported (it would discard the blocks past the new end)")));
        Assert.That((await v.GrowAsync(256)).Detail, Is.EqualTo("mem: the volume already has 256 blocks"));
        Assert.That(v.BlockCount, Is.EqualTo(256UL));

        using var fixedMem = T.Memory(256);
        var fixedDev = new ForwardingDevice(fixedMem);
        await using var w = await IntegrityVolume.FormatAsync(fixedDev, T.Format(), new CapturingSink().Logger());
        Assert.That(w.CanGrow, Is.False);
        var r = await w.GrowAsync(1000);
        Assert.That(r.Status, Is.EqualTo(VolumeStatus.Unsupported));
        Assert.That(r.Detail, Does.Contain("cannot grow").And.Contain("bytes are needed for 1000 blocks"));
    }

    [Test]
    public async Task Commands_running_during_a_grow_complete_and_stay_verified()
    {
        using var dev = T.Memory(512);
        await using var v = await IntegrityVolume.FormatAsync(dev, T.Format(), new CapturingSink().Logger());
        await T.WriteOk(v, 0, T.Pattern(0, 512, Bs, 1));
        using var stop = new CancellationTokenSource();
        int done = 0;
        var load = Task.Run(async () =>
        {
            var rnd = new Random(3);
            while (!stop.IsCancellationRequested)
            {
                ulong lba = (ulong)rnd.Next(0, 500);
                await T.WriteOk(v, lba, T.Pattern(lba, 4, Bs, 7));
                Assert.That(await T.ReadOk(v, lba, 4), Is.EqualTo(T.Pattern(lba, 4, Bs, 7)));
                Interlocked.Increment(ref done);
            }
        });
        async Task WaitFor(int n) { while (Volatile.Read(ref done) < n && !load.IsCompleted) await Task.Delay(1); }
        for (ulong size = 600; size <= 1600; size += 500)
        {
            await WaitFor(Volatile.Read(ref done) + 5);
            Assert.That((await v.GrowAsync(size)).IsOk);
        }
        await WaitFor(Volatile.Read(ref done) + 5);
        stop.Cancel();
        await load;
        Assert.That(done, Is.GreaterThan(15));
        await ReadAll(v);
    }

    [Test]
    public async Task A_file_backed_volume_grows_its_file()
    {
        string path = Path.Combine(Path.GetTempPath(), $"itv-grow-{Guid.NewGuid():N}.img");
        try
        {
            using (var dev = FileBlockDevice.CreateSparse(path, IntegrityVolume.DeviceBytesFor(256, Bs, TagAlgorithm.Crc32c)))
            await using (var v = await IntegrityVolume.FormatAsync(dev, T.Format(), new CapturingSink().Logger()))
            {
                await T.WriteOk(v, 10, T.Pattern(10, 50, Bs, 1));
                Assert.That((await v.GrowAsync(4096)).IsOk);
                await T.WriteOk(v, 4000, T.Pattern(4000, 50, Bs, 2));
            }
            Assert.That(new FileInfo(path).Length, Is.GreaterThan(IntegrityVolume.DeviceBytesFor(4000, Bs, TagAlgorithm.Crc32c)), "the file grew to hold the new segment");
            using (var dev = FileBlockDevice.Open(path))
            await using (var v = await IntegrityVolume.OpenAsync(dev, T.Open(), new CapturingSink().Logger()))
            {
                Assert.That(v.BlockCount, Is.EqualTo(4096UL));
                Assert.That(await T.ReadOk(v, 4000, 50), Is.EqualTo(T.Pattern(4000, 50, Bs, 2)));
                Assert.That(await T.ReadOk(v, 10, 50), Is.EqualTo(T.Pattern(10, 50, Bs, 1)));
            }
        }
        finally { File.Delete(path); }
    }

    /// <summary>
    /// Every device call of a grow, and of the writes around it, is a crash point: the power is cut there in
    /// every mode (a grow of the device not yet made durable may be lost too), the volume reopened. It has the
    /// old or the new size, every block reads and verifies, durable data survives, and the new range reads as
    /// zeros or as what was durably written there.
    /// </summary>
    [TestCase(4096, TagAlgorithm.Crc32c)]
    [TestCase(512, TagAlgorithm.HmacSha256)]
    public async Task A_crash_at_any_step_of_a_grow_leaves_the_old_or_the_new_size_with_every_block_verified(int bs, TagAlgorithm alg)
    {
        ulong oldBlocks = (ulong)((1 << 20) / bs), newBlocks = oldBlocks * 3 + 7;
        var key = alg == TagAlgorithm.HmacSha256 ? T.Key : default;
        var open = new OpenOptions { Key = key, IdleHomeMs = Timeout.Infinite };
        var dev = new CrashSimulatingDevice(new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor(oldBlocks, bs, alg), "grow"), record: true);
        var v = await IntegrityVolume.FormatAsync(dev, new FormatOptions { BlockSize = bs, Algorithm = alg, Key = key, LogicalBlocks = oldBlocks, Tuning = open }, Serilog.Core.Logger.None);
        int chunk = 128 * 1024 / bs;
        Assert.That((await v.WriteAsync(0, T.Pattern(0, chunk, bs, 1), fua: true)).IsOk);         // durable, redirect-on-write
        Assert.That((await v.WriteAsync(5, T.Pattern(5, 2, bs, 2), fua: true)).IsOk);             // durable, journaled
        Assert.That((await v.WriteAsync((ulong)chunk, T.Pattern((ulong)chunk, chunk, bs, 3), fua: false)).IsOk); // not durable
        long growFrom = dev.OperationCount;
        Assert.That((await v.GrowAsync(newBlocks)).IsOk);
        long growTo = dev.OperationCount;
        Assert.That((await v.WriteAsync(newBlocks - 10, T.Pattern(newBlocks - 10, 10, bs, 4), fua: true)).IsOk); // durable, new range
        long after = dev.OperationCount;
        await v.AbandonAsync();
        var ops = dev.RecordedOperations;
        Assert.That(ops.Skip((int)growFrom).Take((int)(growTo - growFrom)).Select(o => o.Kind), Does.Contain(DeviceOperationKind.Grow));

        int states = 0, grown = 0;
        var replay = new CrashSimulatingDevice(new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor(oldBlocks, bs, alg), "replay"));
        for (long k = 0; k < ops.Count; k++)
        {
            if (k >= growFrom - 1 && k <= after)
                foreach (var mode in Enum.GetValues<CrashMode>())
                {
                    var img = replay.Crash(mode, (ulong)(k * 4 + (long)mode));
                    await using var w = await IntegrityVolume.OpenAsync(img, open, Serilog.Core.Logger.None);
                    string at = $"crash after {k} of {ops.Count} operations (grow is {growFrom}..{growTo}), mode {mode}";
                    Assert.That(w.BlockCount, Is.EqualTo(oldBlocks).Or.EqualTo(newBlocks), at);
                    if (k >= growTo) Assert.That(w.BlockCount, Is.EqualTo(newBlocks), $"{at}: the grow had completed");
                    var all = new byte[(int)w.BlockCount * bs];
                    var r = await w.ReadAsync(0, all);
                    Assert.That(r.IsOk, $"{at}: every block reads and verifies: {r}");
                    Assert.That(all.AsSpan(0, 5 * bs).ToArray(), Is.EqualTo(T.Pattern(0, 5, bs, 1)), at);
                    Assert.That(all.AsSpan(5 * bs, 2 * bs).ToArray(), Is.EqualTo(T.Pattern(5, 2, bs, 2)), at);
                    if (w.BlockCount == newBlocks)
                    {
                        grown++;
                        var tail = all.AsSpan((int)(newBlocks - 10) * bs, 10 * bs).ToArray();
                        if (k >= after) Assert.That(tail, Is.EqualTo(T.Pattern(newBlocks - 10, 10, bs, 4)), $"{at}: durable write in the new range");
                        else Assert.That(tail, Is.EqualTo(new byte[10 * bs]).Or.EqualTo(T.Pattern(newBlocks - 10, 10, bs, 4)), at);
                        Assert.That(all.AsSpan((int)oldBlocks * bs, (int)(newBlocks - 10 - oldBlocks) * bs).ContainsAnyExcept((byte)0), Is.False, $"{at}: the rest of the new range is zeros");
                    }
                    states++;
                }
            replay.Replay(ops[(int)k]);
        }
        TestContext.Out.WriteLine($"{states} crash states, {grown} of them with the new size");
        Assert.That(grown, Is.GreaterThan(0));
        Assert.That(states - grown, Is.GreaterThan(0));
    }
}
