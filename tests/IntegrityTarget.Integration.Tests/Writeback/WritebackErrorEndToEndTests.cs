using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Writeback;

/// <summary>
/// The real server serves a LUN whose file sits on failfs (tests/tools/failfs, the kernel's writeback cache on): an
/// initiator writes, the disk then fails every writeback, and SYNCHRONIZE CACHE must answer CHECK CONDITION, not GOOD
/// (the written blocks never reached the disk). The sense is the one the SCSI layer gives a failed flush: HARDWARE
/// ERROR, INTERNAL TARGET FAILURE (a flush has no LBA to name). Every later flush fails too (the failure is sticky);
/// the server logs the failure once: with integrity on the volume does (its journal fails), with integrity off the LUN
/// does (the plain volume logs nothing itself), and the later failing flushes are not logged again at Error; status
/// counts all three failed flushes (deviceErrors).
/// </summary>
[TestFixture, Category("Writeback")]
public class WritebackErrorEndToEndTests
{
    const long LunBytes = 64L << 20;
    const int Bs = 512;

    [TestCase(false)]
    [TestCase(true)]
    public void SYNCHRONIZE_CACHE_after_a_failed_writeback_is_CHECK_CONDITION(bool integrity)
    {
        using var fs = new Failfs(LunBytes);
        var srv = new ServerProcess(new ServerOptions
        {
            Size = $"{LunBytes >> 20}MiB", BlockSize = Bs, LunPath = fs.Disk, Integrity = integrity, LogLevel = "Information",
        });
        try
        {
            srv.Start();
            using var ini = TestInitiator.Connect(srv);
            ini.ClearUnitAttention(0);
            Assert.That(ini.SynchronizeCache(0).Good, "a flush before any failure is GOOD");

            var data = new byte[64 << 10];
            Random.Shared.NextBytes(data);
            for (ulong lba = 0; lba < 1024; lba += (ulong)(data.Length / Bs))
            {
                var w = ini.Write16(0, 2048 + lba, data, Bs);
                Assert.That(w.Good, () => "write before the failure: " + w);
            }
            fs.Fail(0, LunBytes);

            var r = ini.SynchronizeCache(0);
            TestContext.Progress.WriteLine($"SYNCHRONIZE CACHE after the failed writeback: {r}; failfs {string.Join(", ", fs.Stats())}");
            Assert.That(r.Status, Is.EqualTo(0x02), () => $"CHECK CONDITION expected, got {r}\n{srv.Output(40)}");
            Assert.That(r.Sense, Is.Not.Null);
            Assert.That((r.Sense!.Key, r.Sense.Asc, r.Sense.Ascq), Is.EqualTo(((byte)0x04, (byte)0x44, (byte)0x00)), () => r.Sense.ToString());
            Assert.That(fs.Stats()["failed_writes"], Is.GreaterThan(0), "the failure came from a writeback");

            fs.Clear();
            var again = ini.SynchronizeCache(0);
            Assert.That(again.Good, Is.False, () => $"a flush after a failed one must not be GOOD: {again}");
            var third = ini.SynchronizeCache(0);
            Assert.That(third.Good, Is.False, () => $"every later flush fails too: {third}");
            Thread.Sleep(500);
            var errors = srv.ServerLines.Select((l, i) => (l, i)).Where(x => x.l.Contains(" ERR] ", StringComparison.Ordinal)).ToList();
            Assert.That(errors, Has.Count.EqualTo(1), () => "the failure is logged once:\n" + srv.Output(80));
            // Each failed flush is counted all the same: status shows the LUN's device errors.
            var st = ServerProcess.Cli(TimeSpan.FromSeconds(30), "status", "--json", "--socket", srv.StatusSocket);
            Assert.That(st.ExitCode, Is.EqualTo(0), () => st.Describe());
            var counters = System.Text.Json.Nodes.JsonNode.Parse(st.StdOut)!["targets"]![0]!["luns"]![0]!["counters"]!;
            Assert.That((long)counters["deviceErrors"]!, Is.EqualTo(3), () => counters.ToJsonString());
            if (integrity)
            {
                // The volume fails on the first failed flush and says so once, naming the system's error; the later
                // flushes it meets (background syncs, the later SYNCHRONIZE CACHEs) are not logged again.
                Assert.That(errors[0].l, Does.Contain("failed; the volume refuses further writes"));
                Assert.That(srv.ServerLines[errors[0].i + 1], Does.Contain("fdatasync failed: Input/output error"));
            }
            else
            {
                // The LUN logs the device's failure once, on one line naming the LUN, the command and the system's
                // error; the two later flushes that failed (the file's flushes are no longer trusted) are only counted.
                Assert.That(errors[0].l, Does.Contain("LUN 0: device flush failed on"));
                Assert.That(errors[0].l, Does.Contain("SYNCHRONIZE CACHE"));
                Assert.That(errors[0].l, Does.Contain("fdatasync failed: Input/output error"));
            }
        }
        finally
        {
            if (srv.IsRunning) srv.Kill();
            srv.Dispose();
        }
    }
}
