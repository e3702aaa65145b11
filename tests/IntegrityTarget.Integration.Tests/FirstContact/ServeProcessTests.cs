using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.FirstContact;

/// <summary>
/// The serving process as a new user meets it (issue 13): a second serve in the same data directory,
/// a data directory on a filesystem without unix sockets, a portal given as a port alone.
/// </summary>
[TestFixture, Category("FirstContact")]
public class ServeProcessTests
{
    static ToolResult Cli(params string[] args) => ServerProcess.Cli(TimeSpan.FromMinutes(1), args);

    [Test]
    public void A_second_serve_in_the_same_data_directory_is_refused_and_leaves_the_live_servers_socket_alone()
    {
        using var first = new ServerProcess(new ServerOptions { Size = "16MiB" }).Start();
        var secondLun = Path.Combine(first.DataDir, "second.img");

        var second = Cli("serve", "--listen", $"127.0.0.1:{Tools.FreePort()}", "--data-dir", first.DataDir, "--lun", secondLun, "--size", "8MiB");

        Assert.That(second.ExitCode, Is.EqualTo(1), () => second.Describe());
        Assert.That(second.Combined, Does.Contain($"status socket {first.StatusSocket} is in use: another integrity-target is serving from this data directory"));
        Assert.That(File.Exists(secondLun), Is.False, "the refused server created no LUN file");
        Assert.That(File.Exists(first.StatusSocket), Is.True, "the live server's socket is still there");
        var status = first.Status();
        Assert.That(status.ExitCode, Is.EqualTo(0), () => status.Describe());
        var scrub = Cli("scrub", "--lun", $"{first.Iqn}/0", "--socket", first.StatusSocket);
        Assert.That(scrub.ExitCode, Is.EqualTo(0), () => scrub.Describe());
        first.Stop();
        Assert.That(File.Exists(first.StatusSocket), Is.False, "the server that made the socket removes it at exit");
    }

    [Test]
    public void A_data_directory_without_unix_sockets_stops_serve_with_how_to_move_the_socket_and_the_moved_socket_works()
    {
        // powercutfs (FUSE) holds exactly one file, its disk: creating a socket there fails as on many FUSE
        // and network filesystems.
        var dir = Directory.CreateTempSubdirectory("it-fuse-").FullName;
        var baseFile = Path.Combine(dir, "base.img");
        using (var f = new FileStream(baseFile, FileMode.CreateNew)) f.SetLength(32 << 20);
        var pc = new Powercut(baseFile, Path.Combine(dir, "mnt"));
        pc.Mount();
        ServerProcess? srv = null;
        try
        {
            var refused = Cli("serve", "--listen", $"127.0.0.1:{Tools.FreePort()}", "--data-dir", pc.MountDir, "--lun", "disk.img", "--integrity", "false");
            Assert.That(refused.ExitCode, Is.EqualTo(1), () => refused.Describe());
            Assert.That(refused.Combined, Does.Contain($"cannot create status socket {Path.Combine(pc.MountDir, "status.sock")}: " +
                                                       $"the filesystem of {pc.MountDir} does not support unix domain sockets"));
            Assert.That(refused.Combined, Does.Contain("put the socket elsewhere with --status-socket PATH"));
            Assert.That(refused.Combined, Does.Not.Contain("Unknown socket error"));
            Assert.That(refused.Combined, Does.Not.Contain("Listening on"), "nothing was served");

            var socket = Path.Combine(dir, "status.sock");
            var o = new ServerOptions { Size = null, Integrity = false, LunPath = "disk.img" };
            o.Extra.AddRange(["--data-dir", pc.MountDir, "--status-socket", socket]);
            srv = new ServerProcess(o, dataDir: Path.Combine(dir, "server")).Start();
            var status = Cli("status", "--socket", socket);
            Assert.That(status.ExitCode, Is.EqualTo(0), () => status.Describe());
            Assert.That(status.StdOut, Does.Contain(pc.Disk));
            srv.Stop();
        }
        finally
        {
            srv?.Dispose();
            pc.Umount();
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);

    [Test]
    public void A_repeated_SIGTERM_does_not_cut_the_drain_short()
    {
        // `dotnet run` passes on a SIGTERM that its process group (the server included) already got.
        using var srv = new ServerProcess(new ServerOptions { Size = "8MiB" }).Start();
        int pid = srv.Pid;
        Assert.That(kill(pid, 15), Is.EqualTo(0));
        Assert.That(kill(pid, 15), Is.EqualTo(0));
        srv.Stop(); // exit code 0
        Assert.That(srv.HasLog("Stopped; every volume flushed"), Is.True, srv.Output());
    }

    [Test]
    public void A_server_started_under_nohup_still_reloads_on_SIGHUP_and_stops_on_SIGTERM()
    {
        var dir = Directory.CreateTempSubdirectory("it-nohup-").FullName;
        try
        {
            var psi = new System.Diagnostics.ProcessStartInfo(Tools.RequireTool("env")) { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { "--ignore-signal=HUP", "dotnet", Paths.ServerDll, "serve", "--listen", $"127.0.0.1:{Tools.FreePort()}",
                         "--data-dir", dir, "--lun", Path.Combine(dir, "lun0.img"), "--size", "8MiB" })
                psi.ArgumentList.Add(a);
            using var p = System.Diagnostics.Process.Start(psi)!;
            var lines = new System.Collections.Concurrent.BlockingCollection<string>();
            p.OutputDataReceived += (_, e) => { if (e.Data != null) lines.Add(e.Data); };
            p.ErrorDataReceived += (_, e) => { if (e.Data != null) lines.Add(e.Data); };
            p.BeginOutputReadLine(); p.BeginErrorReadLine();
            var seen = new List<string>();
            bool WaitFor(string text)
            {
                var until = DateTime.UtcNow + TimeSpan.FromSeconds(60);
                while (DateTime.UtcNow < until)
                    if (lines.TryTake(out var l, TimeSpan.FromMilliseconds(200))) { seen.Add(l); if (l.Contains(text)) return true; }
                return false;
            }
            try
            {
                Assert.That(WaitFor("Ready;"), Is.True, () => string.Join("\n", seen));
                Assert.That(kill(p.Id, 1), Is.EqualTo(0));
                Assert.That(WaitFor("SIGHUP: reloading the configuration"), Is.True, () => string.Join("\n", seen));
                Assert.That(p.HasExited, Is.False, "SIGHUP reloads, it does not end serve");
                Assert.That(kill(p.Id, 15), Is.EqualTo(0));
                Assert.That(p.WaitForExit(TimeSpan.FromSeconds(60)), Is.True);
                Assert.That(p.ExitCode, Is.EqualTo(0));
            }
            finally { if (!p.HasExited) p.Kill(); }
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    // The test runner may itself run with SIGHUP ignored (CI started under nohup or as a background job), and
    // a child inherits that: `env --default-signal`/`--ignore-signal` give the verb a known disposition.
    [TestCase("--default-signal=HUP", true, TestName = "SIGHUP_ends_a_verb_other_than_serve_as_it_ends_any_program")]
    [TestCase("--ignore-signal=HUP", false, TestName = "SIGHUP_ignored_since_start_nohup_leaves_a_verb_other_than_serve_running")]
    public async Task SIGHUP_and_a_verb_other_than_serve(string disposition, bool ends)
    {
        var dir = Directory.CreateTempSubdirectory("it-hup-").FullName;
        try
        {
            var path = Path.Combine(dir, "mute.sock");
            using var mute = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
            mute.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(path));
            mute.Listen(1); // a "server" that takes the request and never answers
            var psi = new System.Diagnostics.ProcessStartInfo(Tools.RequireTool("env")) { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { disposition, "dotnet", Paths.ServerDll, "reload", "--socket", path }) psi.ArgumentList.Add(a);
            using var p = System.Diagnostics.Process.Start(psi)!;
            try
            {
                using var conn = await mute.AcceptAsync().WaitAsync(TimeSpan.FromSeconds(60));
                var request = new byte[256];
                int n = await conn.ReceiveAsync(request.AsMemory()).AsTask().WaitAsync(TimeSpan.FromSeconds(30)); // it waits for the answer now
                Assert.That(System.Text.Encoding.UTF8.GetString(request, 0, n), Does.Contain("reload"));

                Assert.That(kill(p.Id, 1), Is.EqualTo(0));
                if (ends)
                {
                    Assert.That(p.WaitForExit(TimeSpan.FromSeconds(10)), Is.True, "the verb ended on SIGHUP");
                    Assert.That(p.ExitCode, Is.EqualTo(128 + 1), "ended by the signal");
                }
                else
                {
                    Assert.That(p.WaitForExit(TimeSpan.FromSeconds(3)), Is.False, "a verb started under nohup goes on after SIGHUP");
                    conn.Shutdown(System.Net.Sockets.SocketShutdown.Both); // the "server" closes without answering
                    Assert.That(p.WaitForExit(TimeSpan.FromSeconds(30)), Is.True, "the verb ended when its server closed");
                    Assert.That(p.ExitCode, Is.Not.EqualTo(128 + 1));
                }
            }
            finally { if (!p.HasExited) p.Kill(); }
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    [Test]
    public void Listen_with_a_port_alone_serves_that_port_on_loopback_and_the_log_says_so()
    {
        // Ready is logged after every portal is bound and logged; the port accepting alone comes before its log line.
        var o = new ServerOptions { Size = "8MiB", ReadyLogPattern = "Ready;" };
        using var srv = new ServerProcess(o);
        o.Extra.AddRange(["--listen", srv.Port.ToString()]); // overrides ServerProcess's own --listen 127.0.0.1:PORT
        srv.Start();
        Assert.That(srv.HasLog($"command line \\(--listen\\): Portals:0: '{srv.Port}' is a port alone: listening on 127\\.0\\.0\\.1:{srv.Port}"), Is.True, srv.Output());
        Assert.That(srv.CountLog($"Listening on 127\\.0\\.0\\.1:{srv.Port}"), Is.EqualTo(1), srv.Output());
        var ls = Tools.Run(Tools.RequireTool("iscsi-ls"), ["-s", srv.PortalUrl], TimeSpan.FromSeconds(60));
        Assert.That(ls.ExitCode, Is.EqualTo(0), () => ls.Describe());
        Assert.That(ls.StdOut, Does.Contain(srv.Iqn));
        srv.Stop();
    }
}
