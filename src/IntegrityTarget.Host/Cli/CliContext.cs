using IntegrityTarget.Host.Config;
using Spectre.Console;

namespace IntegrityTarget.Host.Cli;

/// <summary>Everything a verb touches outside itself, handed in so verbs run the same in tests and in the process.</summary>
public sealed class CliContext
{
    public required TextWriter Out { get; init; }
    public required TextWriter Err { get; init; }
    public required IReadOnlyDictionary<string, string?> Environment { get; init; }
    public required string WorkingDirectory { get; init; }
    /// <summary>Signalled by SIGTERM/SIGINT in the process, by the test otherwise.</summary>
    public CancellationToken Stop { get; init; }
    /// <summary>True when Out is a terminal: colours and live progress bars.</summary>
    public bool Interactive { get; init; }
    /// <summary>Raised by SIGHUP in the process (serve re-reads its configuration), by the test otherwise.</summary>
    public ReloadSignal Reload { get; init; } = new();

    public IAnsiConsole CreateConsole() => AnsiConsole.Create(new AnsiConsoleSettings
    {
        Ansi = Interactive ? AnsiSupport.Detect : AnsiSupport.No,
        ColorSystem = Interactive ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
        Interactive = Interactive ? InteractionSupport.Yes : InteractionSupport.No,
        Out = new AnsiConsoleOutput(Out),
    });

    public static CliContext ForProcess(CancellationToken stop, ReloadSignal? reload = null) => new()
    {
        Reload = reload ?? new ReloadSignal(),
        Out = Console.Out,
        Err = Console.Error,
        Environment = PrefixedEnvironmentProvider.ProcessEnvironment(),
        WorkingDirectory = Directory.GetCurrentDirectory(),
        Stop = stop,
        Interactive = !Console.IsOutputRedirected,
    };
}

/// <summary>
/// A request to re-read the configuration (SIGHUP). Only serve claims it; for every other verb SIGHUP keeps
/// its usual meaning (a closed terminal ends the program), so a scrub or format is not left running unseen.
/// </summary>
public sealed class ReloadSignal
{
    private volatile bool _claimed;
    public event Action? Requested;

    /// <summary>From now on SIGHUP means "reload" (serve calls it; a SIGHUP before it subscribes is dropped).</summary>
    public void Claim() => _claimed = true;

    /// <summary>Delivers a SIGHUP; false when no verb claimed it, and the signal ends the process as usual.</summary>
    public bool Raise()
    {
        if (!_claimed) return false;
        Requested?.Invoke();
        return true;
    }
}

/// <summary>Process exit codes, documented in README.</summary>
public static class ExitCodes
{
    public const int Ok = 0;
    /// <summary>Runtime failure: could not open a LUN or bind a portal, scrub found bad blocks, I/O error.</summary>
    public const int Failure = 1;
    /// <summary>Bad configuration or command-line usage; nothing was served or changed.</summary>
    public const int Usage = 2;
}

/// <summary>A failure a person has to act on; the message is the whole story (no stack trace is printed).</summary>
public sealed class CliException(string message, int exitCode = ExitCodes.Failure) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
