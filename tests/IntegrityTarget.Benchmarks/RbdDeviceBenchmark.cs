using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using IntegrityTarget.Storage;
using IntegrityTarget.Storage.Rbd;

namespace IntegrityTarget.Benchmarks;

/// <summary>
/// The RBD device without iSCSI or a volume on top, beside librbd's own `rbd bench` on the same image, in one
/// run: what the C# bridge (P/Invoke, completion to task, thread hops, pinning) costs per request, and what a
/// second dependent read per request (the integrity volume's tag read of a small read) costs.
///   rbd CEPH_CONF [--seconds 5] [--size-mib 256] [--rounds 1] [--set OPTION=VALUE ...]   (--set adds lines to the [client] section of a copy of ceph.conf)
/// CPU per request is this process's CPU time (librbd's threads included) or rbd bench's, over the requests done:
/// on a machine whose cores the OSDs share, CPU a gateway burns is CPU the OSDs do not get. Run it again with
/// DOTNET_ThreadPool_UnfairSemaphoreSpinLimit=0 to see what the thread pool's idle spinning costs.
/// </summary>
public static partial class RbdDeviceBenchmark
{

    public static async Task<int> RunAsync(string[] args)
    {
        if (args.Length < 1) { Console.Error.WriteLine("usage: rbd CEPH_CONF [--seconds 5] [--size-mib 256] [--rounds 1] [--set OPTION=VALUE ...]"); return 2; }
        string conf = Path.GetFullPath(args[0]);
        double seconds = 5;
        long imageBytes = 256L << 20;
        int rounds = 1;
        var extra = new List<string>();
        for (int i = 1; i < args.Length; i++)
        {
            if (args[i] == "--seconds") seconds = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
            else if (args[i] == "--set") extra.Add(args[++i]);
            else if (args[i] == "--rounds") rounds = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
            else if (args[i] == "--size-mib") imageBytes = long.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture) << 20;
        }
        string usedConf = conf;
        if (extra.Count > 0)
        {
            usedConf = Path.Combine(Path.GetTempPath(), $"rbd-bench-{Environment.ProcessId}.conf");
            File.WriteAllText(usedConf, File.ReadAllText(conf) + "\n[client]\n" + string.Join("\n", extra.Select(e => e.Replace("=", " = ", StringComparison.Ordinal))) + "\n");
        }
        var spec = new RbdImageSpec("rbd", null, $"devbench-{Environment.ProcessId}");
        using var client = RbdClient.Connect(new CephClientOptions { ConfFile = usedConf });
        client.CreateImage(spec, imageBytes);
        try
        {
            using (var dev = client.OpenImage(spec, readOnly: false)) await Fill(dev);
            // rbd's own start, connect and image open, taken off each rbd bench row's CPU.
            var startup = RbdBench(usedConf, spec, "read", 1, 0, "--rbd-cache=false", fixedCpu: TimeSpan.Zero, totalBytes: 4096) is { } s0 ? TimeSpan.FromMicroseconds(s0.CpuUs) : TimeSpan.Zero;
            Console.WriteLine($"RbdBlockDevice beside rbd bench, {imageBytes >> 20} MiB image, {seconds:0} s per row, {rounds} round(s), rows of one round back to back{(extra.Count > 0 ? ", " + string.Join(", ", extra) : "")}");
            Console.WriteLine("| round | requests | QD | IOPS | mean latency µs | CPU µs per request |");
            Console.WriteLine("|---|---|---|---|---|---|");
            for (int round = 1; round <= rounds; round++)
            {
                foreach (int qd in new[] { 1, 32 })
                {
                    using (var dev = client.OpenImage(spec, readOnly: false))
                    {
                        Row(round, "4k random read", qd, await Run(dev, qd, seconds, reads: 1, write: false));
                        Row(round, "4k random read, then a 512 B read of the same object (as the integrity volume's tag read)", qd, await Run(dev, qd, seconds, reads: 2, write: false));
                        Row(round, "4k random read and that 512 B read issued together", qd, await Run(dev, qd, seconds, reads: 3, write: false));
                        Row(round, "4k random write (no librbd cache)", qd, await Run(dev, qd, seconds, reads: 0, write: true));
                    }
                    // rbd bench needs the image's exclusive lock, which the device above held until disposed.
                    Row(round, "rbd bench: 4k random read, rbd cache off", qd, RbdBench(usedConf, spec, "read", qd, seconds, "--rbd-cache=false", startup));
                    Row(round, "rbd bench: 4k random write, rbd cache off", qd, RbdBench(usedConf, spec, "write", qd, seconds, "--rbd-cache=false", startup));
                }
            }
        }
        finally
        {
            client.RemoveImage(spec);
            if (usedConf != conf) File.Delete(usedConf);
        }
        return 0;
    }

    static void Row(int round, string what, int qd, (double Iops, double MeanUs, double CpuUs)? r) =>
        Console.WriteLine(r is { } v ? $"| {round} | {what} | {qd} | {v.Iops:0} | {v.MeanUs:0} | {v.CpuUs:0} |" : $"| {round} | {what} | {qd} | failed | | |");

    static async Task Fill(IBlockDevice dev)
    {
        var buf = new byte[1 << 20];
        new Random(1).NextBytes(buf);
        for (long off = 0; off < dev.Length; off += 8L << 20)
            await Task.WhenAll(Enumerable.Range(0, 8).Select(i => dev.WriteAsync(off + i * (long)buf.Length, buf, fua: false).AsTask()));
        await dev.FlushAsync();
    }

    static async Task<(double Iops, double MeanUs, double CpuUs)?> Run(IBlockDevice dev, int qd, double seconds, int reads, bool write)
    {
        long ops = 0;
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        var stop = Stopwatch.StartNew();
        var until = TimeSpan.FromSeconds(seconds);
        async Task Worker(int seed)
        {
            var rnd = new Random(seed);
            var data = new byte[4096];
            var tag = new byte[512];
            rnd.NextBytes(data);
            long blocks = dev.Length / 4096;
            while (stop.Elapsed < until)
            {
                long off = rnd.NextInt64(blocks) * 4096;
                if (write) await dev.WriteAsync(off, data, fua: false);
                else
                {
                    // The tag of a 4 KiB piece of a 128 KiB slot lies after the slot's data, in the same 4 MiB object.
                    long tagOff = Math.Min(dev.Length - 512, (off & ~(128L * 1024 - 1)) + 128 * 1024);
                    if (reads == 3)
                    {
                        var first = dev.ReadAsync(off, data);
                        await dev.ReadAsync(tagOff, tag);
                        await first;
                    }
                    else
                    {
                        await dev.ReadAsync(off, data);
                        if (reads == 2) await dev.ReadAsync(tagOff, tag);
                    }
                }
                Interlocked.Increment(ref ops);
            }
        }
        await Task.WhenAll(Enumerable.Range(0, qd).Select(i => Task.Run(() => Worker(i + 1))));
        double s = stop.Elapsed.TotalSeconds;
        if (write) await dev.FlushAsync();
        cpu = Process.GetCurrentProcess().TotalProcessorTime - cpu;
        return (ops / s, qd * s * 1e6 / Math.Max(ops, 1), cpu.TotalMicroseconds / Math.Max(ops, 1));
    }

    [GeneratedRegex(@"ops/sec:\s*([\d.]+)")]
    private static partial Regex OpsPerSec();

    /// <param name="fixedCpu">CPU rbd takes whatever it does (start, connect, open), subtracted.</param>
    static (double Iops, double MeanUs, double CpuUs)? RbdBench(string conf, RbdImageSpec spec, string type, int threads, double seconds, string options,
        TimeSpan fixedCpu, long? totalBytes = null)
    {
        // rbd bench stops after --io-total bytes: a total the device did in about the same time above is enough.
        long total = totalBytes ?? (long)(seconds * (threads == 1 ? 2500 : 15000)) * 4096;
        var psi = new ProcessStartInfo("rbd") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in $"-c {conf} {options} bench --io-type {type} --io-size 4096 --io-threads {threads} --io-total {total} --io-pattern rand {spec.Display}".Split(' '))
            psi.ArgumentList.Add(a);
        var cpu = ChildrenCpu();
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        cpu = ChildrenCpu() - cpu; // the reaped child's CPU, as getrusage(RUSAGE_CHILDREN) counts it
        var m = OpsPerSec().Matches(output);
        var e = ElapsedOps().Match(output);
        if (m.Count == 0 || !e.Success) { Console.Error.WriteLine($"rbd bench failed (exit {p.ExitCode}): {err.Result.Trim()}"); return null; }
        double iops = double.Parse(m[^1].Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        long ops = long.Parse(e.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        return (iops, threads * 1e6 / iops, Math.Max(0, (cpu - fixedCpu).TotalMicroseconds) / Math.Max(ops, 1));
    }

    [GeneratedRegex(@"elapsed:\s*[\d.]+\s+ops:\s*(\d+)")]
    private static partial Regex ElapsedOps();

    [StructLayout(LayoutKind.Sequential)]
    private struct RUsage
    {
        public long UserSec, UserUsec, SysSec, SysUsec;
        public long Rest0, Rest1, Rest2, Rest3, Rest4, Rest5, Rest6, Rest7, Rest8, Rest9, Rest10, Rest11, Rest12, Rest13;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int getrusage(int who, out RUsage usage);

    private static TimeSpan ChildrenCpu()
    {
        const int RusageChildren = -1;
        if (getrusage(RusageChildren, out var u) != 0) return TimeSpan.Zero;
        return TimeSpan.FromMicroseconds((u.UserSec + u.SysSec) * 1e6 + u.UserUsec + u.SysUsec);
    }
}
