using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Crash;

/// <summary>
/// The crash properties of issue 3 against the real <see cref="IntegrityVolume"/>: crash at every device
/// flush/FUA point of fixed workloads and at random points of random workloads, in every crash mode,
/// reopen (running recovery), check; crash again in the middle of that recovery, reopen, check again.
/// CI runs a few thousand crash states; set INTEGRITY_CRASH_LONG=1 (10× the seeds) or
/// INTEGRITY_CRASH_STATES=n (random workloads until n states per configuration) for a long run, and
/// INTEGRITY_CRASH_SEED=s to rerun one seed printed by a failure.
/// </summary>
[Parallelizable(ParallelScope.Children)]
public class IntegrityVolumeCrashTests
{
    private static readonly byte[] Key = Enumerable.Range(100, 32).Select(i => (byte)i).ToArray();

    /// <summary>(block size, algorithm, journal bytes): both block sizes, every algorithm, a small journal that wraps and checkpoints.</summary>
    private static readonly (int Bs, TagAlgorithm Alg, long? Journal)[] Configs =
    [
        (4096, TagAlgorithm.Crc32c, null),
        (512, TagAlgorithm.XxHash64, null),
        (4096, TagAlgorithm.HmacSha256, null),
        (512, TagAlgorithm.Crc32c, 1L << 20),
    ];

    /// <param name="spareSlots">Spare pool at format (null = the default).</param>
    /// <param name="slowFlushMs">&gt; 0: every device flush waits up to this long first (<see cref="SlowFlushDevice"/>), so
    /// background flushes overlap the writes after them.</param>
    /// <param name="opened">Sees every volume the harness formats or opens (to read its counters).</param>
    internal static CrashTarget Target(int blockSize, TagAlgorithm alg, long? journalBytes, bool writeBack = true, int? parallelApplyBlocks = null, bool skipRemapValidation = false, long? tagCacheBytes = null,
        long? spareSlots = null, int slowFlushMs = 0, Action<IntegrityVolume>? opened = null, bool releaseLimboAtFlushStart = false, long? backgroundFlushBelow = null,
        int? recordedWriteUnit = null)
    {
        ulong blocks = (ulong)((2 << 20) / blockSize); // 2 MiB: 16 chunks of 128 KiB, room for 1 MiB writes
        var key = alg == TagAlgorithm.HmacSha256 ? Key : ReadOnlyMemory<byte>.Empty;
        var log = Serilog.Core.Logger.None;
        var tuning = new OpenOptions
        {
            Key = key, WriteBack = writeBack, ParallelApplyBlocks = parallelApplyBlocks ?? new OpenOptions().ParallelApplyBlocks,
            SkipRemapValidation = skipRemapValidation, TagCacheBytes = tagCacheBytes ?? new OpenOptions().TagCacheBytes,
            ReleaseLimboAtFlushStart = releaseLimboAtFlushStart, BackgroundFlushBelow = backgroundFlushBelow,
        };
        ulong flushSeed = 0;
        IBlockDevice Wrap(IBlockDevice dev) => slowFlushMs > 0 ? new SlowFlushDevice(dev, slowFlushMs, ++flushSeed) : dev;
        IntegrityVolume Seen(IntegrityVolume v) { opened?.Invoke(v); return v; }
        return new CrashTarget(
            $"integrity-{blockSize}-{alg}{(journalBytes is { } j ? $"-j{j >> 10}k" : "")}{(writeBack ? "" : "-wt")}{(parallelApplyBlocks is { } pa ? $"-pa{pa}" : "")}{(skipRemapValidation ? "-novalidate" : "")}{(tagCacheBytes is { } tc ? $"-tc{tc}" : "")}"
                + $"{(recordedWriteUnit is { } wu ? $"-unit{wu}" : "")}{(spareSlots is { } sp ? $"-spare{sp}" : "")}{(slowFlushMs > 0 ? $"-slowflush{slowFlushMs}" : "")}{(releaseLimboAtFlushStart ? "-earlyrelease" : "")}{(backgroundFlushBelow is { } bf ? $"-bg{bf}" : "")}",
            blockSize, blocks, IntegrityVolume.DeviceBytesFor(blocks, blockSize, alg, journalBytes, spareSlots),
            async dev =>
            {
                // The recorded run's device: 4096 makes it write version-2 (4 KiB) transactions; recoveries open on 512 devices.
                if (recordedWriteUnit is int u && dev is CrashSimulatingDevice cs) cs.PreferredWriteUnit = u;
                return Seen(await IntegrityVolume.FormatAsync(Wrap(dev), new FormatOptions
            {
                BlockSize = blockSize, Algorithm = alg, Key = key, JournalBytes = journalBytes, LogicalBlocks = blocks, SpareSlots = spareSlots, Tuning = tuning,
            }, log));
            },
            async dev => Seen(await IntegrityVolume.OpenAsync(Wrap(dev), tuning, log)))
        {
            WriteBack = writeBack,
        };
    }

    private static bool Long => Environment.GetEnvironmentVariable("INTEGRITY_CRASH_LONG") == "1";

    private static int? StatesWanted =>
        int.TryParse(Environment.GetEnvironmentVariable("INTEGRITY_CRASH_STATES"), out int n) && n > 0 ? n : null;

    private static ulong[] Seeds(ulong first, int count)
    {
        if (ulong.TryParse(Environment.GetEnvironmentVariable("INTEGRITY_CRASH_SEED"), out ulong s)) return [s];
        return Enumerable.Range(0, Long ? count * 10 : count).Select(i => first + (ulong)i).ToArray();
    }

    private static IEnumerable<TestCaseData> ConfigCases() =>
        Configs.Select(c => new TestCaseData(c.Bs, c.Alg, c.Journal).SetArgDisplayNames($"{c.Bs}", $"{c.Alg}", c.Journal is { } j ? $"journal {j >> 10} KiB" : "default journal"));

    private static async Task<CrashReport> RunSeeds(CrashTarget target, CrashRunOptions options, ulong[] seeds, int? statesWanted = null)
    {
        var total = new CrashReport();
        for (int i = 0; ; i++)
        {
            ulong seed = i < seeds.Length ? seeds[i] : seeds[^1] + (ulong)(i - seeds.Length + 1);
            if (i >= seeds.Length && (statesWanted is null || total.CrashStates >= statesWanted)) break;
            var r = await new CrashHarness(target, options).RunAsync(seed);
            total.CrashStates += r.CrashStates;
            total.RecoveryCrashStates += r.RecoveryCrashStates;
            total.DeviceOperations += r.DeviceOperations;
            total.PersistencePoints += r.PersistencePoints;
            total.MostRewrittenFuaLocation = Math.Max(total.MostRewrittenFuaLocation, r.MostRewrittenFuaLocation);
            total.Violations.AddRange(r.Violations);
            total.RecordTime += r.RecordTime; total.CheckTime += r.CheckTime;
            if (total.Violations.Count > 0) break;
        }
        TestContext.Out.WriteLine($"{target.Name}: {total}");
        return total;
    }

    [TestCaseSource(nameof(ConfigCases))]
    public async Task A_crash_at_every_flush_and_FUA_point_leaves_every_block_readable_durable_and_old_or_new(int blockSize, TagAlgorithm alg, long? journal)
    {
        var options = new CrashRunOptions { Commands = 70, MaxBatch = 4, RandomPoints = 0, RecoveryCrashes = 1 };
        var report = await RunSeeds(Target(blockSize, alg, journal), options, Seeds(1000, 2));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
        Assert.That(report.PersistencePoints, Is.GreaterThan(10), "the workload must reach the device's persistence points");
        Assert.That(report.RecoveryCrashStates, Is.GreaterThan(0), "recovery must be crashed in the middle at least once");
    }

    [TestCaseSource(nameof(ConfigCases))]
    public async Task Random_crash_points_of_random_workloads_keep_the_crash_properties(int blockSize, TagAlgorithm alg, long? journal)
    {
        var options = new CrashRunOptions { Commands = 60, MaxBatch = 6, EveryPersistencePoint = false, RandomPoints = 40, RecoveryCrashes = 1 };
        var report = await RunSeeds(Target(blockSize, alg, journal), options, Seeds(2000, 4), StatesWanted);
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
        Assert.That(report.CrashStates, Is.GreaterThan(100));
    }

    /// <summary>Whole-chunk overwrites (remaps committed without a flush, slots reused within one flush epoch)
    /// interleaved with FUA writes and flushes: a crash before and after every flush and FUA point, and at random points.</summary>
    [TestCaseSource(nameof(ConfigCases))]
    public async Task Unflushed_remaps_interleaved_with_FUA_writes_and_flushes_keep_the_crash_properties(int blockSize, TagAlgorithm alg, long? journal)
    {
        var options = new CrashRunOptions
        {
            Commands = 70, MaxBatch = 4, RandomPoints = 20, RecoveryCrashes = 1,
            WholeChunkWrites = 0.6, ChunkBlocks = (uint)(128 * 1024 / blockSize),
        };
        var report = await RunSeeds(Target(blockSize, alg, journal), options, Seeds(8000, 1));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
        Assert.That(report.PersistencePoints, Is.GreaterThan(10));
    }

    /// <summary>Whole-chunk overwrites through the smallest spare pool format accepts (8 slots), with a background flush
    /// started whenever limbo holds unflushed replacements: limbo slots are reused right after a background flush completes, flushes are
    /// still running (delayed) while later transactions and slot writes go out, and SYNCHRONIZE CACHE and FUA
    /// writes come in between. A crash before and after every flush and FUA point and at random points.</summary>
    [TestCaseSource(nameof(ConfigCases))]
    public async Task Background_flushes_of_a_small_spare_pool_keep_the_crash_properties(int blockSize, TagAlgorithm alg, long? journal)
    {
        var volumes = new List<IntegrityVolume>();
        var target = Target(blockSize, alg, journal, spareSlots: 8, slowFlushMs: 3, backgroundFlushBelow: 1000, opened: v => { lock (volumes) volumes.Add(v); });
        var options = new CrashRunOptions
        {
            Commands = 70, MaxBatch = 4, RandomPoints = 20, RecoveryCrashes = 1,
            WholeChunkWrites = 0.7, ChunkBlocks = (uint)(128 * 1024 / blockSize),
        };
        var report = await RunSeeds(target, options, Seeds(9000, 1));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
        long background;
        lock (volumes) background = volumes.Sum(v => v.BackgroundFlushes);
        Assert.That(background, Is.GreaterThan(0), "the workload must make background flushes");
        Assert.That(report.PersistencePoints, Is.GreaterThan(10));
    }

    [Test]
    public async Task With_write_back_off_every_completed_write_survives_a_crash()
    {
        var options = new CrashRunOptions { Commands = 50, MaxBatch = 4, RandomPoints = 30, RecoveryCrashes = 1 };
        var report = await RunSeeds(Target(4096, TagAlgorithm.Crc32c, null, writeBack: false), options, Seeds(3000, 1));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
    }

    [Test]
    public async Task Commands_issued_from_many_threads_at_once_keep_the_crash_properties()
    {
        var options = new CrashRunOptions { Commands = 80, MaxBatch = 8, ParallelIssue = true, EveryPersistencePoint = false, RandomPoints = 40, RecoveryCrashes = 1 };
        var report = await RunSeeds(Target(4096, TagAlgorithm.XxHash64, null), options, Seeds(4000, 2));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
    }

    [TestCase(512), TestCase(4096)]
    public async Task A_small_journal_that_wraps_and_checkpoints_many_times_keeps_the_crash_properties(int blockSize)
    {
        // Only small writes: every one goes through the data journal, so 1 MiB of journal fills several times.
        var options = new CrashRunOptions { Commands = 300, MaxBatch = 6, MaxWriteBytes = 96 * 1024, EveryPersistencePoint = false, RandomPoints = 40, RecoveryCrashes = 1 };
        var report = await RunSeeds(Target(blockSize, TagAlgorithm.Crc32c, 1L << 20), options, Seeds(6000, 1));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
    }

    [Test]
    public async Task Home_copies_split_between_threads_keep_the_crash_properties()
    {
        // These 2 MiB volumes rarely hold 512 pending blocks, so the threshold is lowered: nearly every home
        // copy is split. The device's write order then depends on thread timing, so a seed may not replay
        // the exact same crash states; each run is still checked against what it recorded.
        var options = new CrashRunOptions { Commands = 300, MaxBatch = 6, MaxWriteBytes = 96 * 1024, EveryPersistencePoint = false, RandomPoints = 40, RecoveryCrashes = 1 };
        var report = await RunSeeds(Target(512, TagAlgorithm.Crc32c, 1L << 20, parallelApplyBlocks: 4), options, Seeds(7000, 3));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
        Assert.That(report.CrashStates, Is.GreaterThan(100));
    }

    /// <summary>Home copies take the tags they rewrite from the tag cache (on by default, so every other case runs
    /// with it): here a cache with room for 3 of the 16 slots, so entries are evicted, missed and re-read all the
    /// time, and no cache at all. Every reopen starts with an empty cache, so the check reads the device's tags.</summary>
    [TestCase(3 * 1024L), TestCase(0L)]
    public async Task Small_writes_with_a_tiny_tag_cache_or_none_keep_the_crash_properties(long tagCacheBytes)
    {
        var options = new CrashRunOptions { Commands = 300, MaxBatch = 6, MaxWriteBytes = 96 * 1024, EveryPersistencePoint = false, RandomPoints = 40, RecoveryCrashes = 1 };
        var report = await RunSeeds(Target(512, TagAlgorithm.Crc32c, 1L << 20, tagCacheBytes: tagCacheBytes), options, Seeds(9000, 2));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
        Assert.That(report.CrashStates, Is.GreaterThan(100));
    }

    /// <summary>Slows the writes a checkpoint makes outside the journal (home copies, tag regions, map sectors:
    /// smaller than a chunk, past the journal) so background checkpoints of the older part of the ring overlap
    /// the commits of the newer part in the recorded run; crash states then fall while one runs (write path 7a).</summary>
    private sealed class SlowHomeDevice(IBlockDevice inner, long journalEnd) : IBlockDevice
    {
        public string Name => inner.Name;
        public long Length => inner.Length;
        public int SectorSize => inner.SectorSize;
        public int PreferredWriteUnit => inner.PreferredWriteUnit;
        public bool CanDeallocate => inner.CanDeallocate;
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) => inner.ReadAsync(offset, buffer, ct);
        public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
        {
            if (offset >= journalEnd && data.Length < 128 * 1024) await Task.Delay(1, ct);
            await inner.WriteAsync(offset, data, fua, ct);
        }
        public ValueTask FlushAsync(CancellationToken ct = default) => inner.FlushAsync(ct);
        public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => inner.DiscardAsync(offset, length, ct);
        public (bool Allocated, long Length) GetAllocation(long offset) => inner.GetAllocation(offset);
        public void Dispose() => inner.Dispose();
    }

    [TestCase(512), TestCase(4096)]
    public async Task Background_checkpoints_overlapping_commits_keep_the_crash_properties_also_when_recovery_crashes(int blockSize)
    {
        var plain = Target(blockSize, TagAlgorithm.Crc32c, 1L << 20);
        var recorded = new System.Collections.Concurrent.ConcurrentBag<IntegrityVolume>();
        var target = plain with
        {
            Name = plain.Name + "-slowhome",
            Format = async dev =>
            {
                // The journal ends at 8 KiB (two superblock copies) + the journal bytes.
                var v = (IntegrityVolume)await plain.Format(new SlowHomeDevice(dev, 8192 + (1L << 20)));
                recorded.Add(v);
                return v;
            },
        };
        // Small writes only (all journaled: the ring fills and is cut again and again), some FUA and flushes.
        var options = new CrashRunOptions { Commands = 300, MaxBatch = 6, MaxWriteBytes = 64 * 1024, EveryPersistencePoint = true, RandomPoints = 40, RecoveryCrashes = 2, MaxStates = 200 };
        var report = await RunSeeds(target, options, Seeds(9500, 2));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
        Assert.That(recorded.Sum(v => v.JournalStats.BackgroundCheckpoints), Is.GreaterThan(0), "the recorded runs must checkpoint in the background");
        Assert.That(report.RecoveryCrashStates, Is.GreaterThan(20));
    }

    /// <summary>Volumes of an older main: the recorded run writes version-2 (4 KiB) transactions (a device that prefers 4 KiB
    /// writes), every recovery opens on a 512 B device and so replays the version-2 ring and switches the journal to the compact
    /// form at the checkpoint that empties it; crashes during those recoveries (before, at and after the switch) recover again.
    /// (A compact ring written over an old-form one and torn there: <c>CompactJournalTests</c>.)</summary>
    [TestCase(512, TagAlgorithm.Crc32c), TestCase(4096, TagAlgorithm.HmacSha256)]
    public async Task A_version_2_ring_recovered_and_switched_to_compact_transactions_keeps_the_crash_properties(int blockSize, TagAlgorithm alg)
    {
        var options = new CrashRunOptions { Commands = 200, MaxBatch = 6, MaxWriteBytes = 64 * 1024, EveryPersistencePoint = false, RandomPoints = 40, RecoveryCrashes = 3 };
        var report = await RunSeeds(Target(blockSize, alg, 1L << 20, recordedWriteUnit: 4096), options, Seeds(9700, 2));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
        Assert.That(report.RecoveryCrashStates, Is.GreaterThan(20));
    }

    [Test]
    public async Task Several_crashes_in_a_row_during_recovery_still_recover()
    {
        var options = new CrashRunOptions { Commands = 60, MaxBatch = 4, EveryPersistencePoint = false, RandomPoints = 15, RecoveryCrashes = 4 };
        var report = await RunSeeds(Target(4096, TagAlgorithm.Crc32c, 1L << 20), options, Seeds(5000, 1));
        Assert.That(report.Violations, Is.Empty, string.Join("\n", report.Violations));
        Assert.That(report.RecoveryCrashStates, Is.GreaterThan(20));
    }
}
