using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Status;
using Serilog;
using Serilog.Events;
using Spectre.Console;

namespace IntegrityTarget.Host.Cli;

internal static class CliHelpers
{
    /// <summary>A quiet logger for offline verbs: warnings and errors to stderr, so progress bars stay readable.</summary>
    public static Serilog.Core.Logger QuietLogger(CliContext ctx) =>
        Serving.LoggingSetup.Create(new LoggingSettings { Level = nameof(LogEventLevel.Warning) }, ctx.Err, ReferenceEquals(ctx.Err, Console.Error));

    /// <summary>Runs <paramref name="work"/> under a progress bar; the work reports a fraction 0..1.</summary>
    public static async Task<T> WithProgressAsync<T>(CliContext ctx, string description, Func<IProgress<double>, Task<T>> work)
    {
        if (!ctx.Interactive)
        {
            // Logs and pipes get a few plain lines instead of a redrawn bar.
            int lastDecile = -1;
            var plain = new InlineProgress(f =>
            {
                int decile = (int)(Math.Clamp(Normalise(f), 0, 1) * 10);
                if (decile <= lastDecile) return;
                lastDecile = decile;
                ctx.Out.WriteLine($"{description}: {decile * 10}%");
            });
            return await work(plain);
        }
        T result = default!;
        await ctx.CreateConsole().Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .StartAsync(async p =>
            {
                var task = p.AddTask(description, maxValue: 1.0);
                result = await work(new InlineProgress(f => task.Value = Math.Clamp(Normalise(f), 0, 1)));
                task.Value = 1.0;
            });
        return result;
    }

    /// <summary>Accepts a fraction (0..1) or a percentage (0..100).</summary>
    private static double Normalise(double f) => f > 1.0 ? f / 100.0 : f;

    public static string ResolveSocket(VerbArgs va, CliContext ctx)
    {
        if (va.Get("socket") is { } s) return Path.GetFullPath(s, ctx.WorkingDirectory);
        var loaded = ConfigLoader.Load(new ConfigInput(va.Rest, ctx.Environment, ctx.WorkingDirectory));
        var errors = loaded.Problems.Where(p => p.Severity == ProblemSeverity.Error).ToList();
        if (errors.Count > 0) throw new CliException(string.Join("\n  ", errors.Select(e => e.ToString()).Prepend("bad arguments:")), ExitCodes.Usage);
        return ConfigReader.StatusSocketPath(loaded);
    }

    public static byte[] ReadKeyFile(string? path, CliContext ctx)
    {
        if (path == null) return [];
        var full = Path.GetFullPath(path, ctx.WorkingDirectory);
        try { return File.ReadAllBytes(full); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"--key-file {path}: cannot be read: {e.Message}", ExitCodes.Usage);
        }
    }
}
