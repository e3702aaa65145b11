using System.Diagnostics;
using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using Serilog;

namespace IntegrityTarget.Benchmarks;

/// <summary>
/// Single-thread CPU cost of volume reads vs plain reads of the same file (4k random, 1M sequential), for
/// 512 B and 4 KiB blocks, plus allocated bytes per read. Ratios inside one run are what to compare on a
/// loaded machine: `readprof [--ops N]`.
/// </summary>
internal static class ReadProfile
{
    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int clock_gettime(int clock, out Timespec ts);
    private struct Timespec { public long Sec, Nsec; }

    /// <summary>CPU time of this thread (CLOCK_THREAD_CPUTIME_ID): unlike wall time, not inflated by other
    /// processes' load. Every read here completes synchronously on the calling thread.</summary>
    private static long ThreadCpuNs() { clock_gettime(3, out var t); return t.Sec * 1_000_000_000 + t.Nsec; }

    public static async Task<int> RunAsync(string[] args)
    {
        int ops = args.Length > 1 && args[0] == "--ops" ? int.Parse(args[1]) : 50_000;
        foreach (int bs in new[] { 512, 4096 })
        {
            string path = Path.Combine("/var/tmp", $"itv-prof-{Environment.ProcessId}-{bs}.img");
            ulong blocks = (256UL << 20) / (ulong)bs;
            try
            {
                using var file = FileBlockDevice.CreateSparse(path, IntegrityVolume.DeviceBytesFor(blocks, bs, TagAlgorithm.Crc32c));
                var v = await IntegrityVolume.FormatAsync(file, new FormatOptions { BlockSize = bs }, new LoggerConfiguration().CreateLogger());
                var raw = new PlainVolume(file, bs, ownsDevice: false);
                var buf = new byte[1 << 20];
                new Random(7).NextBytes(buf);
                ulong per = (ulong)(buf.Length / bs);
                for (ulong l = 0; l + per <= blocks; l += per) await v.WriteAsync(l, buf, false);
                await v.FlushAsync();
                var b4 = new byte[4096];
                ulong span4 = blocks - (ulong)(4096 / bs);
                for (int round = 0; round < 2; round++)
                {
                    (double us, double alloc) Time(Func<int, ValueTask<VolumeResult>> op, int n)
                    {
                        long a0 = GC.GetAllocatedBytesForCurrentThread();
                        long t0 = ThreadCpuNs();
                        for (int i = 0; i < n; i++)
                        {
                            var r = op(i).AsTask().GetAwaiter().GetResult();
                            if (!r.IsOk) throw new InvalidOperationException(r.ToString());
                        }
                        return ((ThreadCpuNs() - t0) / 1000.0 / n, (double)(GC.GetAllocatedBytesForCurrentThread() - a0) / n);
                    }
                    var rv = new Random(1); var rr = new Random(1);
                    var vol4 = Time(_ => v.ReadAsync((ulong)rv.NextInt64((long)span4), b4), ops);
                    var raw4 = Time(_ => raw.ReadAsync((ulong)rr.NextInt64((long)span4), b4), ops);
                    int n1 = Math.Max(100, ops / 100);
                    var vol1 = Time(i => v.ReadAsync((ulong)i * per % (blocks - per + 1) / per * per, buf), n1);
                    var raw1 = Time(i => raw.ReadAsync((ulong)i * per % (blocks - per + 1) / per * per, buf), n1);
                    Console.WriteLine($"bs {bs,4}: 4k rand read volume {vol4.us,6:F2} us CPU ({vol4.alloc:F0} B alloc) raw {raw4.us,6:F2} us ratio {raw4.us / vol4.us:F2} | "
                        + $"1M seq read volume {vol1.us,7:F1} us ({vol1.alloc:F0} B alloc) raw {raw1.us,7:F1} us ratio {raw1.us / vol1.us:F2}");
                }
                await v.DisposeAsync();
            }
            finally { File.Delete(path); }
        }
        return 0;
    }
}
