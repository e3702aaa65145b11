using System.Text.RegularExpressions;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Rbd;

/// <summary>
/// LUNs on Ceph RBD images of a real (ceph-mini) cluster, driven by the real server process and real clients:
/// libiscsi tools, QEMU, restart, the offline verbs on the image, and one writer per image.
/// </summary>
[TestFixture, Category("Rbd")]
public class RbdLunTests
{
    static ToolResult Ok(ToolResult r)
    {
        Assert.That(r.ExitCode, Is.EqualTo(0), () => r.Describe());
        return r;
    }

    static ToolResult Tool(string tool, params string[] args) => Ok(Tools.Run(Tools.RequireTool(tool), args, TimeSpan.FromMinutes(8)));

    /// <summary>`integrity-target serve` of the image that is expected not to get as far as serving: its output and exit code.</summary>
    static ToolResult ServeExpectingFailure(RbdImage image)
    {
        var dir = Directory.CreateTempSubdirectory("it-rbd-refused-").FullName;
        using var cleanup = new DirectoryCleanup(dir);
        return ServerProcess.Cli(TimeSpan.FromMinutes(2), "serve", "--no-config", "--listen", $"127.0.0.1:{Tools.FreePort()}", "--data-dir", dir,
            "--lun", image.LunPath, "--ceph-conf", RbdImage.Conf);
    }

    [Test]
    public void Libiscsi_and_qemu_see_an_rbd_lun_and_its_data_survives_a_restart_and_the_offline_verbs()
    {
        using var image = new RbdImage("lun");
        using var srv = new ServerProcess(image.Serve("96MiB")).Start(TimeSpan.FromMinutes(2));
        Assert.That(srv.HasLog(@"Created RBD image " + Regex.Escape(image.Spec)), Is.True, () => srv.Output());

        Assert.That(Tool("iscsi-ls", "-s", srv.PortalUrl).StdOut, Does.Match(@"Lun:0\s+Type:DIRECT_ACCESS \(Size:95M\)"));
        Assert.That(Tool("iscsi-inq", srv.Url(0)).StdOut, Does.Contain("Peripheral Device Type:DIRECT_ACCESS"));
        var cap = Tool("iscsi-readcapacity16", srv.Url(0)).StdOut;
        Assert.That(long.Parse(Regex.Match(cap, @"Total size:(\d+)").Groups[1].Value), Is.EqualTo(96L << 20), cap);
        Assert.That(Ok(RbdImage.Rbd("info", image.Spec)).StdOut, Does.Contain("exclusive-lock"), "images are created with the exclusive-lock feature");

        var dir = srv.DataDir;
        var src = Path.Combine(dir, "random.img");
        Tools.Bash($"dd if=/dev/urandom of='{src}' bs=1M count=96 status=none");
        Tool("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, srv.Url(0));
        Assert.That(Tool("qemu-img", "compare", "-f", "raw", "-F", "raw", src, srv.Url(0)).StdOut, Does.Contain("Images are identical."));
        // Pattern writes (a 1 MiB one and a 4 KiB one) to the LUN, and the same to the source file.
        string[] patterns = ["-c", "write -P 0x5a 70M 1M", "-c", "write -P 0xa5 80M 4k", "-c", "write -z 90M 1M"];
        Tool("qemu-io", [.. new[] { "-f", "raw" }, .. patterns, srv.Url(0)]);
        Tool("qemu-io", [.. new[] { "-f", "raw" }, .. patterns, src]);

        srv.Stop();
        srv.Start(TimeSpan.FromMinutes(2));
        Assert.That(Tool("qemu-img", "compare", "-f", "raw", "-F", "raw", src, srv.Url(0)).StdOut,
            Does.Contain("Images are identical."), "the copy is still there after a restart");
        var pat = Tool("qemu-io", "-f", "raw", "-c", "read -P 0x5a 70M 1M", "-c", "read -P 0xa5 80M 4k", "-c", "read -P 0 90M 1M", srv.Url(0));
        Assert.That(pat.Combined, Does.Not.Contain("failed"), () => pat.Describe());
        srv.Stop();

        // The offline verbs work on the image as on a file.
        var dump = ServerProcess.Cli(TimeSpan.FromMinutes(1), "dump", image.LunPath, "--ceph-conf", RbdImage.Conf);
        Assert.That(dump.ExitCode, Is.EqualTo(0), () => dump.Describe());
        Assert.That(dump.StdOut, Does.Contain("block size:"));
        var scrub = ServerProcess.Cli(TimeSpan.FromMinutes(3), "scrub", image.LunPath, "--ceph-conf", RbdImage.Conf);
        Assert.That(scrub.ExitCode, Is.EqualTo(0), () => scrub.Describe());
        Assert.That(scrub.StdOut, Does.Match(@"\d+ blocks checked .* 0 bad"));
    }

    [Test]
    public void Format_creates_the_image_and_refuses_to_format_it_again_without_force()
    {
        using var image = new RbdImage("fmt");
        var conf = RbdImage.Conf;
        var missing = ServerProcess.Cli(TimeSpan.FromMinutes(1), "format", image.LunPath, "--ceph-conf", conf);
        Assert.That(missing.ExitCode, Is.EqualTo(2), () => missing.Describe());
        Assert.That(missing.StdErr, Does.Contain("does not exist; give --size"));

        var fmt = ServerProcess.Cli(TimeSpan.FromMinutes(1), "format", image.LunPath, "--size", "32MiB", "--block-size", "4096", "--ceph-conf", conf);
        Assert.That(fmt.ExitCode, Is.EqualTo(0), () => fmt.Describe());
        Assert.That(fmt.StdOut, Does.Contain($"{image.LunPath}: formatted: 8192 blocks of 4096 bytes"));
        Assert.That(image.Exists(), Is.True);

        var again = ServerProcess.Cli(TimeSpan.FromMinutes(1), "format", image.LunPath, "--ceph-conf", conf);
        Assert.That(again.ExitCode, Is.EqualTo(1), () => again.Describe());
        Assert.That(again.StdErr, Does.Contain("already holds an integrity volume; add --force"));

        // Served as formatted: 4096-byte blocks, whatever --block-size the server gets.
        var o = image.Serve(size: null);
        using var srv = new ServerProcess(o).Start(TimeSpan.FromMinutes(2));
        Assert.That(Tool("iscsi-readcapacity16", srv.Url(0)).StdOut, Does.Contain("LOGICAL BLOCK LENGTH IN BYTES:4096"));
        srv.Stop();
    }

    [Test]
    public void A_missing_image_without_size_and_an_unknown_pool_fail_clearly()
    {
        using var image = new RbdImage("missing");
        var r = ServeExpectingFailure(image);
        Assert.That(r.ExitCode, Is.EqualTo(1), () => r.Describe());
        Assert.That(r.Combined, Does.Contain($"image {image.LunPath} does not exist and no Size is given"));

        var pool = ServerProcess.Cli(TimeSpan.FromMinutes(1), "dump", "rbd:nosuchpool/x", "--ceph-conf", RbdImage.Conf);
        Assert.That(pool.ExitCode, Is.Not.EqualTo(0));
        Assert.That(pool.StdErr, Does.Contain("pool 'nosuchpool' does not exist"));
    }

    [Test]
    public void A_second_gateway_is_refused_and_told_which_client_holds_the_image()
    {
        using var image = new RbdImage("twogw");
        using var first = new ServerProcess(image.Serve("32MiB")).Start(TimeSpan.FromMinutes(2));
        var holder = Regex.Match(string.Join('\n', first.ServerLines), @"for writing as client\.admin \(([^)]+)\)");
        Assert.That(holder.Success, Is.True, () => "the first gateway logs its address\n" + first.Output());

        var second = ServeExpectingFailure(image);
        Assert.That(second.ExitCode, Is.EqualTo(1), () => second.Describe());
        Assert.That(second.Combined, Does.Match(@"already open for writing by client\.\d+ at " + Regex.Escape(holder.Groups[1].Value)),
            () => "the refusal names the holder's client id and address\n" + second.Describe());
        Assert.That(second.Combined, Does.Contain("one gateway writes an image at a time"));

        // The first gateway still serves, and its journal is intact: a write and a read go through.
        var w = Tool("qemu-io", "-f", "raw", "-c", "write -P 0x33 1M 64k", "-c", "read -P 0x33 1M 64k", first.Url(0));
        Assert.That(w.Combined, Does.Not.Contain("failed"), () => w.Describe());
        first.Stop();
    }
}
