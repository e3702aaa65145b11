using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Devices;

/// <summary>Gather writes and scatter reads (IBlockDevice.WriteGatherAsync / ReadScatterAsync): the file device's
/// pwritev/preadv and the default every other device gets (one plain call) put and fetch the same bytes as plain
/// calls, and the default is one device call, not one per part.</summary>
public class GatherScatterTests
{
    private static byte[] Bytes(int n, int seed) { var b = new byte[n]; new Random(seed).NextBytes(b); return b; }

    private static async Task RoundTrips(IBlockDevice dev)
    {
        byte[] a = Bytes(8192, 1), b = Bytes(512, 2), c = Bytes(1536, 3);
        await dev.WriteGatherAsync(4096, [a, b.AsMemory(), c], fua: false);
        var whole = new byte[a.Length + b.Length + c.Length];
        await dev.ReadAsync(4096, whole);
        Assert.That(whole, Is.EqualTo(a.Concat(b).Concat(c).ToArray()), "a gather write puts the parts back to back");

        byte[] x = new byte[1024], y = new byte[8192], z = new byte[1024];
        await dev.ReadScatterAsync(4096 - 512, [x, y.AsMemory(), z]);
        var expect = new byte[512].Concat(whole).ToArray();
        Assert.That(x.Concat(y).Concat(z).ToArray(), Is.EqualTo(expect.Take(x.Length + y.Length + z.Length).ToArray()), "a scatter read splits the bytes in order");

        await dev.WriteGatherAsync(65536, [Bytes(512, 9)], fua: true); // one part, FUA
        var one = new byte[512];
        await dev.ReadScatterAsync(65536, [one]);
        Assert.That(one, Is.EqualTo(Bytes(512, 9)));
        Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await dev.WriteGatherAsync(dev.Length - 512, [new byte[512], new byte[512]], fua: false), "past the end");
    }

    [Test]
    public async Task The_file_device_gathers_and_scatters_with_one_system_call_each()
    {
        var dir = Directory.CreateTempSubdirectory("it-gather-");
        try
        {
            using var dev = FileBlockDevice.CreateSparse(Path.Combine(dir.FullName, "d.img"), 1 << 20);
            await RoundTrips(dev);
            // A short file: a scatter read running past the end of what the file holds reads zeros there.
            using var shortDev = FileBlockDevice.CreateSparse(Path.Combine(dir.FullName, "s.img"), 8192);
            await shortDev.WriteAsync(0, Bytes(8192, 5), fua: false);
            byte[] p = new byte[4096], q = new byte[4096];
            await shortDev.ReadScatterAsync(0, [p, q]);
            Assert.That(p.Concat(q).ToArray(), Is.EqualTo(Bytes(8192, 5)));
        }
        finally { dir.Delete(recursive: true); }
    }

    [Test]
    public async Task Every_other_device_gets_a_default_that_is_one_plain_call()
    {
        using var mem = new MemoryBlockDevice(1 << 20, "m");
        await RoundTrips(mem);
        var crash = new CrashSimulatingDevice(new MemoryBlockDevice(1 << 20, "c"), record: true);
        await RoundTrips(crash);
        var writes = crash.RecordedOperations.Where(o => o.Kind == DeviceOperationKind.Write).ToList();
        Assert.That(writes[0].Length, Is.EqualTo(8192 + 512 + 1536), "three parts, one write: the crash points a device sees do not change");
    }

    /// <summary>StartWriteback (sync_file_range on a file) is a hint: the bytes read back unchanged, in the page cache
    /// and after a flush; a range outside the file is refused; a device without it (memory) accepts and ignores it.</summary>
    [Test]
    public async Task Starting_writeback_changes_no_byte_and_checks_its_range()
    {
        var dir = Directory.CreateTempSubdirectory("it-writeback-");
        try
        {
            using var dev = FileBlockDevice.CreateSparse(Path.Combine(dir.FullName, "d.img"), 1 << 20);
            var data = Bytes(64 * 1024, 7);
            await dev.WriteAsync(128 * 1024, data, fua: false);
            dev.StartWriteback(128 * 1024, data.Length);
            dev.StartWriteback(0, dev.Length);
            dev.StartWriteback(4096, 0);
            var back = new byte[data.Length];
            await dev.ReadAsync(128 * 1024, back);
            Assert.That(back, Is.EqualTo(data), "in the page cache");
            await dev.FlushAsync();
            await dev.ReadAsync(128 * 1024, back);
            Assert.That(back, Is.EqualTo(data), "after the flush");
            Assert.Throws<ArgumentOutOfRangeException>(() => dev.StartWriteback(dev.Length - 4096, 8192), "past the end");
        }
        finally { dir.Delete(recursive: true); }
        using var mem = new MemoryBlockDevice(1 << 16, "mem");
        ((IBlockDevice)mem).StartWriteback(0, 1 << 16);
        await mem.WriteAsync(0, Bytes(512, 3), fua: false);
        var one = new byte[512];
        await mem.ReadAsync(0, one);
        Assert.That(one, Is.EqualTo(Bytes(512, 3)));
    }
}
