using System.Text.RegularExpressions;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Operations;

/// <summary>`integrity-target resize` against the real process while initiators use the LUN.</summary>
[TestFixture, Category("Operations")]
public class ResizeTests
{
    const int Bs = 512;

    [TestCase(false), TestCase(true)]
    public void Growing_a_lun_during_io_gives_libiscsi_the_unit_attention_and_the_new_capacity_and_keeps_the_data(bool integrity)
    {
        using var srv = new ServerProcess(new ServerOptions { Size = "64MiB", Integrity = integrity }).Start();
        try
        {
            var qemuIo = Tools.RequireTool("qemu-io");
            using var ini = TestInitiator.Connect(srv);
            ini.ClearUnitAttention(0);
            var data = new byte[256 * 1024];
            new Random(42).NextBytes(data);
            Assert.That(ini.Write16(0, 1000, data, Bs, fua: true).Good, Is.True);

            // A QEMU (libiscsi) session that is logged in before the grow and does I/O after it.
            var session = Task.Run(() => Tools.Run(qemuIo, ["-f", "raw", "-c", "write -P 0x5a 8M 1M", "-c", "sleep 4000", "-c", "read -P 0x5a 8M 1M", srv.Url(0)], TimeSpan.FromMinutes(2)));
            Thread.Sleep(1500);
            var grow = ServerProcess.Cli(TimeSpan.FromSeconds(60), "resize", $"{srv.Iqn}/0", "96MiB", "--socket", srv.StatusSocket);
            Assert.That(grow.ExitCode, Is.EqualTo(0), () => grow.Describe());
            Assert.That(grow.StdOut, Does.Contain("64 MiB -> 96 MiB"), () => grow.Describe());

            var q = session.GetAwaiter().GetResult();
            Assert.That(q.ExitCode, Is.EqualTo(0), () => q.Describe());
            Assert.That(q.Combined, Does.Contain("CAPACITY_DATA_HAS_CHANGED"), () => "libiscsi saw the unit attention\n" + q.Describe());
            Assert.That(q.Combined, Does.Not.Contain("Pattern verification failed"), () => q.Describe());

            // Our own initiator: the unit attention once, then the new size; old data intact, new end usable.
            var ua = ini.TestUnitReady(0);
            Assert.That((ua.Sense?.Key, ua.Sense?.Asc, ua.Sense?.Ascq), Is.EqualTo(((byte?)0x06, (byte?)0x2A, (byte?)0x09)), ua.ToString);
            Assert.That(ini.TestUnitReady(0).Good, Is.True);
            Assert.That(ini.ReadCapacity(0), Is.EqualTo(((ulong)(96 << 20) / Bs, Bs)));
            var back = ini.Read16(0, 1000, (uint)(data.Length / Bs), Bs);
            Assert.That(back.Data, Is.EqualTo(data));
            ulong last = (ulong)(96 << 20) / Bs - 1;
            Assert.That(ini.Write16(0, last, data.AsSpan(0, Bs), Bs, fua: true).Good, Is.True);
            Assert.That(ini.Read16(0, last, 1, Bs).Data, Is.EqualTo(data.AsSpan(0, Bs).ToArray()));

            // A new libiscsi session sees the new capacity and can use the grown space.
            var cap = Tools.Run(Tools.RequireTool("iscsi-readcapacity16"), srv.Url(0));
            Assert.That(cap.StdOut, Does.Contain($"RETURNED LOGICAL BLOCK ADDRESS:{last}"), () => cap.Describe());
            var io = Tools.Run(qemuIo, ["-f", "raw", "-c", "write -P 0x33 90M 1M", "-c", "read -P 0x33 90M 1M", srv.Url(0)], TimeSpan.FromMinutes(1));
            Assert.That(io.ExitCode, Is.EqualTo(0), () => io.Describe());
            Assert.That(io.Combined, Does.Not.Contain("Pattern verification failed"), () => io.Describe());

            // Shrinking is refused with a reason; the size stays.
            var shrink = ServerProcess.Cli(TimeSpan.FromSeconds(60), "resize", $"{srv.Iqn}/0", "32MiB", "--socket", srv.StatusSocket);
            Assert.That(shrink.ExitCode, Is.EqualTo(1), () => shrink.Describe());
            Assert.That(shrink.Combined, Does.Contain("shrinking is refused"), () => shrink.Describe());
            Assert.That(ini.ReadCapacity(0).Blocks, Is.EqualTo(last + 1));
            var badLun = ServerProcess.Cli(TimeSpan.FromSeconds(60), "resize", $"{srv.Iqn}/7", "1GiB", "--socket", srv.StatusSocket);
            Assert.That(badLun.Combined, Does.Contain("has no LUN 7"), () => badLun.Describe());

            // The grown size survives a restart: the file is the new length.
            ini.Dispose();
            srv.Stop();
            // (an integrity volume's file also holds tags, journal and spare slots: larger than the LUN)
            Assert.That(new FileInfo(srv.LunPath).Length, integrity ? Is.GreaterThan(96L << 20) : Is.EqualTo(96L << 20));
            srv.Start();
            var again = Tools.Run(Tools.RequireTool("iscsi-readcapacity16"), srv.Url(0));
            Assert.That(again.StdOut, Does.Contain($"RETURNED LOGICAL BLOCK ADDRESS:{last}"), () => again.Describe());
            srv.Stop();
        }
        finally { try { Directory.Delete(srv.DataDir, true); } catch (IOException) { } }
    }
}
