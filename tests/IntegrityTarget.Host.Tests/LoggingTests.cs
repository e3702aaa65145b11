using System.Text.Json;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Serving;

namespace IntegrityTarget.Host.Tests;

public class LoggingTests
{
    [Test]
    public void Json_logging_writes_one_compact_json_event_per_line_with_its_properties()
    {
        var console = new StringWriter();
        using (var log = LoggingSetup.Create(new LoggingSettings { Json = true }, console, isRealConsole: false))
            log.Information("LUN {Lun} opened", 7);
        var evt = JsonDocument.Parse(console.ToString().Trim()).RootElement;
        Assert.That(evt.GetProperty("@mt").GetString(), Is.EqualTo("LUN {Lun} opened"));
        Assert.That(evt.GetProperty("Lun").GetInt32(), Is.EqualTo(7));
    }

    [Test]
    public void The_level_filters_console_output()
    {
        var console = new StringWriter();
        using (var log = LoggingSetup.Create(new LoggingSettings { Level = "Warning" }, console, isRealConsole: false))
        {
            log.Information("hidden");
            log.Warning("shown");
        }
        Assert.That(console.ToString(), Does.Contain("WRN] shown").And.Not.Contain("hidden"));
    }

    [Test]
    public void A_log_file_receives_the_same_events_as_the_console()
    {
        using var dir = new TempDir();
        var file = Path.Combine(dir.Path, "logs", "target.log");
        var console = new StringWriter();
        using (var log = LoggingSetup.Create(new LoggingSettings { File = file }, console, isRealConsole: false))
            log.Information("written to both");
        var written = Directory.GetFiles(Path.Combine(dir.Path, "logs"), "target*.log").Single(); // rolled daily: target20261125.log
        Assert.That(File.ReadAllText(written), Does.Contain("[INF] written to both"));
        Assert.That(console.ToString(), Does.Contain("written to both"));
    }
}
