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
    public int ExitCode { get; private set; }
    public string AllOutput => Out + "\n" + Err;

    public static async Task<CliRun> RunAsync(string workingDirectory, IReadOnlyList<string> args,
        IReadOnlyDictionary<string, string?>? env = null, CancellationToken stop = default)
    {
        var run = new CliRun();
        var ctx = new CliContext
        {
            Out = TextWriter.Synchronized(run.Out), Err = TextWriter.Synchronized(run.Err),
            Environment = env ?? new Dictionary<string, string?>(), WorkingDirectory = workingDirectory, Stop = stop,
        };
        run.ExitCode = await Cli.Cli.RunAsync(args, ctx);
        return run;
    }
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
