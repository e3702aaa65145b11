using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// A command over several chunks has its pieces in flight at once (reads: every piece read and verified
/// concurrently; writes: every slot write before the commit), with the results of a serial walk: the first
/// failing piece names its first bad LBA with the good blocks before it, and a failed or interrupted slot write
/// leaves the command undone, never torn.
/// </summary>
public class ConcurrentPiecesTests
{
    private const int Bs = 4096, Bpc = 32; // 128 KiB chunks: a 1 MiB command is 8 pieces
    private const ulong Blocks = 64 * Bpc;
    private static readonly IoContext Ctx = new("lun0", "iqn.2026-12.test:init", "READ(16)");

    /// <summary>
    /// Completes every call asynchronously, a read of a higher offset sooner (so the pieces of one command finish
    /// in reverse order), counts how many calls overlap, and can fail one byte range (EIO) or the n-th slot-sized write.
    /// </summary>
    private sealed class SlowDevice(IBlockDevice inner) : IBlockDevice
    {
        private int _inFlight;
        public int MaxReadsInFlight, MaxWritesInFlight;
        public int InFlight => Volatile.Read(ref _inFlight);
        public readonly List<(long From, long To)> BadReads = new();
        public int FailBigWrite = -1; // index of the slot write (> 64 KiB) that fails, counted from 0
        /// <summary>Added to every slot write's delay: long enough that a loaded machine starts all of a command's
        /// writes before the first ends, for the tests that count how many were in flight at once.</summary>
        public int BigWriteExtraMs;
        /// <summary>The same for reads.</summary>
        public int ReadExtraMs;
        private int _bigWrites;
        public string Name => inner.Name;
        public long Length => inner.Length;
        public int SectorSize => inner.SectorSize;
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
                if (big && n == FailBigWrite) throw new IOException($"{Name}: write at {offset}: Input/output error");
                await inner.WriteAsync(offset, data, fua, ct);
            }
            finally { Interlocked.Decrement(ref _inFlight); }
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
    public async Task A_1M_write_has_its_slot_writes_in_flight_together_before_the_commit()
    {
        var (dev, mem, v, _) = await Filled();
        await using var _v = v;
        using var _m = mem;
        ulong lba = 16 * Bpc;
        dev.BigWriteExtraMs = 300;
        await T.WriteOk(v, lba, T.Pattern(lba, 256, Bs, 2), fua: true);
        Assert.That(dev.MaxWritesInFlight, Is.GreaterThanOrEqualTo(8), "eight slot writes at once");
        Assert.That(await T.ReadOk(v, lba - 1, 258), Is.EqualTo([.. T.Pattern(lba - 1, 1, Bs, 1), .. T.Pattern(lba, 256, Bs, 2), .. T.Pattern(lba + 256, 1, Bs, 1)]));
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
        Assert.That(dev.MaxWritesInFlight, Is.GreaterThanOrEqualTo(16), "the parts' slot writes were in flight together, not part after part");
        Assert.That(await T.ReadOk(v, lba, 3 * 256), Is.EqualTo(T.Pattern(lba, 3 * 256, Bs, 2)));
    }

    [TestCase(0)]
    [TestCase(4)]
    [TestCase(7)]
    public async Task A_failed_slot_write_among_concurrent_ones_fails_the_command_whole_after_the_others_finished(int failing)
    {
        var (dev, mem, v, _) = await Filled();
        await using var _v = v;
        using var _m = mem;
        ulong lba = 24 * Bpc;
        dev.FailBigWrite = failing;
        var r = await v.WriteAsync(lba, T.Pattern(lba, 256, Bs, 2), fua: false);
        Assert.That((r.Status, r.Lba), Is.EqualTo((VolumeStatus.IoError, lba)), r.ToString());
        Assert.That(dev.InFlight, Is.EqualTo(0), "no slot write is still running when the command fails (its slots go back to the pool)");
        Assert.That(await T.ReadOk(v, lba, 256), Is.EqualTo(T.Pattern(lba, 256, Bs, 1)), "not one chunk of the failed command is visible");
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
