using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Hostile;

/// <summary>
/// Connection floods against the real server started under `ulimit -n 1024` (systemd's default soft
/// limit): the process stays up, the session logged in before keeps working and real logins still get in.
/// (When descriptors do run out, the .NET runtime itself aborts as soon as it cannot start a thread, which
/// is why the connection limit keeps a reserve; the accept back-off is covered by SocketTransportTests.)
/// </summary>
[TestFixture, Category("Hostile")]
public class ConnectionFloodTests
{
    [StructLayout(LayoutKind.Sequential)]
    struct RLimit { public ulong Cur, Max; }
    [DllImport("libc", SetLastError = true)] static extern int getrlimit(int resource, out RLimit r);
    [DllImport("libc", SetLastError = true)] static extern int setrlimit(int resource, ref RLimit r);

    /// <summary>The flood comes from this process, which therefore needs more descriptors than the server gets.</summary>
    static void EnsureOwnFdLimit(ulong want)
    {
        Assert.That(getrlimit(7, out var r), Is.Zero);
        if (r.Cur >= want) return;
        r.Cur = Math.Min(want, r.Max);
        Assert.That(setrlimit(7, ref r), Is.Zero, "raising this test process's RLIMIT_NOFILE");
        Assert.That(r.Cur, Is.GreaterThanOrEqualTo(want), $"the test needs {want} file descriptors (ulimit -n); the hard limit is {r.Max}");
    }

    /// <summary>Opens <paramref name="count"/> TCP connections concurrently and keeps those that connected.</summary>
    static List<Socket> Flood(int port, int count)
    {
        var sockets = new List<Socket>();
        var tasks = new List<Task<Socket?>>();
        for (int i = 0; i < count; i++)
        {
            tasks.Add(Task.Run(async () =>
            {
                var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                try
                {
                    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                    await s.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), cts.Token);
                    return s;
                }
                catch (Exception e) when (e is SocketException or OperationCanceledException) { s.Dispose(); return null; }
            }));
            if (tasks.Count % 200 == 0) Task.WaitAll([.. tasks.Skip(tasks.Count - 200)], TimeSpan.FromSeconds(60));
        }
        Task.WaitAll([.. tasks], TimeSpan.FromSeconds(120));
        foreach (var t in tasks) if (t.IsCompletedSuccessfully && t.Result is { } s) sockets.Add(s);
        return sockets;
    }

    static void CloseAll(List<Socket> sockets)
    {
        foreach (var s in sockets) s.Dispose();
        sockets.Clear();
    }

    static void AssertWitnessWorks(TestInitiator witness, ulong lba, byte fill)
    {
        var data = new byte[4096];
        Array.Fill(data, fill);
        var w = witness.Write16(0, lba, data, 512);
        Assert.That(w.Good, Is.True, () => $"write during the flood: {w}");
        var r = witness.Read16(0, lba, 8, 512);
        Assert.That(r.Good && r.Data.AsSpan().SequenceEqual(data), Is.True, () => $"read during the flood: {r}");
    }

    static void AssertRealLoginWorks(ServerProcess srv)
    {
        var ls = Tools.Run(Tools.RequireTool("iscsi-ls"), ["-s", srv.PortalUrl], TimeSpan.FromSeconds(60));
        Assert.That(ls.ExitCode, Is.EqualTo(0), () => ls.Describe() + "\n" + srv.Output(40));
        Assert.That(ls.StdOut, Does.Contain($"Target:{srv.Iqn}"), () => ls.Describe());
    }

    [Test]
    public void A_2000_connection_flood_under_ulimit_1024_leaves_the_server_alive_and_real_logins_working()
    {
        EnsureOwnFdLimit(8192);
        using var srv = new ServerProcess(new ServerOptions { FdLimit = 1024 }).Start();
        Assert.That(srv.HasLog(@"Up to 512 connections \(RLIMIT_NOFILE 1024\)"), Is.True, () => srv.Output(30));
        using var witness = TestInitiator.Connect(srv);
        witness.ClearUnitAttention(0);

        var flood = Flood(srv.Port, 2000);
        try
        {
            TestContext.Progress.WriteLine($"flood: {flood.Count} of 2000 connections open");
            Assert.That(srv.IsRunning, Is.True, () => srv.Output(40));
            AssertWitnessWorks(witness, 100, 0x5a);
            AssertRealLoginWorks(srv);
            var iscsi = srv.IscsiCounters();
            Assert.That((long)iscsi["pendingLoginsEvicted"]! + (long)iscsi["connectionsRefused"]!, Is.GreaterThan(1000),
                () => "the idle connections were closed to make room: " + iscsi.ToJsonString());
            Assert.That((long)iscsi["connectionsOpen"]!, Is.LessThanOrEqualTo(512), () => iscsi.ToJsonString());
        }
        finally { CloseAll(flood); }
        Assert.That(srv.CountLog("closing the oldest"), Is.LessThanOrEqualTo(12), () => "rate-bounded: " + srv.Output(40));
        srv.Stop();
    }
}
