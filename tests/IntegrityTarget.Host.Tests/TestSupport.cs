using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Config;

namespace IntegrityTarget.Host.Tests;

/// <summary>A scratch directory under /tmp with a short path (unix socket paths are limited to 107 bytes).</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("ith-").FullName;

    public string File(string name, string? content = null)
    {
        var p = System.IO.Path.Combine(Path, name);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(p)!);
        if (content != null) System.IO.File.WriteAllText(p, content);
        return p;
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}

/// <summary>Runs the CLI in-process with captured output and a given environment and working directory.</summary>
public sealed class CliRun
{
    public StringWriter Out { get; } = new();
    public StringWriter Err { get; } = new();
    public string OutText { get { lock (Out) return Out.ToString(); } }
    public int ExitCode { get; private set; }
    public string AllOutput => Out + "\n" + Err;

    public static async Task<CliRun> RunAsync(string workingDirectory, IReadOnlyList<string> args,
        IReadOnlyDictionary<string, string?>? env = null, CancellationToken stop = default)
    {
        var started = StartAsync(workingDirectory, args, env, stop);
        await started.Task;
        return started.Run;
    }

    /// <summary>Starts a verb in the background (e.g. serve until <paramref name="stop"/>); output is readable while it runs.</summary>
    public static (CliRun Run, Task<int> Task) StartAsync(string workingDirectory, IReadOnlyList<string> args,
        IReadOnlyDictionary<string, string?>? env = null, CancellationToken stop = default)
    {
        var run = new CliRun();
        var ctx = new CliContext
        {
            Out = new LockedWriter(run.Out), Err = new LockedWriter(run.Err),
            Environment = env ?? new Dictionary<string, string?>(), WorkingDirectory = workingDirectory, Stop = stop,
        };
        var task = Task.Run(async () => run.ExitCode = await Cli.Cli.RunAsync(args, ctx));
        return (run, task);
    }

    public override string ToString() => AllOutput;
}

/// <summary>A writer whose target StringWriter can be read safely while another thread writes.</summary>
internal sealed class LockedWriter(StringWriter inner) : TextWriter
{
    public override System.Text.Encoding Encoding => inner.Encoding;
    public override void Write(char value) { lock (inner) inner.Write(value); }
    public override void Write(string? value) { lock (inner) inner.Write(value); }
    public override void WriteLine(string? value) { lock (inner) inner.WriteLine(value); }
    public override Task WriteAsync(string? value) { Write(value); return Task.CompletedTask; }
    public override Task WriteLineAsync(string? value) { WriteLine(value); return Task.CompletedTask; }
    public override Task WriteAsync(char value) { Write(value); return Task.CompletedTask; }
    public override Task WriteLineAsync() { WriteLine(); return Task.CompletedTask; }
}

public static class ConfigTestExtensions
{
    public static (HostConfig? Config, IReadOnlyList<ConfigProblem> Problems) Load(
        string workingDirectory, IReadOnlyList<string> args, IReadOnlyDictionary<string, string?>? env = null, bool checkFiles = true)
    {
        var loaded = ConfigLoader.Load(new ConfigInput(args, env ?? new Dictionary<string, string?>(), workingDirectory));
        return ConfigReader.Read(loaded, checkFiles);
    }

    public static IEnumerable<string> Errors(this IReadOnlyList<ConfigProblem> problems) =>
        problems.Where(p => p.Severity == ProblemSeverity.Error).Select(p => p.ToString());
}
