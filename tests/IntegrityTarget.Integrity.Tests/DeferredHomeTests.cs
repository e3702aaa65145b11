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
}
