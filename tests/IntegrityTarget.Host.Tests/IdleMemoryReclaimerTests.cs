using IntegrityTarget.Host.Serving;

namespace IntegrityTarget.Host.Tests;

public class IdleMemoryReclaimerTests
{
    private static readonly Serilog.ILogger Log = Serilog.Core.Logger.None;

    [Test]
    public async Task It_collects_once_after_work_has_stopped_for_the_idle_time_and_not_while_busy()
    {
        long activity = 0;
        await using var r = new IdleMemoryReclaimer(() => Interlocked.Read(ref activity), Log, TimeSpan.FromMilliseconds(300), TimeSpan.FromMilliseconds(20));
        for (int i = 0; i < 30; i++) { Interlocked.Increment(ref activity); await Task.Delay(20); }
        Assert.That(r.Reclaims, Is.Zero, "busy: no collection");
        Assert.That(() => r.Reclaims, Is.EqualTo(1).After(5000, 20));
        await Task.Delay(600);
        Assert.That(r.Reclaims, Is.EqualTo(1), "idle and already reclaimed: nothing more");
        Interlocked.Increment(ref activity);
        Assert.That(() => r.Reclaims, Is.EqualTo(2).After(5000, 20), "new work, then idle again: one more");
    }

    [Test]
    public async Task A_server_that_never_worked_is_left_alone()
    {
        await using var r = new IdleMemoryReclaimer(() => 42, Log, TimeSpan.FromMilliseconds(50), TimeSpan.FromMilliseconds(10));
        await Task.Delay(400);
        Assert.That(r.Reclaims, Is.Zero);
    }
}
