using System.Diagnostics;
using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using Serilog;

namespace IntegrityTarget.Benchmarks;

/// <summary>
/// Laps of 1 MiB sequential overwrites at QD8 over a whole volume (512-byte blocks, crc32c), after a fill and
/// one flush (as fio-compare's cells run after the idle durable point of the cell before): per lap, MB/s, the
/// device flushes and FUA writes the volume made (durable points per GiB), the time spent in device flushes
/// (writers wait for a forced durable point), and the longest flush. Beside it the same laps on the raw file
/// (PlainVolume, never synced), and optionally with the initiator flushing every N writes (SYNCHRONIZE CACHE,
/// fio --fsync=N) for both. "mem" as --dir runs on a MemoryBlockDevice.
/// </summary>
internal static class LapsBenchmark
{
    public static async Task<int> RunAsync(string[] args)
    {
        long sizeMiB = 1024; string dir = "/var/tmp"; int laps = 3, flushEvery = 0; long? spare = null;
        for (int i = 0; i + 1 < args.Length; i += 2)
            switch (args[i])
            {
                case "--size-mib": sizeMiB = long.Parse(args[i + 1]); break;
                case "--dir": dir = args[i + 1]; break;
                case "--laps": laps = int.Parse(args[i + 1]); break;
                case "--flush-every": flushEvery = int.Parse(args[i + 1]); break;
                case "--spare-slots": spare = long.Parse(args[i + 1]); break;
            }
        var log = new LoggerConfiguration().MinimumLevel.Warning().WriteTo.Console().CreateLogger();
        ulong blocks = (ulong)(sizeMiB << 20) / 512;
        long fileBytes = IntegrityVolume.DeviceBytesFor(blocks, 512, TagAlgorithm.Crc32c, spareSlots: spare);
        bool mem = dir == "mem";
        string path = Path.Combine(dir, $"itv-laps-{Environment.ProcessId}.img");
        Console.WriteLine($"{(mem ? "memory" : path)}: {fileBytes >> 20} MiB device, {sizeMiB} MiB logical of 512-byte blocks; {laps} laps of 1 MiB writes QD8{(flushEvery > 0 ? $", a flush every {flushEvery} writes" : "")}");
        try
        {
            if (!mem) using (FileBlockDevice.CreateSparse(path, fileBytes)) { }
            IBlockDevice Device() => mem ? new MemoryBlockDevice(fileBytes) : FileBlockDevice.Open(path);
            using (var raw = new TimedDevice(Device()))
            {
                var v = new PlainVolume(raw, 512, "raw", ownsDevice: false);
                await Laps("raw", v, raw, blocks, laps, flushEvery);
            }
            using (var dev = new TimedDevice(Device()))
            {
                var vol = await IntegrityVolume.FormatAsync(dev, new FormatOptions { BlockSize = 512, LogicalBlocks = blocks, SpareSlots = spare, Force = true }, log);
                Console.WriteLine($"integrity: {vol.Slots} slots, {vol.Slots - (long)(blocks / (ulong)vol.BlocksPerChunk)} spare");
                await Laps("crc32c", vol, dev, blocks, laps, flushEvery);
                await vol.DisposeAsync();
            }
        }
        finally { if (!mem) File.Delete(path); }
        return 0;
    }

    private static async Task Laps(string name, IBlockVolume v, TimedDevice dev, ulong blocks, int laps, int flushEvery)
    {
        var buf = new byte[1 << 20];
        new Random(1).NextBytes(buf);
        long total = (long)(blocks / 2048);
        for (int lap = -1; lap < laps; lap++)
        {
            if (lap == 0) await Check(v.FlushAsync(), "flush"); // as the idle durable point before a cell
            dev.Reset();
            long next = -1, ops = 0;
            var sw = Stopwatch.StartNew();
            var lat = new List<double>[8];
            var workers = Enumerable.Range(0, 8).Select(w => Task.Run(async () =>
            {
                lat[w] = new List<double>();
                long i;
                while ((i = Interlocked.Increment(ref next)) < total)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    await Check(v.WriteAsync((ulong)i * 2048, buf, false), "write");
                    lat[w].Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                    if (flushEvery > 0 && Interlocked.Increment(ref ops) % flushEvery == 0) await Check(v.FlushAsync(), "flush");
                }
            })).ToArray();
            await Task.WhenAll(workers);
            double t = sw.Elapsed.TotalSeconds;
            var all = lat.SelectMany(l => l).Order().ToArray();
            double gib = total / 1024.0;
            Console.WriteLine($"{name,-7} {(lap < 0 ? "fill" : $"lap {lap}"),-6} {total / t:F0} MB/s  p99 {all[(int)(all.Length * 0.99)]:F1} ms  flushes {dev.Flushes / gib:F1}/GiB  FUA {dev.FuaWrites / gib:F1}/GiB  in flush {dev.FlushMs:F0} ms of {t * 1000:F0} (longest {dev.LongestFlushMs:F1} ms)");
        }
    }

    private static async ValueTask Check(ValueTask<VolumeResult> t, string what)
    {
        var r = await t;
        if (!r.IsOk) throw new InvalidOperationException($"{what}: {r}");
    }

    /// <summary>Counts flushes and FUA writes and times the flushes.</summary>
    private sealed class TimedDevice(IBlockDevice inner) : IBlockDevice
    {
        private long _flushes, _fua, _flushTicks, _longest;
        public long Flushes => Interlocked.Read(ref _flushes);
        public long FuaWrites => Interlocked.Read(ref _fua);
        public double FlushMs => Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _flushTicks)).TotalMilliseconds;
        public double LongestFlushMs => Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _longest)).TotalMilliseconds;
        public void Reset() { _flushes = 0; _fua = 0; _flushTicks = 0; _longest = 0; }
        public string Name => inner.Name;
        public long Length => inner.Length;
        public int SectorSize => inner.SectorSize;
        public int PreferredWriteUnit => inner.PreferredWriteUnit;
        public bool CanDeallocate => inner.CanDeallocate;
        public int BulkConcurrency => inner.BulkConcurrency;
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) => inner.ReadAsync(offset, buffer, ct);
        public ValueTask ReadScatterAsync(long offset, IReadOnlyList<Memory<byte>> parts, CancellationToken ct = default) => inner.ReadScatterAsync(offset, parts, ct);
        public ValueTask WriteGatherAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> parts, bool fua, CancellationToken ct = default)
        {
            if (fua) Interlocked.Increment(ref _fua);
            return inner.WriteGatherAsync(offset, parts, fua, ct);
        }
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
        {
            if (fua) Interlocked.Increment(ref _fua);
            return inner.WriteAsync(offset, data, fua, ct);
        }
        public async ValueTask FlushAsync(CancellationToken ct = default)
        {
            Interlocked.Increment(ref _flushes);
            long t0 = Stopwatch.GetTimestamp();
            await inner.FlushAsync(ct);
            long d = Stopwatch.GetTimestamp() - t0;
            Interlocked.Add(ref _flushTicks, d);
            long m;
            while (d > (m = Interlocked.Read(ref _longest)) && Interlocked.CompareExchange(ref _longest, d, m) != m) { }
        }
        public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => inner.DiscardAsync(offset, length, ct);
        public (bool Allocated, long Length) GetAllocation(long offset) => inner.GetAllocation(offset);
        public void Dispose() => inner.Dispose();
    }
}
