using System.Diagnostics;

namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>
/// tests/tools/failfs: a FUSE file (MountDir/disk.img) passed through to a base file, mounted with the kernel's
/// writeback cache, whose writebacks fail with EIO over a chosen range on command: a real writeback error, recorded
/// in the file's error sequence and reported to fdatasync as a failing disk's would be. Built with make into the
/// test output folder on first use; the daemon runs in the foreground as this process's child and is unmounted
/// (fusermount3 -u) at Dispose.
/// </summary>
public sealed class Failfs : IDisposable
{
    public string Dir { get; }
    public string BaseFile => Path.Combine(Dir, "base.img");
    public string MountDir => Path.Combine(Dir, "mnt");
    public string Disk => Path.Combine(MountDir, "disk.img");
    string Control => Path.Combine(MountDir, ".failfs");
    string LogFile => Path.Combine(Dir, "failfs.log");
    readonly Process _daemon;

    static readonly Lazy<string> Binary = new(Build);

    static string Build()
    {
        foreach (var t in new[] { "make", "gcc", "pkg-config" }) Tools.RequireTool(t);
        Assert.That(File.Exists("/usr/include/fuse3/fuse.h"), "libfuse3-dev is not installed (apt-get install -y libfuse3-dev; .ci/run does this)");
        var src = Path.Combine(Paths.RepoRoot, "tests", "tools", "failfs");
        var bin = Path.Combine(AppContext.BaseDirectory, "failfs");
        var r = Tools.Run("make", ["-s", "-C", src, "OUT=" + bin], TimeSpan.FromMinutes(2));
        Assert.That(r.ExitCode, Is.EqualTo(0), () => "building failfs: " + r.Describe());
        return bin;
    }

    /// <summary>Mounts a fresh base file of <paramref name="bytes"/> bytes (zeros) under a new temporary folder.</summary>
    public Failfs(long bytes)
    {
        Tools.RequireTool("fusermount3");
        var bin = Binary.Value;
        Dir = Directory.CreateTempSubdirectory("failfs-").FullName;
        Directory.CreateDirectory(MountDir);
        using (var f = new FileStream(BaseFile, FileMode.CreateNew)) f.SetLength(bytes);
        var psi = new ProcessStartInfo(bin) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { BaseFile, MountDir, "-f" }) psi.ArgumentList.Add(a);
        _daemon = Process.Start(psi)!;
        var log = new StreamWriter(LogFile) { AutoFlush = true };
        _daemon.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (log) log.WriteLine(e.Data); };
        _daemon.OutputDataReceived += (_, e) => { if (e.Data != null) lock (log) log.WriteLine(e.Data); };
        _daemon.BeginErrorReadLine();
        _daemon.BeginOutputReadLine();
        var sw = Stopwatch.StartNew();
        while (!File.Exists(Control))
        {
            if (_daemon.HasExited || sw.Elapsed > TimeSpan.FromSeconds(20))
                Assert.Fail($"failfs did not mount {MountDir} (exit {(_daemon.HasExited ? _daemon.ExitCode : -1)}): {Log()}");
            Thread.Sleep(20);
        }
    }

    public string Log() { try { using var f = new FileStream(LogFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite); return new StreamReader(f).ReadToEnd(); } catch (IOException) { return ""; } }

    void Command(string cmd)
    {
        using var f = new FileStream(Control, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1);
        f.Write(System.Text.Encoding.ASCII.GetBytes(cmd));
    }

    /// <summary>Every writeback overlapping [offset, offset+length) fails with EIO; with <paramref name="hold"/> each
    /// waits inside the daemon until <see cref="Release"/>, keeping whatever waits for it (an fdatasync) in the kernel.</summary>
    public void Fail(long offset, long length, bool hold = false) => Command($"fail {offset} {length}{(hold ? " hold" : "")}");
    public void Release() => Command("release");
    public void Clear() => Command("clear");

    public Dictionary<string, long> Stats()
    {
        var text = File.ReadAllText(Control);
        return text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split('='))
            .ToDictionary(kv => kv[0], kv => long.Parse(kv[1]));
    }

    /// <summary>Waits until <paramref name="n"/> failing writebacks are held in the daemon.</summary>
    public void WaitHeld(int n, TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        while (Stats()["held"] < n)
        {
            if (sw.Elapsed > timeout) Assert.Fail($"no failing writeback reached failfs within {timeout}: {string.Join(", ", Stats())}");
            Thread.Sleep(10);
        }
    }

    public void Dispose()
    {
        try { Clear(); } catch (IOException) { }
        for (int i = 0; i < 50 && !_daemon.HasExited; i++)
        {
            Tools.Run("fusermount3", ["-u", MountDir], TimeSpan.FromSeconds(10));
            if (_daemon.WaitForExit(200)) break;
        }
        if (!_daemon.HasExited) { _daemon.Kill(); _daemon.WaitForExit(5000); Tools.Run("fusermount3", ["-uz", MountDir], TimeSpan.FromSeconds(10)); }
        _daemon.Dispose();
        new DirectoryCleanup(Dir).Dispose();
    }
}
