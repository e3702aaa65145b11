namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// The allocator hands out a command's slots in ascending order and as a run of consecutive slots when the free pool
/// holds one near its top (so the command writes them with one request), and otherwise the most recently freed
/// slots as before; no slot is lost or handed out twice.
/// </summary>
public class SlotAllocatorTests
{
    private static SlotAllocator Pool(long slots, params long[] used)
    {
        var a = new SlotAllocator(slots);
        var map = new long[slots];
        for (int i = 0; i < used.Length; i++) map[i] = used[i] + 1;
        a.Rebuild(map);
        return a;
    }

    private static List<long> Take(SlotAllocator a, int n) => a.TryAllocate(n, out _, out _) ?? throw new AssertionException($"no {n} free slots");

    /// <summary>Takes everything left, one slot at a time (most recently freed first).</summary>
    private static List<long> Drain(SlotAllocator a)
    {
        var all = new List<long>();
        while (a.FreeCount > 0) all.Add(Take(a, 1)[0]);
        return all;
    }

    [Test]
    public void A_fresh_pool_hands_out_runs_from_the_lowest_slot()
    {
        var a = Pool(64);
        Assert.That(Take(a, 8), Is.EqualTo(new long[] { 0, 1, 2, 3, 4, 5, 6, 7 }));
        Assert.That(Take(a, 8), Is.EqualTo(new long[] { 8, 9, 10, 11, 12, 13, 14, 15 }));
    }

    [Test]
    public void A_run_freed_by_an_overwrite_comes_back_sorted_even_though_it_was_pushed_in_order()
    {
        var a = Pool(64);
        var first = Take(a, 8);
        Take(a, 8);
        foreach (var p in first) a.Release(p); // the committer releases an overwrite's old slots in chunk order
        Assert.That(Take(a, 8), Is.EqualTo(first));
    }

    [Test]
    public void A_run_below_scattered_slots_on_top_is_taken_and_the_scattered_ones_stay_on_top_in_their_order()
    {
        var a = Pool(64, [.. Enumerable.Range(0, 40).Select(i => (long)i)]); // free: 40..63
        var scattered = new long[] { 3, 11, 17, 25, 31 };
        foreach (var p in scattered) a.Release(p); // top: 31, 25, 17, 11, 3, then 40, 41, ...
        Assert.That(Take(a, 8), Is.EqualTo(new long[] { 40, 41, 42, 43, 44, 45, 46, 47 }));
        Assert.That(Drain(a), Is.EqualTo(new long[] { 31, 25, 17, 11, 3, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63 }));
    }

    [Test]
    public void The_run_nearest_the_top_wins()
    {
        var a = Pool(200, [.. Enumerable.Range(0, 200).Select(i => (long)i)]); // nothing free
        foreach (var p in new long[] { 100, 101, 102, 103, 5, 50, 51, 52, 53, 9 }) a.Release(p);
        // Top: 9, 53, 52, 51, 50, 5, 103, 102, 101, 100. Runs of 4: 50..53 (deepest at depth 4) and 100..103 (depth 9).
        Assert.That(Take(a, 4), Is.EqualTo(new long[] { 50, 51, 52, 53 }));
        Assert.That(Drain(a), Is.EqualTo(new long[] { 9, 5, 103, 102, 101, 100 }));
    }

    [Test]
    public void Without_a_run_in_reach_the_most_recently_freed_slots_are_handed_out_sorted_and_nothing_else_moves()
    {
        var a = Pool(400, [.. Enumerable.Range(0, 400).Select(i => (long)i)]);
        var evens = Enumerable.Range(0, 100).Select(i => 2L * i).ToArray();
        foreach (var p in evens) a.Release(p);
        a.Release(399); a.Release(398); a.Release(397); // a run of 3 on top
        Assert.That(Take(a, 3), Is.EqualTo(new long[] { 397, 398, 399 }));
        Assert.That(Take(a, 4), Is.EqualTo(new long[] { 192, 194, 196, 198 }), "the top four, sorted: the window holds evens only");
        Assert.That(Drain(a), Is.EqualTo(evens.Take(96).Reverse()));
    }
}
