using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// Large reads over chunks whose slots lie back to back on the device (a span) are one scatter read (data, tags,
/// data, tags...), with the results of reading piece by piece: the first bad block named with the good blocks
/// before it and logged once, a device error narrowed to the exact block, overlay blocks shown, a read that raced
/// home copies read again, a span broken by a remapped chunk read as smaller spans and pieces.
/// </summary>
public class SpanReadTests
{
    private const ulong Chunks = 64;
    private static readonly IoContext Ctx = new("lun0", "iqn.2026-12.test:init", "READ(16)");

    /// <summary>Counts plain and scatter reads; fails reads that touch a byte range; can hold a scatter read, after it
    /// has fetched its bytes, until the test lets it go on.</summary>
    private sealed class SpanProbe(MemoryBlockDevice inner) : ForwardingDevice(inner), IBlockDevice
    {
        public int Reads, InFlight;
        public readonly List<(long Offset, int Parts, long Bytes)> Scatters = new();
        public (long From, long To)? Bad;
        /// <summary>Awaited by the next scatter read once its bytes are in the caller's parts (then cleared).</summary>
        public Task? Hold;
        public TaskCompletionSource? Holding;
        /// <summary>Every scatter read waits this long (cancellable).</summary>
        public TimeSpan ScatterDelay;

        public override async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
        {
            Interlocked.Increment(ref Reads);
            Fail(offset, buffer.Length);
            await base.ReadAsync(offset, buffer, ct);
        }

        public async ValueTask ReadScatterAsync(long offset, IReadOnlyList<Memory<byte>> parts, CancellationToken ct = default)
        {
            Interlocked.Increment(ref InFlight);
            try
            {
                long total = parts.Sum(p => (long)p.Length);
                lock (Scatters) Scatters.Add((offset, parts.Count, total));
                if (ScatterDelay > TimeSpan.Zero) await Task.Delay(ScatterDelay, ct);
                Fail(offset, total);
                long at = offset;
                foreach (var p in parts) { await Inner.ReadAsync(at, p, ct); at += p.Length; }
                if (Interlocked.Exchange(ref Hold, null) is { } hold) { Holding!.TrySetResult(); await hold; }
            }
            finally { Interlocked.Decrement(ref InFlight); }
        }

        private void Fail(long offset, long length)
        {
            if (Bad is { } b && offset < b.To && b.From < offset + length)
                throw new IOException($"{Name}: read at {offset}+{length}: Input/output error");
        }
    }

    private static async Task<(SpanProbe Dev, MemoryBlockDevice Mem, IntegrityVolume V, CapturingSink Sink)> Filled(int bs, long tagCacheBytes = 1 << 20)
    {
        var f = await T.FilledThrough(Chunks * (ulong)(128 * 1024 / bs), bs, tagCacheBytes, m => new SpanProbe(m));
        f.Dev.Scatters.Clear();
        f.Dev.Reads = 0;
        return f;
    }

    /// <summary>A volume filled with pattern 1, opened with journaled blocks kept in the overlay until a flush.</summary>
    private static async Task<(SpanProbe Dev, MemoryBlockDevice Mem, IntegrityVolume V, CapturingSink Sink)> KeepingOverlay(int bs)
    {
        var (dev, mem, v, sink) = await Filled(bs);
        await v.DisposeAsync();
        var v2 = await IntegrityVolume.OpenAsync(dev, new OpenOptions { IdleHomeMs = Timeout.Infinite }, sink.Logger());
        dev.Scatters.Clear();
        dev.Reads = 0;
        return (dev, mem, v2, sink);
    }

    private static int Bpc(IntegrityVolume v) => v.ChunkBytes / v.BlockSize;

    /// <summary>A read of 512-byte blocks of pattern 1 from <paramref name="start"/> failed at <paramref name="at"/>,
    /// with the good blocks before it in <paramref name="buf"/>.</summary>
    private static void FailedAt(VolumeResult r, byte[] buf, VolumeStatus status, ulong start, ulong at)
    {
        Assert.That((r.Status, r.Lba, r.GoodBlocks), Is.EqualTo((status, at, at - start)), r.ToString());
        Assert.That(buf.AsSpan(0, (int)(at - start) * 512).ToArray(), Is.EqualTo(T.Pattern(start, (int)(at - start), 512, 1)), "the good blocks before it are in the buffer");
    }

    [TestCase(512, 1 << 20)]
    [TestCase(512, 0)]
    [TestCase(4096, 1 << 20)]
    public async Task A_1M_read_of_chunks_in_consecutive_slots_is_one_scatter_read(int bs, long cache)
    {
        var (dev, mem, v, _) = await Filled(bs, cache);
        await using var _v = v;
        using var _m = mem;
        int bpc = Bpc(v), n = (1 << 20) / bs;
        ulong lba = 8 * (ulong)bpc;
        Assert.That(await T.ReadOk(v, lba, n), Is.EqualTo(T.Pattern(lba, n, bs, 1)));
        Assert.That(dev.Scatters, Has.Count.EqualTo(1), "eight chunks, one device read");
        Assert.That((dev.Scatters[0].Offset, dev.Scatters[0].Parts), Is.EqualTo((v.LocateBlock(lba)!.Value.DataOffset, 16)), "data and tags of each chunk, from the first slot");
        Assert.That(dev.Reads, Is.Zero);
        Assert.That(v.TagCacheStats?.Slots ?? 0, Is.Zero, "a large read leaves the tag cache to small reads");

        // Not aligned: the partial first and last pieces are read on their own, the whole chunks between them as one span.
        dev.Scatters.Clear();
        lba = 16 * (ulong)bpc + 5;
        Assert.That(await T.ReadOk(v, lba, n), Is.EqualTo(T.Pattern(lba, n, bs, 1)));
        Assert.That(dev.Scatters.Select(s => s.Parts), Is.EqualTo(new[] { 14 }), "the seven whole chunks");
    }

    [TestCase(0, false)]
    [TestCase(3, false)]
    [TestCase(7, false)]
    [TestCase(0, true)]
    [TestCase(3, true)]
    [TestCase(7, true)]
    public async Task A_bad_block_in_the_first_middle_or_last_chunk_of_a_span_is_named_once_with_the_good_blocks_before_it(int chunk, bool inTag)
    {
        var (dev, mem, v, sink) = await Filled(512);
        await using var _v = v;
        using var _m = mem;
        int bpc = Bpc(v), n = 8 * bpc;
        ulong start = 24 * (ulong)bpc, bad = start + (ulong)(chunk * bpc + 77);
        var at = v.LocateBlock(bad)!.Value;
        if (inTag) T.Flip(mem, at.TagOffset + 1, 2); else T.Flip(mem, at.DataOffset + 300, 5);
        if (chunk < 7) T.Flip(mem, v.LocateBlock(start + (ulong)(7 * bpc + 3))!.Value.DataOffset + 9); // a later one too
        var buf = new byte[n * 512];
        var r = await v.ReadAsync(start, buf, Ctx);
        FailedAt(r, buf, VolumeStatus.IntegrityError, start, bad);
        Assert.That(dev.Scatters, Has.Count.EqualTo(1), "one span read; the failing piece was then re-read from its bad block with plain reads");
        Assert.That(dev.Reads, Is.GreaterThan(0));
        Assert.That(sink.Failures.Select(CapturingSink.LbaOf), Is.EqualTo(new[] { bad }), "one event, for the failure the command reports");
        Assert.That(v.Counters.Mismatches, Is.EqualTo(1));
        Assert.That(dev.InFlight, Is.Zero);
    }

    [Test]
    public async Task A_span_broken_by_remapped_chunks_is_read_as_smaller_spans_and_pieces_in_any_slot_order()
    {
        var (dev, mem, v, _) = await Filled(4096);
        await using var _v = v;
        using var _m = mem;
        int bpc = Bpc(v), n = 8 * bpc;
        ulong a = 8 * (ulong)bpc, b = 16 * (ulong)bpc;
        await T.WriteOk(v, a + 3 * (ulong)bpc, T.Pattern(a + 3 * (ulong)bpc, bpc, 4096, 2)); // chunk 3 of the first MiB: a slot elsewhere
        for (int k = 7; k >= 4; k--) await T.WriteOk(v, b + (ulong)(k * bpc), T.Pattern(b + (ulong)(k * bpc), bpc, 4096, 3)); // back to back, in reverse
        Assert.That((await v.FlushAsync()).IsOk);
        Assert.That(v.LocateBlock(b + 4 * (ulong)bpc)!.Value.DataOffset, Is.GreaterThan(v.LocateBlock(b + 7 * (ulong)bpc)!.Value.DataOffset), "chunk 7 got the lower slot");
        dev.Scatters.Clear();

        byte[] wantA = [.. T.Pattern(a, 3 * bpc, 4096, 1), .. T.Pattern(a + 3 * (ulong)bpc, bpc, 4096, 2), .. T.Pattern(a + 4 * (ulong)bpc, 4 * bpc, 4096, 1)];
        Assert.That(await T.ReadOk(v, a, n), Is.EqualTo(wantA));
        Assert.That(dev.Scatters.Select(s => s.Parts).Order(), Is.EqualTo(new[] { 2, 6, 8 }), "chunks 0-2 and 4-7 as spans, chunk 3 on its own");

        dev.Scatters.Clear();
        Assert.That(await T.ReadOk(v, b, n), Is.EqualTo([.. T.Pattern(b, 4 * bpc, 4096, 1), .. T.Pattern(b + 4 * (ulong)bpc, 4 * bpc, 4096, 3)]));
        Assert.That(dev.Scatters.Select(s => s.Parts).Order(), Is.EqualTo(new[] { 8, 8 }), "chunks 4-7, in reverse slot order, are still one span");
        Assert.That(dev.Scatters.Select(s => s.Offset), Does.Contain(v.LocateBlock(b + 7 * (ulong)bpc)!.Value.DataOffset), "from chunk 7's slot");
    }

    [TestCase(5, false)]
    [TestCase(2, true)]
    [TestCase(7, false)]
    public async Task A_device_error_inside_a_span_is_narrowed_to_the_block_that_really_fails(int chunk, bool inTags)
    {
        var (dev, mem, v, _) = await Filled(512, tagCacheBytes: 0);
        await using var _v = v;
        using var _m = mem;
        int bpc = Bpc(v), n = 8 * bpc;
        ulong start = 32 * (ulong)bpc, badLba = start + (ulong)(chunk * bpc + 140);
        var at = v.LocateBlock(badLba)!.Value;
        dev.Bad = inTags ? (at.TagOffset, at.TagOffset + at.TagSize) : (at.DataOffset + 100, at.DataOffset + 101);
        var buf = new byte[n * 512];
        var r = await v.ReadAsync(start, buf, Ctx);
        // A bad tag sector fails every block whose tag is in it (128 crc32c tags per 512-byte sector): the first of them fails first.
        ulong first = inTags ? badLba / 128 * 128 : badLba;
        FailedAt(r, buf, VolumeStatus.IoError, start, first);
        Assert.That(r.Detail, Does.Contain("Input/output error"));
        Assert.That(dev.InFlight, Is.Zero);
    }

    [Test]
    public async Task Overlay_blocks_inside_a_span_are_returned_instead_of_their_older_home_copies()
    {
        var (dev, mem, v, sink) = await KeepingOverlay(512);
        await using var _v = v;
        using var _m = mem;
        int bpc = Bpc(v), n = 8 * bpc;
        ulong start = 40 * (ulong)bpc, w1 = start + 2 * (ulong)bpc + 10, w2 = start + 6 * (ulong)bpc + 255;
        await T.WriteOk(v, w1, T.Pattern(w1, 3, 512, 2));
        await T.WriteOk(v, w2, T.Pattern(w2, 1, 512, 2));
        T.Flip(mem, v.LocateBlock(w1 + 1)!.Value.DataOffset + 40); // the old home copy of an overlaid block: never looked at
        dev.Scatters.Clear();
        var want = T.Pattern(start, n, 512, 1);
        T.Pattern(w1, 3, 512, 2).CopyTo(want, (int)(w1 - start) * 512);
        T.Pattern(w2, 1, 512, 2).CopyTo(want, (int)(w2 - start) * 512);
        Assert.That(await T.ReadOk(v, start, n), Is.EqualTo(want));
        Assert.That(dev.Scatters, Has.Count.EqualTo(1));
        Assert.That((await v.FlushAsync()).IsOk); // home now
        Assert.That(await T.ReadOk(v, start, n), Is.EqualTo(want));
        Assert.That(sink.Failures, Is.Empty);
    }

    [Test]
    public async Task A_span_read_that_raced_home_copies_is_read_again_and_returns_the_new_blocks()
    {
        var (dev, mem, v, sink) = await KeepingOverlay(512);
        await using var _v = v;
        using var _m = mem;
        int bpc = Bpc(v), n = 8 * bpc;
        ulong start = 48 * (ulong)bpc, w = start + 4 * (ulong)bpc + 20;
        await T.WriteOk(v, w, T.Pattern(w, 5, 512, 2)); // in the overlay until the flush below copies it home
        var want = T.Pattern(start, n, 512, 1);
        T.Pattern(w, 5, 512, 2).CopyTo(want, (int)(w - start) * 512);

        // The span read fetches the old home blocks, then (held here) the home copy lands and the overlay entries go.
        var release = new TaskCompletionSource();
        dev.Holding = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        dev.Hold = release.Task;
        dev.Scatters.Clear();
        var buf = new byte[n * 512];
        var read = v.ReadAsync(start, buf, Ctx).AsTask();
        await dev.Holding.Task.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.That((await v.FlushAsync()).IsOk, "the durable point does not wait for the read");
        var home = v.LocateBlock(w)!.Value.DataOffset;
        var seen = new byte[512];
        for (int i = 0; i < 3000 && !seen.AsSpan().SequenceEqual(T.Pattern(w, 1, 512, 2)); i++) { await Task.Delay(10); await mem.ReadAsync(home, seen); }
        Assert.That(seen, Is.EqualTo(T.Pattern(w, 1, 512, 2)), "the home copy landed while the span read was held");
        Assert.That(await T.ReadOk(v, w, 1), Is.EqualTo(T.Pattern(w, 1, 512, 2))); // returns once the home-copy batch is over
        release.SetResult();
        var r = await read.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.That(r.IsOk, r.ToString());
        Assert.That(buf, Is.EqualTo(want), "the new blocks, not the home copies read before they were rewritten");
        Assert.That(dev.Scatters, Has.Count.EqualTo(2), "the span was read again");
        Assert.That(sink.Failures, Is.Empty);
    }

    [Test]
    public async Task A_cancelled_span_read_ends_with_nothing_still_reading_into_the_buffer()
    {
        var (dev, mem, v, _) = await Filled(512);
        await using var _v = v;
        using var _m = mem;
        int bpc = Bpc(v);
        dev.ScatterDelay = TimeSpan.FromSeconds(30);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
        // 8 whole chunks and a partial one: the span and the piece are in flight together.
        var read = v.ReadAsync(8 * (ulong)bpc, new byte[(8 * bpc + 10) * 512], Ctx, cts.Token).AsTask();
        Assert.CatchAsync<OperationCanceledException>(async () => await read.WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.That(dev.InFlight, Is.Zero);
        dev.ScatterDelay = TimeSpan.Zero;
        Assert.That(await T.ReadOk(v, 8 * (ulong)bpc, 8 * bpc), Is.EqualTo(T.Pattern(8 * (ulong)bpc, 8 * bpc, 512, 1)), "the range lock was released");
    }

    [Test]
    public async Task Large_reads_and_scrub_leave_the_tag_cache_to_the_small_reads_working_set()
    {
        var (dev, mem, v, _) = await Filled(512, tagCacheBytes: 3 * 1024); // room for three slots' tags
        await using var _v = v;
        using var _m = mem;
        int bpc = Bpc(v);
        ulong[] small = [5, (ulong)bpc + 9, 2 * (ulong)bpc + 100];
        foreach (var l in small) await T.ReadOk(v, l, 8);
        Assert.That(v.TagCacheStats!.Value.Slots, Is.EqualTo(3));
        for (ulong c = 8; c < 32; c += 8) await T.ReadOk(v, c * (ulong)bpc, 8 * bpc); // sequential 1 MiB reads
        await T.ReadOk(v, 33 * (ulong)bpc, bpc); // one whole chunk
        Assert.That((await v.ScrubAsync(new ScrubOptions())).Mismatches, Is.Zero);
        var before = v.TagCacheStats!.Value;
        dev.Reads = 0;
        foreach (var l in small) Assert.That(await T.ReadOk(v, l + 1, 8), Is.EqualTo(T.Pattern(l + 1, 8, 512, 1)));
        var after = v.TagCacheStats!.Value;
        Assert.That((after.Hits - before.Hits, after.Misses - before.Misses), Is.EqualTo((3L, 0L)), "still cached");
        Assert.That(dev.Reads, Is.EqualTo(3), "one device read each: the data");
    }
    /// <summary>What makes spans the normal case: 1 MiB writes at QD8, lap after lap (as fio's sequential write job
    /// before its read job), leave nearly every aligned 1 MiB in slots that lie back to back, so reading it is one
    /// device request. (A change to how free slots are handed out that scatters them shows up here first.)</summary>
    [Test]
    public async Task Sequential_1M_overwrites_keep_nearly_every_1M_read_one_request()
    {
        const int bs = 512, bpc = 256;
        ulong blocks = 128UL * bpc; // 16 MiB
        using var mem = T.Memory(blocks, bs);
        await using var v = await IntegrityVolume.FormatAsync(mem, T.Format(bs), new CapturingSink().Logger());
        long slotBytes = v.ChunkBytes + 4096;
        for (int lap = 1; lap <= 3; lap++)
        {
            using var gate = new SemaphoreSlim(8);
            var writes = new List<Task>();
            for (ulong l = 0; l < blocks; l += 8 * bpc)
            {
                await gate.WaitAsync();
                ulong at = l;
                writes.Add(Task.Run(async () =>
                {
                    try { Assert.That((await v.WriteAsync(at, T.Pattern(at, 8 * bpc, bs, lap), fua: false)).IsOk); }
                    finally { gate.Release(); }
                }));
            }
            await Task.WhenAll(writes);
            int one = 0, all = 0;
            for (ulong c0 = 0; c0 < blocks / bpc; c0 += 8, all++)
            {
                var slots = Enumerable.Range(0, 8).Select(k => v.LocateBlock((c0 + (ulong)k) * bpc)!.Value.DataOffset / slotBytes).Order().ToArray();
                if (slots[^1] - slots[0] == 7) one++;
            }
            Assert.That(one, Is.GreaterThanOrEqualTo(all * 9 / 10), $"lap {lap}: {one} of {all} aligned 1 MiB ranges in back-to-back slots");
        }
        Assert.That(await T.ReadOk(v, 40 * (ulong)bpc, 8 * bpc), Is.EqualTo(T.Pattern(40 * (ulong)bpc, 8 * bpc, bs, 3)));
    }
}
