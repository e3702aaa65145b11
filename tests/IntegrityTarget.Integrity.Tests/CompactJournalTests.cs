using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// Compact journal transactions (journal version 3, docs/integrity-volume.md "On-disk format" and write path 6a): which
/// devices get them, the one-way switch of a version-2 volume at open, and recovery of a compact transaction torn at
/// every 512 B sector, written over the ring of an older, version-2 open.
/// </summary>
public class CompactJournalTests
{
    private const ulong Blocks = 512;
    private const long JournalBytes = 1L << 20;

    private static long DeviceBytes(int bs, TagAlgorithm alg) => IntegrityVolume.DeviceBytesFor(Blocks, bs, alg, JournalBytes);
    private static Geometry Geo(int bs, TagAlgorithm alg) => Geometry.Compute(bs, alg, Blocks, JournalBytes);

    private static FormatOptions Fmt(int bs, TagAlgorithm alg) => new()
    {
        BlockSize = bs, Algorithm = alg, Key = alg == TagAlgorithm.HmacSha256 ? T.Key : default, JournalBytes = JournalBytes, LogicalBlocks = Blocks,
    };

    private static JournalSuper SuperOf(IBlockDevice dev, Geometry g)
    {
        var js = new byte[512];
        dev.ReadAsync(g.JournalOffset, js).AsTask().GetAwaiter().GetResult();
        return JournalSuper.Parse(js, g.JournalAreaBytes, out var problem) ?? throw new AssertionException($"journal superblock: {problem}");
    }

    [Test]
    public void Sizes_of_the_two_forms()
    {
        // A 4 KiB write: one record. Version 2: a 4 KiB header unit + 4 KiB; compact: one sector + 4 KiB.
        Assert.That(Txn.TotalBytes(1, 1, 4096), Is.EqualTo(8192));
        Assert.That(Txn.TotalBytes(1, 1, 4096, Txn.Compact), Is.EqualTo(4608));
        Assert.That(Txn.TotalBytes(1, 8, 512, Txn.Compact), Is.EqualTo(4608));
        Assert.That(Txn.TotalBytes(0, 0, 4096, Txn.Compact), Is.EqualTo(4096), "a marker keeps the 4 KiB form");
        Assert.That(Txn.TotalBytes(8, 0, 4096, Txn.Compact), Is.EqualTo(4096), "so do the remaps of a 1 MiB write");
        Assert.That(Txn.HeaderBytes(32, 32 * 4096, Txn.Compact), Is.EqualTo(4096), "a payload of 64 KiB or more keeps the 4 KiB header");
        Assert.That(Txn.TotalBytes(32, 16 * 8, 512, Txn.Compact), Is.EqualTo(4096 + 65536));
        Assert.That(Txn.HeaderBytes(10, 10 * 4096, Txn.Compact), Is.EqualTo(1024));
        Assert.That(Txn.TotalBytes(1, 3, 512, Txn.Compact), Is.EqualTo(2048));
    }

    [Test]
    public void The_device_decides_the_form()
    {
        Assert.That(IntegrityVolume.JournalAlignFor(new MemoryBlockDevice(1 << 20)), Is.EqualTo(512));
        Assert.That(IntegrityVolume.JournalAlignFor(new CrashSimulatingDevice(new MemoryBlockDevice(1 << 20)) { PreferredWriteUnit = 4096 }), Is.EqualTo(4096));
        Assert.That(IntegrityVolume.JournalAlignFor(new NoPreferenceDevice(new MemoryBlockDevice(1 << 20))), Is.EqualTo(4096), "the interface's default (RBD's) is 4 KiB");
    }

    /// <summary>A device that does not say which write unit it prefers (only the interface's required members).</summary>
    private sealed class NoPreferenceDevice(MemoryBlockDevice inner) : IBlockDevice
    {
        public string Name => inner.Name;
        public long Length => inner.Length;
        public int SectorSize => inner.SectorSize;
        public bool CanDeallocate => inner.CanDeallocate;
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) => inner.ReadAsync(offset, buffer, ct);
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) => inner.WriteAsync(offset, data, fua, ct);
        public ValueTask FlushAsync(CancellationToken ct = default) => inner.FlushAsync(ct);
        public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => inner.DiscardAsync(offset, length, ct);
        public (bool Allocated, long Length) GetAllocation(long offset) => inner.GetAllocation(offset);
        public void Dispose() { }
    }

    [Test]
    public void The_journal_superblock_names_its_version_and_refuses_unknown_ones_clearly()
    {
        var g = Geo(4096, TagAlgorithm.Crc32c);
        foreach (uint v in new[] { JournalSuper.AlignedVersion, JournalSuper.CompactVersion })
        {
            var s = new JournalSuper(3, 10, 512 * 3, 2, 0, v).Serialize();
            var back = JournalSuper.Parse(s, g.JournalAreaBytes, out var problem);
            if (v == JournalSuper.AlignedVersion) Assert.That(problem, Does.Contain("start offset 1536"), "version 2 rings start on 4 KiB");
            else Assert.That(back, Is.EqualTo(new JournalSuper(3, 10, 1536, 2, 0, v)), problem);
        }
        var newer = new JournalSuper(1, 1, 0, 0, 0, 4).Serialize();
        Assert.That(JournalSuper.Parse(newer, g.JournalAreaBytes, out var why), Is.Null);
        Assert.That(why, Does.Contain("version 4 is newer than this build").And.Contain("newer integrity-target"));
    }

    /// <summary>Writes <paramref name="version"/> of 4 KiB at each of <paramref name="lbas"/>, one command (one transaction) each.</summary>
    private static async Task WriteEach(IntegrityVolume v, IEnumerable<ulong> lbas, int version)
    {
        foreach (var l in lbas) await T.WriteOk(v, l, T.Pattern(l, 4096 / v.BlockSize, v.BlockSize, version));
    }

    /// <summary>Every chunk mapped (so later small writes are journaled, not first writes into a new slot), durable.</summary>
    private static async Task Fill(IntegrityVolume v) => await T.WriteOk(v, 0, T.Pattern(0, (int)Blocks, v.BlockSize, 0), fua: true);

    [TestCase(4096, TagAlgorithm.Crc32c)]
    [TestCase(512, TagAlgorithm.HmacSha256)]
    [TestCase(512, TagAlgorithm.XxHash64)]
    public async Task A_version_2_volume_replays_its_ring_switches_at_open_and_a_compact_transaction_torn_at_any_sector_is_all_or_nothing(int bs, TagAlgorithm alg)
    {
        var g = Geo(bs, alg);
        var log = new CapturingSink().Logger();
        // An older main's volume: 4 KiB transactions (a device that prefers 4 KiB writes), abandoned with its ring full of them.
        var dev1 = new CrashSimulatingDevice(new MemoryBlockDevice(DeviceBytes(bs, alg))) { PreferredWriteUnit = 4096 };
        int perWrite = 4096 / bs; // one 4 KiB command: 1 or 8 blocks
        var old = Enumerable.Range(0, 24).Select(i => (ulong)(i * 7 % ((int)Blocks / perWrite) * perWrite)).ToArray();
        var v1 = await IntegrityVolume.FormatAsync(dev1, Fmt(bs, alg), log);
        await Fill(v1);
        await WriteEach(v1, old, 1);
        Assert.That((await v1.FlushAsync()).Status, Is.EqualTo(VolumeStatus.Ok));
        await v1.AbandonAsync();
        var image1 = dev1.Crash(CrashMode.Drop, 0);
        Assert.That(SuperOf(image1, g).Version, Is.EqualTo(JournalSuper.AlignedVersion));

        // Opened by this build on a file-like device: the version-2 ring is replayed, the journal switches to compact.
        var dev2 = new CrashSimulatingDevice(CrashSimulatingDevice.CopyImage(image1), record: true);
        var v2 = await IntegrityVolume.OpenAsync(dev2, T.Open(alg), log);
        Assert.That(v2.LastRecovery.TransactionsReplayed, Is.GreaterThanOrEqualTo(old.Length), "every version-2 transaction replayed");
        Assert.That(SuperOf(dev2, g).Version, Is.EqualTo(JournalSuper.CompactVersion));
        foreach (var l in old) Assert.That(await T.ReadOk(v2, l, perWrite), Is.EqualTo(T.Pattern(l, perWrite, bs, 1)));
        ulong x = old[3], y = old[5];
        await T.WriteOk(v2, x, T.Pattern(x, perWrite, bs, 2), fua: true);
        await T.WriteOk(v2, y, T.Pattern(y, perWrite, bs, 2));
        await v2.AbandonAsync();

        // The torn one: the last journal write of a 4 KiB command, 512 + 4096 B, over the old ring's bytes.
        var ops = dev2.RecordedOperations;
        int ti = ops.Count - 1;
        while (!(ops[ti].Kind == DeviceOperationKind.Write && ops[ti].Offset >= g.JournalAreaOffset && ops[ti].Offset < g.JournalAreaOffset + g.JournalAreaBytes && ops[ti].Length == 4608)) ti--;
        var torn = ops[ti];
        Assert.That(torn.Fua, Is.False);
        int sectors = (int)(torn.Length / 512);
        var patterns = new List<(string Name, Func<int, bool> Kept)>();
        for (int k = 0; k <= sectors; k++) { int kk = k; patterns.Add(($"first {k} of {sectors} sectors", i => i < kk)); }
        for (int s = 0; s < sectors; s++) { int ss = s; patterns.Add(($"every sector but {s}", i => i != ss)); }
        foreach (var (name, kept) in patterns)
        {
            var replay = new CrashSimulatingDevice(CrashSimulatingDevice.CopyImage(image1));
            for (int i = 0; i < ti; i++) replay.Replay(ops[i]);
            var before = new byte[torn.Length];
            await replay.ReadAsync(torn.Offset, before);
            var merged = torn.Data.ToArray();
            for (int i = 0; i < sectors; i++) if (!kept(i)) before.AsSpan(i * 512, 512).CopyTo(merged.AsSpan(i * 512));
            await replay.WriteAsync(torn.Offset, merged, fua: false);
            var image = replay.Crash(CrashMode.KeepAll, 0);

            await using var v = await IntegrityVolume.OpenAsync(image, T.Open(alg), log);
            bool whole = Enumerable.Range(0, sectors).All(kept);
            Assert.That(await T.ReadOk(v, y, perWrite), Is.EqualTo(T.Pattern(y, perWrite, bs, whole ? 2 : 1)), $"{name}: the torn command is all or nothing");
            Assert.That(await T.ReadOk(v, x, perWrite), Is.EqualTo(T.Pattern(x, perWrite, bs, 2)), $"{name}: the durable command before it");
            foreach (var l in old.Where(l => l != x && l != y))
                Assert.That(await T.ReadOk(v, l, perWrite), Is.EqualTo(T.Pattern(l, perWrite, bs, 1)), $"{name}: LBA {l}");
            Assert.That(v.LastRecovery.CorruptTransactionFound, Is.False, name);
            Assert.That(SuperOf(image, g).Version, Is.EqualTo(JournalSuper.CompactVersion), name);
        }
    }

    [Test]
    public async Task A_volume_on_a_device_that_prefers_4_KiB_writes_keeps_version_2_and_its_transactions_aligned()
    {
        var g = Geo(4096, TagAlgorithm.Crc32c);
        var dev = new CrashSimulatingDevice(new MemoryBlockDevice(DeviceBytes(4096, TagAlgorithm.Crc32c)), record: true) { PreferredWriteUnit = 4096 };
        await using (var v = await IntegrityVolume.FormatAsync(dev, Fmt(4096, TagAlgorithm.Crc32c), new CapturingSink().Logger()))
        {
            await WriteEach(v, [1, 9, 30], 1);
            await v.FlushAsync();
        }
        Assert.That(SuperOf(dev, g).Version, Is.EqualTo(JournalSuper.AlignedVersion));
        var journal = dev.RecordedOperations.Where(o => o.Kind == DeviceOperationKind.Write && o.Offset >= g.JournalAreaOffset && o.Offset < g.JournalAreaOffset + g.JournalAreaBytes).ToList();
        Assert.That(journal, Is.Not.Empty);
        Assert.That(journal.All(o => (o.Offset - g.JournalAreaOffset) % 4096 == 0 && o.Length % 4096 == 0), Is.True);
    }

    [Test]
    public async Task Compact_transactions_pack_the_ring_and_the_volume_reopens_with_every_block()
    {
        var g = Geo(4096, TagAlgorithm.Crc32c);
        var log = new CapturingSink().Logger();
        var dev = new CrashSimulatingDevice(new MemoryBlockDevice(DeviceBytes(4096, TagAlgorithm.Crc32c)), record: true);
        var lbas = Enumerable.Range(0, 40).Select(i => (ulong)(i * 11 % (int)Blocks)).Distinct().ToArray();
        var v = await IntegrityVolume.FormatAsync(dev, Fmt(4096, TagAlgorithm.Crc32c), log);
        await Fill(v);
        await WriteEach(v, lbas, 1);
        await v.FlushAsync();
        await v.AbandonAsync();
        var journal = dev.RecordedOperations.Where(o => o.Kind == DeviceOperationKind.Write && o.Offset >= g.JournalAreaOffset && o.Offset < g.JournalAreaOffset + g.JournalAreaBytes).ToList();
        Assert.That(journal.Count(o => o.Length == 4608), Is.GreaterThanOrEqualTo(lbas.Length), "one 4.5 KiB transaction per 4 KiB write");
        Assert.That(journal.All(o => (o.Offset - g.JournalAreaOffset) % 512 == 0), Is.True);
        await using var again = await IntegrityVolume.OpenAsync(dev.Crash(CrashMode.Drop, 0), T.Open(), log);
        Assert.That(again.LastRecovery.TransactionsReplayed, Is.GreaterThanOrEqualTo(lbas.Length));
        Assert.That(again.LastRecovery.TornDiscarded, Is.EqualTo(0));
        foreach (var l in lbas) Assert.That(await T.ReadOk(again, l, 1), Is.EqualTo(T.Pattern(l, 1, 4096, 1)));
    }
}
