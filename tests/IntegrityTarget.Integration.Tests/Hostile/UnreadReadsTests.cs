using System.Buffers.Binary;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Hostile;

/// <summary>
/// Sessions that ask for large READs and never read the answers (immediate ones, which bypass the CmdSN
/// window, and normal ones up to the window) against the real server with a small in-flight budget: the
/// process's RSS stays within the budget plus slack, and once they disconnect the memory is given back.
/// </summary>
[TestFixture, Category("Hostile")]
public class UnreadReadsTests
{
    const long Budget = 128L << 20;
    const uint ReadBytes = 16u << 20;

    /// <summary>A READ(16) of <see cref="ReadBytes"/> from LUN 0 whose answer the test never reads.</summary>
    static void SendRead(TestInitiator ini, ulong lba, bool immediate)
    {
        var b = new byte[48];
        b[0] = (byte)(0x01 | (immediate ? 0x40 : 0));
        b[1] = 0x80 | 0x40 | 1; // F, R, SIMPLE
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), ini.NextItt());
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), ReadBytes);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), immediate ? ini.CmdSn : ini.TakeCmdSn());
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(28), ini.ExpStatSn);
        TestInitiator.Cdb16(0x88, lba, ReadBytes / 512).CopyTo(b.AsSpan(32));
        ini.SendPdu(b, default);
    }

    [Test]
    public void Unread_READs_from_several_sessions_stay_within_the_budget_and_are_given_back_after_disconnect()
    {
        var o = new ServerOptions { Size = "128MiB" };
        o.Extra.Add($"--Iscsi:MaxInFlightBytes={Budget >> 20}MiB");
        using var srv = new ServerProcess(o).Start();
        using (var warm = TestInitiator.Connect(srv)) { warm.ClearUnitAttention(0); warm.Read16(0, 0, 8, 512); warm.Logout(); }
        Thread.Sleep(2000);
        long start = srv.RssBytes;

        var sessions = new List<TestInitiator>();
        long peak = start;
        try
        {
            for (int s = 0; s < 4; s++)
            {
                // A send timeout: once the server stops reading, the test's writes would block for good.
                var ini = TestInitiator.Connect(srv, new LoginOptions { Isid = 0x80_0000_0000UL + 0x100UL + (ulong)s }, TimeSpan.FromSeconds(5));
                sessions.Add(ini);
                ini.ClearUnitAttention(0);
                int sent = 0;
                try
                {
                    for (int n = 0; n < 20; n++, sent++) SendRead(ini, (ulong)(n % 8) * (ReadBytes / 512), immediate: true);
                    for (int n = 0; n < 128; n++, sent++) SendRead(ini, (ulong)(n % 8) * (ReadBytes / 512), immediate: false);
                }
                catch (IOException) { } // the server stopped reading this connection: back-pressure
                TestContext.Progress.WriteLine($"session {s}: {sent} READs of {ReadBytes >> 20} MiB sent");
            }
            var until = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (DateTime.UtcNow < until) { peak = Math.Max(peak, srv.RssBytes); Thread.Sleep(100); }
            Assert.That(srv.IsRunning, Is.True, () => srv.Output(30));
            var iscsi = srv.IscsiCounters();
            TestContext.Progress.WriteLine($"RSS start {start >> 20} MiB, peak {peak >> 20} MiB; {iscsi.ToJsonString()}");
            Assert.That((long)iscsi["inFlightPeakBytes"]!, Is.LessThanOrEqualTo(Budget + ReadBytes), iscsi.ToJsonString());
            Assert.That((long)iscsi["commandsRefusedOverBudget"]! + (long)iscsi["backPressureWaits"]!, Is.GreaterThan(0), iscsi.ToJsonString());
            Assert.That(peak - start, Is.LessThanOrEqualTo(Budget + (96L << 20)),
                $"RSS grew {(peak - start) >> 20} MiB with a {Budget >> 20} MiB budget");
        }
        finally
        {
            foreach (var s in sessions) s.Dispose();
        }

        // Everything those sessions held goes back: connections, tasks, buffers, and (once idle) the memory itself.
        long now = srv.RssBytes;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(120);
        while (DateTime.UtcNow < deadline && (now = srv.RssBytes) > start + (48L << 20)) Thread.Sleep(1000);
        var after = srv.IscsiCounters();
        TestContext.Progress.WriteLine($"RSS after disconnect {now >> 20} MiB (start {start >> 20} MiB)");
        Assert.That((long)after["inFlightBytes"]!, Is.Zero, after.ToJsonString());
        Assert.That((long)after["connectionsOpen"]!, Is.Zero, after.ToJsonString());
        Assert.That(now, Is.LessThanOrEqualTo(start + (48L << 20)), $"RSS {now >> 20} MiB after disconnect, {start >> 20} MiB at start");
        srv.Stop();
    }
}
