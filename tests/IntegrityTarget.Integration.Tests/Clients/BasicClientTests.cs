using System.Text.RegularExpressions;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Clients;

/// <summary>libiscsi's command-line clients against the real server: discovery, inquiry, capacity.</summary>
[TestFixture, Category("Clients")]
public class BasicClientTests
{
    const string SecondIqn = "iqn.2026-11.org.example:second";
    ServerProcess _srv = null!;

    static ToolResult Libiscsi(string tool, params string[] args)
    {
        var r = Tools.Run(Tools.RequireTool(tool), args, TimeSpan.FromSeconds(60));
        Assert.That(r.ExitCode, Is.EqualTo(0), () => r.Describe());
        return r;
    }

    [OneTimeSetUp]
    public void StartServer()
    {
        // Two targets: the default one with LUN 0 (integrity on) and LUN 1 (integrity off), a second with LUN 0.
        var o = new ServerOptions { Size = "64MiB" };
        var dir = Directory.CreateTempSubdirectory("it-clients-").FullName;
        o.LunPath = Path.Combine(dir, "lun0.img");
        o.Extra.AddRange([
            $"--Targets:0:Luns:1:Path={Path.Combine(dir, "lun1.img")}", "--Targets:0:Luns:1:Size=32MiB", "--Targets:0:Luns:1:Integrity=false",
            $"--Targets:1:Iqn={SecondIqn}", $"--Targets:1:Luns:0:Path={Path.Combine(dir, "second0.img")}", "--Targets:1:Luns:0:Size=16MiB",
        ]);
        _srv = new ServerProcess(o, dataDir: dir).Start();
    }

    [OneTimeTearDown]
    public void StopServer()
    {
        if (_srv is null) return;
        try { _srv.Stop(); }
        finally { _srv.Dispose(); try { Directory.Delete(_srv.DataDir, true); } catch (IOException) { } }
    }

    [Test]
    public void Iscsi_ls_discovers_every_target_and_lun_with_sizes()
    {
        var r = Libiscsi("iscsi-ls", "-s", _srv.PortalUrl);
        var o = r.StdOut;
        Assert.Multiple(() =>
        {
            Assert.That(o, Does.Contain($"Target:{_srv.Iqn} Portal:127.0.0.1:{_srv.Port},"), () => r.Describe());
            Assert.That(o, Does.Contain($"Target:{SecondIqn} Portal:127.0.0.1:{_srv.Port},"), () => r.Describe());
            // iscsi-ls prints the last LBA's byte offset in whole MiB (a 64 MiB LUN shows 63M, as with tgt)
            Assert.That(o, Does.Match($@"Target:{Regex.Escape(_srv.Iqn)} [^\n]*\nLun:0\s+Type:DIRECT_ACCESS \(Size:63M\)\nLun:1\s+Type:DIRECT_ACCESS \(Size:31M\)"), () => r.Describe());
            Assert.That(o, Does.Match($@"Target:{Regex.Escape(SecondIqn)} [^\n]*\nLun:0\s+Type:DIRECT_ACCESS \(Size:15M\)"), () => r.Describe());
        });
    }

    [Test]
    public void Iscsi_ls_with_CHAP_credentials_in_the_URL_logs_in_where_no_CHAP_is_required()
    {
        // libiscsi offers CHAP,None and, after the target answers None, repeats InitiatorName and
        // SessionType in its next login request: both the discovery and the normal sessions must accept that.
        int failedBefore = _srv.CountLog("Login failed");
        var r = Libiscsi("iscsi-ls", "-s", $"iscsi://client%twelve-chars-secret@127.0.0.1:{_srv.Port}/");
        Assert.That(r.StdOut, Does.Match($@"Target:{Regex.Escape(_srv.Iqn)} [^\n]*\nLun:0\s+Type:DIRECT_ACCESS"), () => r.Describe());
        Assert.That(_srv.CountLog("Login failed"), Is.EqualTo(failedBefore), () => _srv.Output(40));
    }

    [Test]
    public void Iscsi_inq_standard_inquiry_describes_a_direct_access_disk()
    {
        var r = Libiscsi("iscsi-inq", _srv.Url(0));
        Assert.That(r.StdOut, Does.Contain("Peripheral Device Type:DIRECT_ACCESS"));
        Assert.That(r.StdOut, Does.Contain("Peripheral Qualifier:CONNECTED"));
        Assert.That(r.StdOut, Does.Match(@"Vendor:\S"));
        Assert.That(r.StdOut, Does.Match(@"Product:\S"));
    }

    [Test]
    public void Iscsi_inq_lists_and_returns_vpd_pages_80_83_b0()
    {
        var pages = Libiscsi("iscsi-inq", "-e", "1", "-c", "0", _srv.Url(0)).StdOut;
        foreach (var p in new[] { "0x00", "0x80", "0x83", "0xb0", "0xb1", "0xb2" })
            Assert.That(pages, Does.Contain($"Page:{p} "), "supported VPD pages\n" + pages);

        var serial0 = Libiscsi("iscsi-inq", "-e", "1", "-c", "128", _srv.Url(0)).StdOut;
        var serial1 = Libiscsi("iscsi-inq", "-e", "1", "-c", "128", _srv.Url(1)).StdOut;
        Assert.That(serial0, Does.Match(@"Unit Serial Number:\[\s*\S+\]"));
        Assert.That(serial0, Is.Not.EqualTo(serial1), "each LUN has its own serial number");

        var id = Libiscsi("iscsi-inq", "-e", "1", "-c", "131", _srv.Url(0)).StdOut;
        Assert.That(id, Does.Contain("Designator Type:(3) NAA"), id);
        var idAgain = Libiscsi("iscsi-inq", "-e", "1", "-c", "131", _srv.Url(0)).StdOut;
        Assert.That(idAgain, Is.EqualTo(id), "the NAA identifier is stable");

        var bl = Libiscsi("iscsi-inq", "-e", "1", "-c", "176", _srv.Url(0)).StdOut;
        Assert.That(bl, Does.Match(@"maximum transfer length:\d+"), bl);
        Assert.That(bl, Does.Match(@"maximum unmap lba count:[1-9]\d*"), "thin LUN advertises UNMAP\n" + bl);
    }

    [Test]
    public void Iscsi_readcapacity16_reports_the_configured_capacity_with_integrity_metadata_in_the_file()
    {
        var on = Libiscsi("iscsi-readcapacity16", _srv.Url(0)).StdOut;
        Assert.That(on, Does.Contain("LOGICAL BLOCK LENGTH IN BYTES:512"));
        Assert.That(long.Parse(Regex.Match(on, @"Total size:(\d+)").Groups[1].Value), Is.EqualTo(64L << 20), on);
        Assert.That(new FileInfo(_srv.LunPath).Length, Is.GreaterThan(64L << 20), "tags and journal live in the LUN file beside the data");

        var off = Libiscsi("iscsi-readcapacity16", _srv.Url(1)).StdOut;
        Assert.That(long.Parse(Regex.Match(off, @"Total size:(\d+)").Groups[1].Value), Is.EqualTo(32L << 20), off);
        Assert.That(new FileInfo(Path.Combine(_srv.DataDir, "lun1.img")).Length, Is.EqualTo(32L << 20), "integrity off: the file is the LUN");
    }

    [Test]
    public void Existing_file_served_with_integrity_gets_a_capacity_a_little_below_its_size()
    {
        var dir = Directory.CreateTempSubdirectory("it-existing-").FullName;
        var file = Path.Combine(dir, "disk.img");
        using (var f = new FileStream(file, FileMode.CreateNew)) f.SetLength(48L << 20);
        using var cleanup = new DirectoryCleanup(dir);
        using var srv = new ServerProcess(new ServerOptions { Size = null, LunPath = file }, dataDir: dir).Start();
        var cap = Libiscsi("iscsi-readcapacity16", srv.Url(0)).StdOut;
        var bytes = long.Parse(Regex.Match(cap, @"Total size:(\d+)").Groups[1].Value);
        Assert.That(bytes, Is.LessThan(48L << 20).And.GreaterThan(32L << 20), cap);
        Assert.That(new FileInfo(file).Length, Is.EqualTo(48L << 20), "the file keeps its size");
        srv.Stop();
    }

    [Test]
    public void TestInitiator_discovery_session_lists_both_targets_with_a_reachable_address()
    {
        using var ini = TestInitiator.Connect(_srv, new LoginOptions { Discovery = true });
        var st = ini.SendTargets();
        Assert.That(st.Where(kv => kv.Key == "TargetName").Select(kv => kv.Value), Is.SupersetOf(new[] { _srv.Iqn, SecondIqn }));
        Assert.That(st.Where(kv => kv.Key == "TargetAddress").Select(kv => kv.Value),
            Has.All.StartsWith($"127.0.0.1:{_srv.Port},"), string.Join(" ", st));
        ini.Logout();
    }
}

/// <summary>CHAP (one-way and mutual) and initiator ACLs with libiscsi and the test initiator.</summary>
[TestFixture, Category("Clients")]
public class AuthenticationTests
{
    const string User = "alice", Secret = "alice-secret-012", TargetUser = "target-bob", TargetSecret = "bob-secret-4567x";

    static ToolResult Inq(string url, IDictionary<string, string>? env = null, params string[] extra) =>
        Tools.Run(Tools.RequireTool("iscsi-inq"), extra.Append(url), TimeSpan.FromSeconds(60), env);

    [Test]
    public void One_way_chap_admits_the_right_secret_and_refuses_a_wrong_one_and_none()
    {
        var o = new ServerOptions();
        o.Extra.AddRange([$"--Targets:0:Chap:User={User}", $"--Targets:0:Chap:Secret={Secret}"]);
        using var srv = new ServerProcess(o).Start();

        var ok = Inq(srv.Url(0, user: User, secret: Secret));
        Assert.That(ok.ExitCode, Is.EqualTo(0), () => ok.Describe());
        Assert.That(ok.StdOut, Does.Contain("DIRECT_ACCESS"));

        Assert.That(Inq(srv.Url(0, user: User, secret: "wrong-secret-999")).ExitCode, Is.Not.EqualTo(0), "wrong secret");
        Assert.That(Inq(srv.Url(0, user: "mallory", secret: Secret)).ExitCode, Is.Not.EqualTo(0), "wrong user");
        Assert.That(Inq(srv.Url(0)).ExitCode, Is.Not.EqualTo(0), "no CHAP at all");

        var refused = Assert.Throws<LoginFailedException>(() =>
            TestInitiator.Connect(srv, new LoginOptions { ChapUser = User, ChapSecret = "wrong-secret-999" }).Dispose())!;
        Assert.That(refused.StatusClass, Is.EqualTo(2), "initiator error class");
        Assert.That(refused.StatusDetail, Is.EqualTo(1), "authentication failure");

        using (var ini = TestInitiator.Connect(srv, new LoginOptions { ChapUser = User, ChapSecret = Secret }))
        {
            ini.ClearUnitAttention(0);
            Assert.That(ini.ReadCapacity(0).BlockSize, Is.EqualTo(512));
            ini.Logout();
        }
        Assert.That(srv.ServerLines, Has.None.Contains(Secret), "secrets are never logged");
        srv.Stop();
    }

    [Test]
    public void Mutual_chap_proves_the_target_to_libiscsi_and_to_the_test_initiator()
    {
        var o = new ServerOptions();
        o.Extra.AddRange([$"--Targets:0:Chap:User={User}", $"--Targets:0:Chap:Secret={Secret}",
            $"--Targets:0:MutualChap:User={TargetUser}", $"--Targets:0:MutualChap:Secret={TargetSecret}"]);
        using var srv = new ServerProcess(o).Start();

        // libiscsi takes the target's credentials from the environment and checks the target's CHAP_R.
        var good = Inq(srv.Url(0, user: User, secret: Secret),
            new Dictionary<string, string> { ["LIBISCSI_CHAP_TARGET_USERNAME"] = TargetUser, ["LIBISCSI_CHAP_TARGET_PASSWORD"] = TargetSecret });
        Assert.That(good.ExitCode, Is.EqualTo(0), () => good.Describe());
        var wrongTarget = Inq(srv.Url(0, user: User, secret: Secret),
            new Dictionary<string, string> { ["LIBISCSI_CHAP_TARGET_USERNAME"] = TargetUser, ["LIBISCSI_CHAP_TARGET_PASSWORD"] = "not-the-target-secret" });
        Assert.That(wrongTarget.ExitCode, Is.Not.EqualTo(0), "libiscsi must reject a target that cannot prove the mutual secret\n" + wrongTarget.Describe());

        using (var ini = TestInitiator.Connect(srv, new LoginOptions { ChapUser = User, ChapSecret = Secret, MutualUser = TargetUser, MutualSecret = TargetSecret }))
        {
            ini.ClearUnitAttention(0);
            ini.Logout();
        }
        Assert.That(() => TestInitiator.Connect(srv, new LoginOptions { ChapUser = User, ChapSecret = Secret, MutualSecret = "not-the-target-secret" }).Dispose(),
            Throws.InstanceOf<IOException>().With.Message.Contains("mutual"));
        Assert.That(srv.ServerLines, Has.None.Contains(TargetSecret).And.None.Contains(Secret), "secrets are never logged");
        srv.Stop();
    }

    [Test]
    public void Discovery_hidden_by_the_ACL_answers_empty_and_logs_one_hint_naming_the_initiator()
    {
        const string Allowed = "iqn.2026-11.org.example:allowed", Hidden = "iqn.2026-11.org.example:not-on-the-list";
        var o = new ServerOptions();
        o.Extra.Add($"--Targets:0:AllowedInitiators:0={Allowed}");
        using var srv = new ServerProcess(o).Start();
        for (int n = 0; n < 3; n++)
        {
            var r = Tools.Run(Tools.RequireTool("iscsi-ls"), ["-i", Hidden, srv.PortalUrl], TimeSpan.FromSeconds(60));
            Assert.That(r.StdOut, Does.Not.Contain("Target:"), () => "the ACL hides the target\n" + r.Describe());
        }
        var hint = $@"Discovery by {Regex.Escape(Hidden)} from 127\.0\.0\.1:\d+ was answered with no targets: .*AllowedInitiators of 1 target";
        Assert.That(srv.WaitForLog(hint, TimeSpan.FromSeconds(10)), Is.True, () => srv.Output(30));
        Assert.That(srv.CountLog(hint), Is.EqualTo(1), () => "one hint, not one per discovery\n" + srv.Output(30));
        var shown = Tools.Run(Tools.RequireTool("iscsi-ls"), ["-i", Allowed, srv.PortalUrl], TimeSpan.FromSeconds(60));
        Assert.That(shown.StdOut, Does.Contain($"Target:{srv.Iqn}"), () => shown.Describe());
    }

    [Test]
    public void Acl_admits_listed_initiators_and_refuses_others()
    {
        const string Allowed = "iqn.2026-11.org.example:allowed", Other = "iqn.2026-11.org.example:intruder";
        var o = new ServerOptions();
        o.Extra.Add($"--Targets:0:AllowedInitiators:0={Allowed}");
        using var srv = new ServerProcess(o).Start();

        var ok = Inq(srv.Url(0), null, "-i", Allowed);
        Assert.That(ok.ExitCode, Is.EqualTo(0), () => ok.Describe());
        var denied = Inq(srv.Url(0), null, "-i", Other);
        Assert.That(denied.ExitCode, Is.Not.EqualTo(0), () => denied.Describe());

        var e = Assert.Throws<LoginFailedException>(() => TestInitiator.Connect(srv, new LoginOptions { InitiatorName = Other }).Dispose())!;
        Assert.That(e.StatusClass, Is.EqualTo(2), "initiator error");
        Assert.That(e.StatusDetail, Is.AnyOf(2, 3), "authorization failure or not found");
        using (var ini = TestInitiator.Connect(srv, new LoginOptions { InitiatorName = Allowed })) ini.Logout();
        srv.Stop();
    }
}
