using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// A command over several chunks has its pieces in flight at once (reads: every piece read and verified
/// concurrently; writes: the slots of back-to-back chunks written with one request, every slot write before the
/// commit), with the results of a serial walk: the first failing piece names its first bad LBA with the good
/// blocks before it, and a failed or interrupted slot write leaves the command undone, never torn.
/// </summary>
public class ConcurrentPiecesTests
{
    private const int Bs = 4096, Bpc = 32; // 128 KiB chunks: a 1 MiB command is 8 pieces
    private const ulong Blocks = 64 * Bpc;
    private static readonly IoContext Ctx = new("lun0", "iqn.2026-12.test:init", "READ(16)");

    /// <summary>
    /// Completes every call asynchronously, a read of a higher offset sooner (so the pieces of one command finish
    /// in reverse order), counts how many calls overlap, and can fail one byte range (EIO), the n-th slot-sized write
    /// or the writes a predicate picks. Records every gather write (offset, parts): a gather write goes to the device
    /// as one write (copied into one buffer, as a device that cannot gather natively does).
    /// </summary>
    private sealed class SlowDevice(IBlockDevice inner) : IBlockDevice
    {
        private int _inFlight;
        public int MaxReadsInFlight, MaxWritesInFlight;
        public int InFlight => Volatile.Read(ref _inFlight);
        public readonly List<(long From, long To)> BadReads = new();
        public int FailBigWrite = -1; // index of the slot write (> 64 KiB) that fails, counted from 0
        /// <summary>Fails the writes (offset, data) it returns true for.</summary>
        public Func<long, ReadOnlyMemory<byte>, bool>? FailWrite;
        public readonly List<(long Offset, int Parts)> Gathers = new();
        /// <summary>Added to every slot write's delay: long enough that a loaded machine starts all of a command's
        /// writes before the first ends, for the tests that count how many were in flight at once.</summary>
        public int BigWriteExtraMs;
        /// <summary>The same for reads.</summary>
        public int ReadExtraMs;
        private int _bigWrites;
        public string Name => inner.Name;
        public long Length => inner.Length;
        public int SectorSize => inner.SectorSize;
        public int PreferredWriteUnit => inner.PreferredWriteUnit;
        public bool CanDeallocate => inner.CanDeallocate;

        public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
        {
            int now = Interlocked.Increment(ref _inFlight);
            InterlockedMax(ref MaxReadsInFlight, now);
            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(1 + (Length - offset) * 20 / Length + ReadExtraMs), ct);
                if (BadReads.Any(b => offset < b.To && b.From < offset + buffer.Length))
                    throw new IOException($"{Name}: read at {offset}+{buffer.Length}: Input/output error");
                await inner.ReadAsync(offset, buffer, ct);
            }
            finally { Interlocked.Decrement(ref _inFlight); }
        }

        public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
        {
            int now = Interlocked.Increment(ref _inFlight);
            InterlockedMax(ref MaxWritesInFlight, now);
            try
            {
                bool big = data.Length > 64 * 1024;
                int n = big ? Interlocked.Increment(ref _bigWrites) - 1 : -1;
                await Task.Delay(big ? 5 + 3 * (n % 4) + BigWriteExtraMs : 0, ct);
                if ((big && n == FailBigWrite) || FailWrite?.Invoke(offset, data) == true) throw new IOException($"{Name}: write at {offset}: Input/output error");
                await inner.WriteAsync(offset, data, fua, ct);
            }
            finally { Interlocked.Decrement(ref _inFlight); }
        }

        public async ValueTask WriteGatherAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> parts, bool fua, CancellationToken ct = default)
        {
            lock (Gathers) Gathers.Add((offset, parts.Count));
            byte[] all = [.. parts.SelectMany(p => p.ToArray())];
            await WriteAsync(offset, all, fua, ct);
        }

        public ValueTask FlushAsync(CancellationToken ct = default) => inner.FlushAsync(ct);
        public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => inner.DiscardAsync(offset, length, ct);
        public (bool Allocated, long Length) GetAllocation(long offset) => inner.GetAllocation(offset);
        public void Dispose() { }

        private static void InterlockedMax(ref int target, int value)
        {
            int seen;
            while ((seen = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, seen) != seen) { }
        }
    }

    /// <summary>A volume holding pattern 1 everywhere, closed, and opened again through a <see cref="SlowDevice"/>.</summary>
    private static Task<(SlowDevice Dev, MemoryBlockDevice Mem, IntegrityVolume V, CapturingSink Sink)> Filled(long tagCacheBytes = 1 << 20) =>
        T.FilledThrough(Blocks, Bs, tagCacheBytes, m => new SlowDevice(m));

    /// <summary>
    /// A volume with pattern 1 in its odd chunks, the even ones unmapped, and a spare pool of 4, opened again through a
    /// <see cref="SlowDevice"/>: its free slots (the even chunks' old ones, every other slot, and the 4 spare) hold no
    /// run of 8 consecutive slots, so a 1 MiB write goes to eight scattered slots.
    /// </summary>
    private static async Task<(SlowDevice Dev, MemoryBlockDevice Mem, IntegrityVolume V)> Fragmented()
    {
        var mem = T.Memory(Blocks, Bs);
        var format = new FormatOptions { BlockSize = Bs, LogicalBlocks = Blocks, SpareSlots = 4, AllowTinySparePool = true };
        await using (var f = await IntegrityVolume.FormatAsync(mem, format, Serilog.Core.Logger.None))
            await T.WriteOk(f, 0, T.Pattern(0, (int)Blocks, Bs, 1), fua: true);
        await using (var u = await IntegrityVolume.OpenAsync(mem, T.Open(), Serilog.Core.Logger.None))
            for (ulong c = 0; c < Blocks / Bpc; c += 2) Assert.That((await u.UnmapAsync(c * Bpc, Bpc)).IsOk);
        var dev = new SlowDevice(mem);
        var v = await IntegrityVolume.OpenAsync(dev, T.Open() with { IdleHomeMs = Timeout.Infinite }, Serilog.Core.Logger.None);
        Assert.That(v.FreeSlots, Is.EqualTo(Blocks / Bpc / 2 + 4));
        return (dev, mem, v);
    }

    /// <summary>What chunks [c0, c0 + n) of a <see cref="Fragmented"/> volume hold: zeros in the even ones, pattern 1 in the odd ones.</summary>
    private static byte[] FragmentedContent(ulong c0, int n) =>
        [.. Enumerable.Range(0, n).SelectMany(k => (c0 + (ulong)k) % 2 == 0 ? new byte[Bpc * Bs] : T.Pattern((c0 + (ulong)k) * Bpc, Bpc, Bs, 1))];

    /// <summary>The slot data offsets of chunks [c0, c0 + n), in chunk order.</summary>
    private static long[] SlotsOf(IntegrityVolume v, ulong c0, int n) =>
        [.. Enumerable.Range(0, n).Select(k => v.LocateBlock((c0 + (ulong)k) * Bpc)!.Value.DataOffset)];

    [TestCase(1 << 20)]
    [TestCase(0)]
    public async Task A_1M_read_has_its_pieces_in_flight_together_and_reads_what_was_written(long cache)
    {
        var (dev, mem, v, _) = await Filled(cache);
        await using var _v = v;
        using var _m = mem;
        ulong lba = 3 * Bpc + 7; // unaligned: 9 pieces, the first and last partial
        // The seven whole chunks between them lie in consecutive slots: one span read (SpanReadTests), in flight
        // with the data and tag reads of the two partial pieces.
        dev.ReadExtraMs = 200;
        Assert.That(await T.ReadOk(v, lba, 256), Is.EqualTo(T.Pattern(lba, 256, Bs, 1)));
        Assert.That(dev.MaxReadsInFlight, Is.EqualTo(5), "the span and both partial pieces are read at the same time");
        Assert.That(dev.InFlight, Is.EqualTo(0));
    }

    [TestCase(false)]
    [TestCase(true)]
    public async Task A_read_whose_5th_piece_fails_names_that_pieces_first_bad_LBA_while_later_pieces_finish_first(bool ioError)
    {
        var (dev, mem, v, sink) = await Filled();
        await using var _v = v;
        using var _m = mem;
        ulong start = 8 * Bpc, bad = start + 4 * Bpc + 9, later = start + 6 * Bpc + 1; // 5th piece, and the 7th fails too
        foreach (var l in new[] { bad, later })
        {
            var at = v.LocateBlock(l)!.Value;
            if (ioError) dev.BadReads.Add((at.DataOffset + 512, at.DataOffset + 513)); // a bad sector inside the block
            else T.Flip(mem, at.DataOffset + 100);
        }
        var buf = new byte[256 * Bs];
        dev.ReadExtraMs = 200;
        var r = await v.ReadAsync(start, buf, Ctx);
        var want = ioError ? VolumeStatus.IoError : VolumeStatus.IntegrityError;
        Assert.That((r.Status, r.Lba, r.GoodBlocks), Is.EqualTo((want, bad, bad - start)), r.ToString());
        Assert.That(buf.AsSpan(0, (int)(bad - start) * Bs).ToArray(), Is.EqualTo(T.Pattern(start, (int)(bad - start), Bs, 1)), "the good blocks before it are in the buffer");
        if (ioError) Assert.That(dev.MaxReadsInFlight, Is.GreaterThanOrEqualTo(8), "after the span read failed, its pieces were read on their own, together");
        Assert.That(dev.InFlight, Is.EqualTo(0), "no piece is still reading into the buffer once the command has completed");
        if (!ioError)
            Assert.That(sink.Failures.Select(CapturingSink.LbaOf), Is.EqualTo(new[] { bad }), "one event, for the failure the command reports; the later piece's is not news yet");
    }

    [Test]
    public async Task A_read_after_a_failure_in_the_last_piece_returns_every_earlier_piece()
    {
        var (_, mem, v, _) = await Filled(tagCacheBytes: 0);
        await using var _v = v;
        using var _m = mem;
        ulong start = 2 * Bpc + 3, bad = start + 253;
        T.Flip(mem, v.LocateBlock(bad)!.Value.DataOffset + 5);
        var buf = new byte[256 * Bs];
        var r = await v.ReadAsync(start, buf, Ctx);
        Assert.That((r.Status, r.Lba, r.GoodBlocks), Is.EqualTo((VolumeStatus.IntegrityError, bad, 253UL)));
        Assert.That(buf.AsSpan(0, 253 * Bs).ToArray(), Is.EqualTo(T.Pattern(start, 253, Bs, 1)));
    }

    [Test]
    public async Task A_1M_write_into_consecutive_slots_is_one_device_write_of_data_and_tags_before_the_commit()
    {
        var (dev, mem, v, _) = await Filled();
        await using var _v = v;
        using var _m = mem;
        ulong lba = 16 * Bpc;
        await T.WriteOk(v, lba, T.Pattern(lba, 256, Bs, 2), fua: true);
        var slots = SlotsOf(v, 16, 8);
        long slotBytes = slots[1] - slots[0];
        Assert.That(slots, Is.EqualTo(Enumerable.Range(0, 8).Select(k => slots[0] + k * slotBytes)), "the eight chunks got back-to-back slots, in chunk order");
        Assert.That(dev.Gathers, Is.EqualTo(new[] { (slots[0], 16) }), "one gather write (data, tags) x 8 from the first slot; the journal's writes are plain ones");
        Assert.That(await T.ReadOk(v, lba - 1, 258), Is.EqualTo([.. T.Pattern(lba - 1, 1, Bs, 1), .. T.Pattern(lba, 256, Bs, 2), .. T.Pattern(lba + 256, 1, Bs, 1)]));

        // Not aligned, over mapped chunks: the partial first and last pieces are journaled, the seven whole chunks are one write.
        dev.Gathers.Clear();
        lba = 32 * Bpc + 5;
        await T.WriteOk(v, lba, T.Pattern(lba, 256, Bs, 3));
        Assert.That(dev.Gathers, Is.EqualTo(new[] { (v.LocateBlock(33 * Bpc)!.Value.DataOffset, 14) }));
        Assert.That(await T.ReadOk(v, lba - 1, 258), Is.EqualTo([.. T.Pattern(lba - 1, 1, Bs, 1), .. T.Pattern(lba, 256, Bs, 3), .. T.Pattern(lba + 256, 1, Bs, 1)]));
        Assert.That((await v.ScrubAsync(new ScrubOptions())).Mismatches, Is.EqualTo(0));
    }

    [Test]
    public async Task A_1M_write_into_unmapped_chunks_writes_the_zero_filled_partial_slots_in_the_same_request()
    {
        var mem = T.Memory(Blocks, Bs);
        var dev = new SlowDevice(mem);
        await using (var f = await IntegrityVolume.FormatAsync(dev, T.Format(Bs), Serilog.Core.Logger.None)) { }
        dev.Gathers.Clear();
        const ulong lba = 8 * Bpc + 5; // nine unmapped chunks: a partial first and last one, seven whole ones
        await using (var v = await IntegrityVolume.OpenAsync(dev, T.Open(), Serilog.Core.Logger.None))
        {
            await T.WriteOk(v, lba, T.Pattern(lba, 256, Bs, 2));
            Assert.That(dev.Gathers, Is.EqualTo(new[] { (v.LocateBlock(8 * Bpc)!.Value.DataOffset, 1 + 7 * 2 + 1) }), "the two partial slots (one buffer each) and seven chunks' data and tags, one write");
        }
        await using var again = await IntegrityVolume.OpenAsync(mem, T.Open(), Serilog.Core.Logger.None);
        Assert.That(await T.ReadOk(again, 8 * Bpc, 9 * Bpc), Is.EqualTo([.. new byte[5 * Bs], .. T.Pattern(lba, 256, Bs, 2), .. new byte[(Bpc - 5) * Bs]]));
        Assert.That((await again.ScrubAsync(new ScrubOptions())).Mismatches, Is.EqualTo(0));
    }

    [Test]
    public async Task A_1M_write_into_a_pool_without_a_run_has_a_write_per_slot_all_in_flight_together()
    {
        var (dev, mem, v) = await Fragmented();
        await using (v)
        {
            ulong lba = 16 * Bpc;
            dev.BigWriteExtraMs = 300;
            await T.WriteOk(v, lba, T.Pattern(lba, 256, Bs, 2), fua: true);
            var slots = SlotsOf(v, 16, 8);
            Assert.That(dev.Gathers.Select(g => g.Offset).Order(), Is.EqualTo(slots.Order()), "one write per slot");
            Assert.That(dev.Gathers.Select(g => g.Parts), Is.All.EqualTo(2));
            Assert.That(dev.MaxWritesInFlight, Is.GreaterThanOrEqualTo(8), "eight slot writes at once");
            Assert.That(await T.ReadOk(v, lba, 256), Is.EqualTo(T.Pattern(lba, 256, Bs, 2)));
        }
        await using var again = await IntegrityVolume.OpenAsync(mem, T.Open(), Serilog.Core.Logger.None);
        Assert.That(await T.ReadOk(again, 16 * Bpc, 256), Is.EqualTo(T.Pattern(16 * Bpc, 256, Bs, 2)));
        Assert.That(await T.ReadOk(again, 15 * Bpc, Bpc), Is.EqualTo(T.Pattern(15 * Bpc, Bpc, Bs, 1)));
        Assert.That((await again.ScrubAsync(new ScrubOptions())).Mismatches, Is.EqualTo(0));
    }

    [Test]
    public async Task A_failed_run_write_fails_only_its_command_and_its_slots_are_used_again()
    {
        var (dev, mem, filled, _) = await Filled();
        await filled.DisposeAsync();
        // No idle flush: the slots B replaces stay in limbo, so the top of the pool is what A gives back.
        await using var v = await IntegrityVolume.OpenAsync(dev, T.Open() with { IdleHomeMs = Timeout.Infinite }, Serilog.Core.Logger.None);
        using var _m = mem;
        ulong a = 8 * Bpc, b = 40 * Bpc;
        dev.BigWriteExtraMs = 100;
        // The run write of command A starts with A's first block (pattern: its LBA in the first 8 bytes).
        dev.FailWrite = (_, data) => data.Length > 64 * 1024 && BitConverter.ToUInt64(data.Span) == a;
        var ra = v.WriteAsync(a, T.Pattern(a, 256, Bs, 2), fua: false);
        var rb = v.WriteAsync(b, T.Pattern(b, 256, Bs, 2), fua: false);
        var (resA, resB) = (await ra, await rb);
        Assert.That((resA.Status, resA.Lba, resA.GoodBlocks), Is.EqualTo((VolumeStatus.IoError, a, 0UL)), resA.ToString());
        Assert.That(resB.IsOk, Is.True, "the other command in flight beside it is not touched: " + resB);
        Assert.That(dev.InFlight, Is.EqualTo(0));
        Assert.That(dev.Gathers, Has.Count.EqualTo(2), "one run write each");
        long tried = dev.Gathers.Select(g => g.Offset).Single(o => o != SlotsOf(v, 40, 1)[0]);
        Assert.That(await T.ReadOk(v, a, 256), Is.EqualTo(T.Pattern(a, 256, Bs, 1)), "not one chunk of the failed command is visible");
        Assert.That(await T.ReadOk(v, b, 256), Is.EqualTo(T.Pattern(b, 256, Bs, 2)));
        // Its slots went back to the pool, on top: the same command again gets the same run.
        dev.FailWrite = null;
        await T.WriteOk(v, a, T.Pattern(a, 256, Bs, 3));
        Assert.That(SlotsOf(v, 8, 1)[0], Is.EqualTo(tried));
        Assert.That((await v.FlushAsync()).IsOk);
        Assert.That(await T.ReadOk(v, a, 256), Is.EqualTo(T.Pattern(a, 256, Bs, 3)));
        Assert.That((await v.ScrubAsync(new ScrubOptions())).Mismatches, Is.EqualTo(0));
    }

    [Test]
    public async Task A_write_larger_than_one_atomic_unit_has_its_parts_in_flight_together_and_a_failed_part_names_its_offset()
    {
        var (dev, mem, v, _) = await Filled();
        await using var _v = v;
        using var _m = mem;
        ulong lba = 32 * Bpc;
        // A failed slot write (the first one the device sees) fails its part: the command names that part's first
        // LBA and the blocks before it as done; the other parts complete before the command answers.
        dev.FailBigWrite = 0;
        var r = await v.WriteAsync(lba, T.Pattern(lba, 3 * 256, Bs, 3), fua: false);
        Assert.That(r.Status, Is.EqualTo(VolumeStatus.IoError), r.ToString());
        Assert.That(r.GoodBlocks % 256, Is.Zero, "a whole number of parts before the failing one");
        Assert.That(r.Lba, Is.EqualTo(lba + r.GoodBlocks), r.ToString());
        Assert.That(dev.InFlight, Is.EqualTo(0), "no part is still writing once the command has answered");
        Assert.That(await T.ReadOk(v, lba + r.GoodBlocks, 256), Is.EqualTo(T.Pattern(lba + r.GoodBlocks, 256, Bs, 1)), "the failed part is not visible");
        dev.FailBigWrite = -1;
        dev.MaxWritesInFlight = 0;
        dev.BigWriteExtraMs = 300;
        await T.WriteOk(v, lba, T.Pattern(lba, 3 * 256, Bs, 2)); // 3 MiB: three 1 MiB atomic parts
        Assert.That(dev.MaxWritesInFlight, Is.GreaterThanOrEqualTo(3), "the parts' slot writes (one each) were in flight together, not part after part");
        Assert.That(await T.ReadOk(v, lba, 3 * 256), Is.EqualTo(T.Pattern(lba, 3 * 256, Bs, 2)));
    }

    [TestCase(0)]
    [TestCase(4)]
    [TestCase(7)]
    public async Task A_failed_slot_write_among_concurrent_ones_fails_the_command_whole_after_the_others_finished(int failing)
    {
        // Scattered slots: eight writes in flight, one fails (and the others take longer than it).
        var (dev, mem, v) = await Fragmented();
        await using var _v = v;
        using var _m = mem;
        ulong lba = 24 * Bpc;
        long free = v.FreeSlots;
        dev.FailBigWrite = failing;
        var r = await v.WriteAsync(lba, T.Pattern(lba, 256, Bs, 2), fua: false);
        Assert.That((r.Status, r.Lba), Is.EqualTo((VolumeStatus.IoError, lba)), r.ToString());
        Assert.That(dev.Gathers, Has.Count.EqualTo(8));
        Assert.That(dev.InFlight, Is.EqualTo(0), "no slot write is still running when the command fails (its slots go back to the pool)");
        Assert.That(v.FreeSlots, Is.EqualTo(free), "all eight slots are back");
        Assert.That(await T.ReadOk(v, lba, 256), Is.EqualTo(FragmentedContent(24, 8)), "not one chunk of the failed command is visible");
        dev.FailBigWrite = -1;
        for (int round = 3; round < 8; round++) await T.WriteOk(v, lba, T.Pattern(lba, 256, Bs, round)); // the returned slots are usable again
        Assert.That((await v.FlushAsync()).IsOk);
        Assert.That(await T.ReadOk(v, lba, 256), Is.EqualTo(T.Pattern(lba, 256, Bs, 7)));
        Assert.That((await v.ScrubAsync(new ScrubOptions())).Mismatches, Is.EqualTo(0));
    }

    /// <summary>The power goes after k of a 1 MiB write's concurrent slot writes (and, for larger k, during its
    /// commit): after recovery, every crash mode leaves every chunk at the durable version or every chunk at the new
    /// one (the command is never torn), and every block verifies.</summary>
    [Test]
    public async Task A_crash_between_concurrent_slot_writes_leaves_the_command_undone_or_whole()
    {
        const ulong lba = 4 * Bpc;
        int states = 0;
        for (int k = 0; k <= 11; k++)
            foreach (var mode in Enum.GetValues<CrashMode>())
            {
                var crash = new CrashSimulatingDevice(T.Memory(Blocks, Bs));
                await using (var f = await IntegrityVolume.FormatAsync(crash, T.Format(Bs), Serilog.Core.Logger.None))
                    await T.WriteOk(f, lba, T.Pattern(lba, 256, Bs, 1), fua: true);
                var slow = new SlowDevice(crash);
                var v = await IntegrityVolume.OpenAsync(slow, T.Open() with { IdleHomeMs = Timeout.Infinite }, Serilog.Core.Logger.None);
                crash.CrashAfterOperations(k);
                var r = await v.WriteAsync(lba, T.Pattern(lba, 256, Bs, 2), fua: true);
                Assert.That(slow.InFlight, Is.EqualTo(0), $"k={k}: nothing in flight once the command completed");
                await v.AbandonAsync();
                var image = crash.Crash(mode, (ulong)(k * 31 + (int)mode));
                await using var after = await IntegrityVolume.OpenAsync(image, T.Open(), Serilog.Core.Logger.None);
                var got = await T.ReadOk(after, lba, 256);
                bool old = got.AsSpan().SequenceEqual(T.Pattern(lba, 256, Bs, 1)), neu = got.AsSpan().SequenceEqual(T.Pattern(lba, 256, Bs, 2));
                Assert.That(old || neu, Is.True, $"k={k}, {mode}: the 1 MiB command is wholly undone or wholly there (result {r})");
                if (r.IsOk) Assert.That(neu, Is.True, $"k={k}, {mode}: an acknowledged FUA write survives");
                Assert.That((await after.ScrubAsync(new ScrubOptions())).Mismatches, Is.EqualTo(0), $"k={k}, {mode}");
                states++;
            }
        TestContext.Out.WriteLine($"{states} crash states checked");
    }
}
