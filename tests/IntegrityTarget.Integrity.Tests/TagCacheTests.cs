namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// The tag cache on its own: probes take no lock, so a probe that overlaps a change (a home copy's new tags, an
/// eviction that reuses the entry for another slot, a drop) must miss rather than return a mix of two versions
/// or another slot's tags; eviction gives a hit entry a second chance; the slot index grows with the slots.
/// </summary>
public class TagCacheTests
{
    private const int EntryBytes = 64;

    private static byte[] Tags(long slot, int version)
    {
        // The slot in the first 8 bytes, then a run that starts at the version: a copy that mixes two versions
        // breaks the run, one of another slot's tags names that slot.
        var t = new byte[EntryBytes];
        BitConverter.TryWriteBytes(t, slot);
        for (int i = 8; i < t.Length; i++) t[i] = (byte)(version + i);
        return t;
    }

    [Test]
    public void Put_probe_invalidate_and_counts()
    {
        var c = new TagCache(EntryBytes, 4 * EntryBytes);
        var dest = new byte[16];
        Assert.That(c.TryCopy(5, 0, dest), Is.False);
        c.Put(5, Tags(5, 1));
        Assert.That(c.TryCopy(5, 16, dest), Is.True);
        Assert.That(dest, Is.EqualTo(Tags(5, 1)[16..32]));
        c.Put(5, Tags(5, 2));
        Assert.That(c.TryCopy(5, 0, dest), Is.True);
        Assert.That(dest, Is.EqualTo(Tags(5, 2)[..16]), "a put replaces the slot's tags");
        c.Invalidate(5);
        Assert.That(c.TryCopy(5, 0, dest), Is.False);
        Assert.That((c.Hits, c.Misses, c.Count), Is.EqualTo((2L, 2L, 0)));
        c.AddFromDevice(6, Tags(6, 1), () => false);
        Assert.That(c.TryCopy(6, 0, dest), Is.False, "tags a home copy may have changed meanwhile are not added");
        Assert.Throws<ArgumentException>(() => c.Put(7, new byte[EntryBytes - 1]));
    }

    [Test]
    public void A_full_cache_evicts_an_entry_not_hit_since_the_hand_last_passed()
    {
        var c = new TagCache(EntryBytes, 3 * EntryBytes);
        var dest = new byte[EntryBytes];
        for (long s = 0; s < 3; s++) c.Put(s, Tags(s, 1));
        c.Put(3, Tags(3, 1)); // all marked: the hand clears every mark, then takes the first (slot 0)
        Assert.That(c.TryCopy(0, 0, dest), Is.False);
        Assert.That(c.TryCopy(1, 0, dest), Is.True); // slot 1 hit: marked again
        c.Put(4, Tags(4, 1)); // passes slot 1, takes slot 2
        Assert.That((c.TryCopy(1, 0, dest), c.TryCopy(2, 0, dest), c.TryCopy(3, 0, dest), c.TryCopy(4, 0, dest)), Is.EqualTo((true, false, true, true)));
        Assert.That(dest, Is.EqualTo(Tags(4, 1)));
        Assert.That(c.Count, Is.EqualTo(3));
    }

    [Test]
    public void Slots_far_apart_and_a_disabled_cache()
    {
        var c = new TagCache(EntryBytes, 1 << 20);
        var dest = new byte[EntryBytes];
        foreach (long s in new long[] { 0, 4095, 4096, 1L << 26 })
        {
            c.Put(s, Tags(s, 3));
            Assert.That(c.TryCopy(s, 0, dest), Is.True, $"slot {s}");
            Assert.That(dest, Is.EqualTo(Tags(s, 3)));
        }
        Assert.That(c.TryCopy(4097, 0, dest), Is.False);
        c.Invalidate(1L << 30); // never cached, beyond the index: nothing to do
        var off = new TagCache(EntryBytes, 0);
        off.Put(1, Tags(1, 1));
        Assert.That((off.Enabled, off.TryCopy(1, 0, dest), off.Count), Is.EqualTo((false, false, 0)));
    }

    [Test]
    public async Task Probes_racing_puts_evictions_and_drops_get_one_version_of_the_right_slot_or_miss()
    {
        // 8 entries for 32 slots: constant eviction, so entries are reused for other slots under the probes.
        var c = new TagCache(EntryBytes, 8 * EntryBytes);
        var stop = DateTime.UtcNow.AddSeconds(2);
        long hits = 0, bad = 0;
        var writer = Task.Run(() =>
        {
            var rnd = new Random(1);
            for (int v = 1; DateTime.UtcNow < stop; v++)
            {
                long s = rnd.Next(32);
                if (v % 5 == 0) c.Invalidate(s); else c.Put(s, Tags(s, v));
            }
        });
        var readers = Enumerable.Range(0, 2).Select(r => Task.Run(() =>
        {
            var rnd = new Random(10 + r);
            var dest = new byte[EntryBytes];
            while (DateTime.UtcNow < stop)
            {
                long s = rnd.Next(32);
                if (!c.TryCopy(s, 0, dest)) continue;
                Interlocked.Increment(ref hits);
                bool torn = BitConverter.ToInt64(dest) != s;
                for (int i = 9; i < EntryBytes; i++) torn |= dest[i] != (byte)(dest[8] + i - 8);
                if (torn) Interlocked.Increment(ref bad);
            }
        })).ToArray();
        await Task.WhenAll(readers.Append(writer));
        Assert.That(bad, Is.Zero, $"torn or foreign tags among {hits} hits");
        Assert.That(hits, Is.GreaterThan(100));
    }
}
