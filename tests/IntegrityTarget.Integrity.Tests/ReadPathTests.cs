using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// Reads: the tag cache (one device read per small read once a slot's tags are known; damaged data still found
/// on every read; tag damage on the device found by scrub, and by reads once the cache no longer vouches for
/// those tags; home copies through cached tags write what a volume without the cache reads back), and a device
/// error narrowed to the block that really fails.
/// </summary>
public class ReadPathTests
{
    private const int Bs = 512;
    private const ulong Blocks = 8192; // 4 MiB: 32 chunks of 256 blocks
    private static readonly IoContext Ctx = new("lun0", "iqn.2026-11.test:init", "READ(10)");

    /// <summary>Counts reads; fails those that touch a byte range (a bad sector).</summary>
    private sealed class ProbeDevice(MemoryBlockDevice inner) : ForwardingDevice(inner)
    {
        public long Reads;
        public (long From, long To)? Bad;
        public override ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
        {
            Interlocked.Increment(ref Reads);
            if (Bad is { } b && offset < b.To && b.From < offset + buffer.Length)
                throw new IOException($"{Name}: read at {offset}+{buffer.Length}: Input/output error");
            return base.ReadAsync(offset, buffer, ct);
        }
    }

    /// <summary>Runs <see cref="Once"/> after the next device read (e.g. another read that evicts a cache entry).</summary>
    private sealed class HookDevice(MemoryBlockDevice inner) : ForwardingDevice(inner)
    {
        public Func<Task>? Once;
        public long Reads;
        public override async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
        {
            Interlocked.Increment(ref Reads);
            await base.ReadAsync(offset, buffer, ct);
            if (Interlocked.Exchange(ref Once, null) is { } f) await f();
        }
    }

    /// <summary>A volume filled with pattern 1 and closed (its journal applied), then opened again through a
    /// <see cref="ProbeDevice"/> with an empty cache of <paramref name="tagCacheBytes"/>.</summary>
    private static Task<(ProbeDevice Dev, MemoryBlockDevice Mem, IntegrityVolume V, CapturingSink Sink)> Filled(long tagCacheBytes = 1 << 20) =>
        T.FilledThrough(Blocks, Bs, tagCacheBytes, m => new ProbeDevice(m));

    [Test]
    public async Task A_small_read_costs_one_device_read_once_its_slots_tags_are_cached()
    {
        var (dev, mem, v, _) = await Filled();
        await using var _v = v;
        using var _m = mem;
        long r0 = dev.Reads;
        Assert.That(await T.ReadOk(v, 300, 8), Is.EqualTo(T.Pattern(300, 8, Bs, 1)));
        Assert.That(dev.Reads - r0, Is.EqualTo(2), "a miss: the data and all of the slot's tags, read together");
        r0 = dev.Reads;
        for (ulong l = 256; l < 500; l += 9) Assert.That(await T.ReadOk(v, l, 4), Is.EqualTo(T.Pattern(l, 4, Bs, 1)));
        Assert.That(dev.Reads - r0, Is.EqualTo(28), "then one device read each: the data");
        var rnd = new Random(1);
        for (int i = 0; i < 300; i++) { ulong l = (ulong)rnd.Next((int)Blocks - 8); Assert.That(await T.ReadOk(v, l, 8), Is.EqualTo(T.Pattern(l, 8, Bs, 1))); }
        var (hits, misses, slots) = v.TagCacheStats!.Value;
        Assert.That(slots, Is.EqualTo(32), "every slot read has its tags cached");
        Assert.That(misses, Is.LessThanOrEqualTo(32), "at most one miss per slot");
        Assert.That(hits, Is.GreaterThan(250));
    }

    [Test]
    public async Task A_partial_chunk_read_with_more_tags_than_a_small_read_is_verified_against_cached_tags_too()
    {
        // 200 blocks of crc32c are 800 bytes of tags: more than a small read keeps in its own frame (256), so
        // they are copied into a rented buffer; the cost and the checks are the same.
        var (dev, mem, v, _) = await Filled();
        await using var _v = v;
        using var _m = mem;
        Assert.That(await T.ReadOk(v, 522, 200), Is.EqualTo(T.Pattern(522, 200, Bs, 1)));
        long r0 = dev.Reads;
        Assert.That(await T.ReadOk(v, 530, 200), Is.EqualTo(T.Pattern(530, 200, Bs, 1)));
        Assert.That(dev.Reads - r0, Is.EqualTo(1), "the data only");
        T.Flip(mem, v.LocateBlock(700)!.Value.DataOffset + 3);
        var r = await v.ReadAsync(530, new byte[200 * Bs], Ctx);
        Assert.That((r.Status, r.Lba), Is.EqualTo((VolumeStatus.IntegrityError, 700UL)));
    }

    [Test]
    public async Task A_slot_evicted_while_its_data_is_read_is_verified_against_the_tags_on_the_device()
    {
        // Room for one slot's tags (256 blocks x 4 bytes): a read of another chunk, made while a cached read's
        // data is being read, evicts the entry the first read found.
        var (dev, mem, v, _) = await T.FilledThrough(Blocks, Bs, 1024, m => new HookDevice(m));
        await using var _v = v;
        using var _m = mem;
        await T.ReadOk(v, 300, 8); // chunk 1's slot cached
        dev.Once = async () => Assert.That(await T.ReadOk(v, 1000, 8), Is.EqualTo(T.Pattern(1000, 8, Bs, 1)));
        long r0 = dev.Reads;
        Assert.That(await T.ReadOk(v, 310, 8), Is.EqualTo(T.Pattern(310, 8, Bs, 1)));
        Assert.That(dev.Reads - r0, Is.EqualTo(4), "its data, the other read's data and tags, then its own tags");

        await T.ReadOk(v, 300, 8); // cached again
        T.Flip(mem, v.LocateBlock(312)!.Value.DataOffset + 1);
        dev.Once = async () => await T.ReadOk(v, 1300, 8);
        var r = await v.ReadAsync(310, new byte[8 * Bs], Ctx);
        Assert.That((r.Status, r.Lba), Is.EqualTo((VolumeStatus.IntegrityError, 312UL)));
    }

    [Test]
    public async Task Writes_put_their_tags_in_the_cache_so_reading_them_back_reads_no_tags()
    {
        var (dev, mem, v, _) = await Filled();
        await using var _v = v;
        using var _m = mem;
        await T.WriteOk(v, 512, T.Pattern(512, 256, Bs, 2)); // a whole chunk: redirect-on-write
        await T.WriteOk(v, 1030, T.Pattern(1030, 3, Bs, 2)); // journaled into chunk 4, copied home at the flush
        Assert.That((await v.FlushAsync()).IsOk);
        long r0 = dev.Reads;
        Assert.That(await T.ReadOk(v, 600, 2), Is.EqualTo(T.Pattern(600, 2, Bs, 2)));
        Assert.That(await T.ReadOk(v, 1029, 5), Is.EqualTo([.. T.Pattern(1029, 1, Bs, 1), .. T.Pattern(1030, 3, Bs, 2), .. T.Pattern(1033, 1, Bs, 1)]));
        Assert.That(dev.Reads - r0, Is.EqualTo(2), "the data only: the tags are the ones the volume just wrote");
    }

    [Test]
    public async Task Damaged_data_is_found_on_every_read_and_damaged_cached_tags_by_scrub_and_then_by_reads()
    {
        var (_, mem, v, sink) = await Filled();
        await using var _v = v;
        using var _m = mem;
        for (ulong l = 0; l < Blocks; l += 200) await T.ReadOk(v, l, 8); // every slot's tags cached
        ulong dataLba = 1000, tagLba = 3000;
        T.Flip(mem, v.LocateBlock(dataLba)!.Value.DataOffset + 17);
        T.Flip(mem, v.LocateBlock(tagLba)!.Value.TagOffset, 3);

        var r = await v.ReadAsync(dataLba - 2, new byte[4 * Bs], Ctx);
        Assert.That((r.Status, r.Lba, r.GoodBlocks), Is.EqualTo((VolumeStatus.IntegrityError, dataLba, 2UL)), "damaged data fails against the cached tag");
        var ok = new byte[Bs];
        Assert.That((await v.ReadAsync(tagLba, ok, Ctx)).IsOk, Is.True, "its data is intact and matches the tag the volume wrote");
        Assert.That(ok, Is.EqualTo(T.Pattern(tagLba, 1, Bs, 1)));

        var scrub = await v.ScrubAsync(new ScrubOptions { Context = Ctx });
        Assert.That(scrub.BadLbas, Is.EqualTo(new[] { dataLba, tagLba }), "scrub reads tags from the device: both found, nothing else");
        var t = await v.ReadAsync(tagLba, new byte[Bs], Ctx);
        Assert.That((t.Status, t.Lba), Is.EqualTo((VolumeStatus.IntegrityError, tagLba)), "once a mismatch was seen there, reads use the device's tags again");
        Assert.That(sink.Failures.Where(e => e.Level == Serilog.Events.LogEventLevel.Error).Select(CapturingSink.LbaOf), Is.EqualTo(new[] { dataLba, tagLba }), "one Error per distinct LBA");
    }

    [Test]
    public async Task Without_the_cache_every_read_reads_its_tags_and_sees_tag_damage_at_once()
    {
        var (dev, mem, v, _) = await Filled(tagCacheBytes: 0);
        await using var _v = v;
        using var _m = mem;
        Assert.That(v.TagCacheStats, Is.Null);
        await T.ReadOk(v, 70, 1);
        long r0 = dev.Reads;
        await T.ReadOk(v, 71, 1);
        Assert.That(dev.Reads - r0, Is.EqualTo(2));
        T.Flip(mem, v.LocateBlock(70)!.Value.TagOffset, 2);
        var r = await v.ReadAsync(70, new byte[Bs], Ctx);
        Assert.That((r.Status, r.Lba), Is.EqualTo((VolumeStatus.IntegrityError, 70UL)));
    }

    [TestCase(1 << 20)]
    [TestCase(3 * 1024)] // room for 3 slots' tags: constant eviction
    public async Task Home_copies_through_cached_tags_write_what_a_volume_without_the_cache_reads_back(long cacheBytes)
    {
        var (dev, mem, v, sink) = await Filled(cacheBytes);
        using var _m = mem;
        var model = T.Pattern(0, (int)Blocks, Bs, 1);
        var rnd = new Random((int)cacheBytes);
        for (int i = 0; i < 400; i++)
        {
            int op = rnd.Next(10);
            ulong lba = (ulong)rnd.Next((int)Blocks - 300);
            if (op < 8)
            {
                int n = op < 6 ? rnd.Next(1, 9) : rnd.Next(1, 300);
                var data = T.Pattern(lba, n, Bs, 100 + i);
                await T.WriteOk(v, lba, data, fua: rnd.Next(8) == 0);
                data.CopyTo(model, (int)lba * Bs);
            }
            else if (op == 8)
            {
                int n = rnd.Next(1, 300);
                Assert.That((await v.UnmapAsync(lba, (ulong)n)).IsOk, Is.True);
                Array.Clear(model, (int)lba * Bs, n * Bs);
            }
            else Assert.That((await v.FlushAsync()).IsOk, Is.True);
            if (rnd.Next(3) == 0)
            {
                ulong rl = (ulong)rnd.Next((int)Blocks - 16);
                Assert.That(await T.ReadOk(v, rl, 16), Is.EqualTo(model.AsSpan((int)rl * Bs, 16 * Bs).ToArray()), $"step {i}: read at {rl}");
            }
        }
        await v.DisposeAsync();
        Assert.That(sink.Failures, Is.Empty, "no read ever failed verification");

        await using var plain = await IntegrityVolume.OpenAsync(dev, new OpenOptions { TagCacheBytes = 0 }, sink.Logger());
        Assert.That(await T.ReadOk(plain, 0, (int)Blocks), Is.EqualTo(model), "every block on the device verifies against its tags on the device");
        Assert.That((await plain.ScrubAsync(new ScrubOptions())).Mismatches, Is.EqualTo(0));
    }

    [TestCase(337UL, false)]
    [TestCase(256UL, false)]
    [TestCase(300UL, true)]
    public async Task A_device_error_names_the_first_block_that_really_fails_and_returns_the_good_ones_before_it(ulong badLba, bool inTags)
    {
        var (dev, mem, v, _) = await Filled(tagCacheBytes: 0);
        await using var _v = v;
        using var _m = mem;
        var at = v.LocateBlock(badLba)!.Value;
        dev.Bad = inTags ? (at.TagOffset, at.TagOffset + at.TagSize) : (at.DataOffset + 100, at.DataOffset + 101);
        var buf = new byte[200 * Bs];
        var r = await v.ReadAsync(250, buf, Ctx);
        // A bad tag sector fails every block whose tag is in it (128 crc32c tags per 512-byte sector): the first of them fails first.
        ulong first = inTags ? Math.Max(250, badLba / 128 * 128) : badLba;
        Assert.That((r.Status, r.Lba, r.GoodBlocks), Is.EqualTo((VolumeStatus.IoError, first, first - 250)), r.ToString());
        Assert.That(buf.AsSpan(0, (int)(first - 250) * Bs).ToArray(), Is.EqualTo(T.Pattern(250, (int)(first - 250), Bs, 1)), "the good blocks before it are there");
        Assert.That(r.Detail, Does.Contain("Input/output error"));
    }
}
