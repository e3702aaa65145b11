using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>Output of one finished external process.</summary>
public sealed record ToolResult(string Command, int ExitCode, string StdOut, string StdErr, bool TimedOut)
{
    public string Combined => StdOut + (StdErr.Length > 0 ? "\n[stderr]\n" + StdErr : "");

    /// <summary>Text for an assertion message: the command, its exit code and (the tail of) its output.</summary>
    public string Describe(int tailChars = 6000)
    {
        var all = Combined;
        if (all.Length > tailChars) all = "...\n" + all[^tailChars..];
        return $"$ {Command}\nexit {ExitCode}{(TimedOut ? " (TIMED OUT, killed)" : "")}\n{all}";
    }
}

/// <summary>Runs external tools (libiscsi utilities, QEMU, shared scripts) with a timeout.</summary>
public static class Tools
{
    /// <summary>Where an apt package provides each tool: the message a missing tool fails with.</summary>
    static readonly Dictionary<string, string> Providers = new()
    {
        ["iscsi-ls"] = "libiscsi-bin", ["iscsi-inq"] = "libiscsi-bin", ["iscsi-test-cu"] = "libiscsi-bin",
        ["iscsi-readcapacity16"] = "libiscsi-bin", ["qemu-img"] = "qemu-utils", ["qemu-io"] = "qemu-utils",
        ["qemu-system-x86_64"] = "qemu-system-x86", ["socat"] = "socat", ["tgtd"] = "tgt", ["tgtadm"] = "tgt",
        ["fusermount3"] = "fuse3", ["dd"] = "coreutils", ["rbd"] = "ceph-common", ["rados"] = "ceph-common",
    };

    /// <summary>Full path of a tool on PATH; a missing tool is a test failure (never a skip), naming the package.</summary>
    public static string RequireTool(string name)
    {
        var found = Which(name);
        if (found is null)
        {
            var pkg = Providers.TryGetValue(name, out var p) ? p : name;
            Assert.Fail($"required tool '{name}' is not installed: install {pkg} (apt-get install -y {pkg}; .ci/run does this)");
        }
        return found!;
    }

    public static string? Which(string name)
    {
        if (name.Contains('/')) return File.Exists(name) ? name : null;
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':')
                     .Concat(["/usr/sbin", "/sbin", "/usr/local/sbin"]))
        {
            var full = Path.Combine(dir, name);
            if (File.Exists(full)) return full;
        }
        return null;
    }

    /// <summary>
    /// Runs a process to completion (or kills its whole process tree after the timeout). Output is
    /// captured; when <paramref name="echo"/> is set each line is also written to the NUnit progress log
    /// so long runs (VM, conformance) show what they do. <paramref name="onLine"/> sees each stdout line as
    /// it arrives (a harness reacting to a marker the tool prints).
    /// </summary>
    public static ToolResult Run(string file, IEnumerable<string> args, TimeSpan timeout,
        IDictionary<string, string>? env = null, string? workDir = null, bool echo = false, Action<string>? onLine = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true,
            UseShellExecute = false, WorkingDirectory = workDir ?? Environment.CurrentDirectory,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        var cmd = string.Join(' ', new[] { file }.Concat(psi.ArgumentList.Select(Quote)));
        if (env is { Count: > 0 }) cmd = string.Join(' ', env.Select(kv => $"{kv.Key}={Quote(kv.Value)}")) + " " + cmd;

        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        using var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stdout) stdout.AppendLine(e.Data);
            if (echo) TestContext.Progress.WriteLine("  | " + e.Data);
            onLine?.Invoke(e.Data);
        };
        p.ErrorDataReceived += (_, e) => { if (e.Data is null) return; lock (stderr) stderr.AppendLine(e.Data); if (echo) TestContext.Progress.WriteLine("  ! " + e.Data); };
        p.Start();
        p.StandardInput.Close();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var finished = p.WaitForExit((int)timeout.TotalMilliseconds);
        if (!finished)
        {
            try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            p.WaitForExit(10_000);
        }
        else p.WaitForExit(); // drains the async readers
        string o, e2;
        lock (stdout) o = stdout.ToString();
        lock (stderr) e2 = stderr.ToString();
        return new ToolResult(cmd, finished ? p.ExitCode : -1, o, e2, !finished);
    }

    public static ToolResult Run(string file, params string[] args) => Run(file, args, TimeSpan.FromMinutes(2));

    /// <summary>Runs a bash command line (for pipelines such as dd); fails the test on a non-zero exit.</summary>
    public static ToolResult Bash(string script, TimeSpan? timeout = null, IDictionary<string, string>? env = null)
    {
        var r = Run("/bin/bash", ["-c", "set -euo pipefail; " + script], timeout ?? TimeSpan.FromMinutes(5), env);
        Assert.That(r.ExitCode, Is.EqualTo(0), () => r.Describe());
        return r;
    }

    static string Quote(string s) => s.Length > 0 && s.All(c => char.IsLetterOrDigit(c) || "-_./:=%@,+".Contains(c)) ? s : "'" + s.Replace("'", "'\\''") + "'";

    /// <summary>A free TCP port below 32768 (tgtadm's control port must fit in a short): probe by binding.</summary>
    public static int FreeLowPort()
    {
        for (var i = 0; i < 200; i++)
        {
            var port = Random.Shared.Next(20000, 32000);
            try
            {
                using var l = new TcpListener(IPAddress.Loopback, port);
                l.Start();
                l.Stop();
                return port;
            }
            catch (SocketException) { }
        }
        throw new InvalidOperationException("no free port in 20000..32000");
    }

    /// <summary>A free TCP port on 127.0.0.1 (bind port 0, read it, release it).</summary>
    public static int FreePort() => FreePorts(1)[0];

    /// <summary>
    /// <paramref name="n"/> distinct free TCP ports on 127.0.0.1: all are held until the last is chosen, so the kernel
    /// cannot hand one out twice (separate <see cref="FreePort"/> calls can get a port again that was released but
    /// not yet bound by the server it was meant for).
    /// </summary>
    public static int[] FreePorts(int n)
    {
        var listeners = new List<TcpListener>();
        try
        {
            for (int i = 0; i < n; i++)
            {
                var l = new TcpListener(IPAddress.Loopback, 0);
                listeners.Add(l);
                l.Start();
            }
            return listeners.Select(l => ((IPEndPoint)l.LocalEndpoint).Port).ToArray();
        }
        finally
        {
            foreach (var l in listeners) l.Stop();
        }
    }
}

/// <summary>Deletes a test's temporary directory at the end of a using block (KEEP_TEST_DATA=1 keeps it).</summary>
public sealed class DirectoryCleanup(string dir) : IDisposable
{
    public void Dispose()
    {
        if (Environment.GetEnvironmentVariable("KEEP_TEST_DATA") == "1") return;
        try { Directory.Delete(dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
