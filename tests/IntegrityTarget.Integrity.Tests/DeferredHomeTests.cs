using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using NUnit.Framework;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// Journaled (partial-chunk) writes in write-back mode: their transactions are written without FUA and
/// the blocks go home only at a durable point (flush, FUA, remap commit, idle, checkpoint).
/// </summary>
public class DeferredHomeTests
{
    private const int Bs = 4096;

    private static async Task<(MemoryBlockDevice Dev, IntegrityVolume V, CapturingSink Sink)> Mapped(int idleHomeMs)
    {
        var sink = new CapturingSink();
        var dev = T.Memory(256);
        await using (var f = await IntegrityVolume.FormatAsync(dev, T.Format(), sink.Logger()))
            await T.WriteOk(f, 0, T.Pattern(0, 32, Bs, 1), fua: true); // chunk 0 mapped: later small writes are journaled
        var v = await IntegrityVolume.OpenAsync(dev, new OpenOptions { WriteBack = true, IdleHomeMs = idleHomeMs }, sink.Logger());
        return (dev, v, sink);
    }

    private static async Task<byte[]> Home(MemoryBlockDevice dev, IntegrityVolume v, ulong lba)
    {
        var buf = new byte[Bs];
        await dev.ReadAsync(v.LocateBlock(lba)!.Value.DataOffset, buf);
        return buf;
    }

    private static async Task WaitForCommits(IntegrityVolume v, long count)
    {
        for (int i = 0; i < 1000 && v.Counters.JournalCommits < count; i++) await Task.Delay(5);
        Assert.That(v.Counters.JournalCommits, Is.GreaterThanOrEqualTo(count), "the committer wrote the transaction");
    }

    [Test]
    public async Task AJournaledBlockStaysInTheJournalUntilADurablePointThenGoesHome()
    {
        var (dev, v, _) = await Mapped(Timeout.Infinite);
        await using var _v = v;
        using var _d = dev;
        await T.WriteOk(v, 3, T.Pattern(3, 1, Bs, 2));
        await WaitForCommits(v, 1);
        Assert.That(await Home(dev, v, 3), Is.EqualTo(T.Pattern(3, 1, Bs, 1)), "committed without a durable point: not home yet");
        Assert.That(await T.ReadOk(v, 0, 8), Is.EqualTo(T.Pattern(0, 3, Bs, 1).Concat(T.Pattern(3, 1, Bs, 2)).Concat(T.Pattern(4, 4, Bs, 1)).ToArray()),
            "reads see the acknowledged block");
        Assert.That((await v.FlushAsync()).IsOk);
        Assert.That(await Home(dev, v, 3), Is.EqualTo(T.Pattern(3, 1, Bs, 2)), "a flush makes the journal durable and copies the block home");
    }

    [Test]
    public async Task AnIdleVolumeLetsItsPooledBlockBuffersGoAndStillWritesCorrectlyAfterwards()
    {
        var sink = new CapturingSink();
        using var dev = T.Memory(256);
        await using (var f = await IntegrityVolume.FormatAsync(dev, T.Format(), sink.Logger()))
            await T.WriteOk(f, 0, T.Pattern(0, 32, Bs, 1), fua: true);
        await using var v = await IntegrityVolume.OpenAsync(dev, new OpenOptions { WriteBack = true, IdleHomeMs = 20, IdleTrimMs = 200 }, sink.Logger());
        await T.WriteOk(v, 2, T.Pattern(2, 5, Bs, 2)); // five journaled blocks
        int most = 0;
        for (int i = 0; i < 500 && (most == 0 || v.PooledRecords > 0); i++) { most = Math.Max(most, v.PooledRecords); await Task.Delay(10); }
        Assert.That(most, Is.EqualTo(5), "after their home copy the five records wait in the pool for reuse");
        Assert.That(v.PooledRecords, Is.Zero, "an idle volume gives them back");
        await T.WriteOk(v, 10, T.Pattern(10, 3, Bs, 3));
        Assert.That(await T.ReadOk(v, 0, 16), Is.EqualTo(T.Pattern(0, 2, Bs, 1).Concat(T.Pattern(2, 5, Bs, 2)).Concat(T.Pattern(7, 3, Bs, 1))
            .Concat(T.Pattern(10, 3, Bs, 3)).Concat(T.Pattern(13, 3, Bs, 1)).ToArray()));
    }

    [Test]
    public async Task AnIdleVolumeCopiesJournaledBlocksHomeAndThenSeesDamageThere()
    {
        var (dev, v, sink) = await Mapped(idleHomeMs: 20);
        await using var _v = v;
        using var _d = dev;
        await T.WriteOk(v, 5, T.Pattern(5, 2, Bs, 2));
        for (int i = 0; i < 400 && !(await Home(dev, v, 6)).SequenceEqual(T.Pattern(6, 1, Bs, 2)); i++) await Task.Delay(10);
        Assert.That(await Home(dev, v, 5), Is.EqualTo(T.Pattern(5, 1, Bs, 2)));
        Assert.That(await Home(dev, v, 6), Is.EqualTo(T.Pattern(6, 1, Bs, 2)), "copied home while idle");
        // The overlay no longer hides the home copy: damage there is found at its LBA.
        T.Flip(dev, v.LocateBlock(6)!.Value.DataOffset + 77);
        var buf = new byte[4 * Bs];
        var r = await v.ReadAsync(4, buf);
        Assert.That(r.Status, Is.EqualTo(VolumeStatus.IntegrityError));
        Assert.That(r.Lba, Is.EqualTo(6UL));
        Assert.That(r.GoodBlocks, Is.EqualTo(2UL));
        Assert.That(sink.Failures, Has.Count.EqualTo(1));
    }

    [Test]
    public async Task ALostWriteBackTailIsDiscardedWholeAndNotCalledCorruption()
    {
        var (dev, v, sink) = await Mapped(Timeout.Infinite);
        using var _d = dev;
        var journal = v.JournalArea;
        // Opening checkpointed: the journal is empty. Two plain write-back commits: txn A, then txn B written
        // while A was not yet durable.
        await T.WriteOk(v, 3, T.Pattern(3, 1, Bs, 2));
        await WaitForCommits(v, 1);
        await T.WriteOk(v, 4, T.Pattern(4, 1, Bs, 2));
        await WaitForCommits(v, 2);
        await v.AbandonAsync(); // power loss; suppose A never reached the medium but B did
        T.Flip(dev, journal.Offset + 4096 + 100);
        await using var v2 = await IntegrityVolume.OpenAsync(dev, T.Open(), sink.Logger());
        Assert.That(v2.LastRecovery.TransactionsReplayed, Is.EqualTo(0));
        Assert.That(v2.LastRecovery.TornDiscarded, Is.EqualTo(1));
        Assert.That(v2.LastRecovery.CorruptTransactionFound, Is.False, "B was written before A was durable: a lost tail, not damage");
        Assert.That(await T.ReadOk(v2, 3, 2), Is.EqualTo(T.Pattern(3, 2, Bs, 1)), "neither A nor B: both blocks old, nothing torn");
        Assert.That(sink.Failures, Is.Empty);
    }

    [Test]
    public async Task ADamagedDurableTransactionFollowedByAnIntactOneIsReportedAsCorruption()
    {
        var (dev, v, sink) = await Mapped(Timeout.Infinite);
        using var _d = dev;
        var journal = v.JournalArea;
        await T.WriteOk(v, 3, T.Pattern(3, 1, Bs, 2), fua: true);
        await T.WriteOk(v, 4, T.Pattern(4, 1, Bs, 2), fua: true);
        await v.AbandonAsync();
        T.Flip(dev, journal.Offset + 4096 + 100);
        await using var v2 = await IntegrityVolume.OpenAsync(dev, T.Open(), sink.Logger());
        Assert.That(v2.LastRecovery.CorruptTransactionFound, Is.True, "the second was written after the first was durable");
        Assert.That(v2.LastRecovery.TransactionsReplayed, Is.EqualTo(0));
        // Both blocks were copied home when their FUA commits completed: the data survives the journal damage.
        Assert.That(await T.ReadOk(v2, 3, 2), Is.EqualTo(T.Pattern(3, 2, Bs, 2)));
        Assert.That(sink.Failures, Is.Empty);
    }

    [Test]
    public async Task ThousandsOfJournaledBlocksAcrossSlotsGoHomeTogetherWithTheirTags()
    {
        // 512 B blocks: 256 per chunk share one tag region, so a home copy split between threads must never
        // split a slot (two read-modify-writes of one region would lose tags). A journal large enough that
        // no checkpoint intervenes: the flush copies all 2,880 blocks home in one batch (an odd split point).
        const int bs = 512, chunks = 15, bpc = 256;
        ulong blocks = chunks * bpc;
        var sink = new CapturingSink();
        using var mem = new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor(blocks, bs, TagAlgorithm.Crc32c, 32L << 20), "mem");
        await using (var f = await IntegrityVolume.FormatAsync(mem, new FormatOptions { BlockSize = bs, JournalBytes = 32L << 20 }, sink.Logger()))
            for (ulong c = 0; c < chunks; c++) await T.WriteOk(f, c * bpc, T.Pattern(c * bpc, bpc, bs, 1));
        // Device calls that yield make the parts of a split home copy interleave, as slow system calls would.
        var dev = new YieldingDevice(mem);
        await using var v = await IntegrityVolume.OpenAsync(dev, new OpenOptions { WriteBack = true, IdleHomeMs = Timeout.Infinite }, sink.Logger());
        var order = Enumerable.Range(0, (int)blocks / 4).OrderBy(i => (i * 7919) % 1031).ToList();
        foreach (int g in order) await T.WriteOk(v, (ulong)g * 4 + 1, T.Pattern((ulong)g * 4 + 1, 3, bs, 2));
        Assert.That((await v.FlushAsync()).IsOk);
        var expect = new byte[blocks * (ulong)bs];
        for (ulong l = 0; l < blocks; l++) T.Pattern(l, 1, bs, l % 4 == 0 ? 1 : 2).CopyTo(expect, (int)l * bs);
        // Everything is home now (the overlay is empty): these reads verify the rewritten tag regions.
        Assert.That(await T.ReadOk(v, 0, (int)blocks), Is.EqualTo(expect));
        for (ulong l = 1; l < blocks; l += 97)
        {
            var home = new byte[bs];
            await dev.ReadAsync(v.LocateBlock(l)!.Value.DataOffset, home);
            Assert.That(home, Is.EqualTo(T.Pattern(l, 1, bs, l % 4 == 0 ? 1 : 2)), $"home copy of LBA {l}");
        }
        Assert.That(sink.Failures, Is.Empty);
    }

    private sealed class YieldingDevice(MemoryBlockDevice inner) : ForwardingDevice(inner)
    {
        public override async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) { await Task.Yield(); await Inner.ReadAsync(offset, buffer, ct); }
        public override async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) { await Task.Yield(); await Inner.WriteAsync(offset, data, fua, ct); }
    }
}
