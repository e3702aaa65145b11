using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Serving;
using IntegrityTarget.Host.Status;
using Serilog;

namespace IntegrityTarget.Host.Tests;

/// <summary>A LUN a reload removes is closed only when nothing uses its volume any more, its online scrub included.</summary>
public class RetireLunTests
{
    private static readonly ILogger Log = new LoggerConfiguration().CreateLogger();

    [Test]
    public async Task Removing_a_lun_stops_its_online_scrub_before_the_volume_is_closed()
    {
        using var dir = new TempDir();
        var (config, problems) = ConfigTestExtensions.Load(dir.Path, ["--data-dir", ".", "--lun", "int.img", "--size", "8MiB", "--iqn", "iqn.2026-11.org.example:retire"]);
        Assert.That(problems.Errors(), Is.Empty);
        var t = config!.Targets[0];
        var lun = await VolumeOpener.OpenAsync(t, t.Luns[0], Log, CancellationToken.None);
        var data = new byte[1 << 20];
        new Random(7).NextBytes(data);
        Assert.That((await lun.Volume!.WriteAsync(0, data, fua: true)).IsOk, Is.True, "mapped chunks for the scrub to read");
        var host = new TargetHost(config, Log, [new ServedTarget(t, [lun])]);

        // A slow scrub (50 kB/s): it has read its first chunk and waits for its rate when the LUN is removed.
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var scrub = host.ScrubAsync(t.Iqn, 0, 0.05, new InlineProgress(f => { if (f > 0) started.TrySetResult(); }), CancellationToken.None);
        await started.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await host.RetireLunAsync(lun, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));

        Assert.That(scrub.IsCompleted, Is.True, "the scrub ended before the volume was closed");
        var e = Assert.ThrowsAsync<CliException>(async () => await scrub);
        Assert.That(e!.Message, Does.Contain("removed by a reload"));
        var again = Assert.ThrowsAsync<CliException>(async () => await host.ScrubAsync(t.Iqn, 0, null, new InlineProgress(_ => { }), CancellationToken.None));
        Assert.That(again!.Message, Does.Contain("removed by a reload"), "a retired LUN is not scrubbed again");
    }
}
