using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Serving;
using Serilog;

namespace IntegrityTarget.Host.Tests;

public class CliTests
{
    [Test]
    public async Task No_arguments_prints_usage_and_exits_2()
    {
        using var dir = new TempDir();
        var run = await CliRun.RunAsync(dir.Path, []);
        Assert.That(run.ExitCode, Is.EqualTo(2));
        Assert.That(run.Err.ToString(), Does.Contain("usage: integrity-target VERB").And.Contain("serve").And.Contain("scrub"));
    }

    [TestCase("serve")]
    [TestCase("format")]
    [TestCase("scrub")]
    [TestCase("dump")]
    [TestCase("status")]
    public async Task Help_for_each_verb_shows_its_usage(string verb)
    {
        using var dir = new TempDir();
        var viaHelp = await CliRun.RunAsync(dir.Path, ["help", verb]);
        var viaFlag = await CliRun.RunAsync(dir.Path, [verb, "--help"]);
        Assert.That(viaHelp.ExitCode, Is.EqualTo(0));
        Assert.That(viaHelp.Out.ToString(), Does.StartWith($"usage: integrity-target {verb}"));
        Assert.That(viaFlag.Out.ToString(), Is.EqualTo(viaHelp.Out.ToString()));
    }

    [Test]
    public async Task Version_prints_the_version()
    {
        using var dir = new TempDir();
        var run = await CliRun.RunAsync(dir.Path, ["--version"]);
        Assert.That(run.ExitCode, Is.EqualTo(0));
        Assert.That(run.Out.ToString().Trim(), Does.Match(@"^integrity-target \d+\.\d+\.\d+"));
    }

    [Test]
    public async Task Unknown_verb_exits_2_naming_it()
    {
        using var dir = new TempDir();
        var run = await CliRun.RunAsync(dir.Path, ["frobnicate"]);
        Assert.That(run.ExitCode, Is.EqualTo(2));
        Assert.That(run.Err.ToString(), Does.StartWith("integrity-target: unknown verb 'frobnicate'"));
    }

    [Test]
    public async Task Serve_with_a_bad_config_exits_2_listing_every_problem_and_creates_nothing()
    {
        using var dir = new TempDir();
        dir.File("bad.json", """
            { "DataDirectory": "d", "Portals": ["nowhere"],
              "Targets": [ { "Iqn": "bogus", "Chap": { "User": "u", "Secret": "hunter2-hunter" },
                             "Luns": [ { "Path": "a.img", "Size": "8MiB", "BlockSize": 1024 } ] } ] }
            """);
        var run = await CliRun.RunAsync(dir.Path, ["serve", "--config", "bad.json"]);

        Assert.That(run.ExitCode, Is.EqualTo(2));
        var err = run.Err.ToString();
        Assert.That(err, Does.Contain("the configuration has 3 problems; nothing was served"));
        Assert.That(err, Does.Contain("bad.json: Portals:0:").And.Contain("bad.json: Targets:0:Iqn:").And.Contain("bad.json: Targets:0:Luns:0:BlockSize: must be 512 or 4096, got 1024"));
        Assert.That(err, Does.Not.Contain("hunter2-hunter"));
        Assert.That(Directory.Exists(Path.Combine(dir.Path, "d")), Is.False, "nothing is created for a rejected configuration");
    }

    [Test]
    public async Task Serve_check_validates_without_serving()
    {
        using var dir = new TempDir();
        var run = await CliRun.RunAsync(dir.Path, ["serve", "--check", "--listen", "127.0.0.1:3999"]);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.AllOutput);
        Assert.That(run.Out.ToString(), Does.StartWith("configuration OK (built-in defaults): 1 target(s), 1 LUN(s), portals 127.0.0.1:3999"));
        Assert.That(File.Exists(Path.Combine(dir.Path, "data", "lun0.img")), Is.False);
    }

    [TestCase(new[] { "format" }, "give exactly one PATH")]
    [TestCase(new[] { "format", "x.img", "--block-size", "1024" }, "--block-size must be 512 or 4096, got 1024")]
    [TestCase(new[] { "format", "x.img", "--size", "lots" }, "--size 'lots' is not a size")]
    [TestCase(new[] { "format", "x.img", "--tag-algorithm", "md5" }, "unknown --tag-algorithm 'md5'")]
    [TestCase(new[] { "format", "x.img", "--tag-algorithm", "hmac-sha256" }, "hmac-sha256 needs --key-file")]
    [TestCase(new[] { "format", "x.img", "--frobnicate" }, "unknown option --frobnicate")]
    [TestCase(new[] { "scrub", "x.img", "--lun", "iqn.2026-11.org.example:a/0" }, "give either PATH or --lun IQN/LUN, not both")]
    [TestCase(new[] { "scrub", "--lun", "no-slash" }, "--lun must be IQN/LUN")]
    [TestCase(new[] { "scrub", "--lun", "iqn.2026-11.org.example:a/0", "--rate", "-3" }, "--rate must be a positive number")]
    [TestCase(new[] { "scrub", "missing.img" }, "no such file or block device")]
    [TestCase(new[] { "dump" }, "give exactly one PATH")]
    [TestCase(new[] { "dump", "missing.img" }, "no such file or block device")]
    public async Task Bad_verb_arguments_exit_2_with_a_clear_message(string[] args, string message)
    {
        using var dir = new TempDir();
        var run = await CliRun.RunAsync(dir.Path, args);
        Assert.That(run.ExitCode, Is.EqualTo(2), run.AllOutput);
        Assert.That(run.Err.ToString(), Does.StartWith($"integrity-target {args[0]}: ").And.Contain(message));
        Assert.That(File.Exists(Path.Combine(dir.Path, "x.img")), Is.False, "a rejected format creates nothing");
    }

    [Test]
    public async Task A_plain_lun_is_created_sparse_at_its_size_with_the_configured_write_back()
    {
        using var dir = new TempDir();
        var (config, problems) = ConfigTestExtensions.Load(dir.Path,
            ["--data-dir", ".", "--lun", "p.img", "--size", "3MiB", "--block-size", "4096", "--integrity", "false", "--write-back", "false"]);
        Assert.That(problems.Errors(), Is.Empty);
        var t = config!.Targets[0];
        var lun = await VolumeOpener.OpenAsync(t, t.Luns[0], new LoggerConfiguration().CreateLogger(), CancellationToken.None);
        try
        {
            Assert.That(new FileInfo(Path.Combine(dir.Path, "p.img")).Length, Is.EqualTo(3L << 20));
            Assert.That((lun.Volume!.BlockSize, lun.Volume!.BlockCount, lun.Volume!.WriteBack, lun.Volume!.TagAlgorithm),
                Is.EqualTo((4096, 768UL, false, "none")));
        }
        finally
        {
            await lun.Volume!.DisposeAsync();
            lun.Device!.Dispose();
        }
    }

    [Test]
    public async Task A_new_integrity_lun_is_formatted_and_opened_once_with_the_configured_write_back()
    {
        using var dir = new TempDir();
        var (config, problems) = ConfigTestExtensions.Load(dir.Path,
            ["--data-dir", ".", "--lun", "i.img", "--size", "4MiB", "--block-size", "512", "--write-back", "false"]);
        Assert.That(problems.Errors(), Is.Empty);
        var t = config!.Targets[0];
        var events = new List<Serilog.Events.LogEvent>();
        var log = new LoggerConfiguration().MinimumLevel.Verbose().WriteTo.Sink(new ListSink(events)).CreateLogger();
        var lun = await VolumeOpener.OpenAsync(t, t.Luns[0], log, CancellationToken.None);
        try
        {
            Assert.That((lun.Volume!.BlockSize, lun.Volume!.BlockCount, lun.Volume!.WriteBack, lun.Volume!.TagAlgorithm),
                Is.EqualTo((512, 8192UL, false, "crc32c")));
            List<string> texts;
            lock (events) texts = events.Select(e => e.RenderMessage()).ToList();
            Assert.That(texts.Count(m => m.StartsWith("Formatted ")), Is.EqualTo(1), string.Join("\n", texts));
            Assert.That(texts.Count(m => m.StartsWith("Opened ")), Is.EqualTo(1), string.Join("\n", texts));
        }
        finally
        {
            await lun.Volume!.DisposeAsync();
            lun.Device!.Dispose();
        }
    }

    private sealed class ListSink(List<Serilog.Events.LogEvent> events) : Serilog.Core.ILogEventSink
    {
        public void Emit(Serilog.Events.LogEvent e) { lock (events) events.Add(e); }
    }

    [Test]
    public async Task Opening_a_lun_twice_fails_with_the_key_path_and_file_in_the_message()
    {
        using var dir = new TempDir();
        var (config, _) = ConfigTestExtensions.Load(dir.Path, ["--data-dir", ".", "--lun", "p.img", "--size", "1MiB", "--integrity", "false"]);
        var t = config!.Targets[0];
        var log = new LoggerConfiguration().CreateLogger();
        var first = await VolumeOpener.OpenAsync(t, t.Luns[0], log, CancellationToken.None);
        try
        {
            Assert.That(async () => await VolumeOpener.OpenAsync(t, t.Luns[0], log, CancellationToken.None),
                Throws.TypeOf<Cli.CliException>().With.Message.StartsWith($"Targets:0:Luns:0 ({Path.Combine(dir.Path, "p.img")}): ").And.Message.Contains("in use"));
        }
        finally
        {
            await first.Volume!.DisposeAsync();
            first.Device!.Dispose();
        }
    }
}
