using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>What one integrity-target server is started with.</summary>
public sealed class ServerOptions
{
    public string Iqn { get; set; } = "iqn.2026-11.org.example:integrity";
    /// <summary>Backing file of LUN 0 (null: the server creates its default LUN file under the data dir).</summary>
    public string? LunPath { get; set; }
    /// <summary>LUN 0's size when the server creates its file (null: serve an existing file at its size).</summary>
    public string? Size { get; set; } = "64MiB";
    public int BlockSize { get; set; } = 512;
    public bool Integrity { get; set; } = true;
    public string LogLevel { get; set; } = "Information";
    /// <summary>Further `--Key=value` / `--key value` arguments, e.g. config keys for more LUNs, ACLs, CHAP.</summary>
    public List<string> Extra { get; } = new();
    /// <summary>Optional log line (regex) that must appear before the server counts as ready.</summary>
    public string? ReadyLogPattern { get; set; }
    /// <summary>When set, the server runs under `ulimit -n` of this many file descriptors (soft and hard).</summary>
    public int? FdLimit { get; set; }
    /// <summary>Extra environment variables for the server process.</summary>
    public Dictionary<string, string> Environment { get; } = new();
}

/// <summary>
/// The real integrity-target process on 127.0.0.1 with a free port and a temporary data directory.
/// Output is captured (and kept in DATA/server.N.log); Stop() sends SIGTERM and asserts exit code 0;
/// Kill() is kill -9 for crash tests; Start() again restarts on the same files and port.
/// </summary>
public sealed class ServerProcess : IDisposable
{
    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);
    const int SIGTERM = 15;

    readonly List<string> _lines = new();
    Process? _proc;
    int _starts;
    readonly bool _ownsDataDir;

    public ServerOptions Options { get; }
    public int Port { get; }
    public string DataDir { get; }
    public string Iqn => Options.Iqn;
    public string Host => "127.0.0.1";
    public string StatusSocket => Path.Combine(DataDir, "status.sock");
    public int? LastExitCode { get; private set; }
    public bool IsRunning => _proc is { HasExited: false };
    /// <summary>Process id of the running server (for signals such as SIGHUP).</summary>
    public int Pid => _proc?.Id ?? throw new InvalidOperationException("the server is not running");

    public ServerProcess(ServerOptions options, string? dataDir = null, int? port = null)
    {
        Options = options;
        Port = port ?? Tools.FreePort();
        _ownsDataDir = dataDir is null;
        DataDir = dataDir ?? Directory.CreateTempSubdirectory("it-server-").FullName;
        Directory.CreateDirectory(DataDir);
    }

    /// <summary>libiscsi URL of a LUN of this server (optionally with CHAP credentials).</summary>
    public string Url(int lun = 0, string? iqn = null, string? user = null, string? secret = null) =>
        $"iscsi://{(user is null ? "" : $"{Uri.EscapeDataString(user)}%{Uri.EscapeDataString(secret!)}@")}{Host}:{Port}/{iqn ?? Iqn}/{lun}";

    public string PortalUrl => $"iscsi://{Host}:{Port}/";

    /// <summary>LUN 0's backing file: the given one, else DATA/lun0.img (created by the server).</summary>
    public string LunPath => Options.LunPath ?? Path.Combine(DataDir, "lun0.img");

    public IReadOnlyList<string> Args()
    {
        var a = new List<string> { "serve", "--listen", $"{Host}:{Port}", "--iqn", Options.Iqn,
            "--block-size", Options.BlockSize.ToString(),
            "--integrity", Options.Integrity ? "true" : "false", "--data-dir", DataDir, "--log-level", Options.LogLevel };
        a.Add("--lun"); a.Add(LunPath);
        if (Options.Size != null) { a.Add("--size"); a.Add(Options.Size); }
        a.AddRange(Options.Extra);
        return a;
    }

    /// <summary>Starts the process and waits until it accepts TCP connections (and logged the ready pattern).</summary>
    public ServerProcess Start(TimeSpan? timeout = null)
    {
        Assert.That(IsRunning, Is.False, "server already running");
        Paths.Require(Paths.ServerDll, "integrity-target.dll");
        var psi = new ProcessStartInfo(Options.FdLimit is null ? "dotnet" : "/bin/sh")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true,
            UseShellExecute = false, WorkingDirectory = DataDir,
        };
        if (Options.FdLimit is { } fds)
        {
            // exec keeps the pid: SIGTERM and kill reach the server itself.
            foreach (var a in new[] { "-c", $"ulimit -n {fds} && exec \"$@\"", "sh", "dotnet" }) psi.ArgumentList.Add(a);
        }
        psi.ArgumentList.Add(Paths.ServerDll);
        foreach (var x in Args()) psi.ArgumentList.Add(x);
        foreach (var (k, v) in Options.Environment) psi.Environment[k] = v;
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        var startNo = ++_starts;
        var logFile = Path.Combine(DataDir, $"server.{startNo}.log");
        var writer = new StreamWriter(logFile) { AutoFlush = true };
        void OnLine(string? l, string prefix)
        {
            if (l is null) return;
            lock (_lines) { _lines.Add(prefix + l); writer.WriteLine(prefix + l); }
        }
        lock (_lines) _lines.Add($"---- start #{startNo}: dotnet {Paths.ServerDll} {string.Join(' ', Args())}");
        var p = new Process { StartInfo = psi, EnableRaisingEvents = true };
        p.OutputDataReceived += (_, e) => OnLine(e.Data, "");
        p.ErrorDataReceived += (_, e) => OnLine(e.Data, "[stderr] ");
        p.Exited += (_, _) => { };
        p.Start();
        p.StandardInput.Close();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        _proc = p;
        LastExitCode = null;

        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        var ready = false;
        while (DateTime.UtcNow < deadline)
        {
            if (p.HasExited)
            {
                p.WaitForExit();
                LastExitCode = p.ExitCode;
                Assert.Fail($"integrity-target exited with code {p.ExitCode} while starting.\n{Output(120)}");
            }
            if (CanConnect() && (Options.ReadyLogPattern is null || HasLog(Options.ReadyLogPattern))) { ready = true; break; }
            Thread.Sleep(100);
        }
        if (!ready)
        {
            var output = Output(120);
            Kill();
            Assert.Fail($"integrity-target did not accept connections on {Host}:{Port} within the timeout.\n{output}");
        }
        return this;
    }

    bool CanConnect()
    {
        try
        {
            using var c = new TcpClient();
            c.Connect(Host, Port);
            return true;
        }
        catch (SocketException) { return false; }
    }

    /// <summary>SIGTERM, wait for the drain, and assert the process exited with code 0.</summary>
    public void Stop(TimeSpan? timeout = null)
    {
        var code = Terminate(timeout ?? TimeSpan.FromSeconds(30));
        Assert.That(code, Is.EqualTo(0), () => $"integrity-target must exit 0 after SIGTERM (got {code}).\n{Output(80)}");
    }

    int Terminate(TimeSpan timeout)
    {
        var p = _proc;
        if (p is null) return LastExitCode ?? 0;
        if (!p.HasExited)
        {
            kill(p.Id, SIGTERM);
            if (!p.WaitForExit((int)timeout.TotalMilliseconds))
            {
                lock (_lines) _lines.Add($"---- no exit {timeout.TotalSeconds}s after SIGTERM: kill -9");
                p.Kill(entireProcessTree: true);
                p.WaitForExit();
                LastExitCode = -9;
                _proc = null;
                p.Dispose();
                return -9;
            }
        }
        p.WaitForExit();
        LastExitCode = p.ExitCode;
        _proc = null;
        p.Dispose();
        return LastExitCode.Value;
    }

    /// <summary>kill -9: the crash a power cut goes with. Waits until the process is gone.</summary>
    public void Kill()
    {
        var p = _proc;
        if (p is null) return;
        if (!p.HasExited) { try { p.Kill(); } catch (InvalidOperationException) { } }
        p.WaitForExit();
        LastExitCode = p.ExitCode;
        lock (_lines) _lines.Add("---- killed with SIGKILL");
        _proc = null;
        p.Dispose();
    }

    /// <summary>Everything captured, including the harness's own "---- " marker lines (command line, kills).</summary>
    public IReadOnlyList<string> Lines { get { lock (_lines) return _lines.ToList(); } }

    /// <summary>Only what the server printed (stdout and stderr), without the harness markers.</summary>
    public IReadOnlyList<string> ServerLines => Lines.Where(l => !l.StartsWith("---- ", StringComparison.Ordinal)).ToList();

    public bool HasLog(string pattern) => ServerLines.Any(l => Regex.IsMatch(l, pattern));

    /// <summary>What the server printed since its last start (a restarted server's earlier runs left out).</summary>
    public IReadOnlyList<string> LinesSinceStart
    {
        get
        {
            var all = Lines;
            int start = all.ToList().FindLastIndex(l => l.StartsWith("---- start #", StringComparison.Ordinal));
            return all.Skip(start + 1).Where(l => !l.StartsWith("---- ", StringComparison.Ordinal)).ToList();
        }
    }

    public int CountLogSinceStart(string pattern) => LinesSinceStart.Count(l => Regex.IsMatch(l, pattern));

    public int CountLog(string pattern) => ServerLines.Count(l => Regex.IsMatch(l, pattern));

    /// <summary>Waits until a log line matches (the log is asynchronous to the iSCSI responses).</summary>
    public bool WaitForLog(string pattern, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline)
        {
            if (HasLog(pattern)) return true;
            Thread.Sleep(50);
        }
        return HasLog(pattern);
    }

    /// <summary>The last lines the server printed, for assertion messages.</summary>
    public string Output(int lastLines = 60)
    {
        var l = Lines;
        var tail = l.Skip(Math.Max(0, l.Count - lastLines));
        return $"---- integrity-target output (last {Math.Min(lastLines, l.Count)} of {l.Count} lines, all in {DataDir}/server.*.log) ----\n"
               + string.Join('\n', tail);
    }

    /// <summary>Resident set size of the running server (VmRSS), for the memory tests.</summary>
    public long RssBytes =>
        long.Parse(File.ReadLines($"/proc/{Pid}/status").First(l => l.StartsWith("VmRSS:")).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;

    /// <summary>Runs another integrity-target sub-command (status, scrub, dump, format).</summary>
    public static ToolResult Cli(TimeSpan timeout, params string[] args) =>
        Tools.Run("dotnet", new[] { Paths.ServerDll }.Concat(args), timeout);

    /// <summary>`integrity-target status --socket DATA/status.sock` while serving.</summary>
    public ToolResult Status() => Cli(TimeSpan.FromSeconds(30), "status", "--socket", StatusSocket);

    /// <summary>The iSCSI layer's counters from `status --json` ("iscsi": logins, connections, budget, ...).</summary>
    public System.Text.Json.Nodes.JsonNode IscsiCounters()
    {
        var r = Cli(TimeSpan.FromSeconds(30), "status", "--json", "--socket", StatusSocket);
        Assert.That(r.ExitCode, Is.EqualTo(0), () => r.Describe());
        return System.Text.Json.Nodes.JsonNode.Parse(r.StdOut)!["iscsi"]!;
    }

    public void Dispose()
    {
        if (_proc != null)
        {
            var code = Terminate(TimeSpan.FromSeconds(20));
            if (code != 0) TestContext.Out.WriteLine($"integrity-target exited with {code} at dispose");
        }
        TestContext.Out.WriteLine(Output(40));
        if (_ownsDataDir && Environment.GetEnvironmentVariable("KEEP_TEST_DATA") != "1")
        {
            try { Directory.Delete(DataDir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}
