using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Crash;

/// <summary>
/// The crash checker proves itself on <see cref="PlainVolume"/>: with 512-byte blocks and the single-block
/// atomicity it advertises it is crash-correct, so the checker must stay silent; asked for more (4 KiB
/// blocks over 512-byte sectors, multi-block atomicity, a flush that does nothing) the checker must find
/// the violation. A checker that never fails would pass the first test and fail the others.
/// </summary>
public class HarnessSelfTests
{
    private static CrashTarget Plain(int blockSize, ulong blocks) => new(
        $"plain-{blockSize}", blockSize, blocks, (long)blocks * blockSize,
        dev => ValueTask.FromResult<IBlockVolume>(new PlainVolume(dev, blockSize, ownsDevice: false)),
        dev => ValueTask.FromResult<IBlockVolume>(new PlainVolume(dev, blockSize, ownsDevice: false)));

    private static readonly CrashRunOptions Quick = new() { Commands = 80, RandomPoints = 10, MaxWriteBytes = 256 * 1024 };

    [TestCase(1UL), TestCase(2UL), TestCase(3UL)]
    public async Task A_volume_that_keeps_its_promises_passes_every_crash_state(ulong seed)
    {
        var report = await new CrashHarness(Plain(512, 1024), Quick).RunAsync(seed);
        Assert.That(report.Violations, Is.Empty, report.ToString());
        Assert.That(report.CrashStates, Is.GreaterThan(100), report.ToString());
        Assert.That(report.PersistencePoints, Is.GreaterThan(5), report.ToString());
    }

    [Test]
    public async Task A_volume_that_keeps_its_promises_passes_with_write_back_off()
    {
        var target = Plain(512, 1024) with { WriteBack = false };
        var report = await new CrashHarness(target, Quick).RunAsync(11);
        Assert.That(report.Violations, Is.Empty, report.ToString());
    }

    [Test]
    public async Task Torn_4k_blocks_over_512_byte_sectors_are_found_as_garbage()
    {
        var report = await new CrashHarness(Plain(4096, 256), Quick with { Modes = [CrashMode.TearWrites, CrashMode.KeepRandom] }).RunAsync(5);
        Assert.That(report.Violations, Has.Some.Contains("(e) LBA"), report.ToString());
        Assert.That(report.Violations, Has.All.Contains("seed=5"), "every failure names its seed");
    }

    [Test]
    public async Task Non_atomic_multi_block_writes_are_found_when_atomicity_is_claimed()
    {
        var target = Plain(512, 1024) with { AssumedAtomicWriteBlocks = 2048 };
        var report = await new CrashHarness(target, Quick with { Modes = [CrashMode.TearWrites] }).RunAsync(6);
        Assert.That(report.Violations, Has.Some.Contains("(c) write").And.Some.Contains("is not atomic"), report.ToString());
    }

    [Test]
    public async Task A_flush_that_does_not_flush_is_found_as_lost_durable_data()
    {
        var target = Plain(512, 1024) with
        {
            Format = dev => ValueTask.FromResult<IBlockVolume>(new NoFlushVolume(new PlainVolume(dev, 512, ownsDevice: false))),
            Open = dev => ValueTask.FromResult<IBlockVolume>(new NoFlushVolume(new PlainVolume(dev, 512, ownsDevice: false))),
        };
        var report = await new CrashHarness(target, Quick with { Modes = [CrashMode.Drop] }).RunAsync(7);
        Assert.That(report.Violations, Has.Some.Contains("(b) LBA").And.Some.Contains("lost durable"), report.ToString());
    }

    /// <summary>The real volume with its recovery's remap validation switched off: remaps whose slots were lost or
    /// torn (or still hold an older version) are replayed anyway, and the checker must see the damage.</summary>
    [Test]
    public async Task An_integrity_volume_that_skips_remap_validation_is_caught()
    {
        var target = IntegrityVolumeCrashTests.Target(4096, TagAlgorithm.Crc32c, null, skipRemapValidation: true);
        var options = new CrashRunOptions
        {
            Commands = 60, MaxBatch = 3, RandomPoints = 30, RecoveryCrashes = 0, CheckReopenIdempotent = false,
            WholeChunkWrites = 0.7, ChunkBlocks = 32, Modes = [CrashMode.TearWrites, CrashMode.KeepRandom],
        };
        var found = new List<string>();
        for (ulong seed = 1; seed <= 4 && found.Count == 0; seed++) found.AddRange((await new CrashHarness(target, options).RunAsync(seed)).Violations);
        Assert.That(found, Has.Some.Match(@"\((a|b|e)\) LBA"), "a lost or torn slot behind a replayed remap reads back wrong or lost");
        // The same workloads with validation on pass (the real volume).
        var real = IntegrityVolumeCrashTests.Target(4096, TagAlgorithm.Crc32c, null);
        var ok = await new CrashHarness(real, options).RunAsync(1);
        Assert.That(ok.Violations, Is.Empty, string.Join("\n", ok.Violations));
    }

    /// <summary>The real volume with one bug in its spare pool: limbo slots go back to the pool when a background flush
    /// starts rather than when it completes, so a slot whose old contents are still a chunk's durable version can
    /// be overwritten before the remap that replaced it is durable. Flushes are delayed so that window is real.</summary>
    [Test]
    public async Task An_integrity_volume_that_reuses_limbo_slots_before_the_flush_completes_is_caught()
    {
        var options = new CrashRunOptions
        {
            Commands = 70, MaxBatch = 4, RandomPoints = 30, RecoveryCrashes = 0, CheckReopenIdempotent = false,
            WholeChunkWrites = 0.8, ChunkBlocks = 32, Modes = [CrashMode.Drop, CrashMode.TearWrites],
        };
        var broken = IntegrityVolumeCrashTests.Target(4096, TagAlgorithm.Crc32c, null, spareSlots: 8, slowFlushMs: 20, backgroundFlushBelow: 1000, releaseLimboAtFlushStart: true);
        var found = new List<string>();
        for (ulong seed = 1; seed <= 6 && found.Count == 0; seed++) found.AddRange((await new CrashHarness(broken, options).RunAsync(seed)).Violations);
        TestContext.Out.WriteLine(found.Count > 0 ? found[0] : "nothing found");
        Assert.That(found, Has.Some.Match(@"\((a|b|e)\) LBA"), "a chunk whose durable slot was overwritten early reads back wrong or lost");
        var real = IntegrityVolumeCrashTests.Target(4096, TagAlgorithm.Crc32c, null, spareSlots: 8, slowFlushMs: 20, backgroundFlushBelow: 1000);
        var ok = await new CrashHarness(real, options).RunAsync(1);
        Assert.That(ok.Violations, Is.Empty, string.Join("\n", ok.Violations));
    }

    [Test]
    public async Task The_same_seed_gives_the_same_crash_states_and_findings()
    {
        var target = Plain(4096, 256);
        var a = await new CrashHarness(target, Quick).RunAsync(9);
        var b = await new CrashHarness(target, Quick).RunAsync(9);
        Assert.That(a.Violations, Is.Not.Empty);
        Assert.That(b.Violations, Is.EqualTo(a.Violations));
        Assert.That(b.CrashStates, Is.EqualTo(a.CrashStates));
    }

    /// <summary>A deliberately broken volume: FUA and flush are acknowledged but nothing is made durable.</summary>
    private sealed class NoFlushVolume(PlainVolume inner) : IBlockVolume
    {
        public string Name => inner.Name;
        public int BlockSize => inner.BlockSize;
        public ulong BlockCount => inner.BlockCount;
        public uint MaxAtomicWriteBlocks => inner.MaxAtomicWriteBlocks;
        public bool WriteBack { get => true; set { } }
        public bool SupportsUnmap => inner.SupportsUnmap;
        public string TagAlgorithm => inner.TagAlgorithm;
        public VolumeCounters Counters => inner.Counters;
        public ValueTask<VolumeResult> ReadAsync(ulong lba, Memory<byte> buffer, IoContext? context = null, CancellationToken ct = default) => inner.ReadAsync(lba, buffer, context, ct);
        public ValueTask<VolumeResult> WriteAsync(ulong lba, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) => inner.WriteAsync(lba, data, false, ct);
        public ValueTask<VolumeResult> FlushAsync(CancellationToken ct = default) => ValueTask.FromResult(VolumeResult.Success);
        public ValueTask<VolumeResult> UnmapAsync(ulong lba, ulong blocks, CancellationToken ct = default) => inner.UnmapAsync(lba, blocks, ct);
        public ValueTask<VolumeResult> WriteZeroesAsync(ulong lba, ulong blocks, bool deallocate, CancellationToken ct = default) => inner.WriteZeroesAsync(lba, blocks, deallocate, ct);
        public ValueTask<LbaExtent> GetLbaStatusAsync(ulong lba, CancellationToken ct = default) => inner.GetLbaStatusAsync(lba, ct);
        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }
}
