using IntegrityTarget.Host.Config;
using Serilog;
using Serilog.Core;
using Serilog.Events;
using Serilog.Formatting;
using Serilog.Formatting.Compact;
using Serilog.Formatting.Display;

namespace IntegrityTarget.Host.Serving;

/// <summary>Builds the one Serilog logger of a serving process: console always, a file when configured, JSON when asked.</summary>
public static class LoggingSetup
{
    private const string Template = "[{Timestamp:HH:mm:ss} {Level:u3}] {Message:lj}{NewLine}{Exception}";

    /// <param name="console">Where console output goes; the real console gets colours.</param>
    public static Logger Create(LoggingSettings settings, TextWriter console, bool isRealConsole) =>
        Create(settings, console, isRealConsole, new LoggingLevelSwitch(ParseLevel(settings.Level)));

    public static LogEventLevel ParseLevel(string level) => Enum.Parse<LogEventLevel>(level, ignoreCase: true);

    /// <param name="level">Controls the minimum level; a reload sets it to change Logging:Level without a restart.</param>
    public static Logger Create(LoggingSettings settings, TextWriter console, bool isRealConsole, LoggingLevelSwitch level)
    {
        var cfg = new LoggerConfiguration().MinimumLevel.ControlledBy(level).Enrich.FromLogContext();
        if (settings.Json)
            cfg = cfg.WriteTo.Sink(new TextWriterSink(console, new CompactJsonFormatter()));
        else if (isRealConsole)
            cfg = cfg.WriteTo.Console(outputTemplate: Template, standardErrorFromLevel: null);
        else
            cfg = cfg.WriteTo.Sink(new TextWriterSink(console, new MessageTemplateTextFormatter(Template, System.Globalization.CultureInfo.InvariantCulture)));

        if (settings.File != null)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(settings.File)!);
            cfg = settings.Json
                ? cfg.WriteTo.File(new CompactJsonFormatter(), settings.File, rollingInterval: RollingInterval.Day, retainedFileCountLimit: 14)
                : cfg.WriteTo.File(settings.File, outputTemplate: "{Timestamp:o} [{Level:u3}] {Message:lj}{NewLine}{Exception}",
                    rollingInterval: RollingInterval.Day, retainedFileCountLimit: 14);
        }
        return cfg.CreateLogger();
    }
}

/// <summary>Writes events to a TextWriter (the console of a verb run in-process, e.g. by tests).</summary>
internal sealed class TextWriterSink(TextWriter writer, ITextFormatter formatter) : ILogEventSink
{
    private readonly Lock _gate = new();

    public void Emit(LogEvent logEvent)
    {
        lock (_gate)
        {
            formatter.Format(logEvent, writer);
            writer.Flush();
        }
    }
}
