using IntegrityTarget.Scsi;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Scsi.Tests;

public class DataPathTests
{
    private static (ScsiTarget, ItNexus) MemoryTarget()
    {
        var volume = new PlainVolume(new MemoryBlockDevice(1 << 22), 512);
        var unit = new ScsiLogicalUnit(0, volume, new LogicalUnitOptions { Serial = "S", IdentitySeed = "x" }, Serilog.Core.Logger.None);
        return (new ScsiTarget("iqn.2026-11.test:alloc", [unit], Serilog.Core.Logger.None), Harness.MakeNexus("iqn.2026-11.test:a", 1));
    }

    [Test]
    public void SteadyStateReadAndWriteAllocateNoDataBuffers()
    {
        var (target, nexus) = MemoryTarget();
        var read = new ScsiCommand { Nexus = nexus, Lun = 0, Cdb = Harness.Read16(8, 64), Direction = DataDirection.Read, ExpectedTransferLength = 64 * 512 };
        var write = new ScsiCommand { Nexus = nexus, Lun = 0, Cdb = Harness.Write16(8, 64), DataOut = new byte[64 * 512], Direction = DataDirection.Write, ExpectedTransferLength = 64 * 512 };
        int bad = 0;
        void Run(int n)
        {
            for (int i = 0; i < n; i++)
            {
                using (var r = target.ExecuteAsync(write, default).GetAwaiter().GetResult()) if (r.Status != ScsiStatus.Good) bad++;
                using (var r = target.ExecuteAsync(read, default).GetAwaiter().GetResult()) if (r.Status != ScsiStatus.Good || r.DataIn.Length != 64 * 512) bad++;
            }
        }
        Run(200); // warm up pools and cached contexts
        long before = GC.GetAllocatedBytesForCurrentThread();
        Run(1000);
        long perCommand = (GC.GetAllocatedBytesForCurrentThread() - before) / 2000;
        Assert.That(bad, Is.Zero);
        // Each command moves 32 KiB; a data buffer per command would show as more than that. What remains is the
        // response object (plus async state machines in Debug builds, which are classes there).
        Assert.That(perCommand, Is.LessThan(2048), $"{perCommand} bytes allocated per command");
    }

    [Test]
    public void A_4k_read_allocates_only_its_response()
    {
        var (target, nexus) = MemoryTarget();
        var read = new ScsiCommand { Nexus = nexus, Lun = 0, Cdb = Harness.Read16(8, 8), Direction = DataDirection.Read, ExpectedTransferLength = 4096 };
        int bad = 0;
        void Run(int n)
        {
            for (int i = 0; i < n; i++)
                using (var r = target.ExecuteAsync(read, default).GetAwaiter().GetResult()) if (r.Status != ScsiStatus.Good || r.DataIn.Length != 4096) bad++;
        }
        Run(200);
        long before = GC.GetAllocatedBytesForCurrentThread();
        Run(1000);
        long perCommand = (GC.GetAllocatedBytesForCurrentThread() - before) / 1000;
        Assert.That(bad, Is.Zero);
        // The response object (72 bytes) and nothing per command besides: the unit's name, composed on each use,
        // used to be built for every read's I/O context (80 bytes here), and the nexus lookup made a closure (24).
        TestContext.Out.WriteLine($"{perCommand} bytes allocated per 4 KiB read");
        Assert.That(perCommand, Is.LessThanOrEqualTo(80), $"{perCommand} bytes allocated per 4 KiB read");
    }
}
