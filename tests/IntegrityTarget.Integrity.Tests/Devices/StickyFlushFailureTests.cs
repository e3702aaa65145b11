using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Devices;

/// <summary>Linux reports a writeback error to fdatasync once per open file, so a flush after a failed one may
/// succeed although data written before it never reached the disk. The file device therefore fails every flush
/// after the first failure. /dev/null is a real file whose fdatasync always fails (EINVAL): the first flush reports
/// the system's error, the second must not try again and pass for durable, but name the earlier failure.</summary>
public class StickyFlushFailureTests
{
    [Test]
    public void After_one_failed_flush_every_later_flush_fails_and_names_the_first_failure()
    {
        using var dev = FileBlockDevice.Open("/dev/null");
        var first = Assert.ThrowsAsync<IOException>(async () => await dev.FlushAsync());
        Assert.That(first!.Message, Does.Contain("fdatasync"));
        Assert.That(first.Message, Does.Not.Contain("earlier flush failed"));

        var second = Assert.ThrowsAsync<IOException>(async () => await dev.FlushAsync());
        Assert.That(second!.Message, Does.Contain("an earlier flush failed"));
        Assert.That(second.InnerException, Is.SameAs(first), "the first failure is kept and named");
    }
}
