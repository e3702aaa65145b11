using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Serving;
using IntegrityTarget.Host.Status;
using Serilog;

namespace IntegrityTarget.Host.Tests;

/// <summary>The status socket of a host over real (plain) LUN files, driven by the real CLI verbs.</summary>
public class StatusSocketTests
{
    private static readonly ILogger Log = new LoggerConfiguration().CreateLogger();

    private sealed class Fixture : IAsyncDisposable
    {
        public TempDir Dir { get; } = new();
        public HostConfig Config { get; private set; } = null!;
        public ServedLun Lun { get; private set; } = null!;
        public StatusServer Server { get; private set; } = null!;
        public string Socket => Config.StatusSocket;

        public static async Task<Fixture> StartAsync()
        {
            var f = new Fixture();
            var (config, problems) = ConfigTestExtensions.Load(f.Dir.Path,
                ["--data-dir", ".", "--lun", "plain.img", "--size", "2MiB", "--integrity", "false", "--iqn", "iqn.2026-11.org.example:status"]);
            Assert.That(problems.Errors(), Is.Empty);
            f.Config = config!;
            var t = config!.Targets[0];
            f.Lun = await VolumeOpener.OpenAsync(t, t.Luns[0], Log, CancellationToken.None);
            var host = new TargetHost(config, Log, [new ServedTarget(t, [f.Lun])]);
            f.Server = new StatusServer(config.StatusSocket, host, Log);
            f.Server.Start();
            return f;
        }

        public async ValueTask DisposeAsync()
        {
            await Server.DisposeAsync();
            await Lun.Volume!.DisposeAsync();
            Lun.Device!.Dispose();
            Dir.Dispose();
        }
    }

    [Test]
    public async Task Status_verb_reports_targets_luns_and_live_counters_as_json()
    {
        await using var f = await Fixture.StartAsync();
        var data = new byte[1024];
        Assert.That((await f.Lun.Volume!.WriteAsync(4, data, fua: false)).IsOk);
        Assert.That((await f.Lun.Volume!.ReadAsync(4, data)).IsOk);

        var run = await CliRun.RunAsync(f.Dir.Path, ["status", "--socket", f.Socket, "--json"]);

        Assert.That(run.ExitCode, Is.EqualTo(0), run.AllOutput);
        var status = JsonNode.Parse(run.Out.ToString())!;
        var lun = status["targets"]![0]!["luns"]![0]!;
        Assert.That((string?)status["targets"]![0]!["iqn"], Is.EqualTo("iqn.2026-11.org.example:status"));
        Assert.That((long?)lun["counters"]!["writes"], Is.EqualTo(1));
        Assert.That((long?)lun["counters"]!["bytesWritten"], Is.EqualTo(1024));
        Assert.That((long?)lun["counters"]!["reads"], Is.EqualTo(1));
        Assert.That((long?)lun["counters"]!["mismatches"], Is.EqualTo(0));
        Assert.That((string?)lun["tagAlgorithm"], Is.EqualTo("none"));
        Assert.That((ulong?)lun["blocks"], Is.EqualTo(4096UL));
        Assert.That((int?)status["pid"], Is.EqualTo(Environment.ProcessId));
    }

    [Test]
    public async Task Status_verb_finds_the_socket_through_the_data_directory_and_prints_a_summary()
    {
        await using var f = await Fixture.StartAsync();
        var run = await CliRun.RunAsync(f.Dir.Path, ["status", "--data-dir", "."]);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.AllOutput);
        Assert.That(run.Out.ToString(), Does.Contain("target iqn.2026-11.org.example:status").And.Contain("LUN 0:").And.Contain("mismatches 0"));
    }

    [Test]
    public async Task Text_requests_work_and_a_bad_request_gets_an_error_without_closing_the_connection()
    {
        await using var f = await Fixture.StartAsync();
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await s.ConnectAsync(new UnixDomainSocketEndPoint(f.Socket));
        await using var stream = new NetworkStream(s);
        using var reader = new StreamReader(stream);
        await stream.WriteAsync(Encoding.UTF8.GetBytes("{not json\nfrobnicate\nstatus\n"));

        var bad = JsonNode.Parse((await reader.ReadLineAsync())!)!;
        var unknown = JsonNode.Parse((await reader.ReadLineAsync())!)!;
        var ok = JsonNode.Parse((await reader.ReadLineAsync())!)!;
        Assert.That(((string?)bad["type"], (bool?)bad["ok"]), Is.EqualTo(("error", (bool?)false)));
        Assert.That((string?)bad["error"], Does.StartWith("request is not valid JSON"));
        Assert.That((string?)unknown["error"], Does.StartWith("unknown command 'frobnicate'"));
        Assert.That(((string?)ok["type"], (bool?)ok["ok"]), Is.EqualTo(("status", (bool?)true)));
    }

    [Test]
    public async Task Online_scrub_of_a_lun_without_integrity_says_so_and_exits_1()
    {
        await using var f = await Fixture.StartAsync();
        var run = await CliRun.RunAsync(f.Dir.Path, ["scrub", "--lun", "iqn.2026-11.org.example:status/0", "--socket", f.Socket]);
        Assert.That(run.ExitCode, Is.EqualTo(1));
        Assert.That(run.Err.ToString(), Does.Contain("is served without integrity protection"));
    }

    [Test]
    public async Task Online_scrub_of_an_unknown_lun_names_what_is_served()
    {
        await using var f = await Fixture.StartAsync();
        var run = await CliRun.RunAsync(f.Dir.Path, ["scrub", "--lun", "iqn.2026-11.org.example:status/7", "--socket", f.Socket]);
        Assert.That(run.ExitCode, Is.EqualTo(1));
        Assert.That(run.Err.ToString(), Does.Contain("has no LUN 7 (LUNs: 0)"));
    }

    [Test]
    public async Task A_second_server_on_a_live_socket_is_refused_and_a_stale_socket_file_is_replaced()
    {
        await using var f = await Fixture.StartAsync();
        var second = new StatusServer(f.Socket, new TargetHost(f.Config, Log, []), Log);
        Assert.That(() => second.Start(), Throws.TypeOf<CliException>().With.Message.Contains("is in use"));

        using var dir = new TempDir();
        var stale = Path.Combine(dir.Path, "stale.sock");
        using (var dead = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            dead.Bind(new UnixDomainSocketEndPoint(stale)); // leaves the file behind, like a killed server
        await using var fresh = new StatusServer(stale, new TargetHost(f.Config, Log, []), Log);
        fresh.Start();
        var run = await CliRun.RunAsync(dir.Path, ["status", "--socket", stale, "--json"]);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.AllOutput);
    }

    [Test]
    public async Task Status_without_a_running_server_explains_what_to_check()
    {
        using var dir = new TempDir();
        var run = await CliRun.RunAsync(dir.Path, ["status", "--data-dir", "."]);
        Assert.That(run.ExitCode, Is.EqualTo(1));
        Assert.That(run.Err.ToString(), Does.Contain("no status socket at").And.Contain("is integrity-target serve running"));
    }

    /// <summary>A serving process whose reload and resize fail in a way nobody planned for.</summary>
    private sealed class BrokenProvider(IStatusProvider inner) : IStatusProvider
    {
        public StatusSnapshot GetStatus() => inner.GetStatus();
        public Task<ScrubOutcome> ScrubAsync(string iqn, ulong lun, double? rateMBps, IProgress<double> progress, CancellationToken ct) =>
            throw new InvalidOperationException("scrub machinery jammed");
        public Task<ResizeOutcome> ResizeAsync(string iqn, ulong lun, long bytes, CancellationToken ct) => throw new IOException("backing file vanished");
        public Task<ReloadOutcome> ReloadAsync(CancellationToken ct) => throw new InvalidOperationException("half-built target");
    }

    [Test]
    public async Task An_unexpected_failure_of_reload_resize_or_scrub_is_answered_with_an_error_and_the_connection_stays_usable()
    {
        using var dir = new TempDir();
        var socket = Path.Combine(dir.Path, "broken.sock");
        await using (var server = new StatusServer(socket, new BrokenProvider(new TargetHost(HostConfigFor(dir), Log, [])), Log))
        {
            server.Start();
            var reload = await CliRun.RunAsync(dir.Path, ["reload", "--socket", socket]);
            Assert.That(reload.ExitCode, Is.EqualTo(1), reload.AllOutput);
            Assert.That(reload.Err.ToString(), Does.Contain("half-built target"), reload.AllOutput);
            var resize = await CliRun.RunAsync(dir.Path, ["resize", "iqn.2026-11.org.example:a/0", "2GiB", "--socket", socket]);
            Assert.That(resize.Err.ToString(), Does.Contain("backing file vanished"), resize.AllOutput);

            using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await s.ConnectAsync(new UnixDomainSocketEndPoint(socket));
            await using var stream = new NetworkStream(s);
            using var reader = new StreamReader(stream);
            await stream.WriteAsync(Encoding.UTF8.GetBytes("scrub iqn.2026-11.org.example:a 0\nstatus\n"));
            var failed = JsonNode.Parse((await reader.ReadLineAsync())!)!;
            Assert.That((string?)failed["error"], Does.Contain("scrub machinery jammed"));
            var ok = JsonNode.Parse((await reader.ReadLineAsync())!)!;
            Assert.That((string?)ok["type"], Is.EqualTo("status"), "the connection still answers");
        }
    }

    private static HostConfig HostConfigFor(TempDir dir)
    {
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--data-dir", ".", "--lun", "x.img", "--size", "2MiB"], checkFiles: false);
        Assert.That(problems.Errors(), Is.Empty);
        return config!;
    }

    [Test]
    public void Text_scrub_requests_parse_iqn_lun_and_rate()
    {
        var r = StatusJson.ParseRequest("scrub iqn.2026-11.org.example:a 3 25.5", out var error);
        Assert.That(error, Is.Null);
        Assert.That(r, Is.EqualTo(new StatusRequest("scrub", "iqn.2026-11.org.example:a", 3, 25.5)));
        Assert.That(StatusJson.ParseRequest("scrub iqn.2026-11.org.example:a", out error), Is.Null);
        Assert.That(error, Does.StartWith("usage: scrub IQN LUN"));
    }
}
