using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;

namespace IntegrityTarget.Host.Tests;

/// <summary>The serve verb end to end: in-process with a stop token, and as the real executable with SIGTERM.</summary>
public class ServeTests
{
    private const string Secret = "not-in-any-log-1";

    private static async Task WaitForAsync(Func<bool> condition, string what, Func<string> output)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.Elapsed > TimeSpan.FromSeconds(60)) Assert.Fail($"timed out waiting for {what}\n{output()}");
            await Task.Delay(50);
        }
    }

    [Test]
    public async Task Serve_formats_a_new_lun_answers_status_and_scrub_then_stops_cleanly_with_exit_0()
    {
        using var dir = new TempDir();
        using var stop = new CancellationTokenSource();
        var runTask = CliRun.StartAsync(dir.Path,
            ["serve", "--listen", "127.0.0.1:0", "--data-dir", ".", "--size", "8MiB", "--chap-user", "u", "--chap-secret", Secret],
            stop: stop.Token);
        var run = runTask.Run;
        var socket = Path.Combine(dir.Path, "status.sock");
        await WaitForAsync(() => run.OutText.Contains("Ready;") || runTask.Task.IsCompleted, "Ready", () => run.OutText);
        Assert.That(runTask.Task.IsCompleted, Is.False, run.AllOutput);

        var status = await CliRun.RunAsync(dir.Path, ["status", "--data-dir", ".", "--json"]);
        Assert.That(status.ExitCode, Is.EqualTo(0), status.AllOutput);
        var json = JsonNode.Parse(status.Out.ToString())!;
        var portal = IPEndPoint.Parse((string)json["portals"]![0]!);
        Assert.That(portal.Port, Is.Not.EqualTo(0), "status shows the port actually bound");
        Assert.That(run.OutText, Does.Contain($"Listening on {portal}"), "scripts wait for this line");
        var lun = json["targets"]![0]!["luns"]![0]!;
        Assert.That(((bool?)lun["integrity"], (string?)lun["tagAlgorithm"], (ulong?)lun["blocks"]), Is.EqualTo(((bool?)true, "crc32c", (ulong?)16384UL)));
        Assert.That((bool?)json["targets"]![0]!["chap"], Is.True);

        using (var tcp = new TcpClient())
            await tcp.ConnectAsync(portal); // the iSCSI portal accepts connections

        var scrub = await CliRun.RunAsync(dir.Path, ["scrub", "--lun", "iqn.2026-11.org.example:integrity/0", "--data-dir", "."]);
        Assert.That(scrub.ExitCode, Is.EqualTo(0), scrub.AllOutput);
        Assert.That(scrub.Out.ToString(), Does.Contain(": 0 bad"));

        stop.Cancel();
        int code = await runTask.Task;
        Assert.That(code, Is.EqualTo(0), run.AllOutput);
        Assert.That(run.Out.ToString(), Does.Contain("Stopped; every volume flushed"));
        Assert.That(File.Exists(socket), Is.False, "the status socket is removed at exit");
        Assert.That(run.AllOutput + status.AllOutput, Does.Not.Contain(Secret), "CHAP secrets never reach the output");
    }

    [Test]
    public async Task Serve_over_the_dotnetty_transport_accepts_connections_and_stops_with_exit_0()
    {
        using var dir = new TempDir();
        using var stop = new CancellationTokenSource();
        var (run, task) = CliRun.StartAsync(dir.Path,
            ["serve", "--listen", "127.0.0.1:0", "--data-dir", ".", "--size", "2MiB", "--integrity", "false", "--transport", "dotnetty"], stop: stop.Token);
        await WaitForAsync(() => run.OutText.Contains("Ready;") || task.IsCompleted, "Ready", () => run.OutText);
        Assert.That(task.IsCompleted, Is.False, run.OutText);
        var line = run.OutText.Split('\n').First(l => l.Contains("Listening on "));
        var portal = IPEndPoint.Parse(line[(line.IndexOf("Listening on ", StringComparison.Ordinal) + 13)..].Trim());
        using (var tcp = new TcpClient())
            await tcp.ConnectAsync(portal);
        Assert.That(run.OutText, Does.Contain("Transport dotnetty"));
        stop.Cancel();
        Assert.That(await task, Is.EqualTo(0), run.AllOutput);
    }

    [Test]
    public async Task Serve_on_a_port_in_use_exits_1_saying_so()
    {
        using var dir = new TempDir();
        using var taken = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        taken.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        taken.Listen();
        int port = ((IPEndPoint)taken.LocalEndPoint!).Port;

        var run = await CliRun.RunAsync(dir.Path, ["serve", "--listen", $"127.0.0.1:{port}", "--data-dir", ".", "--size", "2MiB"]);

        Assert.That(run.ExitCode, Is.EqualTo(1));
        Assert.That(run.Out.ToString(), Does.Contain($"Cannot listen on 127.0.0.1:{port}").And.Contain("already in use"));
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    [Test]
    public async Task The_executable_serves_reports_status_and_exits_0_on_SIGTERM()
    {
        using var dir = new TempDir();
        var dll = Path.Combine(TestContext.CurrentContext.TestDirectory, "integrity-target.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = dir.Path };
        foreach (var a in new[] { dll, "serve", "--listen", "127.0.0.1:0", "--data-dir", dir.Path, "--lun", "p.img", "--size", "4MiB", "--integrity", "false" })
            psi.ArgumentList.Add(a);
        var output = new System.Text.StringBuilder();
        using var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        try
        {
            string Text() { lock (output) return output.ToString(); }
            await WaitForAsync(() => Text().Contains("Ready;") || p.HasExited, "Ready", Text);
            Assert.That(p.HasExited, Is.False, Text());

            var status = await CliRun.RunAsync(dir.Path, ["status", "--socket", Path.Combine(dir.Path, "status.sock")]);
            Assert.That(status.ExitCode, Is.EqualTo(0), status.AllOutput);
            Assert.That(status.Out.ToString(), Does.Contain($"pid {p.Id}").And.Contain("integrity none"));

            Assert.That(kill(p.Id, 15), Is.EqualTo(0));
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            await p.WaitForExitAsync(timeout.Token);
            Assert.That(p.ExitCode, Is.EqualTo(0), Text());
            Assert.That(Text(), Does.Contain("Stopped; every volume flushed"));
        }
        finally
        {
            if (!p.HasExited) p.Kill();
        }
    }
}
