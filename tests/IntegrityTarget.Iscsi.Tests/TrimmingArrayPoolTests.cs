using IntegrityTarget.Storage;

namespace IntegrityTarget.Iscsi.Tests;

public class TrimmingArrayPoolTests
{
    [Test]
    public void Returned_arrays_are_reused_by_power_of_two_size()
    {
        using var pool = new TrimmingArrayPool(1 << 20, 4, Timeout.InfiniteTimeSpan);
        var a = pool.Rent(3000);
        Assert.That(a.Length, Is.EqualTo(4096));
        pool.Return(a);
        Assert.That(pool.RetainedBytes, Is.EqualTo(4096));
        Assert.That(pool.Rent(4096), Is.SameAs(a));
        Assert.That(pool.RetainedBytes, Is.Zero);
        Assert.That(pool.Rent(2 << 20).Length, Is.EqualTo(2 << 20), "larger than the pooled maximum: a fresh array");
    }

    [Test]
    public void At_most_maxPerSize_arrays_are_kept()
    {
        using var pool = new TrimmingArrayPool(1 << 20, 2, Timeout.InfiniteTimeSpan);
        var arrays = Enumerable.Range(0, 5).Select(_ => pool.Rent(65536)).ToList();
        foreach (var a in arrays) pool.Return(a);
        Assert.That(pool.RetainedBytes, Is.EqualTo(2 * 65536));
    }

    [Test]
    public void Arrays_unused_through_a_whole_interval_are_dropped_and_busy_ones_kept()
    {
        using var pool = new TrimmingArrayPool(1 << 20, 8, Timeout.InfiniteTimeSpan);
        var burst = Enumerable.Range(0, 6).Select(_ => pool.Rent(1 << 20)).ToList();
        foreach (var a in burst) pool.Return(a);
        pool.Trim(); // the interval saw the pool empty: nothing was idle all along
        Assert.That(pool.RetainedBytes, Is.EqualTo(6L << 20));
        var busy = pool.Rent(1 << 20); // two stay in use this interval ...
        var busy2 = pool.Rent(1 << 20);
        pool.Return(busy); pool.Return(busy2);
        pool.Trim(); // ... the four below the low-water mark were not needed
        Assert.That(pool.RetainedBytes, Is.EqualTo(2L << 20));
        pool.Trim(); // an idle interval: all go
        Assert.That(pool.RetainedBytes, Is.Zero);
    }

    [Test]
    public void The_timer_trims_an_idle_pool()
    {
        using var pool = new TrimmingArrayPool(1 << 20, 8, TimeSpan.FromMilliseconds(50));
        pool.Return(pool.Rent(4096));
        Assert.That(() => pool.RetainedBytes, Is.Zero.After(5000, 20));
    }
}
