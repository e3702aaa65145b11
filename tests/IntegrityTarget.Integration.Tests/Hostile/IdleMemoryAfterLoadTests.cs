using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Hostile;

/// <summary>
/// Issue 13 item 11 in small: mixed reads and writes from several sessions grow the real server's RSS (GC
/// heap, pools, native arenas); once the sessions are gone and the server has been idle for its reclaim
/// time (25 s), most of that growth is given back and RSS is within twice its idle start. The full-size
/// soak with numbers is tests/bench/soak.sh.
/// </summary>
[TestFixture, Category("Hostile")]
public class IdleMemoryAfterLoadTests
{
    const int Sessions = 8;
    const int BlockSize = 512;
    static readonly TimeSpan Load = TimeSpan.FromSeconds(12);

    [Test]
    public void Memory_grown_by_mixed_io_from_several_sessions_is_given_back_once_the_server_is_idle()
    {
        using var srv = new ServerProcess(new ServerOptions { Size = "256MiB", LogLevel = "Warning" }).Start();
        using (var warm = TestInitiator.Connect(srv)) { warm.ClearUnitAttention(0); warm.Read16(0, 0, 8, BlockSize); warm.Logout(); }
        Thread.Sleep(2000);
        long start = srv.RssBytes, peak = start;
        ulong blocks = (256UL << 20) / BlockSize;

        long ios = 0, bad = 0;
        var until = DateTime.UtcNow + Load;
        var workers = Enumerable.Range(0, Sessions).Select(s => new Thread(() =>
        {
            var rnd = new Random(s);
            var data = new byte[64 * 1024];
            rnd.NextBytes(data);
            using var ini = TestInitiator.Connect(srv, new LoginOptions { Isid = 0x80_0000_0000UL + 0x200UL + (ulong)s });
            ini.ClearUnitAttention(0);
            while (DateTime.UtcNow < until)
            {
                ulong lba = (ulong)rnd.NextInt64((long)(blocks - 128)) & ~7UL;
                int len = rnd.Next(3) == 0 ? data.Length : 4096;
                var w = ini.Write16(0, lba, data.AsSpan(0, len), BlockSize);
                var r = ini.Read16(0, (ulong)rnd.NextInt64((long)(blocks - 128)) & ~7UL, (uint)(rnd.Next(2) == 0 ? 8 : 128), BlockSize);
                if (w.Status != 0 || r.Status != 0) Interlocked.Increment(ref bad);
                Interlocked.Add(ref ios, 2);
            }
            ini.Logout();
        })).ToList();
        workers.ForEach(t => t.Start());
        while (workers.Any(t => t.IsAlive)) { peak = Math.Max(peak, srv.RssBytes); Thread.Sleep(200); }
        Assert.That(bad, Is.Zero, () => srv.Output(30));
        TestContext.Progress.WriteLine($"{Sessions} sessions x {Load.TotalSeconds} s: {ios} commands; RSS start {start >> 20} MiB, peak {peak >> 20} MiB");
        // Without enough growth the rest would prove nothing.
        Assert.That(peak - start, Is.GreaterThanOrEqualTo(32L << 20), $"the load grew RSS by {(peak - start) >> 20} MiB only");

        // The reclaim runs 25 s after the last activity (checked every 5 s); allow for a slow machine.
        long now = srv.RssBytes;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(90);
        while (DateTime.UtcNow < deadline && (now = srv.RssBytes) > Math.Min(2 * start, start + (peak - start) / 2)) Thread.Sleep(1000);
        TestContext.Progress.WriteLine($"RSS idle after load {now >> 20} MiB");
        Assert.That(now, Is.LessThanOrEqualTo(2 * start), $"RSS {now >> 20} MiB idle after load, {start >> 20} MiB at the idle start");
        Assert.That(peak - now, Is.GreaterThanOrEqualTo((peak - start) / 2),
            $"only {(peak - now) >> 20} of the {(peak - start) >> 20} MiB grown under load was given back");
        srv.Stop();
    }
}
