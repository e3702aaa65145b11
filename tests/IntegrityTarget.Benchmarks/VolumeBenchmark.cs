using System.Diagnostics;
using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using Serilog;

namespace IntegrityTarget.Benchmarks;

/// <summary>
/// Raw file I/O (PlainVolume; never synced, and synced once per journal's worth of writes) vs the
/// integrity volume (crc32c, hmac-sha256) on the same backing file in one run: 4k random write/read
/// QD32, 1M sequential write/read, 4k write+flush QD1; plus write amplification of 1M sequential
/// writes and recovery time of a full journal.
/// </summary>
internal static class VolumeBenchmark
{
    private const string RawSynced = "raw-synced";
    private sealed record Job(string Name, double MBps, double Iops);

    public static async Task<int> RunAsync(string[] args)
    {
        long sizeMiB = 512; string dir = "/var/tmp"; double seconds = 3; int rounds = 1;
        long? windowMiB = null, journalMiB = null; string algs = "crc32c,hmac-sha256"; bool synced = true;
        var only = new HashSet<string>();
        for (int i = 0; i + 1 < args.Length; i += 2)
            switch (args[i])
            {
                case "--size-mib": sizeMiB = long.Parse(args[i + 1]); break;
                case "--dir": dir = args[i + 1]; break;
                case "--seconds": seconds = double.Parse(args[i + 1]); break;
                case "--rounds": rounds = int.Parse(args[i + 1]); break;
                case "--window-mib": windowMiB = long.Parse(args[i + 1]); break;
                case "--journal-mib": journalMiB = long.Parse(args[i + 1]); break;
                case "--algorithms": algs = args[i + 1]; break;
                case "--raw-synced": synced = bool.Parse(args[i + 1]); break;
                case "--jobs": only.UnionWith(args[i + 1].Split(',')); break;
            }
        var log = new LoggerConfiguration().MinimumLevel.Warning().WriteTo.Console().CreateLogger();
        ulong blocks = (ulong)(sizeMiB << 20) / 4096;
        // Spare slots for the write-back window of redirect-on-write (null: the format's default).
        long? spare = windowMiB is long w ? w * (1 << 20) / (128 * 1024) + 32 + (long)(blocks / 32) / 32 : null;
        long? journalOption = journalMiB << 20;
        long fileBytes = IntegrityVolume.DeviceBytesFor(blocks, 4096, TagAlgorithm.HmacSha256, journalOption, spare);
        var algorithms = algs.Split(',').Select(a => a switch { "crc32c" => TagAlgorithm.Crc32c, "xxhash64" => TagAlgorithm.XxHash64, "hmac-sha256" => TagAlgorithm.HmacSha256, _ => throw new ArgumentException($"unknown algorithm {a}") }).ToArray();
        string path = Path.Combine(dir, $"itv-bench-{Environment.ProcessId}.img");
        Console.WriteLine($"backing file {path}: {fileBytes >> 20} MiB; logical {sizeMiB} MiB of 4 KiB blocks; {Environment.ProcessorCount} cores; {seconds} s per job");
        var results = new Dictionary<string, List<Job>>();
        long journalBytes = journalOption ?? IntegrityVolume.DefaultJournalBytes(blocks, 4096);
        var notes = new List<string>();
        try
        {
            using (FileBlockDevice.CreateSparse(path, fileBytes)) { }
          // Rounds alternate raw / crc32c / hmac on the same file; the table keeps each cell's best
          // round, which damps a shared machine's load swings.
          for (int round = 0; round < rounds; round++)
          {
            // Raw: the same file through PlainVolume (LBA n at byte n*4096), page cache, no integrity; once
            // never synced, once flushed after every journal's worth of writes (the volume's checkpoint
            // cadence: the least disk work of any design that keeps every block crash-consistent).
            foreach (long every in synced ? new[] { 0L, journalBytes } : new[] { 0L })
            {
                using var file = FileBlockDevice.Open(path);
                var raw = new PlainVolume(new CountingDevice(file, every), 4096, "raw", ownsDevice: false);
                await Fill(raw, blocks);
                string name = every == 0 ? "raw" : RawSynced;
                Keep(results, name, await RunJobs(raw, blocks, seconds, null, notes, name, only));
            }
            foreach (var alg in algorithms)
            {
                using var file = FileBlockDevice.Open(path);
                var dev = new CountingDevice(file);
                var key = alg == TagAlgorithm.HmacSha256 ? Enumerable.Range(0, 32).Select(i => (byte)i).ToArray() : null;
                var vol = await IntegrityVolume.FormatAsync(dev, new FormatOptions { Algorithm = alg, Key = key, LogicalBlocks = blocks, SpareSlots = spare, JournalBytes = journalOption, Force = true }, log);
                string name = vol.TagAlgorithm;
                await Fill(vol, blocks);
                Keep(results, name, await RunJobs(vol, blocks, seconds, dev, notes, name, only));
                await vol.DisposeAsync();
                if (only.Count == 0 || only.Contains("recovery")) notes.Add($"{name}: recovery of a full journal: {await RecoveryTime(dev, alg, key, log)}");
            }
          }
        }
        finally { File.Delete(path); }

        Console.WriteLine();
        var raws = results["raw"];
        var syncedRow = results.GetValueOrDefault(RawSynced) ?? raws;
        var vols = results.Keys.Where(k => k != "raw" && k != RawSynced).ToList();
        Console.WriteLine($"| job | raw MB/s | {RawSynced} MB/s | {string.Join(" | ", vols.Select(k => $"{k} MB/s | ×raw | ×synced"))} |");
        Console.WriteLine($"|---|---:|---:|{string.Concat(vols.Select(_ => "---:|---:|---:|"))}");
        for (int j = 0; j < raws.Count; j++)
        {
            var row = $"| {raws[j].Name} | {raws[j].MBps:F0} ({raws[j].Iops:F0} IOPS) | {syncedRow[j].MBps:F0} ({syncedRow[j].Iops:F0} IOPS) |";
            foreach (var k in vols)
            {
                var r = results[k][j];
                row += $" {r.MBps:F0} ({r.Iops:F0} IOPS) | {r.MBps / raws[j].MBps:F2} | {r.MBps / syncedRow[j].MBps:F2} |";
            }
            Console.WriteLine(row);
        }
        Console.WriteLine();
        foreach (var n in notes) Console.WriteLine(n);
        return 0;
    }

    /// <summary>Single-thread tag throughput per algorithm over 4 KiB blocks (GB/s).</summary>
    public static int TagSpeed()
    {
        var data = new byte[4096 * 256];
        new Random(1).NextBytes(data);
        foreach (int bs in new[] { 512, 4096 })
        foreach (var alg in new[] { TagAlgorithm.Crc32c, TagAlgorithm.XxHash64, TagAlgorithm.HmacSha256 })
        {
            var t = IntegrityVolume.CreateTagger(alg, new byte[16], new byte[32]);
            var tag = new byte[32];
            int per = data.Length / bs;
            for (int warm = 0; warm < 2; warm++)
            {
                var sw = Stopwatch.StartNew();
                long bytes = 0;
                while (sw.ElapsedMilliseconds < 500)
                    for (int i = 0; i < per; i++) { t(data.AsSpan(i * bs, bs), (ulong)i, tag); bytes += bs; }
                if (warm == 1) Console.WriteLine($"{alg,-12} {bs,4} B blocks {bytes / sw.Elapsed.TotalSeconds / 1e9:F2} GB/s");
            }
        }
        return 0;
    }

    private static void Keep(Dictionary<string, List<Job>> results, string name, List<Job> jobs)
    {
        if (!results.TryGetValue(name, out var best)) { results[name] = jobs; return; }
        for (int i = 0; i < jobs.Count; i++) if (jobs[i].MBps > best[i].MBps) best[i] = jobs[i];
    }

    private static async Task Fill(IBlockVolume v, ulong blocks)
    {
        var buf = new byte[1 << 20];
        new Random(1).NextBytes(buf);
        for (ulong l = 0; l < blocks; l += 256) await Check(v.WriteAsync(l, buf, false), "fill");
        await Check(v.FlushAsync(), "flush");
    }

    private static async ValueTask Check(ValueTask<VolumeResult> t, string what)
    {
        var r = await t;
        if (!r.IsOk) throw new InvalidOperationException($"{what}: {r}");
    }

    /// <param name="only">Job keys to run (randwrite, randread, randread1, seqwrite, seqread, flush); empty = all.</param>
    private static async Task<List<Job>> RunJobs(IBlockVolume v, ulong blocks, double seconds, CountingDevice? dev, List<string> notes, string name, IReadOnlySet<string> only)
    {
        bool Run(string key) => only.Count == 0 || only.Contains(key);
        var jobs = new List<Job>();
        if (Run("randwrite")) jobs.Add(await Random4k(v, blocks, seconds, write: true));
        if (Run("randread")) jobs.Add(await Random4k(v, blocks, seconds, write: false));
        if (Run("randread1")) jobs.Add(await Random4k(v, blocks, seconds, write: false, qd: 1));
        if (Run("seqwrite"))
        {
            dev?.Reset();
            long before = v.Counters.BytesWritten;
            jobs.Add(await Sequential(v, blocks, seconds, write: true));
            if (dev != null)
            {
                long caller = v.Counters.BytesWritten - before;
                notes.Add($"{name}: write amplification, 1M sequential (incl. flush): {(double)dev.BytesWritten / caller:F3} ({dev.BytesWritten >> 20} MiB to device for {caller >> 20} MiB written, {dev.Flushes} flushes)");
            }
        }
        if (Run("seqread")) jobs.Add(await Sequential(v, blocks, seconds, write: false));
        if (Run("flush")) jobs.Add(await WriteFlush(v, blocks, seconds));
        foreach (var j in jobs) Console.WriteLine($"{name,-12} {j.Name,-24} {j.MBps,8:F1} MB/s {j.Iops,10:F0} IOPS");
        return jobs;
    }

    private static async Task<Job> Random4k(IBlockVolume v, ulong blocks, double seconds, bool write, int qd = 32)
    {
        long ops = 0;
        var sw = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, qd).Select(w => Task.Run(async () =>
        {
            var rnd = new Random(w);
            var buf = new byte[4096];
            rnd.NextBytes(buf);
            while (sw.Elapsed.TotalSeconds < seconds)
            {
                ulong lba = (ulong)rnd.NextInt64((long)blocks);
                if (write) await Check(v.WriteAsync(lba, buf, false), "write");
                else await Check(v.ReadAsync(lba, buf), "read");
                Interlocked.Increment(ref ops);
            }
        })).ToArray();
        await Task.WhenAll(workers);
        if (write) await Check(v.FlushAsync(), "flush");
        double t = sw.Elapsed.TotalSeconds;
        return new Job($"4k rand{(write ? "write" : "read")} QD{qd}", ops * 4096 / t / 1e6, ops / t);
    }

    private static async Task<Job> Sequential(IBlockVolume v, ulong blocks, double seconds, bool write)
    {
        long ops = 0, next = 0;
        long total = (long)(blocks / 256);
        var sw = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, 4).Select(w => Task.Run(async () =>
        {
            var buf = new byte[1 << 20];
            new Random(w).NextBytes(buf);
            while (sw.Elapsed.TotalSeconds < seconds)
            {
                ulong lba = (ulong)(Interlocked.Increment(ref next) % total) * 256;
                if (write) await Check(v.WriteAsync(lba, buf, false), "write");
                else await Check(v.ReadAsync(lba, buf), "read");
                Interlocked.Increment(ref ops);
            }
        })).ToArray();
        await Task.WhenAll(workers);
        if (write) await Check(v.FlushAsync(), "flush");
        double t = sw.Elapsed.TotalSeconds;
        return new Job(write ? "1M seqwrite QD4" : "1M seqread QD4", ops * (1 << 20) / t / 1e6, ops / t);
    }

    private static async Task<Job> WriteFlush(IBlockVolume v, ulong blocks, double seconds)
    {
        long ops = 0;
        var rnd = new Random(5);
        var buf = new byte[4096];
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed.TotalSeconds < seconds)
        {
            await Check(v.WriteAsync((ulong)rnd.NextInt64((long)blocks), buf, false), "write");
            await Check(v.FlushAsync(), "flush");
            ops++;
        }
        double t = sw.Elapsed.TotalSeconds;
        return new Job("4k write+flush QD1", ops * 4096 / t / 1e6, ops / t);
    }

    /// <summary>Fills most of the journal with committed-but-not-checkpointed transactions, cuts power
    /// (abandons the volume), and times the recovery at the next open.</summary>
    private static async Task<string> RecoveryTime(IBlockDevice dev, TagAlgorithm alg, byte[]? key, ILogger log)
    {
        var v = await IntegrityVolume.OpenAsync(dev, new OpenOptions { Key = key }, log);
        long budget = (long)(v.JournalArea.Bytes * 0.85);
        var rnd = new Random(9);
        var buf = new byte[4096];
        long used = 0;
        ulong blocks = v.BlockCount;
        while (used < budget)
        {
            // Batches of 32 concurrent 4k writes, each batch one group commit.
            var batch = Enumerable.Range(0, 32).Select(_ => v.WriteAsync((ulong)rnd.NextInt64((long)blocks), buf, false).AsTask()).ToArray();
            await Task.WhenAll(batch);
            await v.FlushAsync();
            used += 32 * (4096 + 24) + 4096;
        }
        await v.AbandonAsync();
        var sw = Stopwatch.StartNew();
        var v2 = await IntegrityVolume.OpenAsync(dev, new OpenOptions { Key = key }, log);
        sw.Stop();
        var r = v2.LastRecovery;
        await v2.DisposeAsync();
        return $"{r.TransactionsReplayed} transactions, {r.RecordsReplayed} records ({v.JournalArea.Bytes >> 20} MiB journal) replayed in {r.Duration.TotalMilliseconds:F0} ms (open total {sw.Elapsed.TotalMilliseconds:F0} ms)";
    }
}
