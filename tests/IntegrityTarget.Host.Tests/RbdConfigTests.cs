using IntegrityTarget.Host.Config;

namespace IntegrityTarget.Host.Tests;

/// <summary>rbd:POOL/IMAGE LUN paths and the Ceph:* keys: validated without a cluster.</summary>
public class RbdConfigTests
{
    [Test]
    public void An_rbd_lun_keeps_its_spec_and_gets_the_ceph_options_with_the_cli_defaults()
    {
        using var dir = new TempDir();
        var conf = dir.File("ceph.conf", "[global]\nmon_host = 127.0.0.1:1\n");
        var (config, problems) = ConfigTestExtensions.Load(dir.Path,
            ["--data-dir", dir.Path, "--lun", "rbd:rbd/vm1", "--ceph-conf", conf, "--ceph-id", "client.iscsi"]);
        Assert.That(problems.Errors(), Is.Empty);
        var lun = config!.Targets[0].Luns[0];
        Assert.That(lun.Path, Is.EqualTo("rbd:rbd/vm1"));
        Assert.That((lun.Rbd!.Pool, lun.Rbd.Image), Is.EqualTo(("rbd", "vm1")));
        Assert.That((lun.Ceph!.Cluster, lun.Ceph.ClientId, lun.Ceph.ConfFile, lun.Ceph.Keyring, lun.Ceph.TimeoutSeconds),
            Is.EqualTo(("ceph", "iscsi", conf, (string?)null, 30)));
        Assert.That(lun.Integrity, Is.True, "integrity is on by default for images too");
        Assert.That(lun.ReservationFile, Is.EqualTo(Path.Combine(dir.Path, "rbd.rbd.vm1.pr.json")), "APTPL state goes under DataDirectory, not beside a path that is no file");
    }

    [Test]
    public void Ceph_conf_comes_from_CEPH_CONF_when_not_configured_and_integrity_can_be_off_per_lun()
    {
        using var dir = new TempDir();
        var conf = dir.File("c.conf", "[global]\nmon_host = 127.0.0.1:1\n");
        var env = new Dictionary<string, string?> { ["CEPH_CONF"] = conf, ["INTEGRITYTARGET_Ceph__TimeoutSeconds"] = "7" };
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--data-dir", dir.Path, "--lun", "rbd:fast/tenant/vm2", "--integrity", "false"], env);
        Assert.That(problems.Errors(), Is.Empty);
        var lun = config!.Targets[0].Luns[0];
        Assert.That((lun.Rbd!.Pool, lun.Rbd.Namespace, lun.Rbd.Image, lun.Integrity), Is.EqualTo(("fast", "tenant", "vm2", false)));
        Assert.That((lun.Ceph!.ConfFile, lun.Ceph.TimeoutSeconds), Is.EqualTo((conf, 7)));
    }

    [Test]
    public void Ceph_files_on_the_command_line_are_relative_to_the_working_directory_and_in_the_config_file_to_the_data_directory()
    {
        using var dir = new TempDir();
        var inCwd = dir.File("etc/ceph.conf", "[global]\nmon_host = 127.0.0.1:1\n");
        var inCwdKeyring = dir.File("etc/k.keyring", "");
        var inData = dir.File("data/etc/ceph.conf", "[global]\nmon_host = 127.0.0.1:1\n");
        var inDataKeyring = dir.File("data/etc/k.keyring", "");

        // As `rbd -c etc/ceph.conf` would read it: the same flags as format, scrub and dump take.
        var (cli, cliProblems) = ConfigTestExtensions.Load(dir.Path,
            ["--data-dir", "data", "--lun", "rbd:rbd/vm1", "--ceph-conf", "etc/ceph.conf", "--ceph-keyring", "etc/k.keyring"]);
        Assert.That(cliProblems.Errors(), Is.Empty);
        Assert.That((cli!.Targets[0].Luns[0].Ceph!.ConfFile, cli.Targets[0].Luns[0].Ceph!.Keyring), Is.EqualTo((inCwd, inCwdKeyring)));

        var (env, envProblems) = ConfigTestExtensions.Load(dir.Path, ["--data-dir", "data", "--lun", "rbd:rbd/vm1"],
            new Dictionary<string, string?> { ["INTEGRITYTARGET_Ceph__ConfFile"] = "etc/ceph.conf" });
        Assert.That(envProblems.Errors(), Is.Empty);
        Assert.That(env!.Targets[0].Luns[0].Ceph!.ConfFile, Is.EqualTo(inCwd));

        // In the JSON file every relative path is relative to DataDirectory.
        dir.File("x.json", """
            { "DataDirectory": "data", "Portals": ["127.0.0.1:3260"],
              "Ceph": { "ConfFile": "etc/ceph.conf", "Keyring": "etc/k.keyring" },
              "Targets": [ { "Iqn": "iqn.2026-11.org.example:a", "Luns": [ { "Lun": 0, "Path": "rbd:rbd/vm1" } ] } ] }
            """);
        var (file, fileProblems) = ConfigTestExtensions.Load(dir.Path, ["--config", "x.json"]);
        Assert.That(fileProblems.Errors(), Is.Empty);
        Assert.That((file!.Targets[0].Luns[0].Ceph!.ConfFile, file.Targets[0].Luns[0].Ceph!.Keyring), Is.EqualTo((inData, inDataKeyring)));

        // The command line overrides the file's key, and is read as typed.
        var (both, bothProblems) = ConfigTestExtensions.Load(dir.Path, ["--config", "x.json", "--ceph-conf", "etc/ceph.conf"]);
        Assert.That(bothProblems.Errors(), Is.Empty);
        Assert.That((both!.Targets[0].Luns[0].Ceph!.ConfFile, both.Targets[0].Luns[0].Ceph!.Keyring), Is.EqualTo((inCwd, inDataKeyring)));
    }

    [Test]
    public void Bad_rbd_paths_missing_ceph_files_and_bad_ceph_keys_are_all_reported()
    {
        using var dir = new TempDir();
        dir.File("x.json", """
            {
              "Portals": ["127.0.0.1:3260"],
              "Ceph": { "ConfFile": "missing.conf", "Keyring": "missing.keyring", "ClientId": "bad id", "TimeoutSeconds": 0, "Clutser": "x" },
              "Targets": [
                { "Iqn": "iqn.2026-11.org.example:a",
                  "Luns": [ { "Lun": 0, "Path": "rbd:vm1" },
                            { "Lun": 1, "Path": "rbd:rbd/vm2" },
                            { "Lun": 2, "Path": "rbd:rbd/vm2" },
                            { "Lun": 3, "Path": "rbd:rbd/vm3@snap1" } ] }
              ]
            }
            """);
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--config", "x.json", "--data-dir", dir.Path]);
        var errors = problems.Errors().ToList();
        Assert.That(config, Is.Null);
        Assert.That(errors, Has.Some.StartsWith("x.json: Targets:0:Luns:0:Path: 'rbd:vm1' is not rbd:POOL/IMAGE"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Targets:0:Luns:2:Path: 'rbd:rbd/vm2' is already served by Targets:0:Luns:1"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Targets:0:Luns:3:Path: 'rbd:rbd/vm3@snap1': snapshots"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Ceph:ConfFile: Ceph configuration file").And.Contains("missing.conf' does not exist"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Ceph:Keyring: keyring").And.Contains("missing.keyring' does not exist"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Ceph:ClientId: 'bad id' is not a client id"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Ceph:TimeoutSeconds: must be between 1 and 3600"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Ceph:Clutser: unknown setting"));
        Assert.That(errors, Has.Count.EqualTo(8), string.Join("\n", errors));
    }

    [Test]
    public void An_rbd_lun_without_any_ceph_configuration_says_how_to_give_one()
    {
        using var dir = new TempDir();
        var (_, problems) = ConfigTestExtensions.Load(dir.Path, ["--data-dir", dir.Path, "--lun", "rbd:rbd/vm1", "--ceph-cluster", "nosuchcluster"]);
        Assert.That(problems.Errors(), Has.Some.Contains("rbd:rbd/vm1 needs a Ceph configuration").And.Contains("--ceph-conf").And.Contains("/etc/ceph/nosuchcluster.conf"));
    }

    [Test]
    public async Task Serve_check_accepts_an_rbd_lun_without_touching_a_cluster()
    {
        using var dir = new TempDir();
        var conf = dir.File("ceph.conf", "[global]\nmon_host = 127.0.0.1:1\n");
        var run = await CliRun.RunAsync(dir.Path, ["serve", "--check", "--no-config", "--data-dir", dir.Path, "--lun", "rbd:rbd/vm1", "--ceph-conf", conf]);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.AllOutput);
        Assert.That(run.OutText, Does.Contain("1 LUN(s)"));
    }

    [Test]
    public void Gateways_may_share_an_rbd_image_and_its_lock_decides_the_owner()
    {
        using var dir = new TempDir();
        var conf = dir.File("ceph.conf", "[global]\nmon_host = 127.0.0.1:1\n");
        var (_, problems) = ConfigTestExtensions.Load(dir.Path, ["--data-dir", dir.Path, "--lun", "rbd:rbd/vm1", "--ceph-conf", conf,
            "--Ha:PeerSecret", "0123456789abcdef", "--ha-self", "a",
            "--Ha:Gateways:0:Name", "a", "--Ha:Gateways:0:Peer", "127.0.0.1:3270", "--Ha:Gateways:1:Name", "b", "--Ha:Gateways:1:Peer", "127.0.0.1:3271"]);
        Assert.That(problems.Errors(), Is.Empty);
    }
}
