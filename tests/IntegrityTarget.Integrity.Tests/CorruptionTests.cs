using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>Damage on the backing device is found at the exact LBA, once, and nowhere else.</summary>
public class CorruptionTests
{
    private const int Bs = 4096;
    private const ulong Blocks = 1024;
    private static readonly IoContext Ctx = new("lun0", "iqn.2026-11.test:init", "READ(16)");

    private static async Task<(MemoryBlockDevice Dev, IntegrityVolume Vol, CapturingSink Sink)> Filled(TagAlgorithm alg, long? tagCacheBytes = null)
    {
        var sink = new CapturingSink();
        var dev = T.Memory(Blocks, Bs, alg);
        var v = await IntegrityVolume.FormatAsync(dev, T.Format(Bs, alg, tagCacheBytes: tagCacheBytes), sink.Logger());
        // Whole chunks (redirect path) and a partial-chunk write (journal path, copied home by flush).
        await T.WriteOk(v, 0, T.Pattern(0, 512, Bs, 1));
        await T.WriteOk(v, 40, T.Pattern(40, 3, Bs, 2));
        Assert.That((await v.FlushAsync()).IsOk);
        return (dev, v, sink);
    }

    private static byte[] Expected(ulong lba, int n)
    {
        var b = T.Pattern(lba, n, Bs, 1);
        for (ulong l = Math.Max(lba, 40); l < Math.Min(lba + (ulong)n, 43); l++)
            T.Pattern(l, 1, Bs, 2).CopyTo(b, (int)(l - lba) * Bs);
        return b;
    }

    /// <summary>Every block of [0,512) except <paramref name="bad"/> reads fine; each bad one fails alone with one event.</summary>
    private static async Task AssertOnlyBad(IntegrityVolume v, CapturingSink sink, params ulong[] bad)
    {
        int before = sink.Failures.Count;
        long mismatches = v.Counters.Mismatches;
        for (ulong l = 0; l < 512; l++)
        {
            var buf = new byte[Bs];
            var r = await v.ReadAsync(l, buf, Ctx);
            if (bad.Contains(l)) Assert.That((r.Status, r.Lba, r.GoodBlocks), Is.EqualTo((VolumeStatus.IntegrityError, l, 0UL)), $"LBA {l} must fail");
            else
            {
                Assert.That(r.Status, Is.EqualTo(VolumeStatus.Ok), $"LBA {l} must read fine (false positive)");
                Assert.That(buf, Is.EqualTo(Expected(l, 1)), $"LBA {l} content");
            }
        }
        var events = sink.Failures.Skip(before).ToList();
        Assert.That(events.Select(CapturingSink.LbaOf), Is.EqualTo(bad.OrderBy(x => x)), "exactly one event per failure, naming the LBA");
        Assert.That(v.Counters.Mismatches - mismatches, Is.EqualTo(bad.Length));
        foreach (var e in events)
        {
            Assert.That(CapturingSink.Prop(e, "Volume"), Is.EqualTo("mem"));
            Assert.That(CapturingSink.Prop(e, "TagAlgorithm"), Is.EqualTo(v.TagAlgorithm));
            Assert.That(CapturingSink.Prop(e, "Initiator"), Is.EqualTo("iqn.2026-11.test:init"));
            Assert.That(CapturingSink.Prop(e, "Command"), Is.EqualTo("READ(16)"));
            Assert.That(CapturingSink.Prop(e, "Unit"), Is.EqualTo("lun0"));
        }
    }

    [TestCase(TagAlgorithm.Crc32c)]
    [TestCase(TagAlgorithm.XxHash64)]
    [TestCase(TagAlgorithm.HmacSha256)]
    public async Task FlippedDataBitsAreFoundAtTheirLba(TagAlgorithm alg)
    {
        var (dev, v, sink) = await Filled(alg);
        await using var _ = v;
        foreach (ulong l in new ulong[] { 7, 41, 300 }) T.Flip(dev, v.LocateBlock(l)!.Value.DataOffset + 1000 + (long)l, (int)(l % 8));
        await AssertOnlyBad(v, sink, 7, 41, 300);
    }

    /// <summary>Without the tag cache every read reads its tags from the device (with it, the tags this volume
    /// wrote are used and scrub finds such damage: ReadPathTests).</summary>
    [TestCase(TagAlgorithm.Crc32c)]
    [TestCase(TagAlgorithm.HmacSha256)]
    public async Task FlippedTagBitsAreFoundAtTheirLba(TagAlgorithm alg)
    {
        var (dev, v, sink) = await Filled(alg, tagCacheBytes: 0);
        await using var _ = v;
        foreach (ulong l in new ulong[] { 0, 42, 511 })
        {
            var loc = v.LocateBlock(l)!.Value;
            T.Flip(dev, loc.TagOffset + loc.TagSize - 1, 7);
        }
        await AssertOnlyBad(v, sink, 0, 42, 511);
    }

    /// <summary>A multi-chunk read fetches a chunk's data and tags in one device read: a tag flipped in the
    /// device between two such reads is still found, at its LBA, with the good blocks before it.</summary>
    [TestCase(TagAlgorithm.Crc32c, 42UL)]
    [TestCase(TagAlgorithm.Crc32c, 63UL)]
    [TestCase(TagAlgorithm.Crc32c, 32UL)]
    [TestCase(TagAlgorithm.HmacSha256, 63UL)]
    public async Task TagsFlippedUnderLargeReadsAreFoundAtTheirLba(TagAlgorithm alg, ulong bad)
    {
        var (dev, v, sink) = await Filled(alg);
        await using var _ = v;
        Assert.That(await T.ReadOk(v, 0, 512), Is.EqualTo(Expected(0, 512)), "clean before the flip");
        var loc = v.LocateBlock(bad)!.Value;
        T.Flip(dev, loc.TagOffset, 3);
        foreach (ulong start in new ulong[] { 0, 17, bad })
        {
            var buf = new byte[(512 - (int)start) * Bs];
            var r = await v.ReadAsync(start, buf, Ctx);
            Assert.That((r.Status, r.Lba, r.GoodBlocks), Is.EqualTo((VolumeStatus.IntegrityError, bad, bad - start)), $"read from {start}");
            Assert.That(buf.AsSpan(0, (int)(bad - start) * Bs).SequenceEqual(Expected(start, (int)(bad - start))), Is.True, $"good blocks before {bad}");
        }
        Assert.That(sink.Failures.Select(CapturingSink.LbaOf), Is.EqualTo(new[] { bad }), "one Error event for the bad LBA; its repeats are counted");
        Assert.That(v.Counters.Mismatches, Is.EqualTo(3), "every failed read is a mismatch event");
        Assert.That(await T.ReadOk(v, bad + 1, 511 - (int)bad), Is.EqualTo(Expected(bad + 1, 511 - (int)bad)), "blocks after it read fine");
    }

    /// <summary>The summary's numbers agree with each other when repeated LBAs were rewritten before it (it printed
    /// "2 more on 0 LBA(s) already reported, most often LBA 0 (0 times)").</summary>
    [Test]
    public void A_summary_after_the_repeated_blocks_were_rewritten_still_names_them()
    {
        var sink = new CapturingSink();
        var log = new BadBlockLog(sink.Logger(), "lun0", "crc32c", TimeSpan.FromHours(1));
        foreach (ulong lba in new ulong[] { 7, 7, 7, 9, 9, 30, 30 }) log.Report(lba, Ctx);
        log.Forget(7, 1);          // block 7 rewritten (twice repeated), and 9 with a range larger than the table
        log.Forget(0, 20);
        log.Summarise();
        var w = sink.Events.Single(e => e.MessageTemplate.Text.Contains("repeated"));
        long P(string name) => Convert.ToInt64(((Serilog.Events.ScalarValue)w.Properties[name]).Value);
        Assert.That((P("Repeats"), P("Lbas"), P("TopLba"), P("TopCount")), Is.EqualTo((4L, 3L, 7L, 2L)), w.RenderMessage());
        log.Report(30, Ctx);
        log.Summarise();
        var second = sink.Events.Where(e => e.MessageTemplate.Text.Contains("repeated")).Last();
        Assert.That(second.RenderMessage(), Does.Contain("1 more on 1 LBA(s)").And.Contain("LBA 30 (1 times)"), "forgotten counts do not carry over into the next summary");
        Assert.That(sink.Failures.Where(e => e.Level == Serilog.Events.LogEventLevel.Error).Select(CapturingSink.LbaOf), Is.EqualTo(new ulong[] { 7, 9, 30 }));
    }

    /// <summary>A VM retrying a bad block: one Error event per distinct LBA, repeats counted and summarised in one
    /// Warning per window; once the block is rewritten, a new failure there is news again.</summary>
    [Test]
    public async Task Repeated_failures_of_one_lba_log_once_and_are_summarised()
    {
        var sink = new CapturingSink();
        var dev = T.Memory(Blocks, Bs);
        var v = await IntegrityVolume.FormatAsync(dev, new FormatOptions { BlockSize = Bs, Tuning = new OpenOptions { FailureLogWindow = TimeSpan.Zero } }, sink.Logger());
        await using var _ = v;
        await T.WriteOk(v, 0, T.Pattern(0, 64, Bs, 1));
        T.Flip(dev, v.LocateBlock(5)!.Value.DataOffset + 9);
        T.Flip(dev, v.LocateBlock(40)!.Value.DataOffset + 9);
        for (int i = 0; i < 10; i++)
        {
            Assert.That((await v.ReadAsync(5, new byte[Bs], Ctx)).Status, Is.EqualTo(VolumeStatus.IntegrityError));
            Assert.That((await v.ReadAsync(40, new byte[Bs], Ctx)).Status, Is.EqualTo(VolumeStatus.IntegrityError));
        }
        Assert.That(v.Counters.Mismatches, Is.EqualTo(20));
        Assert.That(sink.Failures.Where(e => e.Level == Serilog.Events.LogEventLevel.Error).Select(CapturingSink.LbaOf), Is.EqualTo(new ulong[] { 5, 40 }));
        var summaries = sink.Events.Where(e => e.MessageTemplate.Text.Contains("repeated")).ToList();
        Assert.That(summaries, Is.Not.Empty);
        Assert.That(summaries.Sum(e => (long)((Serilog.Events.ScalarValue)e.Properties["Repeats"]).Value!), Is.LessThanOrEqualTo(18));
        await T.WriteOk(v, 5, T.Pattern(5, 1, Bs, 2)); // heals it (journaled, home at the flush)
        Assert.That((await v.FlushAsync()).IsOk);
        Assert.That(await T.ReadOk(v, 5, 1), Is.EqualTo(T.Pattern(5, 1, Bs, 2)));
        T.Flip(dev, v.LocateBlock(5)!.Value.DataOffset + 11);
        Assert.That((await v.ReadAsync(5, new byte[Bs], Ctx)).Status, Is.EqualTo(VolumeStatus.IntegrityError));
        Assert.That(sink.Failures.Where(e => e.Level == Serilog.Events.LogEventLevel.Error).Select(CapturingSink.LbaOf), Is.EqualTo(new ulong[] { 5, 40, 5 }), "a rewritten block that fails again is reported again");
    }

    /// <summary>The hmac-sha256 tag is HMAC-SHA256(key, data || le64(LBA)) as documented, so volumes written
    /// before the keyed state was reused still verify; repeated calls give the same tag.</summary>
    [TestCase(512)]
    [TestCase(4096)]
    public void HmacTagIsHmacSha256OfDataThenLittleEndianLba(int bs)
    {
        var tagger = IntegrityVolume.CreateTagger(TagAlgorithm.HmacSha256, new byte[16], T.Key);
        var data = T.Pattern(77, 1, bs, 5);
        var msg = new byte[bs + 8];
        data.CopyTo(msg, 0);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(msg.AsSpan(bs), 0x0102030405060708UL);
        var want = System.Security.Cryptography.HMACSHA256.HashData(T.Key, msg);
        for (int i = 0; i < 3; i++)
        {
            var tag = new byte[32];
            tagger(data, 0x0102030405060708UL, tag);
            Assert.That(tag, Is.EqualTo(want), $"call {i}");
        }
    }

    [Test]
    public async Task TheOfflineLocatorAgreesWithTheOpenVolume()
    {
        var (dev, v, _) = await Filled(TagAlgorithm.Crc32c);
        await using var __ = v;
        await T.WriteOk(v, 600, T.Pattern(600, 32, Bs, 3), fua: true); // a remap still only in the journal
        foreach (ulong l in new ulong[] { 0, 41, 511, 600, 631, 700 })
            Assert.That(IntegrityVolume.LocateBlock(dev, l), Is.EqualTo(v.LocateBlock(l)), $"LBA {l}");
        Assert.That(IntegrityVolume.LocateBlock(dev, 700), Is.Null, "unmapped");
        var at = v.LocateBlock(41)!.Value;
        Assert.That(IntegrityVolume.DumpBlock(dev, 41), Is.EqualTo($"lba 41: data at offset {at.DataOffset}, tag at offset {at.TagOffset} (4 B)"));
        Assert.That(IntegrityVolume.DumpBlock(dev, 700), Is.EqualTo("lba 700: unmapped (reads as zeros)"));
    }

    [Test]
    public async Task SwappedBlocksBothFail()
    {
        var (dev, v, sink) = await Filled(TagAlgorithm.Crc32c);
        await using var _ = v;
        foreach (var (a, b) in new[] { (10UL, 11UL), (100UL, 400UL) })
        {
            long oa = v.LocateBlock(a)!.Value.DataOffset, ob = v.LocateBlock(b)!.Value.DataOffset;
            var ba = new byte[Bs]; var bb = new byte[Bs];
            dev.Read(oa, ba); dev.Read(ob, bb);
            dev.Write(oa, bb); dev.Write(ob, ba);
        }
        await AssertOnlyBad(v, sink, 10, 11, 100, 400);
    }

    [Test]
    public async Task ABlockWrittenToTheWrongPlaceFailsThere()
    {
        var (dev, v, sink) = await Filled(TagAlgorithm.XxHash64);
        await using var _ = v;
        // A misdirected write: block 5's data and tag land where block 200 lives.
        var src = v.LocateBlock(5)!.Value; var dst = v.LocateBlock(200)!.Value;
        var data = new byte[Bs]; var tag = new byte[src.TagSize];
        dev.Read(src.DataOffset, data); dev.Read(src.TagOffset, tag);
        dev.Write(dst.DataOffset, data); dev.Write(dst.TagOffset, tag);
        await AssertOnlyBad(v, sink, 200);
    }

    [Test]
    public async Task AFailingMultiBlockReadReturnsTheGoodBlocksBeforeIt()
    {
        var (dev, v, sink) = await Filled(TagAlgorithm.Crc32c);
        await using var _ = v;
        T.Flip(dev, v.LocateBlock(150)!.Value.DataOffset + 17);
        var buf = new byte[200 * Bs];
        var r = await v.ReadAsync(100, buf, Ctx);
        Assert.That((r.Status, r.Lba, r.GoodBlocks), Is.EqualTo((VolumeStatus.IntegrityError, 150UL, 50UL)));
        Assert.That(buf.AsSpan(0, 50 * Bs).ToArray(), Is.EqualTo(Expected(100, 50)));
        Assert.That(sink.Failures, Has.Count.EqualTo(1));
        Assert.That(CapturingSink.LbaOf(sink.Failures[0]), Is.EqualTo(150UL));
    }

    [Test]
    public async Task RewritingABadBlockHealsItAndUnmapMakesItZeros()
    {
        var (dev, v, sink) = await Filled(TagAlgorithm.Crc32c);
        await using var _ = v;
        T.Flip(dev, v.LocateBlock(20)!.Value.DataOffset);
        T.Flip(dev, v.LocateBlock(300)!.Value.DataOffset);
        Assert.That((await v.ReadAsync(20, new byte[Bs])).Status, Is.EqualTo(VolumeStatus.IntegrityError));
        await T.WriteOk(v, 20, T.Pattern(20, 1, Bs, 1));
        Assert.That(await T.ReadOk(v, 20, 1), Is.EqualTo(T.Pattern(20, 1, Bs, 1)), "rewrite heals");
        Assert.That((await v.FlushAsync()).IsOk);
        Assert.That(await T.ReadOk(v, 20, 1), Is.EqualTo(T.Pattern(20, 1, Bs, 1)), "still healed once copied home");
        Assert.That((await v.UnmapAsync(300, 1)).IsOk);
        Assert.That(await T.ReadOk(v, 300, 1), Is.EqualTo(new byte[Bs]), "unmapped block reads zeros and verifies");
        Assert.That((await v.UnmapAsync(256, 32)).IsOk); // a whole chunk
        Assert.That(await T.ReadOk(v, 256, 32), Is.EqualTo(new byte[32 * Bs]));
        Assert.That(await v.GetLbaStatusAsync(256), Is.EqualTo(new LbaExtent(256, 32, false)));
        Assert.That(await v.GetLbaStatusAsync(0), Is.EqualTo(new LbaExtent(0, 256, true)));
        Assert.That(sink.Failures, Has.Count.EqualTo(1));
    }

    [Test]
    public async Task ScrubListsExactlyTheBadLbas()
    {
        var (dev, v, sink) = await Filled(TagAlgorithm.Crc32c);
        await using var _ = v;
        ulong[] bad = { 3, 33, 34, 41, 255, 256, 511 };
        foreach (var l in bad) T.Flip(dev, v.LocateBlock(l)!.Value.DataOffset + 99);
        var progress = new List<ScrubProgress>();
        var report = await v.ScrubAsync(new ScrubOptions { Progress = new SyncProgress<ScrubProgress>(progress.Add), Context = new IoContext("lun0", "scrub", "SCRUB") });
        Assert.That(report.BadLbas, Is.EqualTo(bad));
        Assert.That(report.Mismatches, Is.EqualTo(bad.Length));
        Assert.That(report.BlocksChecked, Is.EqualTo(512UL));
        Assert.That(report.BlocksSkippedUnmapped, Is.EqualTo(Blocks - 512));
        Assert.That(sink.Failures.Select(CapturingSink.LbaOf), Is.EqualTo(bad));
        Assert.That(v.Counters.Mismatches, Is.EqualTo(bad.Length));
        Assert.That(progress[^1].BlocksDone, Is.EqualTo(Blocks));
    }

    [Test]
    public async Task AJournalTransactionWithAFlippedBitIsDiscardedNotReplayed()
    {
        var sink = new CapturingSink();
        using var dev = T.Memory(256);
        (long Offset, long Bytes) journal;
        await using (var v = await IntegrityVolume.FormatAsync(dev, T.Format(), sink.Logger()))
        {
            await T.WriteOk(v, 3, T.Pattern(3, 1, Bs, 1), fua: true);
            await T.WriteOk(v, 3, T.Pattern(3, 1, Bs, 2), fua: true);
            journal = v.JournalArea;
            await v.AbandonAsync(); // power loss: the journal is not checkpointed
        }
        Assert.That(IntegrityVolume.Dump(dev), Does.Contain("2 committed transactions to replay"));
        // A memory device: txn 1 (first write maps the chunk: header only, the 4 KiB form) at 0, txn 2 (a journaled
        // block: compact) at 4096, its payload after its one-sector header: flip a bit of the payload.
        T.Flip(dev, journal.Offset + Txn.TotalBytes(1, 0, Bs, Txn.Compact) + Txn.HeaderBytes(1, Bs, Txn.Compact) + 100);
        await using var v2 = await IntegrityVolume.OpenAsync(dev, T.Open(), sink.Logger());
        Assert.That(v2.LastRecovery.TransactionsReplayed, Is.EqualTo(1));
        Assert.That(v2.LastRecovery.TornDiscarded, Is.EqualTo(1));
        Assert.That(v2.LastRecovery.CorruptTransactionFound, Is.False, "the damaged one was the last: indistinguishable from torn");
        // Block 3 was already copied home when its commit completed, so it holds old or new content, verified.
        var got = await T.ReadOk(v2, 3, 1);
        Assert.That(got, Is.EqualTo(T.Pattern(3, 1, Bs, 1)).Or.EqualTo(T.Pattern(3, 1, Bs, 2)));
        Assert.That(sink.Failures, Is.Empty);
    }

    private sealed class SyncProgress<TP>(Action<TP> a) : IProgress<TP> { public void Report(TP value) => a(value); }
}
