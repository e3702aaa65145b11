using IntegrityTarget.Integration.Tests.Infrastructure;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Integration.Tests.Writeback;

/// <summary>
/// A writeback error must reach every flush in flight when it is raised, not just the first to check. Linux reports a
/// failed page writeback once per open file description, so two fdatasync calls overlapping on one descriptor split
/// it: one gets EIO, the other returns 0 (and its command would be acknowledged as durable). The file device gives
/// every flush and FUA write a descriptor of its own. The disk is failfs (tests/tools/failfs): a FUSE file with the
/// kernel's writeback cache whose writeback of a chosen range fails with EIO and is held inside the daemon until
/// released, so the first flush is still waiting for it in the kernel while the second starts.
/// </summary>
[TestFixture, Category("Writeback")]
public class OverlappingFlushTests
{
    const long Bytes = 16L << 20;
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    static byte[] Pattern(int n, byte seed) => Enumerable.Range(0, n).Select(i => (byte)(i * 7 + seed)).ToArray();

    /// <summary>Starts a blocking device call on a thread of its own; its task ends when the call returns.</summary>
    static Task OnThread(Func<ValueTask> call) =>
        Task.Factory.StartNew(() => call().AsTask().GetAwaiter().GetResult(), TaskCreationOptions.LongRunning);

    [Test]
    public async Task Two_overlapping_flushes_both_fail_when_the_writeback_under_them_fails()
    {
        using var fs = new Failfs(Bytes);
        using var dev = FileBlockDevice.Open(fs.Disk);
        await dev.WriteAsync(0, Pattern(64 << 10, 1), fua: false);          // dirty pages, in the page cache only
        fs.Fail(32 << 10, 4096, hold: true);

        var first = OnThread(() => dev.FlushAsync());
        fs.WaitHeld(1, Wait);                                                 // the first flush waits for the failing page
        var second = OnThread(() => dev.FlushAsync());
        await Task.Delay(300);
        Assert.That(second.IsCompleted, Is.False, "the second flush waits behind the first in the kernel");
        fs.Release();

        var e1 = Assert.ThrowsAsync<IOException>(async () => await first);
        var e2 = Assert.ThrowsAsync<IOException>(async () => await second,
            "the second flush overlapped a failed writeback: it must not report the data durable");
        Assert.That(e1!.Message, Does.Contain("fdatasync"));
        Assert.That(e2!.Message, Does.Contain("fdatasync"));
        Assert.That(fs.Stats()["failed_writes"], Is.GreaterThanOrEqualTo(1));

        fs.Clear();
        var later = Assert.ThrowsAsync<IOException>(async () => await dev.FlushAsync());
        Assert.That(later!.Message, Does.Contain("an earlier flush failed"), "the failure stays sticky");
    }

    [Test]
    public async Task A_FUA_write_overlapping_a_failing_flush_fails_too()
    {
        using var fs = new Failfs(Bytes);
        using var dev = FileBlockDevice.Open(fs.Disk);
        await dev.WriteAsync(0, Pattern(64 << 10, 2), fua: false);
        fs.Fail(0, 4096, hold: true);

        var flush = OnThread(() => dev.FlushAsync());
        fs.WaitHeld(1, Wait);
        // A FUA write elsewhere (its own pages write back fine): its range sync checks the same error sequence.
        var fua = OnThread(() => dev.WriteAsync(1 << 20, Pattern(4096, 3), fua: true));
        await Task.Delay(300);
        Assert.That(fua.IsCompleted, Is.False, "the FUA write waits behind the flush in the kernel");
        fs.Release();

        Assert.ThrowsAsync<IOException>(async () => await flush);
        var e = Assert.ThrowsAsync<IOException>(async () => await fua,
            "a FUA write acknowledged after a writeback error it overlapped would be called durable");
        Assert.That(e!.Message, Does.Contain("RWF_DSYNC").Or.Contain("fdatasync"));
    }

    [Test]
    public async Task More_overlapping_flushes_than_descriptors_all_fail()
    {
        using var fs = new Failfs(Bytes);
        using var dev = FileBlockDevice.Open(fs.Disk);
        await dev.WriteAsync(0, Pattern(64 << 10, 4), fua: false);
        fs.Fail(8192, 4096, hold: true);

        var first = OnThread(() => dev.FlushAsync());
        fs.WaitHeld(1, Wait);
        var rest = Enumerable.Range(0, FileBlockDevice.FlushDescriptors + 3).Select(_ => OnThread(() => dev.FlushAsync())).ToArray();
        await Task.Delay(300);
        Assert.That(rest.Any(t => t.IsCompleted), Is.False);
        fs.Release();

        Assert.ThrowsAsync<IOException>(async () => await first);
        foreach (var t in rest)
            Assert.ThrowsAsync<IOException>(async () => await t, "every flush that overlapped the failed writeback fails");
    }
}
