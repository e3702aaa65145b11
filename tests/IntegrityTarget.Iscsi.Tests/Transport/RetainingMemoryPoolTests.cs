using IntegrityTarget.Transport;

namespace IntegrityTarget.Iscsi.Tests.Transport;

public class RetainingMemoryPoolTests
{
    [Test]
    public void Renting_and_returning_retained_blocks_allocates_nothing()
    {
        using var pool = new RetainingMemoryPool(blockSize: 4096, maxRetained: 64, trimInterval: Timeout.InfiniteTimeSpan);
        void Cycle(int n)
        {
            for (int i = 0; i < n; i++)
            {
                var a = pool.Rent(); var b = pool.Rent();
                a.Memory.Span[0] = 1; b.Memory.Span[0] = 2;
                b.Dispose(); a.Dispose();
            }
        }
        Cycle(100);
        long before = GC.GetAllocatedBytesForCurrentThread();
        Cycle(10_000);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.That(pool.Retained, Is.EqualTo(2));
        // A ConcurrentStack as the free list made a node per returned block.
        Assert.That(allocated, Is.LessThan(1024), $"{allocated} bytes for 20,000 rents and returns");
    }

    [Test]
    public void At_most_maxRetained_blocks_are_kept_and_a_trim_drops_those_unused_since_the_last_one()
    {
        using var pool = new RetainingMemoryPool(blockSize: 4096, maxRetained: 8, trimInterval: Timeout.InfiniteTimeSpan);
        var rented = Enumerable.Range(0, 12).Select(_ => pool.Rent()).ToList();
        foreach (var r in rented) r.Dispose();
        Assert.That(pool.Retained, Is.EqualTo(8));
        rented[0].Dispose(); // a second dispose returns nothing twice
        Assert.That(pool.Retained, Is.EqualTo(8));

        pool.Trim(); // everything was rented since the pool began: nothing to drop yet
        Assert.That(pool.Retained, Is.EqualTo(8));
        var busy = Enumerable.Range(0, 3).Select(_ => pool.Rent()).ToList();
        foreach (var r in busy) r.Dispose();
        pool.Trim(); // 5 blocks stayed unused through the interval
        Assert.That(pool.Retained, Is.EqualTo(3));
        pool.Trim(); // no rent at all since
        Assert.That(pool.Retained, Is.Zero);
    }
}
