using System.Diagnostics;
using IntegrityTarget.Host.Config;

namespace IntegrityTarget.Host.Tests;

/// <summary>
/// What a new user hits first (issue 13): portal forms, LUN files created only when asked, config
/// errors that point at the spot, exit codes and log lines that say one thing once.
/// </summary>
public class FirstContactTests
{
    // ---- --listen / Portals ------------------------------------------------------------------

    [TestCase("3261", "127.0.0.1:3261", "is a port alone")]
    [TestCase("0", "127.0.0.1:0", "is a port alone")]
    [TestCase("127.0.0.1", "127.0.0.1:3260", "gives no port")]
    [TestCase("0.0.0.0:3262", "0.0.0.0:3262", null)]
    [TestCase("*", "0.0.0.0:3260", "gives no port")]
    [TestCase("[::1]:3263", "[::1]:3263", null)]
    [TestCase("[::]", "[::]:3260", "gives no port")]
    public void A_portal_may_be_a_port_an_address_or_both_and_a_short_form_says_what_it_means(string text, string expected, string? meaning)
    {
        Assert.That(PortalParser.TryParse(text, out var ep, out var note, out var error), Is.True, error);
        Assert.That(ep.ToString(), Is.EqualTo(expected));
        if (meaning == null) Assert.That(note, Is.Null);
        else Assert.That(note, Does.Contain(meaning).And.Contain($"listening on {expected}"));
    }

    [TestCase("::1", "ambiguous: put an IPv6 address in brackets")]
    [TestCase("fe80::1:3260", "ambiguous")]
    [TestCase("127.1", "is not an IPv4 address of four numbers")]
    [TestCase("localhost:3260", "host names are not resolved")]
    [TestCase("127.0.0.1:", "is not a port number")]
    [TestCase("70000", "'70000' in '70000' is not a port number from 0 to 65535")]
    [TestCase("[::1]3260", "after the bracketed address")]
    [TestCase("[127.0.0.1]:3260", "is not an IPv6 address")]
    [TestCase("010.0.0.1:3260", "'010.0.0.1' has a number with a leading zero")] // .NET reads 010 as octal: 8.0.0.1
    [TestCase("192.168.001.010", "leading zero")]
    public void A_portal_that_could_mean_two_things_or_nothing_is_an_error_saying_why(string text, string why)
    {
        Assert.That(PortalParser.TryParse(text, out _, out _, out var error), Is.False);
        Assert.That(error, Does.Contain(why));
    }

    [Test]
    public async Task Listen_with_a_port_alone_is_that_port_on_loopback_and_the_check_says_so()
    {
        using var dir = new TempDir();
        var run = await CliRun.RunAsync(dir.Path, ["serve", "--check", "--no-config", "--listen", "3261"]);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.AllOutput);
        Assert.That(run.OutText, Does.Contain("command line (--listen): Portals:0: '3261' is a port alone: listening on 127.0.0.1:3261"));
        Assert.That(run.OutText, Does.Contain("portals 127.0.0.1:3261"));
    }

    // ---- LUN files are created only when asked -------------------------------------------------

    [Test]
    public async Task A_mistyped_lun_is_an_error_naming_the_path_and_data_directory_and_creates_nothing()
    {
        using var dir = new TempDir();
        var run = await CliRun.RunAsync(dir.Path, ["serve", "--listen", "127.0.0.1:0", "--data-dir", "dta", "--lun", "disk.img"]);
        Assert.That(run.ExitCode, Is.EqualTo(2), run.AllOutput);
        var expected = Path.Combine(dir.Path, "dta", "disk.img");
        Assert.That(run.Err.ToString(), Does.Contain($"command line (--lun): Targets:0:Luns:0:Path: backing file '{expected}' does not exist " +
                                                     $"(DataDirectory is '{Path.Combine(dir.Path, "dta")}'); check the path, or give a Size to create it (--size 10GiB)"));
        Assert.That(Directory.Exists(Path.Combine(dir.Path, "dta")), Is.False, "no directory is made for a LUN that was not asked for");
    }

    [Test]
    public void A_lun_path_from_the_environment_does_not_inherit_the_default_size_but_an_explicit_size_creates_it()
    {
        using var dir = new TempDir();
        var env = new Dictionary<string, string?> { ["INTEGRITYTARGET_Targets__0__Luns__0__Path"] = "other.img" };
        var (none, problems) = ConfigTestExtensions.Load(dir.Path, [], env);
        Assert.That(none, Is.Null);
        Assert.That(problems.Errors().Single(), Does.StartWith("environment (INTEGRITYTARGET_Targets__0__Luns__0__Path): Targets:0:Luns:0:Path: backing file"));

        var (sized, _) = ConfigTestExtensions.Load(dir.Path, ["--lun", "other.img", "--size", "16MiB"], env);
        Assert.That(sized!.Targets[0].Luns[0].SizeBytes, Is.EqualTo(16L << 20));
        var (builtIn, _) = ConfigTestExtensions.Load(dir.Path, []);
        Assert.That(builtIn!.Targets[0].Luns[0].SizeBytes, Is.EqualTo(1L << 30), "the built-in default LUN is still created on first start");
    }

    // ---- configuration errors ------------------------------------------------------------------

    [Test]
    public void Invalid_json_is_reported_with_line_and_column()
    {
        using var dir = new TempDir();
        dir.File("x.json", "{\n  \"Portals\": [ \"127.0.0.1:3260\" ],\n  \"Transport\" \"pipelines\"\n}\n");
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--config", "x.json"]);
        Assert.That(config, Is.Null);
        Assert.That(problems.Errors().Single(), Does.StartWith("x.json: (file): is not valid JSON: line 3, column 15: "));
    }

    [Test]
    public async Task A_missing_config_file_is_one_problem()
    {
        using var dir = new TempDir();
        var run = await CliRun.RunAsync(dir.Path, ["serve", "--config", "nope.json"]);
        Assert.That(run.ExitCode, Is.EqualTo(2));
        Assert.That(run.Err.ToString(), Does.Contain("the configuration has 1 problem;")
            .And.Contain("command line: --config: config file 'nope.json' does not exist"));
    }

    [Test]
    public void A_chap_user_without_secret_on_the_command_line_names_the_flag()
    {
        using var dir = new TempDir();
        var (_, problems) = ConfigTestExtensions.Load(dir.Path, ["--chap-user", "u"]);
        Assert.That(problems.Errors().Single(), Is.EqualTo(
            "command line (--chap-user): Targets:0:Chap:Secret: is missing (CHAP user 'u' needs a secret: --chap-secret SECRET, or the environment)"));
    }

    // ---- exit codes and wordings of the offline verbs -------------------------------------------

    [Test]
    public async Task Scrub_of_a_keyed_volume_without_or_with_a_wrong_key_is_a_usage_error_exit_2()
    {
        using var dir = new TempDir();
        await File.WriteAllBytesAsync(dir.File("k"), Enumerable.Range(0, 32).Select(i => (byte)i).ToArray());
        await File.WriteAllBytesAsync(dir.File("wrong"), Enumerable.Range(1, 32).Select(i => (byte)i).ToArray());
        var format = await CliRun.RunAsync(dir.Path, ["format", "h.img", "--size", "2MiB", "--tag-algorithm", "hmac-sha256", "--key-file", "k"]);
        Assert.That(format.ExitCode, Is.EqualTo(0), format.AllOutput);

        var noKey = await CliRun.RunAsync(dir.Path, ["scrub", "h.img"]);
        Assert.That(noKey.ExitCode, Is.EqualTo(2), noKey.AllOutput);
        Assert.That(noKey.Err.ToString(), Does.Contain("no key was given; give the volume's key with --key-file FILE"));
        var wrong = await CliRun.RunAsync(dir.Path, ["scrub", "h.img", "--key-file", "wrong"]);
        Assert.That(wrong.ExitCode, Is.EqualTo(2), wrong.AllOutput);
        var right = await CliRun.RunAsync(dir.Path, ["scrub", "h.img", "--key-file", "k"]);
        Assert.That(right.ExitCode, Is.EqualTo(0), right.AllOutput);
    }

    [Test]
    public async Task Dump_refuses_a_file_that_is_no_volume_with_one_wording_with_or_without_lba()
    {
        using var dir = new TempDir();
        await File.WriteAllTextAsync(dir.File("notes.txt"), "not a volume");
        var plain = await CliRun.RunAsync(dir.Path, ["dump", "notes.txt"]);
        var lba = await CliRun.RunAsync(dir.Path, ["dump", "notes.txt", "--lba", "1"]);
        var expected = $"integrity-target dump: {Path.Combine(dir.Path, "notes.txt")} does not hold an integrity volume";
        Assert.That((plain.ExitCode, lba.ExitCode), Is.EqualTo((1, 1)));
        Assert.That(plain.Err.ToString().Trim(), Is.EqualTo(expected));
        Assert.That(lba.Err.ToString().Trim(), Is.EqualTo(expected));
    }

    // ---- what serve logs ---------------------------------------------------------------------------

    [Test]
    public async Task Serve_logs_listening_once_per_portal_no_empty_drain_and_no_block_size_warning_when_none_was_configured()
    {
        using var dir = new TempDir();
        var format = await CliRun.RunAsync(dir.Path, ["format", "v.img", "--size", "2MiB", "--block-size", "4096"]); // not the default BlockSize
        Assert.That(format.ExitCode, Is.EqualTo(0), format.AllOutput);

        string Serve(params string[] extra)
        {
            using var stop = new CancellationTokenSource();
            var (run, task) = CliRun.StartAsync(dir.Path, ["serve", "--listen", "127.0.0.1:0", "--data-dir", ".", "--lun", "v.img", .. extra], stop: stop.Token);
            var sw = Stopwatch.StartNew();
            while (!run.OutText.Contains("Ready;") && !task.IsCompleted && sw.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(50);
            stop.Cancel();
            Assert.That(task.Result, Is.EqualTo(0), run.AllOutput);
            return run.AllOutput;
        }

        var quiet = Serve();
        Assert.That(quiet, Does.Not.Contain("BlockSize"), "nothing configured, nothing to warn about");
        Assert.That(quiet.Split('\n').Count(l => l.Contains("Listening")), Is.EqualTo(1), quiet);
        Assert.That(quiet, Does.Not.Contain("draining 0 connections"));
        Assert.That(quiet, Does.Contain("Stopping: no new connections"));

        var configured = Serve("--block-size", "512");
        Assert.That(configured, Does.Contain("was formatted with 4096-byte blocks; the configured BlockSize 512 does not apply"));
    }
}
