using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests;

public class ConcurrencyTests
{
    [TestCase(4096, true)]
    [TestCase(512, false)]
    public async Task ConcurrentWritersAndReadersMatchAModel(int bs, bool writeBack)
    {
        var sink = new CapturingSink();
        const ulong blocks = 4096;
        using var dev = T.Memory(blocks, bs);
        await using var v = await IntegrityVolume.FormatAsync(dev, T.Format(bs), sink.Logger());
        v.WriteBack = writeBack;
        const int writers = 8;
        ulong region = blocks / writers;
        var model = new int[blocks]; // version per block; 0 = never written
        var tasks = new List<Task>();
        for (int w = 0; w < writers; w++)
        {
            int id = w;
            tasks.Add(Task.Run(async () =>
            {
                var rnd = new Random(id);
                for (int i = 1; i <= 60; i++)
                {
                    ulong start = (ulong)id * region;
                    int n = rnd.Next(4) == 0 ? rnd.Next(1, 300) : rnd.Next(1, 9);
                    ulong lba = start + (ulong)rnd.Next(0, (int)region - n);
                    int ver = id * 1000 + i;
                    if (rnd.Next(10) == 0)
                    {
                        Assert.That((await v.UnmapAsync(lba, (ulong)n)).IsOk);
                        for (int k = 0; k < n; k++) model[lba + (ulong)k] = 0;
                    }
                    else
                    {
                        var r = await v.WriteAsync(lba, Pattern(lba, n, bs, ver), fua: rnd.Next(8) == 0);
                        Assert.That(r.IsOk, r.ToString());
                        for (int k = 0; k < n; k++) model[lba + (ulong)k] = ver;
                    }
                    if (rnd.Next(15) == 0) Assert.That((await v.FlushAsync()).IsOk);
                    // Read back own region slice: must match the model exactly (own writes are ordered).
                    var buf = new byte[n * bs];
                    Assert.That((await v.ReadAsync(lba, buf)).IsOk);
                    for (int k = 0; k < n; k++) Check(buf.AsSpan(k * bs, bs), lba + (ulong)k, model[lba + (ulong)k]);
                }
            }));
        }
        // Readers across everything: every block verifies and carries its own LBA (or zeros).
        for (int r = 0; r < 3; r++)
        {
            int seed = 100 + r;
            tasks.Add(Task.Run(async () =>
            {
                var rnd = new Random(seed);
                for (int i = 0; i < 150; i++)
                {
                    int n = rnd.Next(1, 300);
                    ulong lba = (ulong)rnd.Next(0, (int)(blocks - (ulong)n));
                    var buf = new byte[n * bs];
                    var res = await v.ReadAsync(lba, buf);
                    Assert.That(res.IsOk, res.ToString());
                    for (int k = 0; k < n; k++)
                    {
                        var s = buf.AsSpan(k * bs, bs);
                        if (s.IndexOfAnyExcept((byte)0) >= 0) Assert.That(BitConverter.ToUInt64(s), Is.EqualTo(lba + (ulong)k));
                    }
                }
            }));
        }
        await Task.WhenAll(tasks);
        var all = new byte[(int)blocks * bs];
        Assert.That((await v.ReadAsync(0, all)).IsOk);
        for (ulong l = 0; l < blocks; l++) Check(all.AsSpan((int)l * bs, bs), l, model[l]);
        Assert.That(sink.Failures, Is.Empty);
        await v.DisposeAsync();
        await using var v2 = await IntegrityVolume.OpenAsync(dev, T.Open(), sink.Logger());
        Assert.That((await v2.ReadAsync(0, all)).IsOk);
        for (ulong l = 0; l < blocks; l++) Check(all.AsSpan((int)l * bs, bs), l, model[l]);
    }

    [Test]
    public async Task OverlappingWritesApplyInIssueOrder()
    {
        using var dev = T.Memory(1024);
        await using var v = await IntegrityVolume.FormatAsync(dev, T.Format(), new CapturingSink().Logger());
        var rnd = new Random(7);
        var pending = new List<Task<VolumeResult>>();
        var model = new int[64];
        for (int i = 1; i <= 200; i++)
        {
            int n = rnd.Next(1, 40);
            ulong lba = (ulong)rnd.Next(0, 64 - n);
            pending.Add(v.WriteAsync(lba, Pattern(lba, n, 4096, i), fua: i % 17 == 0).AsTask());
            for (int k = 0; k < n; k++) model[lba + (ulong)k] = i;
        }
        foreach (var r in await Task.WhenAll(pending)) Assert.That(r.IsOk);
        var buf = await T.ReadOk(v, 0, 64);
        for (ulong l = 0; l < 64; l++) Check(buf.AsSpan((int)l * 4096, 4096), l, model[l]);
    }

    /// <summary>A 4 MiB volume has a 2 MiB journal: 200 overlapping writes fill the queue, so writers wait for
    /// back-pressure. They took the range lock before waiting, so they still apply in issue order (waiting
    /// first let a later write overtake an earlier one on the same blocks).</summary>
    [Test]
    public async Task OverlappingWritesKeepIssueOrderWhileWaitingForBackPressure()
    {
        for (int seed = 0; seed < 12; seed++)
        {
            using var dev = T.Memory(1024);
            await using var v = await IntegrityVolume.FormatAsync(dev, new FormatOptions { BlockSize = 4096, Tuning = new OpenOptions { IdleHomeMs = Timeout.Infinite } }, new CapturingSink().Logger());
            var rnd = new Random(seed);
            var pending = new List<Task<VolumeResult>>();
            var model = new int[64];
            for (int i = 1; i <= 200; i++)
            {
                int n = rnd.Next(1, 40);
                ulong lba = (ulong)rnd.Next(0, 64 - n);
                pending.Add(v.WriteAsync(lba, Pattern(lba, n, 4096, i), fua: false).AsTask());
                for (int k = 0; k < n; k++) model[lba + (ulong)k] = i;
            }
            foreach (var r in await Task.WhenAll(pending)) Assert.That(r.IsOk);
            var buf = await T.ReadOk(v, 0, 64);
            for (ulong l = 0; l < 64; l++) Check(buf.AsSpan((int)l * 4096, 4096), l, model[l]);
        }
    }

    [Test]
    public async Task TheCallersBufferMayChangeRightAfterTheWriteIsIssued()
    {
        using var dev = T.Memory(256);
        await using var v = await IntegrityVolume.FormatAsync(dev, T.Format(), new CapturingSink().Logger());
        var data = Pattern(9, 3, 4096, 1);
        var keep = data.ToArray();
        var w = v.WriteAsync(9, data, false);
        Array.Fill(data, (byte)0xEE);
        Assert.That((await w).IsOk);
        Assert.That((await v.FlushAsync()).IsOk);
        Assert.That(await T.ReadOk(v, 9, 3), Is.EqualTo(keep));
    }

    internal static byte[] Pattern(ulong lba, int n, int bs, int ver) => T.Pattern(lba, n, bs, ver);

    internal static void Check(ReadOnlySpan<byte> block, ulong lba, int ver)
    {
        if (ver == 0) { Assert.That(block.IndexOfAnyExcept((byte)0), Is.EqualTo(-1), $"LBA {lba} should be zeros"); return; }
        Assert.That(BitConverter.ToUInt64(block), Is.EqualTo(lba), $"LBA {lba} holds another block");
        Assert.That(BitConverter.ToInt32(block[8..]), Is.EqualTo(ver), $"LBA {lba} version");
        Assert.That(block.SequenceEqual(T.Pattern(lba, 1, block.Length, ver)), $"LBA {lba} content");
    }
}

public class RecoveryTests
{
    [TestCase(4096)]
    [TestCase(512)]
    public async Task DurableWritesSurviveAPowerLossAndRecoveryIsIdempotent(int bs)
    {
        var sink = new CapturingSink();
        using var dev = T.Memory(2048, bs);
        int bpc = 128 * 1024 / bs;
        var v = await IntegrityVolume.FormatAsync(dev, T.Format(bs), sink.Logger());
        await T.WriteOk(v, 0, T.Pattern(0, bpc * 3, bs, 1), fua: true);       // whole chunks: remaps
        await T.WriteOk(v, 5, T.Pattern(5, 2, bs, 2), fua: true);             // journaled blocks
        await T.WriteOk(v, (ulong)bpc - 1, T.Pattern((ulong)bpc - 1, bpc + 2, bs, 3)); // mixed, then flushed
        Assert.That((await v.FlushAsync()).IsOk);
        await T.WriteOk(v, 0, T.Pattern(0, bpc, bs, 4), fua: true);           // remap replacing a chunk with journaled blocks
        await v.AbandonAsync();

        for (int round = 0; round < 3; round++)
        {
            var v2 = await IntegrityVolume.OpenAsync(dev, T.Open(), sink.Logger());
            if (round == 0) Assert.That(v2.LastRecovery.TransactionsReplayed, Is.GreaterThan(0));
            var buf = await T.ReadOk(v2, 0, bpc * 3);
            for (ulong l = 0; l < (ulong)bpc * 3; l++)
            {
                int ver = l < (ulong)bpc ? 4 : l <= (ulong)bpc * 2 ? 3 : 1;
                ConcurrencyTests.Check(buf.AsSpan((int)l * bs, bs), l, ver);
            }
            await v2.AbandonAsync(); // crash again right after recovery
        }
        Assert.That(sink.Failures, Is.Empty);
    }

    [Test]
    public async Task AFullJournalIsCheckpointedAndTheVolumeKeepsWorking()
    {
        using var dev = T.Memory(4096);
        await using var v = await IntegrityVolume.FormatAsync(dev, new FormatOptions { JournalBytes = 1 << 20 }, new CapturingSink().Logger());
        var model = new int[4096];
        var rnd = new Random(3);
        for (int i = 1; i <= 1500; i++)
        {
            ulong lba = (ulong)rnd.Next(0, 4096);
            await T.WriteOk(v, lba, T.Pattern(lba, 1, 4096, i), fua: true);
            model[lba] = i;
        }
        var all = await T.ReadOk(v, 0, 4096);
        for (ulong l = 0; l < 4096; l++) ConcurrencyTests.Check(all.AsSpan((int)l * 4096, 4096), l, model[l]);
        Assert.That(IntegrityVolume.Dump(dev), Does.Contain("checkpoints"));
    }

    [Test]
    public async Task WriteBackWritesWithoutFlushAreOldOrNewAfterPowerLoss()
    {
        var sink = new CapturingSink();
        using var dev = T.Memory(1024);
        var v = await IntegrityVolume.FormatAsync(dev, T.Format(), sink.Logger());
        await T.WriteOk(v, 0, T.Pattern(0, 1024, 4096, 1), fua: true);
        for (int i = 0; i < 50; i++) await T.WriteOk(v, (ulong)(i * 13), T.Pattern((ulong)(i * 13), 5, 4096, 2));
        await v.AbandonAsync();
        await using var v2 = await IntegrityVolume.OpenAsync(dev, T.Open(), sink.Logger());
        var all = await T.ReadOk(v2, 0, 1024);
        for (ulong l = 0; l < 1024; l++)
        {
            var b = all.AsSpan((int)l * 4096, 4096);
            Assert.That(b.SequenceEqual(T.Pattern(l, 1, 4096, 1)) || b.SequenceEqual(T.Pattern(l, 1, 4096, 2)), $"LBA {l} old or new");
        }
    }
}
