using IntegrityTarget.Host.Config;

namespace IntegrityTarget.Host.Tests;

public class ConfigLoadingTests
{
    private const string TwoTargetFile = """
        {
          // comments are allowed, as in the sample under config/
          "DataDirectory": "fromfile",
          "Portals": ["10.0.0.1:3260"],
          "Logging": { "Level": "Debug" },
          "Targets": [
            { "Iqn": "iqn.2026-11.org.example:one", "Luns": [ { "Lun": 0, "Path": "one.img", "Size": "64MiB" } ] },
            { "Iqn": "iqn.2026-11.org.example:two", "Luns": [ { "Lun": 3, "Path": "two.img", "Size": "64MiB", "BlockSize": 4096, "Integrity": false } ] }
          ]
        }
        """;

    [Test]
    public void Environment_overrides_file_and_command_line_overrides_both()
    {
        using var dir = new TempDir();
        dir.File("c.json", TwoTargetFile);
        var env = new Dictionary<string, string?>
        {
            ["INTEGRITYTARGET_Portals__0"] = "127.0.0.2:3261",
            ["INTEGRITYTARGET_Logging__Level"] = "Warning",
            ["UNRELATED_Portals__0"] = "1.1.1.1:1",
        };
        var loaded = ConfigLoader.Load(new ConfigInput(["--config", "c.json", "--log-level", "Error"], env, dir.Path));
        var (config, problems) = ConfigReader.Read(loaded);

        Assert.That(problems.Errors(), Is.Empty);
        Assert.That(config!.DataDirectory, Is.EqualTo(Path.Combine(dir.Path, "fromfile")), "file value kept when nothing overrides it");
        Assert.That(config.Portals.Single().ToString(), Is.EqualTo("127.0.0.2:3261"), "environment beats the file");
        Assert.That(config.Logging.Level, Is.EqualTo("Error"), "command line beats environment and file");
        Assert.That(loaded.SourceOf("DataDirectory"), Is.EqualTo("c.json"));
        Assert.That(loaded.SourceOf("Portals:0"), Is.EqualTo("environment (INTEGRITYTARGET_Portals__0)"));
        Assert.That(loaded.SourceOf("Logging:Level"), Is.EqualTo("command line (--log-level)"));
    }

    [Test]
    public void File_values_are_read_into_every_target_and_lun()
    {
        using var dir = new TempDir();
        dir.File("c.json", TwoTargetFile);
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--config", "c.json"]);

        Assert.That(problems.Errors(), Is.Empty);
        Assert.That(config!.Targets.Select(t => t.Iqn), Is.EqualTo(new[] { "iqn.2026-11.org.example:one", "iqn.2026-11.org.example:two" }));
        var two = config.Targets[1].Luns.Single();
        Assert.That((two.Lun, two.BlockSize, two.Integrity, two.SizeBytes), Is.EqualTo((3UL, 4096, false, 64L << 20)));
        Assert.That(two.Path, Is.EqualTo(Path.Combine(dir.Path, "fromfile", "two.img")), "LUN paths are relative to DataDirectory");
        Assert.That(config.StatusSocket, Is.EqualTo(Path.Combine(dir.Path, "fromfile", "status.sock")));
    }

    [Test]
    public void Without_a_config_file_the_embedded_default_serves_one_1GiB_integrity_lun_on_loopback()
    {
        using var dir = new TempDir();
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, []);

        Assert.That(problems.Errors(), Is.Empty);
        Assert.That(config!.DataDirectory, Is.EqualTo(Path.Combine(dir.Path, "data")));
        Assert.That(config.Portals.Single().ToString(), Is.EqualTo("127.0.0.1:3260"));
        Assert.That(config.Transport, Is.EqualTo("pipelines"));
        var target = config.Targets.Single();
        Assert.That(target.Iqn, Is.EqualTo("iqn.2026-11.org.example:integrity"));
        Assert.That(target.AllowedInitiators, Is.EqualTo(new[] { "*" }));
        Assert.That(target.Chap, Is.Null);
        var lun = target.Luns.Single();
        Assert.That(lun.Path, Is.EqualTo(Path.Combine(dir.Path, "data", "lun0.img")));
        Assert.That(lun.SizeBytes, Is.EqualTo(1L << 30));
        Assert.That((lun.Integrity, lun.TagAlgorithm, lun.WriteBack, lun.FormatIfBlank, lun.ReadOnly, lun.BlockSize),
            Is.EqualTo((true, "crc32c", true, true, false, 512)));
        Assert.That(config.Iscsi.MaxRecvDataSegmentLength, Is.EqualTo(262144));
        Assert.That(config.Iscsi.QueueDepth, Is.EqualTo(128));
    }

    [Test]
    public void Default_config_file_in_the_working_directory_is_used_when_present()
    {
        using var dir = new TempDir();
        dir.File(ConfigLoader.DefaultConfigFile, TwoTargetFile);
        var loaded = ConfigLoader.Load(new ConfigInput([], new Dictionary<string, string?>(), dir.Path));
        var (config, _) = ConfigReader.Read(loaded);

        Assert.That(loaded.FileDisplayName, Is.EqualTo(ConfigLoader.DefaultConfigFile));
        Assert.That(config!.Targets, Has.Count.EqualTo(2));
    }

    [Test]
    public void A_one_liner_with_its_own_lun_ignores_the_default_config_file()
    {
        using var dir = new TempDir();
        dir.File(ConfigLoader.DefaultConfigFile, TwoTargetFile);
        var (config, problems) = ConfigTestExtensions.Load(dir.Path,
            ["--listen", "127.0.0.1:3270", "--data-dir", ".", "--lun", "disk.img", "--size", "16MiB", "--integrity", "false"]);

        Assert.That(problems.Errors(), Is.Empty);
        var lun = config!.Targets.Single().Luns.Single();
        Assert.That(lun.Path, Is.EqualTo(Path.Combine(dir.Path, "disk.img")));
        Assert.That(lun.Integrity, Is.False);
        Assert.That(config.Targets.Single().Iqn, Is.EqualTo(EmbeddedDefaults.Iqn));
        Assert.That(config.Portals.Single().Port, Is.EqualTo(3270));
    }

    [Test]
    public void No_config_flag_ignores_the_default_config_file()
    {
        using var dir = new TempDir();
        dir.File(ConfigLoader.DefaultConfigFile, TwoTargetFile);
        var (config, _) = ConfigTestExtensions.Load(dir.Path, ["--no-config"]);
        Assert.That(config!.Targets.Single().Iqn, Is.EqualTo(EmbeddedDefaults.Iqn));
    }

    [Test]
    public void Every_short_alias_sets_its_documented_key()
    {
        using var dir = new TempDir();
        var (config, problems) = ConfigTestExtensions.Load(dir.Path,
        [
            "--listen", "0.0.0.0:3262", "--iqn", "iqn.2026-11.org.example:x", "--alias", "lab", "--allow", "iqn.1994-05.com.redhat:client",
            "--lun", "x.img", "--size", "2MiB", "--block-size", "4096", "--integrity", "true", "--tag-algorithm", "xxhash64",
            "--write-back", "false", "--read-only", "true", "--chap-user", "alice", "--chap-secret", "0123456789abcd",
            "--data-dir", "d", "--log-level", "Debug", "--log-file", "log.txt", "--transport", "sockets", "--status-socket", "s.sock",
        ]);
        Assert.That(problems.Errors(), Is.Empty);
        var t = config!.Targets.Single();
        var l = t.Luns.Single();
        Assert.That(config.Portals.Single().ToString(), Is.EqualTo("0.0.0.0:3262"));
        Assert.That((t.Iqn, t.Alias, t.AllowedInitiators.Single()), Is.EqualTo(("iqn.2026-11.org.example:x", "lab", "iqn.1994-05.com.redhat:client")));
        Assert.That((l.SizeBytes, l.BlockSize, l.Integrity, l.TagAlgorithm, l.WriteBack, l.ReadOnly), Is.EqualTo((2L << 20, 4096, true, "xxhash64", false, true)));
        Assert.That((t.Chap!.User, t.Chap.Secret), Is.EqualTo(("alice", "0123456789abcd")));
        Assert.That(config.DataDirectory, Is.EqualTo(Path.Combine(dir.Path, "d")));
        Assert.That(l.Path, Is.EqualTo(Path.Combine(dir.Path, "d", "x.img")));
        Assert.That((config.Logging.Level, config.Logging.File), Is.EqualTo(("Debug", Path.Combine(dir.Path, "d", "log.txt"))));
        Assert.That(config.Transport, Is.EqualTo("pipelines"), "sockets is another name for the default transport");
        Assert.That(config.StatusSocket, Is.EqualTo(Path.Combine(dir.Path, "d", "s.sock")));
    }

    [Test]
    public void Any_key_can_be_given_on_the_command_line_in_either_form()
    {
        using var dir = new TempDir();
        var (config, problems) = ConfigTestExtensions.Load(dir.Path,
            ["--Iscsi:QueueDepth", "32", "--Iscsi:ImmediateData=false", "--Targets:0:Luns:0:Serial", "SER-1"]);
        Assert.That(problems.Errors(), Is.Empty);
        Assert.That((config!.Iscsi.QueueDepth, config.Iscsi.ImmediateData), Is.EqualTo((32, false)));
        Assert.That(config.Targets[0].Luns[0].Serial, Is.EqualTo("SER-1"));
    }

    [Test]
    public void A_luns_tag_cache_is_64MiB_by_default_a_size_or_0_for_off_and_anything_else_is_refused_naming_the_key()
    {
        using var dir = new TempDir();
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, []);
        Assert.That(problems.Errors(), Is.Empty);
        Assert.That(config!.Targets[0].Luns[0].TagCacheBytes, Is.EqualTo(64L << 20));
        foreach (var (text, bytes) in new[] { ("0", 0L), ("8MiB", 8L << 20), ("1G", 1L << 30) })
        {
            (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--Targets:0:Luns:0:TagCache", text]);
            Assert.That(problems.Errors(), Is.Empty, text);
            Assert.That(config!.Targets[0].Luns[0].TagCacheBytes, Is.EqualTo(bytes), text);
        }
        (_, problems) = ConfigTestExtensions.Load(dir.Path, ["--Targets:0:Luns:0:TagCache", "lots"]);
        Assert.That(problems.Errors(), Has.Some.Contains("Targets:0:Luns:0:TagCache").And.Some.Contains("'lots' is not a size"));
    }

    [Test]
    public void Default_serial_is_stable_and_differs_per_lun_and_target()
    {
        var a0 = ConfigReader.DefaultSerial("iqn.2026-11.org.example:a", 0);
        Assert.That(ConfigReader.DefaultSerial("iqn.2026-11.org.example:a", 0), Is.EqualTo(a0));
        Assert.That(ConfigReader.DefaultSerial("iqn.2026-11.org.example:a", 1), Is.Not.EqualTo(a0));
        Assert.That(ConfigReader.DefaultSerial("iqn.2026-11.org.example:b", 0), Is.Not.EqualTo(a0));
        Assert.That(a0, Does.Match("^[0-9A-F]{16}$"));
    }

    [Test]
    public void Single_string_portal_and_initiator_values_count_as_one_element_lists()
    {
        using var dir = new TempDir();
        dir.File("c.json", """
            { "Portals": "127.0.0.1:3300",
              "Targets": [ { "Iqn": "iqn.2026-11.org.example:s", "AllowedInitiators": "iqn.2026-11.org.example:client",
                             "Luns": [ { "Path": "s.img", "Size": "8MiB" } ] } ] }
            """);
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--config", "c.json"]);
        Assert.That(problems.Errors(), Is.Empty);
        Assert.That(config!.Portals.Single().Port, Is.EqualTo(3300));
        Assert.That(config.Targets[0].AllowedInitiators, Is.EqualTo(new[] { "iqn.2026-11.org.example:client" }));
        Assert.That(config.Targets[0].Luns[0].Lun, Is.EqualTo(0UL), "a LUN without a number takes its position");
    }

    [Test]
    public void Transport_names_are_case_insensitive_and_dotnetty_is_selectable()
    {
        using var dir = new TempDir();
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--transport", "DotNetty"]);
        Assert.That(problems.Errors(), Is.Empty);
        Assert.That(config!.Transport, Is.EqualTo("dotnetty"));
    }
}
