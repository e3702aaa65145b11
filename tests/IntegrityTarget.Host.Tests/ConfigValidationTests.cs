using IntegrityTarget.Host.Config;

namespace IntegrityTarget.Host.Tests;

public class ConfigValidationTests
{
    [Test]
    public void Every_problem_is_reported_at_once_with_file_name_and_key_path()
    {
        using var dir = new TempDir();
        dir.File("x.json", """
            {
              "Portals": ["127.0.0.1:70000"],
              "Transport": "carrier-pigeon",
              "Iscsi": { "MaxBurstLength": 8192, "FirstBurstLength": 65536 },
              "Targets": [
                { "Iqn": "iqn.2026-11.org.example:a",
                  "Luns": [ { "Lun": 0, "Path": "a.img", "Size": "1GiB" },
                            { "Lun": 0, "Path": "b.img", "Size": "1GiB", "BlockSize": 1024 },
                            { "Lun": 20000, "Path": "missing.img" } ] },
                { "Iqn": "iqn.2026-11.org.example:a", "Luns": [ { "Path": "c.img", "Size": "12 parsecs", "TagAlgorithm": "md5" } ] },
                { "Iqn": "target-without-scheme", "Luns": [ { "Path": "d.img", "Size": "100KiB" } ] }
              ]
            }
            """);
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--config", "x.json"]);
        var errors = problems.Errors().ToList();

        Assert.That(config, Is.Null);
        Assert.That(errors, Has.Some.StartsWith("x.json: Portals:0: '70000' in '127.0.0.1:70000' is not a port number from 0 to 65535"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Transport: unknown transport 'carrier-pigeon'"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Iscsi:FirstBurstLength: must not exceed Iscsi:MaxBurstLength (8192)"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Targets:0:Luns:1:Lun: LUN 0 is already used by Targets:0:Luns:0"));
        Assert.That(errors, Has.Member("x.json: Targets:0:Luns:1:BlockSize: must be 512 or 4096, got 1024"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Targets:0:Luns:2:Lun: must be a LUN number from 0 to 16383"));
        Assert.That(errors, Has.Some.Contains("Targets:0:Luns:2:Path: backing file").And.Contains("does not exist (DataDirectory is ").And.Contains("give a Size to create it"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Targets:1:Iqn: 'iqn.2026-11.org.example:a' is already used by Targets:0"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Targets:1:Luns:0:Size: '12 parsecs' is not a size"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Targets:1:Luns:0:TagAlgorithm: unknown tag algorithm 'md5'"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Targets:2:Iqn: 'target-without-scheme' is not an iSCSI name"));
        Assert.That(errors, Has.Some.StartsWith("x.json: Targets:2:Luns:0:Size: 100KiB is too small"));
        Assert.That(errors, Has.Count.EqualTo(12));
        Assert.That(errors, Has.None.Contains("Unknown error"));
    }

    [Test]
    public void Problems_from_environment_and_command_line_name_the_variable_and_the_switch()
    {
        using var dir = new TempDir();
        var env = new Dictionary<string, string?> { ["INTEGRITYTARGET_Targets__0__Luns__0__BlockSize"] = "1000" };
        var (_, problems) = ConfigTestExtensions.Load(dir.Path, ["--listen", "localhost-ish"], env);
        Assert.That(problems.Errors(), Has.Member("environment (INTEGRITYTARGET_Targets__0__Luns__0__BlockSize): Targets:0:Luns:0:BlockSize: must be 512 or 4096, got 1000"));
        Assert.That(problems.Errors(), Has.Some.StartsWith("command line (--listen): Portals:0: 'localhost-ish' is not an IPv4 address of four numbers (host names are not resolved)"));
    }

    [Test]
    public void A_misspelt_key_is_an_error_rather_than_silently_ignored()
    {
        using var dir = new TempDir();
        var (_, problems) = ConfigTestExtensions.Load(dir.Path, ["--Targets:0:Luns:0:Integirty", "false"]);
        Assert.That(problems.Errors(), Has.Some.StartsWith("command line: Targets:0:Luns:0:Integirty: unknown setting"));
    }

    [Test]
    public void Stray_arguments_and_a_missing_config_file_are_reported()
    {
        using var dir = new TempDir();
        var (_, problems) = ConfigTestExtensions.Load(dir.Path, ["oops", "--config", "nope.json", "--listen"]);
        var errors = problems.Errors().ToList();
        Assert.That(errors, Has.Some.StartsWith("command line: oops: unexpected argument"));
        Assert.That(errors, Has.Member("command line: --config: config file 'nope.json' does not exist"));
        Assert.That(errors, Has.Member("command line: --listen: needs a value"));
    }

    [Test]
    public void Json_syntax_error_names_the_file()
    {
        using var dir = new TempDir();
        dir.File("broken.json", "{ \"Portals\": [ \"127.0.0.1:3260\" ");
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--config", "broken.json"]);
        Assert.That(config, Is.Null);
        Assert.That(problems.Errors().Single(), Does.StartWith("broken.json: (file): is not valid JSON"));
    }

    [Test]
    public void Chap_rules_are_checked_and_no_message_contains_a_secret()
    {
        using var dir = new TempDir();
        const string shortSecret = "s3cr3t-tiny";     // 11 characters
        const string longSecret = "a-rather-long-secret-over-16";
        dir.File("chap.json", $$"""
            { "Iscsi": { "DiscoveryMutualChap": { "User": "disc", "Secret": "{{longSecret}}" } },
              "Targets": [
                { "Iqn": "iqn.2026-11.org.example:a", "Chap": { "User": "u", "Secret": "{{shortSecret}}" }, "Luns": [ { "Path": "a.img", "Size": "8MiB" } ] },
                { "Iqn": "iqn.2026-11.org.example:b", "MutualChap": { "User": "m", "Secret": "{{longSecret}}" }, "Luns": [ { "Path": "b.img", "Size": "8MiB" } ] },
                { "Iqn": "iqn.2026-11.org.example:c", "Chap": { "Secret": "{{longSecret}}" }, "Luns": [ { "Path": "c.img", "Size": "8MiB" } ] }
              ] }
            """);
        var (_, problems) = ConfigTestExtensions.Load(dir.Path, ["--config", "chap.json"]);
        var all = problems.Select(p => p.ToString()).ToList();

        Assert.That(all, Has.Member("chap.json: Targets:0:Chap:Secret: must be at least 12 characters (RFC 7143 requires 96 bits), got 11 characters"));
        Assert.That(all, Has.Some.StartsWith("chap.json: Targets:1:MutualChap: mutual CHAP needs Chap as well"));
        Assert.That(all, Has.Some.StartsWith("chap.json: Targets:2:Chap:User: is missing"));
        Assert.That(all, Has.Some.StartsWith("chap.json: Iscsi:DiscoveryMutualChap: mutual CHAP needs Iscsi:DiscoveryChap"));
        Assert.That(all, Has.Some.StartsWith("warning: chap.json: Iscsi:DiscoveryMutualChap:Secret: is 28 characters; the Microsoft iSCSI initiator only accepts 12-16"));
        Assert.That(string.Join("\n", all), Does.Not.Contain(shortSecret).And.Not.Contain(longSecret));
    }

    [Test]
    public void Mutual_chap_secret_must_differ_from_the_one_way_secret()
    {
        using var dir = new TempDir();
        var (_, problems) = ConfigTestExtensions.Load(dir.Path,
            ["--chap-user", "u", "--chap-secret", "same-secret-123", "--Targets:0:MutualChap:User", "t", "--Targets:0:MutualChap:Secret", "same-secret-123"]);
        Assert.That(problems.Errors(), Has.Some.StartsWith("command line: Targets:0:MutualChap:Secret: must differ from the one-way CHAP secret"));
    }

    [Test]
    public void Chap_settings_never_print_their_secret()
    {
        var chap = new ChapSettings { User = "alice", Secret = "0123456789abcdef" };
        Assert.That(chap.ToString(), Is.EqualTo("alice/<secret redacted>"));
    }

    [Test]
    public void Hmac_needs_a_readable_key_file_of_at_least_16_bytes()
    {
        using var dir = new TempDir();
        dir.File("data/short.key", "too-short");
        var (_, none) = ConfigTestExtensions.Load(dir.Path, ["--tag-algorithm", "hmac-sha256"]);
        var (_, shortKey) = ConfigTestExtensions.Load(dir.Path, ["--tag-algorithm", "hmac-sha256", "--key-file", "short.key"]);
        var (_, missing) = ConfigTestExtensions.Load(dir.Path, ["--tag-algorithm", "HmacSha256", "--key-file", "absent.key"]);
        dir.File("data/good.key", new string('k', 32));
        var (good, goodProblems) = ConfigTestExtensions.Load(dir.Path, ["--tag-algorithm", "hmac-sha256", "--key-file", "good.key"]);

        Assert.That(none.Errors(), Has.Some.StartsWith("built-in defaults: Targets:0:Luns:0:KeyFile: tag algorithm hmac-sha256 needs a KeyFile"));
        Assert.That(shortKey.Errors(), Has.Some.Contains("holds 9 bytes; at least 16 are needed"));
        Assert.That(missing.Errors(), Has.Some.Contains("absent.key' does not exist"));
        Assert.That(goodProblems.Errors(), Is.Empty);
        Assert.That(good!.Targets[0].Luns[0].KeyFile, Is.EqualTo(Path.Combine(dir.Path, "data", "good.key")));
    }

    [Test]
    public void Two_luns_on_the_same_backing_file_are_rejected()
    {
        using var dir = new TempDir();
        var (_, problems) = ConfigTestExtensions.Load(dir.Path,
            ["--Targets:0:Luns:1:Path", "lun0.img", "--Targets:0:Luns:1:Lun", "1", "--Targets:0:Luns:1:Size", "8MiB"]);
        Assert.That(problems.Errors(), Has.Some.Contains("Targets:0:Luns:1:Path:").And.Contains("is already served by Targets:0:Luns:0"));
    }

    [TestCase("4096")]
    [TestCase("1049088")]
    public void Size_must_be_whole_blocks_and_at_least_1MiB(string size)
    {
        using var dir = new TempDir();
        var (_, problems) = ConfigTestExtensions.Load(dir.Path, ["--size", size, "--block-size", "4096"]);
        Assert.That(problems.Errors(), Has.Some.StartsWith("command line (--size): Targets:0:Luns:0:Size:"));
    }

    [TestCase("iqn.2026-11.org.example:integrity", true)]
    [TestCase("iqn.1994-05.com.redhat:5e3c1c1c8f0", true)]
    [TestCase("iqn.2026-11.org.example", true)]
    [TestCase("eui.02004567A425678D", true)]
    [TestCase("naa.52004567BA64678D", true)]
    [TestCase("naa.62004567BA64678D0123456789ABCDEF", true)]
    [TestCase("iqn.2026-13.org.example:x", false)]
    [TestCase("iqn.26-11.org.example:x", false)]
    [TestCase("eui.0200", false)]
    [TestCase("target0", false)]
    [TestCase("", false)]
    public void Iscsi_name_format_follows_rfc_7143(string name, bool valid) =>
        Assert.That(ConfigReader.IsValidIscsiName(name), Is.EqualTo(valid));

    [TestCase("127.0.0.1:3260", "127.0.0.1:3260")]
    [TestCase("0.0.0.0:0", "0.0.0.0:0")]
    [TestCase("*:3261", "0.0.0.0:3261")]
    [TestCase("10.1.2.3", "10.1.2.3:3260")]
    [TestCase("[::1]:3260", "[::1]:3260")]
    [TestCase("[::]", "[::]:3260")]
    public void Portal_syntax_accepts_address_and_optional_port(string text, string expected)
    {
        Assert.That(ConfigReader.TryParsePortal(text, out var ep), Is.True);
        Assert.That(ep.ToString(), Is.EqualTo(expected));
    }

    [TestCase("127.0.0.1:65536")]
    [TestCase("::1")]
    [TestCase("host.example:3260")]
    [TestCase("127.0.0.1:port")]
    public void Portal_syntax_rejects_what_cannot_be_bound(string text) =>
        Assert.That(ConfigReader.TryParsePortal(text, out _), Is.False);
}

public class HaConfigTests
{
    [Test]
    public void A_gateway_group_is_read_with_port_groups_by_position_and_the_secret_never_printed()
    {
        using var dir = new TempDir();
        dir.File("ha.json", """
            {
              "Portals": ["0.0.0.0:3260"],
              "Targets": [ { "Iqn": "iqn.2026-11.org.example:shared", "Luns": [ { "Path": "/srv/shared/lun0.img", "Size": "1GiB" } ] } ],
              "Ha": {
                "PeerSecret": "sixteen characters or more",
                "Gateways": [ { "Name": "gw1", "Peer": "10.0.0.1:3270" }, { "Name": "gw2", "Peer": "10.0.0.2:3270", "PortGroup": 7 } ]
              }
            }
            """);
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--config", "ha.json", "--ha-self", "gw2"]);
        Assert.That(problems.Errors(), Is.Empty);
        var ha = config!.Ha!;
        Assert.That(ha.Self, Is.EqualTo("gw2"));
        Assert.That(ha.Gateways.Select(g => (g.Name, g.PortGroup, g.Peer.ToString())),
            Is.EqualTo(new[] { ("gw1", (ushort)1, "10.0.0.1:3270"), ("gw2", (ushort)7, "10.0.0.2:3270") }));
        Assert.That(ha.NonOwnerState, Is.EqualTo("standby"));
        Assert.That((ha.LockRetryMilliseconds, ha.HeartbeatMilliseconds, ha.PeerTimeoutMilliseconds), Is.EqualTo((500, 1000, 5000)));
        Assert.That(ha.ToString(), Does.Not.Contain("sixteen"));
    }

    [Test]
    public void Every_mistake_in_the_gateway_group_is_named()
    {
        using var dir = new TempDir();
        dir.File("ha.json", """
            {
              "Targets": [ { "Iqn": "iqn.2026-11.org.example:shared", "Luns": [ { "Path": "lun0.img", "Size": "1GiB" } ] } ],
              "Ha": {
                "Self": "gw3",
                "PeerSecret": "short",
                "NonOwnerState": "asleep",
                "HeartbeatMilliseconds": 2000, "PeerTimeoutMilliseconds": 1000,
                "Gateways": [ { "Name": "gw1", "Peer": "10.0.0.1:3270" }, { "Name": "gw2", "Peer": "10.0.0.1:3270" }, { "Name": "gw4", "Peer": "nowhere" },
                              { "Name": "gw5", "Peer": "10.0.0.5:3270", "PortGroup": 1 } ]
              }
            }
            """);
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--config", "ha.json"]);
        var errors = problems.Errors().ToList();
        Assert.That(config, Is.Null);
        Assert.That(errors, Has.Some.StartsWith("ha.json: Ha:Gateways:1:Peer: 10.0.0.1:3270 is already gw1's peer address"));
        Assert.That(errors, Has.Some.StartsWith("ha.json: Ha:Gateways:2:Peer: 'nowhere' is not ADDRESS:PORT"));
        Assert.That(errors, Has.Some.StartsWith("ha.json: Ha:Gateways:3:PortGroup: port group 1 is already gw1's"));
        Assert.That(errors, Has.Some.StartsWith("ha.json: Ha:Self: 'gw3' is not one of Ha:Gateways (gw1)"));
        Assert.That(errors, Has.Some.StartsWith("ha.json: Ha:PeerSecret: must be at least 16 characters, got 5"));
        Assert.That(errors, Has.Some.StartsWith("ha.json: Ha:NonOwnerState: must be standby or active-non-optimized, got 'asleep'"));
        Assert.That(errors, Has.Some.StartsWith("ha.json: Ha:PeerTimeoutMilliseconds: must be longer than Ha:HeartbeatMilliseconds (2000)"));
        Assert.That(errors, Has.None.Contains("short"));
    }

    [Test]
    public void A_gateway_without_a_self_name_is_told_how_to_give_it()
    {
        using var dir = new TempDir();
        var (_, problems) = ConfigTestExtensions.Load(dir.Path, ["--lun", "x.img", "--size", "1GiB", "--Ha:PeerSecret", "0123456789abcdef",
            "--Ha:Gateways:0:Name", "a", "--Ha:Gateways:0:Peer", "127.0.0.1:3270", "--Ha:Gateways:1:Name", "b", "--Ha:Gateways:1:Peer", "127.0.0.1:3271"]);
        Assert.That(problems.Errors(), Has.Member("command line: Ha:Self: is missing: which of Ha:Gateways (a, b) is this process? (e.g. --ha-self a)"));
    }
}
