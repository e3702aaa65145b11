using System.Diagnostics;
using System.Text.RegularExpressions;
using IntegrityTarget.Storage;
using IntegrityTarget.Storage.Rbd;

namespace IntegrityTarget.Benchmarks;

/// <summary>
/// The RBD device without iSCSI or a volume on top, beside librbd's own `rbd bench` on the same image, in one
/// run: what the C# bridge (P/Invoke, completion to task, thread hops, pinning) costs per request, and what a
/// second dependent read per request (the integrity volume's tag read of a small read) costs.
///   rbd CEPH_CONF [--seconds 5] [--size-mib 256] [--set OPTION=VALUE ...]   (--set adds lines to the [client] section of a copy of ceph.conf)
/// </summary>
public static partial class RbdDeviceBenchmark
{

    public static async Task<int> RunAsync(string[] args)
    {
        if (args.Length < 1) { Console.Error.WriteLine("usage: rbd CEPH_CONF [--seconds 5] [--size-mib 256] [--set OPTION=VALUE ...]"); return 2; }
        string conf = Path.GetFullPath(args[0]);
        double seconds = 5;
        long imageBytes = 256L << 20;
        var extra = new List<string>();
        for (int i = 1; i < args.Length; i++)
        {
            if (args[i] == "--seconds") seconds = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
            else if (args[i] == "--set") extra.Add(args[++i]);
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
            using (var dev = client.OpenImage(spec, readOnly: false))
            {
                await Fill(dev);
                Console.WriteLine($"RbdBlockDevice, {imageBytes >> 20} MiB image, {seconds:0} s per row{(extra.Count > 0 ? ", " + string.Join(", ", extra) : "")}");
                Console.WriteLine("| requests | QD | IOPS | mean latency µs |");
                Console.WriteLine("|---|---|---|---|");
                foreach (int qd in new[] { 1, 32 })
                {
                    Row("4k random read", qd, await Run(dev, qd, seconds, reads: 1, write: false));
                    Row("4k random read, then a 512 B read of the same object (as the integrity volume's tag read)", qd, await Run(dev, qd, seconds, reads: 2, write: false));
                    Row("4k random read and that 512 B read issued together", qd, await Run(dev, qd, seconds, reads: 3, write: false));
                    Row("4k random write (no librbd cache)", qd, await Run(dev, qd, seconds, reads: 0, write: true));
                }
            }
            Console.WriteLine();
            Console.WriteLine("rbd bench on the same image (librbd in C++, same ceph.conf):");
            foreach (int qd in new[] { 1, 32 })
            {
                Console.WriteLine($"  4k random read, {qd} threads, rbd cache off: {RbdBench(usedConf, spec, "read", qd, seconds, "--rbd-cache=false")}");
                Console.WriteLine($"  4k random write, {qd} threads, rbd cache off: {RbdBench(usedConf, spec, "write", qd, seconds, "--rbd-cache=false")}");
            }
        }
        finally
        {
            client.RemoveImage(spec);
            if (usedConf != conf) File.Delete(usedConf);
        }
        return 0;
    }

    static void Row(string what, int qd, (double Iops, double MeanUs) r) =>
        Console.WriteLine($"| {what} | {qd} | {r.Iops:0} | {r.MeanUs:0} |");

    static async Task Fill(IBlockDevice dev)
    {
        var buf = new byte[1 << 20];
        new Random(1).NextBytes(buf);
        for (long off = 0; off < dev.Length; off += 8L << 20)
            await Task.WhenAll(Enumerable.Range(0, 8).Select(i => dev.WriteAsync(off + i * (long)buf.Length, buf, fua: false).AsTask()));
        await dev.FlushAsync();
    }

    static async Task<(double Iops, double MeanUs)> Run(IBlockDevice dev, int qd, double seconds, int reads, bool write)
    {
        long ops = 0;
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
        return (ops / s, qd * s * 1e6 / Math.Max(ops, 1));
    }

    [GeneratedRegex(@"ops/sec:\s*([\d.]+)")]
    private static partial Regex OpsPerSec();

    static string RbdBench(string conf, RbdImageSpec spec, string type, int threads, double seconds, string options)
    {
        // rbd bench stops after --io-total bytes: a total the device did in about the same time above is enough.
        long total = (long)(seconds * (threads == 1 ? 2500 : 15000)) * 4096;
        var psi = new ProcessStartInfo("rbd") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in $"-c {conf} {options} bench --io-type {type} --io-size 4096 --io-threads {threads} --io-total {total} --io-pattern rand {spec.Display}".Split(' '))
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        var m = OpsPerSec().Matches(output);
        return m.Count > 0 ? $"{double.Parse(m[^1].Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture):0} IOPS" : $"failed (exit {p.ExitCode}): {err.Result.Trim()}";
    }
}
