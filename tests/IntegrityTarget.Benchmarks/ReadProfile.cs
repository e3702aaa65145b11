using System.Diagnostics;
using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using Serilog;

namespace IntegrityTarget.Benchmarks;

/// <summary>Per-operation cost of a 4k volume read vs its device reads + tag, single thread (finds overhead).</summary>
internal static class ReadProfile
{
    public static async Task<int> RunAsync()
    {
        string path = Path.Combine("/var/tmp", $"itv-prof-{Environment.ProcessId}.img");
        ulong blocks = 65536;
        try
        {
            using var file = FileBlockDevice.CreateSparse(path, IntegrityVolume.DeviceBytesFor(blocks, 4096, TagAlgorithm.Crc32c));
            var v = await IntegrityVolume.FormatAsync(file, new FormatOptions(), new LoggerConfiguration().CreateLogger());
            var buf = new byte[1 << 20];
            for (ulong l = 0; l < blocks; l += 256) await v.WriteAsync(l, buf, false);
            await v.FlushAsync();
            var b4 = new byte[4096]; var tags = new byte[512];
            var tag = IntegrityVolume.CreateTagger(TagAlgorithm.Crc32c, new byte[16], new byte[32]);
            for (int round = 0; round < 3; round++)
            {
                var rnd = new Random(1);
                var sw = Stopwatch.StartNew();
                for (int i = 0; i < 100_000; i++) await v.ReadAsync((ulong)rnd.NextInt64((long)blocks), b4);
                double vol = sw.Elapsed.TotalMicroseconds / 100_000;
                rnd = new Random(1);
                sw.Restart();
                for (int i = 0; i < 100_000; i++)
                {
                    long off = (64L << 20) + rnd.NextInt64(1 << 14) * 4096;
                    await file.ReadAsync(off, b4);
                    await file.ReadAsync(off + 8192, tags);
                    tag(b4, 1, tags);
                }
                double dev = sw.Elapsed.TotalMicroseconds / 100_000;
                rnd = new Random(1);
                sw.Restart();
                for (int i = 0; i < 100_000; i++) await file.ReadAsync((64L << 20) + rnd.NextInt64(1 << 14) * 4096, b4);
                double raw = sw.Elapsed.TotalMicroseconds / 100_000;
                Console.WriteLine($"volume read {vol:F2} us/op; 2 device reads + tag {dev:F2} us/op; 1 device read {raw:F2} us/op");
            }
            await v.DisposeAsync();
        }
        finally { File.Delete(path); }
        return 0;
    }
}
