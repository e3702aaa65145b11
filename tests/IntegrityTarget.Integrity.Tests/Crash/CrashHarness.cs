using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Crash;

/// <summary>A volume implementation under crash test, reached only through these delegates.</summary>
internal sealed record CrashTarget(
    string Name,
    int BlockSize,
    ulong Blocks,
    long DeviceBytes,
    Func<IBlockDevice, ValueTask<IBlockVolume>> Format,
    Func<IBlockDevice, ValueTask<IBlockVolume>> Open)
{
    /// <summary>Check command atomicity up to this many blocks instead of what the volume advertises (harness self-tests).</summary>
    public uint? AssumedAtomicWriteBlocks { get; init; }
    public bool WriteBack { get; init; } = true;
}

internal sealed record CrashRunOptions
{
    public int Commands { get; init; } = 60;
    public int MaxBatch { get; init; } = 4;
    /// <summary>Largest write in bytes (the 1 MiB multi-chunk path).</summary>
    public int MaxWriteBytes { get; init; } = 1 << 20;
    /// <summary>Crash just before and just after every device flush / FUA write of the run.</summary>
    public bool EveryPersistencePoint { get; init; } = true;
    /// <summary>Also crash at this many uniformly chosen device operations.</summary>
    public int RandomPoints { get; init; } = 8;
    public CrashMode[] Modes { get; init; } = Enum.GetValues<CrashMode>();
    /// <summary>Per crash state, crash this many times again at random points during recovery (reopen).</summary>
    public int RecoveryCrashes { get; init; } = 1;
    /// <summary>After recovery: flush, lose power, reopen, and expect exactly the same contents.</summary>
    public bool CheckReopenIdempotent { get; init; } = true;
    /// <summary>Stop checking crash states after this many (a cap on run time); the recorded run is always complete.</summary>
    public int MaxStates { get; init; } = int.MaxValue;
    public int MaxViolations { get; init; } = 10;
    /// <summary>Issue each batch's commands from pool threads at once instead of one after another from the test thread.</summary>
    public bool ParallelIssue { get; init; }
    /// <summary>Chance that a write is one or two whole aligned chunks (needs <see cref="ChunkBlocks"/>).</summary>
    public double WholeChunkWrites { get; init; }
    public uint ChunkBlocks { get; init; }
}

internal sealed class CrashReport
{
    public int CrashStates { get; set; }
    public int RecoveryCrashStates { get; set; }
    public long DeviceOperations { get; set; }
    public int PersistencePoints { get; set; }
    public List<string> Violations { get; } = new();
    public TimeSpan RecordTime { get; set; }
    /// <summary>FUA writes to the most often FUA-written offset (a journal superblock rewritten at each checkpoint shows here).</summary>
    public int MostRewrittenFuaLocation { get; set; }
    public TimeSpan CheckTime { get; set; }
    public override string ToString() =>
        $"{CrashStates} crash states, {RecoveryCrashStates} crashes during recovery, {DeviceOperations} device ops, {PersistencePoints} flush/FUA points (max {MostRewrittenFuaLocation} FUA at one offset), {Violations.Count} violations (run {RecordTime.TotalSeconds:F1} s, checks {CheckTime.TotalSeconds:F1} s)";
}

/// <summary>
/// Runs a seeded random workload against a volume on a recording <see cref="CrashSimulatingDevice"/>, then
/// replays the device record to crash points (every flush/FUA, plus random ones), cuts the power there in
/// each <see cref="CrashMode"/>, reopens the volume on the survivor image and checks the crash properties
/// against the <see cref="CrashModel"/>. Every message names target, seed, crash point and mode.
/// </summary>
internal sealed class CrashHarness(CrashTarget target, CrashRunOptions options)
{

    public async Task<CrashReport> RunAsync(ulong seed)
    {
        var report = new CrashReport();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        try { return await RunCoreAsync(seed, report, clock); }
        finally { report.CheckTime = clock.Elapsed - report.RecordTime; }
    }

    private async Task<CrashReport> RunCoreAsync(ulong seed, CrashReport report, System.Diagnostics.Stopwatch clock)
    {
        var stamp = new BlockStamp(SplitMix64.Hash(seed, 0xB10C), target.BlockSize);
        uint maxWrite = (uint)Math.Max(1, options.MaxWriteBytes / target.BlockSize);
        var batches = WorkloadGenerator.Generate(seed, target.Blocks, maxWrite, options.Commands, options.MaxBatch, options.WholeChunkWrites, options.ChunkBlocks);

        // 1. The recorded run.
        var dev = new CrashSimulatingDevice(new MemoryBlockDevice(target.DeviceBytes, target.Name), record: true);
        var vol = await target.Format(dev);
        long formatOps = dev.OperationCount;
        vol.WriteBack = target.WriteBack;
        uint atomic = target.AssumedAtomicWriteBlocks ?? vol.MaxAtomicWriteBlocks;
        var all = batches.SelectMany(b => b).ToList();
        var seqLock = new object();
        long seq = 0;
        var reads = new List<(Command Cmd, byte[] Data)>();

        async Task Issue(Command c)
        {
            byte[]? data = null;
            if (c.Kind is CommandKind.Write or CommandKind.Read) data = new byte[c.Blocks * (ulong)target.BlockSize];
            if (c.Kind == CommandKind.Write)
                for (uint i = 0; i < c.Blocks; i++) stamp.Fill(data.AsSpan((int)(i * target.BlockSize), target.BlockSize), c.Id, c.Lba + i);
            lock (seqLock) { c.StartSeq = ++seq; c.StartOps = dev.OperationCount; }
            var r = c.Kind switch
            {
                CommandKind.Write => await vol.WriteAsync(c.Lba, data, c.Fua),
                CommandKind.Read => await vol.ReadAsync(c.Lba, data),
                CommandKind.Flush => await vol.FlushAsync(),
                CommandKind.Unmap => await vol.UnmapAsync(c.Lba, c.Blocks),
                _ => await vol.WriteZeroesAsync(c.Lba, c.Blocks, deallocate: (c.Id & 1) == 0),
            };
            lock (seqLock) { c.CompleteSeq = ++seq; c.CompleteOps = dev.OperationCount; c.Result = r; }
            if (c.Kind == CommandKind.Read) lock (reads) reads.Add((c, data!));
        }

        string Where(string rest) => $"[{target.Name} seed={seed}] {rest}";
        foreach (var batch in batches)
        {
            // Issued without waiting for each other; from this thread (reproducible issue order) or from pool threads.
            var tasks = options.ParallelIssue ? batch.Select(c => Task.Run(() => Issue(c))).ToArray() : batch.Select(Issue).ToArray();
            await Task.WhenAll(tasks);
            foreach (var c in batch)
                if (!c.Result.IsOk) report.Violations.Add(Where($"before any crash, {c} failed: {c.Result}"));
        }
        try { await vol.DisposeAsync(); } catch (Exception e) { report.Violations.Add(Where($"clean close failed: {e.Message}")); }
        var ops = dev.RecordedOperations;
        report.RecordTime = clock.Elapsed;
        report.MostRewrittenFuaLocation = ops.Skip((int)formatOps).Where(o => o.Fua).GroupBy(o => o.Offset).Select(g => g.Count()).DefaultIfEmpty(0).Max();
        report.DeviceOperations = ops.Count - formatOps;

        var model = new CrashModel(all, target.Blocks, !target.WriteBack, atomic);
        var scratch = new byte[target.BlockSize];
        foreach (var (c, data) in reads)
            for (uint i = 0; i < c.Blocks && c.Result.IsOk; i++)
            {
                long v = stamp.Identify(data.AsSpan((int)(i * target.BlockSize), target.BlockSize), c.Lba + i, scratch, out var why);
                var e = model.CheckRead(c, c.Lba + i, v, why);
                if (e != null) { report.Violations.Add(Where(e)); break; }
            }
        if (report.Violations.Count > 0) return report;

        // 2. Crash points: around every persistence point, some random ones, and the end.
        var rng = new SplitMix64(SplitMix64.Hash(seed, 0xC4A5));
        var points = new SortedSet<long> { ops.Count };
        for (int i = (int)formatOps; i < ops.Count; i++)
            if (ops[i].Kind == DeviceOperationKind.Flush || (ops[i].Kind == DeviceOperationKind.Write && ops[i].Fua))
            {
                report.PersistencePoints++;
                if (options.EveryPersistencePoint) { points.Add(i); points.Add(i + 1); }
            }
        for (int i = 0; i < options.RandomPoints; i++) points.Add(formatOps + (long)rng.Next((ulong)(ops.Count - formatOps + 1)));

        // 3. Replay the record once, forward, cutting the power at each point in each mode.
        var replay = new CrashSimulatingDevice(new MemoryBlockDevice(target.DeviceBytes, target.Name));
        long at = 0;
        foreach (long k in points)
        {
            while (at < k) replay.Replay(ops[(int)at++]);
            foreach (var mode in options.Modes)
            {
                if (report.CrashStates >= options.MaxStates || report.Violations.Count >= options.MaxViolations) return report;
                ulong stateSeed = SplitMix64.Hash(seed, (ulong)k * 16 + (ulong)mode);
                // KeepRandom survives with few, half or most of the pending sectors.
                double keep = (stateSeed % 3) switch { 0 => 0.1, 1 => 0.5, _ => 0.9 };
                var image = replay.Crash(mode, stateSeed, keep);
                string ctx = $"[{target.Name} seed={seed} crash at device op {k}/{ops.Count} ({Describe(ops, k)}) mode={mode}{(mode == CrashMode.KeepRandom ? $" p={keep}" : "")} stateSeed={stateSeed}]";
                await CheckStateAsync(image, k, model, stamp, ctx, report, stateSeed);
            }
        }
        return report;
    }

    private async Task CheckStateAsync(MemoryBlockDevice image, long k, CrashModel model, BlockStamp stamp, string ctx, CrashReport report, ulong stateSeed)
    {
        var rng = new SplitMix64(SplitMix64.Mix(stateSeed));
        report.CrashStates++;
        var dev = new CrashSimulatingDevice(CrashSimulatingDevice.CopyImage(image));
        var (vol, openError) = await TryOpen(dev);
        if (vol is null) { report.Violations.Add($"{ctx} (a) reopen failed: {openError}"); return; }
        long recoveryOps = dev.OperationCount;
        var (versions, why) = await ReadAllAsync(vol, stamp);
        foreach (var e in model.CheckCrash(k, versions, why)) report.Violations.Add($"{ctx} {e}");

        if (options.CheckReopenIdempotent && report.Violations.Count == 0)
        {
            // Recovery must leave a state that is itself stable: flushed, it survives the next power cut unchanged.
            var f = await vol.FlushAsync();
            if (!f.IsOk) report.Violations.Add($"{ctx} flush after recovery failed: {f}");
            dev.CrashAfterOperations(0);
            await DisposeQuietly(vol);
            var again = new CrashSimulatingDevice(dev.Crash(CrashMode.Drop, 0));
            var (vol2, err2) = await TryOpen(again);
            if (vol2 is null) report.Violations.Add($"{ctx} (d) second open after a recovered+flushed state failed: {err2}");
            else
            {
                var (v2, why2) = await ReadAllAsync(vol2, stamp);
                for (ulong b = 0; b < model.Blocks; b++)
                    if (v2[b] != versions[b])
                    {
                        report.Violations.Add($"{ctx} (d) recovery not idempotent: LBA {b} read {Show(versions[b])} after recovery+flush, {Show(v2[b])} {why2[b]} after the next open");
                        break;
                    }
                await DisposeQuietly(vol2);
            }
        }
        else await DisposeQuietly(vol);

        // (d) crashes in the middle of recovery, at random points of the recovery's own device sequence; each
        // next one crashes the recovery of the image the previous one left (several power cuts in a row).
        var current = image;
        string chain = ctx;
        for (int r = 0; r < options.RecoveryCrashes && recoveryOps > 0 && report.Violations.Count < options.MaxViolations; r++)
        {
            long j = (long)rng.Next((ulong)recoveryOps);
            var mode = (CrashMode)(int)rng.Next(4);
            ulong seed2 = rng.Next();
            chain = $"{chain} then crash during recovery after {j}/{recoveryOps} ops mode={mode} stateSeed={seed2}";
            var dev2 = new CrashSimulatingDevice(CrashSimulatingDevice.CopyImage(current));
            dev2.CrashAfterOperations(j);
            var (half, _) = await TryOpen(dev2);
            if (half is not null) await DisposeQuietly(half);
            current = dev2.Crash(mode, seed2);
            var dev3 = new CrashSimulatingDevice(CrashSimulatingDevice.CopyImage(current));
            report.RecoveryCrashStates++;
            var (vol3, err3) = await TryOpen(dev3);
            if (vol3 is null) { report.Violations.Add($"{chain} (d) reopen after a crash during recovery failed: {err3}"); break; }
            recoveryOps = dev3.OperationCount;
            var (v3, why3) = await ReadAllAsync(vol3, stamp);
            foreach (var e in model.CheckCrash(k, v3, why3)) report.Violations.Add($"{chain} {e}");
            dev3.CrashAfterOperations(0);
            await DisposeQuietly(vol3);
        }
    }

    private async Task<(IBlockVolume? Volume, string? Error)> TryOpen(CrashSimulatingDevice dev)
    {
        try
        {
            var v = await target.Open(dev);
            v.WriteBack = target.WriteBack;
            return (v, null);
        }
        catch (Exception e) { return (null, $"{e.GetType().Name}: {e.Message}"); }
    }

    private static async Task DisposeQuietly(IBlockVolume v)
    {
        try { await v.DisposeAsync(); } catch (Exception) { /* the power may be gone; the image is already taken */ }
    }

    /// <summary>Reads every block (64 at a time, one by one where a chunk fails) and identifies its version.</summary>
    private async Task<(long[] Versions, string?[] Why)> ReadAllAsync(IBlockVolume vol, BlockStamp stamp)
    {
        int bs = target.BlockSize;
        var versions = new long[target.Blocks];
        var why = new string?[target.Blocks];
        var buf = new byte[64 * bs];
        var scratch = new byte[bs];
        for (ulong lba = 0; lba < target.Blocks; lba += 64)
        {
            int n = (int)Math.Min(64UL, target.Blocks - lba);
            var r = await vol.ReadAsync(lba, buf.AsMemory(0, n * bs));
            for (int i = 0; i < n; i++)
            {
                ulong b = lba + (ulong)i;
                if (!r.IsOk)
                {
                    var one = await vol.ReadAsync(b, buf.AsMemory(i * bs, bs));
                    if (!one.IsOk) { versions[b] = BlockStamp.ReadFailed; why[b] = one.ToString(); continue; }
                }
                versions[b] = stamp.Identify(buf.AsSpan(i * bs, bs), b, scratch, out why[b]);
            }
        }
        return (versions, why);
    }

    private static string Show(long v) => v switch { BlockStamp.Zero => "zeros", BlockStamp.Garbage => "garbage", BlockStamp.ReadFailed => "a read error", _ => $"#{v}" };

    private static string Describe(IReadOnlyList<DeviceOperation> ops, long k)
    {
        if (k >= ops.Count) return "after the last op";
        var o = ops[(int)k];
        return o.Kind == DeviceOperationKind.Flush ? "just before a flush" : $"just before a {(o.Fua ? "FUA " : "")}{o.Kind.ToString().ToLowerInvariant()} at byte {o.Offset}+{o.Length}";
    }
}
