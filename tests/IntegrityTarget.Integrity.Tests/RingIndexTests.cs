using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using NUnit.Framework;
using Serilog.Events;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// Journaled small writes kept as index entries (ring position, tag), not images (docs: write path 3, "Reads"): reads
/// and home copies read the images back from the ring and check them against the entry's tag.
/// </summary>
public class RingIndexTests
{
    private static int ErrorsAt(CapturingSink sink, ulong lba) =>
        sink.Events.Count(e => e.Level == LogEventLevel.Error && e.Properties.ContainsKey("Lba") && CapturingSink.LbaOf(e) == lba);

    private static FormatOptions SmallRing(int bs, TagAlgorithm alg) =>
        new() { BlockSize = bs, Algorithm = alg, Key = alg == TagAlgorithm.HmacSha256 ? T.Key : default, JournalBytes = IntegrityVolume.MinJournalBytes };

    private static async Task WaitForCommits(IntegrityVolume v, long count)
    {
        for (int i = 0; i < 1000 && v.Counters.JournalCommits < count; i++) await Task.Delay(5);
        Assert.That(v.Counters.JournalCommits, Is.GreaterThanOrEqualTo(count), "the committer wrote the transaction");
    }

    [TestCase(4096, TagAlgorithm.Crc32c)]
    [TestCase(512, TagAlgorithm.XxHash64)]
    [TestCase(512, TagAlgorithm.HmacSha256)]
    public async Task ARingSectorDamagedUnderAnIndexedBlockFailsItsReadsAndDoesNotGoHomeWithAFreshTag(int bs, TagAlgorithm alg)
    {
        int bpc = (128 << 10) / bs;
        var sink = new CapturingSink();
        using var dev = new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor((ulong)(4 * bpc), bs, alg), "mem");
        await using (var f = await IntegrityVolume.FormatAsync(dev, T.Format(bs, alg), sink.Logger()))
            await T.WriteOk(f, 0, T.Pattern(0, bpc, bs, 1), fua: true); // chunk 0 mapped: small writes into it are journaled
        var v = await IntegrityVolume.OpenAsync(dev, T.Open(alg) with { IdleHomeMs = Timeout.Infinite }, sink.Logger());
        await T.WriteOk(v, 3, T.Pattern(3, 2, bs, 2));
        await WaitForCommits(v, 1);
        Assert.That(v.OverlayCounts, Is.EqualTo((2, 0)), "once written to the ring, the blocks are held as index entries, not images");
        long at = v.JournaledImageOffset(4) ?? throw new AssertionException("LBA 4 is not indexed in the ring");
        T.Flip(dev, at + 100); // the ring sector under LBA 4's image

        var buf = new byte[8 * bs];
        var r = await v.ReadAsync(0, buf);
        Assert.That((r.Status, r.Lba, r.GoodBlocks), Is.EqualTo((VolumeStatus.IntegrityError, 4UL, 4UL)), "the damaged ring image fails its read, at its LBA");
        Assert.That(buf.AsSpan(0, 4 * bs).ToArray(), Is.EqualTo(T.Pattern(0, 3, bs, 1).Concat(T.Pattern(3, 1, bs, 2)).ToArray()), "the good blocks before it, LBA 3 from the ring");
        Assert.That(await T.ReadOk(v, 3, 1), Is.EqualTo(T.Pattern(3, 1, bs, 2)));
        Assert.That(ErrorsAt(sink, 4), Is.EqualTo(1), "logged once");

        Assert.That((await v.FlushAsync()).IsOk, "the home copy does not fail the volume");
        Assert.That(v.JournaledImageOffset(4), Is.Null, "gone home");
        r = await v.ReadAsync(4, new byte[bs]);
        Assert.That((r.Status, r.Lba), Is.EqualTo((VolumeStatus.IntegrityError, 4UL)), "at home it still fails: it did not get a tag computed over the damaged bytes");
        Assert.That(await T.ReadOk(v, 3, 1), Is.EqualTo(T.Pattern(3, 1, bs, 2)), "its undamaged neighbour went home");
        Assert.That(ErrorsAt(sink, 4), Is.EqualTo(1), "still one event for that LBA (the home copy's and later reads' are repeats)");
        await v.DisposeAsync();

        await using var v2 = await IntegrityVolume.OpenAsync(dev, T.Open(alg), sink.Logger());
        r = await v2.ReadAsync(4, new byte[bs]);
        Assert.That((r.Status, r.Lba), Is.EqualTo((VolumeStatus.IntegrityError, 4UL)), "and after a reopen");
        Assert.That(await T.ReadOk(v2, 0, 4), Is.EqualTo(T.Pattern(0, 3, bs, 1).Concat(T.Pattern(3, 1, bs, 2)).ToArray()));
        var scrub = await v2.ScrubAsync(new ScrubOptions());
        Assert.That(scrub.BadLbas, Is.EqualTo(new[] { 4UL }));
    }

    [Test]
    public async Task ScrubReadsIndexedBlocksFromTheRingAndFindsADamagedOne()
    {
        const int bs = 512, bpc = 256;
        var sink = new CapturingSink();
        using var dev = new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor(2 * bpc, bs, TagAlgorithm.Crc32c), "mem");
        await using (var f = await IntegrityVolume.FormatAsync(dev, T.Format(bs), sink.Logger()))
            await T.WriteOk(f, 0, T.Pattern(0, 2 * bpc, bs, 1), fua: true);
        await using var v = await IntegrityVolume.OpenAsync(dev, T.Open() with { IdleHomeMs = Timeout.Infinite }, sink.Logger());
        await T.WriteOk(v, 300, T.Pattern(300, 8, bs, 2));
        await WaitForCommits(v, 1);
        T.Flip(dev, v.JournaledImageOffset(305)!.Value + 7);
        var scrub = await v.ScrubAsync(new ScrubOptions());
        Assert.That(scrub.Mismatches, Is.EqualTo(1));
        Assert.That(scrub.BadLbas, Is.EqualTo(new[] { 305UL }), "the indexed block is checked from the ring, not only the slot's older version");
        Assert.That(v.JournaledImageOffset(305), Is.Not.Null, "scrub reads; it does not home");
    }

    /// <summary>Small random writes into a small ring (background and blocking checkpoints, idle home copies between
    /// bursts), each followed by a read of a random range compared with a model: reads return the newest data whether
    /// it is in memory (queued), only in the ring (indexed) or home; and after a reopen.</summary>
    [TestCase(512, TagAlgorithm.Crc32c, false)]
    [TestCase(4096, TagAlgorithm.HmacSha256, false)]
    [TestCase(512, TagAlgorithm.Crc32c, true)]
    public async Task ReadAfterWriteReturnsTheNewestDataAcrossCheckpointsAndIdleHomeCopies(int bs, TagAlgorithm alg, bool keepImages)
    {
        int bpc = (128 << 10) / bs, chunks = 6, blocks = chunks * bpc;
        var sink = new CapturingSink();
        using var dev = new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor((ulong)blocks, bs, alg, IntegrityVolume.MinJournalBytes), "mem");
        await using (var f = await IntegrityVolume.FormatAsync(dev, SmallRing(bs, alg), sink.Logger()))
            await T.WriteOk(f, 0, T.Pattern(0, blocks, bs, 1), fua: true);
        var ver = Enumerable.Repeat(1, blocks).ToArray();
        var rnd = new Random(12);
        byte[] Expected(int lba, int n) => Enumerable.Range(lba, n).SelectMany(b => T.Pattern((ulong)b, 1, bs, ver[b])).ToArray();
        // keepImages: what a device whose reads are not cheap (RBD) gets: images in memory until home, no ring reads.
        var v = await IntegrityVolume.OpenAsync(dev, T.Open(alg) with { IdleHomeMs = 5, KeepJournaledImages = keepImages }, sink.Logger());
        try
        {
            for (int i = 0; i < 1500; i++)
            {
                int n = rnd.Next(1, 9), lba = rnd.Next(0, blocks - n);
                int version = i + 2;
                var data = new byte[n * bs];
                for (int k = 0; k < n; k++) T.Pattern((ulong)(lba + k), 1, bs, version).CopyTo(data, k * bs);
                await T.WriteOk(v, (ulong)lba, data, fua: rnd.Next(50) == 0);
                for (int k = 0; k < n; k++) ver[lba + k] = version;
                int rn = rnd.Next(1, 33), rl = rnd.Next(0, blocks - rn);
                if (rnd.Next(4) == 0) { rl = lba; rn = n; } // the blocks just written
                Assert.That(await T.ReadOk(v, (ulong)rl, rn), Is.EqualTo(Expected(rl, rn)), $"step {i}: read of {rn} blocks at {rl}");
                if (rnd.Next(300) == 0) await Task.Delay(30); // idle: home copies
            }
            var st = v.JournalStats;
            Assert.That(st.BackgroundCheckpoints + st.BlockingCheckpoints, Is.GreaterThan(0), "the ring wrapped");
            Assert.That(st.ReadRingBlocks, keepImages ? Is.Zero : Is.GreaterThan(0), "reads found blocks only in the ring");
            Assert.That(st.HomeRingReads, keepImages ? Is.Zero : Is.GreaterThan(0), "home copies read images back from the ring");
            Assert.That(await T.ReadOk(v, 0, blocks), Is.EqualTo(Expected(0, blocks)));
        }
        finally { await v.DisposeAsync(); }
        await using var v2 = await IntegrityVolume.OpenAsync(dev, T.Open(alg), sink.Logger());
        Assert.That(await T.ReadOk(v2, 0, blocks), Is.EqualTo(Expected(0, blocks)), "after a reopen");
        Assert.That(sink.Failures, Is.Empty);
    }

    /// <summary>One writer (small writes, flushes now and then: durable points, so home copies, and checkpoints of a small
    /// ring) and two readers of random blocks: every block read is whole, its own LBA's, and of a version no older than the
    /// last write of it completed before the read started and no newer than the last started before it ended.</summary>
    [Test]
    public async Task ConcurrentReadsDuringHomeCopiesSeeWholeBlocksOfAVersionInTheirWindow()
    {
        const int bs = 512, bpc = 256, chunks = 4, blocks = chunks * bpc;
        var sink = new CapturingSink();
        using var dev = new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor(blocks, bs, TagAlgorithm.Crc32c, IntegrityVolume.MinJournalBytes), "mem");
        await using (var f = await IntegrityVolume.FormatAsync(dev, SmallRing(bs, TagAlgorithm.Crc32c), sink.Logger()))
            await T.WriteOk(f, 0, T.Pattern(0, blocks, bs, 1), fua: true);
        await using var v = await IntegrityVolume.OpenAsync(dev, T.Open() with { IdleHomeMs = 2 }, sink.Logger());
        var started = Enumerable.Repeat(1, blocks).ToArray();
        var completed = Enumerable.Repeat(1, blocks).ToArray();
        using var stop = new CancellationTokenSource();
        int checkedBlocks = 0;

        async Task Writer()
        {
            var rnd = new Random(3);
            try
            {
                for (int i = 0; i < 4000; i++)
                {
                    int n = rnd.Next(1, 9), lba = rnd.Next(0, blocks - n), version = i + 2;
                    var data = new byte[n * bs];
                    for (int k = 0; k < n; k++) { T.Pattern((ulong)(lba + k), 1, bs, version).CopyTo(data, k * bs); Volatile.Write(ref started[lba + k], version); }
                    await T.WriteOk(v, (ulong)lba, data);
                    for (int k = 0; k < n; k++) Volatile.Write(ref completed[lba + k], version);
                    if (rnd.Next(40) == 0) Assert.That((await v.FlushAsync()).IsOk);
                    if (rnd.Next(500) == 0) await Task.Delay(10);
                }
            }
            finally { stop.Cancel(); }
        }

        async Task Reader(int seed)
        {
            var rnd = new Random(seed);
            while (!stop.IsCancellationRequested)
            {
                int n = rnd.Next(1, 17), lba = rnd.Next(0, blocks - n);
                var lo = new int[n];
                for (int k = 0; k < n; k++) lo[k] = Volatile.Read(ref completed[lba + k]);
                var buf = new byte[n * bs];
                var r = await v.ReadAsync((ulong)lba, buf);
                Assert.That(r.Status, Is.EqualTo(VolumeStatus.Ok), r.ToString());
                for (int k = 0; k < n; k++)
                {
                    int hi = Volatile.Read(ref started[lba + k]);
                    var blk = buf.AsSpan(k * bs, bs);
                    Assert.That(BitConverter.ToUInt64(blk), Is.EqualTo((ulong)(lba + k)), "the block's own LBA");
                    int version = BitConverter.ToInt32(blk[8..]);
                    Assert.That(version, Is.InRange(lo[k], hi), $"LBA {lba + k}");
                    Assert.That(blk.SequenceEqual(T.Pattern((ulong)(lba + k), 1, bs, version)), Is.True, $"LBA {lba + k} whole, version {version}");
                    Interlocked.Increment(ref checkedBlocks);
                }
            }
        }

        await Task.WhenAll(Task.Run(Writer), Task.Run(() => Reader(5)), Task.Run(() => Reader(7)));
        var st = v.JournalStats;
        Assert.That(st.HomeRingReads, Is.GreaterThan(0), "home copies ran (from the ring)");
        Assert.That(st.ReadRingBlocks, Is.GreaterThan(0), "reads took blocks from the ring");
        Assert.That(checkedBlocks, Is.GreaterThan(1000));
        Assert.That(sink.Failures, Is.Empty);
    }
}
