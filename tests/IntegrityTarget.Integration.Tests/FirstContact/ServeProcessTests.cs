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
    public void Listen_with_a_port_alone_serves_that_port_on_loopback_and_the_log_says_so()
    {
        var o = new ServerOptions { Size = "8MiB" };
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
