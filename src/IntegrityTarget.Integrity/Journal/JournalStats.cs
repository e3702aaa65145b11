using System.Diagnostics;

namespace IntegrityTarget.Integrity;

/// <summary>
/// Where the journal's time and device calls go, counted since open (issue 12/15: where a small write waits).
/// Cheap enough to stay on: plain or interlocked adds and one timestamp pair per wait. Read with
/// <see cref="IntegrityVolume.JournalStats"/>; each checkpoint also logs the figures since the previous
/// one at Debug.
/// </summary>
public sealed record JournalStatistics
{
    /// <summary>Journal transactions written (markers included), and the device writes they took.</summary>
    public long Transactions { get; init; }
    /// <summary>Device flushes started by the committer and by checkpoints.</summary>
    public long Flushes { get; init; }
    /// <summary>Checkpoints that ran while commits went on (the older part of the ring), and ones the
    /// committer had to run itself, every writer waiting (ring full, close, recovery).</summary>
    public long BackgroundCheckpoints { get; init; }
    public long BlockingCheckpoints { get; init; }
    /// <summary>Milliseconds the committer spent waiting for journal space (a checkpoint to finish, or one it ran itself):
    /// every queued writer waits that long too.</summary>
    public double CommitterWaitMs { get; init; }
    /// <summary>Milliseconds of checkpoint work (home copies, map, flush, journal superblock), wherever it ran.</summary>
    public double CheckpointMs { get; init; }
    /// <summary>Milliseconds the committer spent on the durable point that cuts the ring for a background checkpoint
    /// (flush and marker): every queued writer waits that long too.</summary>
    public double CutMs { get; init; }
    /// <summary>Milliseconds writers spent blocked by back-pressure (too much queued for the committer), summed over writers.</summary>
    public double BackpressureWaitMs { get; init; }
    /// <summary>Milliseconds writers spent waiting for a free slot, summed over writers.</summary>
    public double SlotWaitMs { get; init; }
    /// <summary>Home copies: blocks, slots, tag regions read from the device (the rest came from the tag cache),
    /// data writes (one per run of consecutive blocks) and tag-region writes.</summary>
    public long HomeBlocks { get; init; }
    public long HomeSlots { get; init; }
    public long HomeTagReads { get; init; }
    public long HomeDataWrites { get; init; }
    public long HomeTagWrites { get; init; }
    /// <summary>Journaled blocks read back from the ring: device reads of home copies (one per run of consecutive ring
    /// positions), and blocks that reads found only in the ring (their images are not kept in memory once written).</summary>
    public long HomeRingReads { get; init; }
    public long ReadRingBlocks { get; init; }

    public override string ToString() =>
        $"{Transactions} transactions, {Flushes} flushes, checkpoints {BackgroundCheckpoints} background / {BlockingCheckpoints} blocking " +
        $"({CheckpointMs:F0} ms of work; committer waited {CommitterWaitMs:F0} ms for ring space and {CutMs:F0} ms at cuts), writers waited {BackpressureWaitMs:F0} ms on back-pressure " +
        $"and {SlotWaitMs:F0} ms for slots; home copies: {HomeBlocks} blocks in {HomeSlots} slots, {HomeTagReads} tag reads, " +
        $"{HomeDataWrites} data writes, {HomeTagWrites} tag writes, {HomeRingReads} ring reads; reads took {ReadRingBlocks} blocks from the ring";
}

public sealed partial class IntegrityVolume
{
    private long _stTxns, _stFlushes, _stBgCkpts, _stSyncCkpts, _stCommitterWaitTicks, _stCkptTicks, _stCutTicks, _stBackpressureTicks, _stSlotWaitTicks;
    private long _stHomeBlocks, _stHomeSlots, _stHomeTagReads, _stHomeDataWrites, _stHomeTagWrites, _stRingReadBlocks, _stHomeRingReads;
    private JournalStatistics _stAtLastCheckpoint = new();

    /// <summary>Journal figures since open (see <see cref="JournalStatistics"/>).</summary>
    public JournalStatistics JournalStats => new()
    {
        Transactions = Interlocked.Read(ref _stTxns),
        Flushes = Interlocked.Read(ref _stFlushes),
        BackgroundCheckpoints = Interlocked.Read(ref _stBgCkpts),
        BlockingCheckpoints = Interlocked.Read(ref _stSyncCkpts),
        CommitterWaitMs = Ms(Interlocked.Read(ref _stCommitterWaitTicks)),
        CheckpointMs = Ms(Interlocked.Read(ref _stCkptTicks)),
        CutMs = Ms(Interlocked.Read(ref _stCutTicks)),
        BackpressureWaitMs = Ms(Interlocked.Read(ref _stBackpressureTicks)),
        SlotWaitMs = Ms(Interlocked.Read(ref _stSlotWaitTicks)),
        HomeBlocks = Interlocked.Read(ref _stHomeBlocks),
        HomeSlots = Interlocked.Read(ref _stHomeSlots),
        HomeTagReads = Interlocked.Read(ref _stHomeTagReads),
        HomeDataWrites = Interlocked.Read(ref _stHomeDataWrites),
        HomeTagWrites = Interlocked.Read(ref _stHomeTagWrites),
        HomeRingReads = Interlocked.Read(ref _stHomeRingReads),
        ReadRingBlocks = Interlocked.Read(ref _stRingReadBlocks),
    };

    private static double Ms(long ticks) => ticks * 1000.0 / Stopwatch.Frequency;

    /// <summary>Debug: the figures since the previous checkpoint (one line per checkpoint, nothing when Debug is off).</summary>
    private void LogCheckpointStats(string kind)
    {
        if (!_log.IsEnabled(Serilog.Events.LogEventLevel.Debug)) return;
        var now = JournalStats;
        var d = _stAtLastCheckpoint;
        _stAtLastCheckpoint = now;
        _log.Debug("{Kind} checkpoint of {Volume}: since the last one {Delta}", kind, Name, new JournalStatistics
        {
            Transactions = now.Transactions - d.Transactions, Flushes = now.Flushes - d.Flushes,
            BackgroundCheckpoints = now.BackgroundCheckpoints - d.BackgroundCheckpoints, BlockingCheckpoints = now.BlockingCheckpoints - d.BlockingCheckpoints,
            CommitterWaitMs = now.CommitterWaitMs - d.CommitterWaitMs, CheckpointMs = now.CheckpointMs - d.CheckpointMs,
            CutMs = now.CutMs - d.CutMs,
            BackpressureWaitMs = now.BackpressureWaitMs - d.BackpressureWaitMs, SlotWaitMs = now.SlotWaitMs - d.SlotWaitMs,
            HomeBlocks = now.HomeBlocks - d.HomeBlocks, HomeSlots = now.HomeSlots - d.HomeSlots, HomeTagReads = now.HomeTagReads - d.HomeTagReads,
            HomeDataWrites = now.HomeDataWrites - d.HomeDataWrites, HomeTagWrites = now.HomeTagWrites - d.HomeTagWrites,
            HomeRingReads = now.HomeRingReads - d.HomeRingReads, ReadRingBlocks = now.ReadRingBlocks - d.ReadRingBlocks,
        }.ToString());
    }
}
