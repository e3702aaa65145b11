using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using NUnit.Framework;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// Write path 7a: once the ring is half full the older part is checkpointed by a background task while commits
/// go on into the newer part. A gate device holds the background checkpoint's home copies (every small write
/// outside the journal) so the tests can write, read, lose power and recover while it is in flight.
/// </summary>
public class BackgroundCheckpointTests
{
    private const int Bs = 4096;
    private const ulong Blocks = 2048; // 64 chunks of 32 blocks
    private const long Journal = 1L << 20;

    /// <summary>Holds writes outside the journal that are smaller than a chunk (home copies, tag regions, map
    /// sectors) once <see cref="Closed"/>; after <see cref="PowerCut"/> such held writes and every later call are lost.</summary>
    private sealed class GateDevice(MemoryBlockDevice inner) : ForwardingDevice(inner)
    {
        private readonly TaskCompletionSource _open = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public long GateFrom = long.MaxValue;
        public volatile bool Closed;
        public volatile bool PowerCut;
        /// <summary>Held writes let through before the gate holds the rest.</summary>
        public int Pass;
        public int Held;

        public override async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
        {
            if (Closed && offset >= GateFrom && data.Length < 128 * 1024)
            {
                if (Interlocked.Decrement(ref Pass) < 0)
                {
                    Interlocked.Increment(ref Held);
                    await _open.Task.ConfigureAwait(false);
                }
            }
            if (PowerCut) throw new IOException("power cut (test)");
            await Inner.WriteAsync(offset, data, fua, ct).ConfigureAwait(false);
        }

        public override ValueTask FlushAsync(CancellationToken ct = default) =>
            PowerCut ? ValueTask.FromException(new IOException("power cut (test)")) : Inner.FlushAsync(ct);

        public void Open() => _open.TrySetResult();
    }

    /// <summary>Fails every write after the first <paramref name="writes"/> (a crash in the middle of recovery; the memory keeps what was written).</summary>
    private sealed class CrashAfterDevice(MemoryBlockDevice inner, int writes) : ForwardingDevice(inner)
    {
        private int _left = writes;
        public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) =>
            Interlocked.Decrement(ref _left) < 0 ? ValueTask.FromException(new IOException("crash during recovery (test)")) : Inner.WriteAsync(offset, data, fua, ct);
        public override ValueTask FlushAsync(CancellationToken ct = default) =>
            Volatile.Read(ref _left) < 0 ? ValueTask.FromException(new IOException("crash during recovery (test)")) : Inner.FlushAsync(ct);
    }

    /// <summary>Every chunk mapped with version 1 and the volume closed (empty journal), then opened through a gate.</summary>
    private static async Task<(MemoryBlockDevice Mem, GateDevice Gate, IntegrityVolume V)> Filled(bool releaseCheckpointSlotsEarly = false)
    {
        var mem = new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor(Blocks, Bs, TagAlgorithm.Crc32c, Journal), "mem");
        var log = Serilog.Core.Logger.None;
        await using (var f = await IntegrityVolume.FormatAsync(mem, new FormatOptions { BlockSize = Bs, Algorithm = TagAlgorithm.Crc32c, JournalBytes = Journal, LogicalBlocks = Blocks }, log))
            await T.WriteOk(f, 0, T.Pattern(0, (int)Blocks, Bs, 1), fua: true);
        var gate = new GateDevice(mem);
        var v = await IntegrityVolume.OpenAsync(gate, new OpenOptions { WriteBack = true, IdleHomeMs = Timeout.Infinite, ReleaseCheckpointSlotsEarly = releaseCheckpointSlotsEarly }, log);
        gate.GateFrom = v.JournalArea.Offset + v.JournalArea.Bytes;
        return (mem, gate, v);
    }

    /// <summary>One 4 KiB block in every chunk in turn (all journaled), version <paramref name="version"/>, until a
    /// background checkpoint has started and <paramref name="after"/> more writes were acknowledged while its home
    /// copies are held. Returns the version each touched LBA holds now.</summary>
    private static async Task<Dictionary<ulong, int>> WriteThroughACut(IntegrityVolume v, GateDevice gate, int after)
    {
        var expect = new Dictionary<ulong, int>();
        gate.Closed = true;
        int i = 0;
        for (; !v.BackgroundCheckpointRunning; i++)
        {
            Assert.That(i, Is.LessThan(400), "the ring never got half full");
            ulong lba = (ulong)(i % 64) * 32 + (ulong)(i / 64) + 1;
            await T.WriteOk(v, lba, T.Pattern(lba, 1, Bs, 2));
            expect[lba] = 2;
        }
        for (int k = 0; k < 1000 && gate.Held == 0; k++) await Task.Delay(10);
        Assert.That(gate.Held, Is.GreaterThan(0), "the background checkpoint's home copies reach the device");
        // The older part's home copies are held: these writes must not wait for them. Half of them rewrite
        // blocks of the older part (a newer version of a block the checkpoint is taking home).
        for (int k = 0; k < after; k++, i++)
        {
            ulong lba = k % 2 == 0 ? (ulong)(k / 2 % 64) * 32 + 1 : (ulong)(i % 64) * 32 + (ulong)(i / 64) + 1;
            var w = v.WriteAsync(lba, T.Pattern(lba, 1, Bs, 3 + k), fua: false).AsTask();
            Assert.That(await Task.WhenAny(w, Task.Delay(10_000)), Is.SameAs(w), $"write {k} (LBA {lba}) after the cut waited for the background checkpoint; held {gate.Held}; {v.JournalStats}");
            Assert.That((await w).IsOk);
            expect[lba] = 3 + k;
        }
        Assert.That(v.JournalStats.BackgroundCheckpoints, Is.Zero, "the background checkpoint is still held");
        return expect;
    }

    private static MemoryBlockDevice Copy(MemoryBlockDevice mem)
    {
        var copy = new MemoryBlockDevice(mem.Length, "copy");
        var buf = new byte[1 << 20];
        for (long o = 0; o < mem.Length; o += buf.Length)
        {
            int n = (int)Math.Min(buf.Length, mem.Length - o);
            mem.Read(o, buf.AsSpan(0, n));
            copy.Write(o, buf.AsSpan(0, n));
        }
        return copy;
    }

    private static async Task CheckAll(IntegrityVolume v, Dictionary<ulong, int> expect, string when)
    {
        var all = await T.ReadOk(v, 0, (int)Blocks);
        for (ulong lba = 0; lba < Blocks; lba++)
        {
            int version = expect.TryGetValue(lba, out int e) ? e : 1;
            Assert.That(all.AsSpan((int)lba * Bs, Bs).SequenceEqual(T.Pattern(lba, 1, Bs, version)), $"{when}: LBA {lba} should hold version {version}");
        }
    }

    [Test]
    public async Task Writes_and_reads_go_on_while_the_older_part_of_the_ring_is_checkpointed()
    {
        var (mem, gate, v) = await Filled();
        using var _m = mem;
        Dictionary<ulong, int> expect;
        await using (v)
        {
            expect = await WriteThroughACut(v, gate, after: 40);
            // Reads wait for the batch of home copies in flight (held here), no longer: they run once it lands.
            gate.Open();
            await CheckAll(v, expect, "during or after the background checkpoint");
            for (int i = 0; i < 500 && v.JournalStats.BackgroundCheckpoints == 0; i++) await Task.Delay(10);
            Assert.That(v.JournalStats.BackgroundCheckpoints, Is.GreaterThanOrEqualTo(1));
            Assert.That(v.JournalStats.BlockingCheckpoints, Is.Zero, "no writer had to wait for a checkpoint");
            await CheckAll(v, expect, "after the background checkpoint");
            // Many more laps: the ring keeps being cut and freed.
            for (int k = 0; k < 600; k++)
            {
                ulong lba = (ulong)(k * 37 % (int)Blocks);
                await T.WriteOk(v, lba, T.Pattern(lba, 1, Bs, 1000 + k));
                expect[lba] = 1000 + k;
            }
            Assert.That(v.JournalStats.BackgroundCheckpoints, Is.GreaterThanOrEqualTo(3));
            await CheckAll(v, expect, "after several laps");
        }
        await using var again = await IntegrityVolume.OpenAsync(mem, T.Open(), Serilog.Core.Logger.None);
        await CheckAll(again, expect, "reopened");
    }

    /// <summary>
    /// A background checkpoint whose home copies take several batches (512-byte blocks, a burst of concurrent writes
    /// to every chunk: thousands of blocks in more slots than one batch) finishes on its own when the volume goes idle
    /// right after the cut (nothing else wakes the committer), and a close while the next one runs waits for it and
    /// loses nothing. (Its home-copy list is built and sorted by the background task, not at the cut.)
    /// </summary>
    // A volume of 512-byte blocks in 512 chunks with a 4 MiB ring: a quarter of the ring holds at least 128 single-block
    // transactions (8 KiB each, when a loaded machine groups nothing), so a cut always takes more distinct chunks' slots
    // than one batch (64) of home copies.
    private const int SmallBs = 512, SmallChunks = 512, SmallBpc = 256;
    private const long SmallJournal = 4L << 20;

    /// <summary>That volume formatted, every chunk mapped with version 1, closed.</summary>
    private static async Task<MemoryBlockDevice> SmallBlocksFilled()
    {
        const ulong blocks = (ulong)SmallChunks * SmallBpc;
        var mem = new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor(blocks, SmallBs, TagAlgorithm.Crc32c, SmallJournal), "mem");
        await using (var f = await IntegrityVolume.FormatAsync(mem, new FormatOptions { BlockSize = SmallBs, Algorithm = TagAlgorithm.Crc32c, JournalBytes = SmallJournal, LogicalBlocks = blocks }, Serilog.Core.Logger.None))
            for (ulong c = 0; c < SmallChunks; c += 8) await T.WriteOk(f, c * SmallBpc, T.Pattern(c * SmallBpc, 8 * SmallBpc, SmallBs, 1));
        return mem;
    }

    /// <summary>Block <paramref name="version"/> of every chunk written with that version, all in flight together
    /// (group commit: a few transactions of many records).</summary>
    private static async Task Burst(IntegrityVolume v, int version, Dictionary<ulong, int> expect)
    {
        Assert.That(version, Is.LessThan(SmallBpc));
        var writes = new List<Task>();
        for (ulong c = 0; c < SmallChunks; c++)
        {
            ulong lba = c * SmallBpc + (ulong)version;
            writes.Add(T.WriteOk(v, lba, T.Pattern(lba, 1, SmallBs, version)));
            expect[lba] = version;
        }
        await Task.WhenAll(writes);
    }

    [Test]
    public async Task A_background_checkpoint_of_many_batches_finishes_when_the_volume_goes_idle_and_a_close_waits_for_the_next()
    {
        const int bs = SmallBs;
        using var mem = await SmallBlocksFilled();
        var log = Serilog.Core.Logger.None;
        var expect = new Dictionary<ulong, int>();
        Task Burst(IntegrityVolume v, int version) => BackgroundCheckpointTests.Burst(v, version, expect);
        await using (var v = await IntegrityVolume.OpenAsync(mem, new OpenOptions { WriteBack = true, IdleHomeMs = Timeout.Infinite }, log))
        {
            int version = 2;
            for (; !v.BackgroundCheckpointRunning && v.JournalStats.BackgroundCheckpoints == 0; version++)
            {
                Assert.That(version, Is.LessThan(40), "the ring never got a quarter full");
                await Burst(v, version);
            }
            // Idle from here: nothing but the checkpoint's own end wakes the committer.
            for (int i = 0; i < 1000 && v.JournalStats.BackgroundCheckpoints == 0; i++) await Task.Delay(10);
            var st = v.JournalStats;
            Assert.That(st.BackgroundCheckpoints, Is.EqualTo(1), $"the idle volume's background checkpoint finished: {st}");
            Assert.That(st.BlockingCheckpoints, Is.Zero, st.ToString());
            Assert.That(st.HomeSlots, Is.GreaterThan(64), $"the cut took more slots than one batch of home copies: {st}");
            // The next cut, then a close at once: the close waits for that checkpoint, and loses nothing.
            for (; !v.BackgroundCheckpointRunning && v.JournalStats.BackgroundCheckpoints == 1; version++)
            {
                Assert.That(version, Is.LessThan(80), "the ring never got a quarter full again");
                await Burst(v, version);
            }
        }
        await using var again = await IntegrityVolume.OpenAsync(mem, T.Open(), log);
        foreach (var (lba, ver) in expect)
            Assert.That((await T.ReadOk(again, lba, 1)).AsSpan().SequenceEqual(T.Pattern(lba, 1, bs, ver)), $"LBA {lba} holds version {ver}");
    }

    /// <summary>Records which threads write home copies (small writes outside the journal) while a background
    /// checkpoint runs, and which thread flushes; its calls complete synchronously, as a file's do.</summary>
    private sealed class ThreadRecordingDevice(MemoryBlockDevice inner) : ForwardingDevice(inner), IBlockDevice
    {
        public long JournalEnd = long.MaxValue;
        public Func<bool> Recording = () => false;
        public int PoolWrites, OwnWrites, WritebackHints;
        public readonly HashSet<int> OwnThreads = new();
        public int BulkConcurrency => 3;
        public bool SynchronousCalls => true;
        public void StartWriteback(long offset, long length)
        {
            Assert.That(offset >= 0 && length > 0 && offset + length <= Length, $"writeback hint [{offset}, +{length}) inside the device");
            Interlocked.Increment(ref WritebackHints);
        }

        public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
        {
            if (offset >= JournalEnd && data.Length < 128 * 1024 && Recording())
            {
                if (Thread.CurrentThread.IsThreadPoolThread) Interlocked.Increment(ref PoolWrites);
                else { Interlocked.Increment(ref OwnWrites); lock (OwnThreads) OwnThreads.Add(Environment.CurrentManagedThreadId); }
            }
            return Inner.WriteAsync(offset, data, fua, ct);
        }
    }

    /// <summary>
    /// On a device whose calls block (a file), the background checkpoint and every part of its home copies run on
    /// threads of the volume's own, never on the thread pool, whose few workers the commands' continuations need
    /// (a batch of blocking home-copy writes on two pool workers was the 4k QD1 write p99: docs "Measured",
    /// 2026-12-07 evening). The parts still run in parallel, and every write reads back as written after a reopen.
    /// </summary>
    [Test]
    public async Task A_background_checkpoint_and_its_home_copy_parts_block_no_thread_pool_worker()
    {
        const int bs = SmallBs;
        using var mem = await SmallBlocksFilled();
        var log = Serilog.Core.Logger.None;
        var dev = new ThreadRecordingDevice(mem);
        var expect = new Dictionary<ulong, int>();
        await using (var v = await IntegrityVolume.OpenAsync(dev, new OpenOptions { WriteBack = true, IdleHomeMs = Timeout.Infinite, ParallelApplyBlocks = 2 }, log))
        {
            dev.JournalEnd = v.JournalArea.Offset + v.JournalArea.Bytes;
            dev.Recording = () => v.BackgroundCheckpointRunning;
            for (int version = 2; v.JournalStats.BackgroundCheckpoints < 2; version++)
            {
                Assert.That(version, Is.LessThan(200), $"two background checkpoints never finished: {v.JournalStats}");
                // A cut takes thousands of blocks in hundreds of slots.
                await Burst(v, version, expect);
            }
            Assert.That(dev.OwnWrites, Is.GreaterThan(0), "the background checkpoints wrote home copies");
            Assert.That(dev.PoolWrites, Is.Zero, $"home copies written on thread-pool workers ({dev.OwnWrites} on the volume's own threads)");
            lock (dev.OwnThreads) Assert.That(dev.OwnThreads, Has.Count.GreaterThan(1), "the parts of a batch run in parallel");
            // With few commands in flight (here one at a time) a checkpoint ahead of the ring (here: nothing written after
            // its cut) starts the file's writeback in steps before its flush; with hundreds per transaction (the bursts)
            // it does not, nor when behind, so only the idle one after single writes is asserted.
            int n = 0;
            async Task Single()
            {
                ulong lba = (ulong)(n % SmallChunks) * SmallBpc + 250;
                await T.WriteOk(v, lba, T.Pattern(lba, 1, bs, 250 + n));
                expect[lba] = 250 + n++;
            }
            // A hundred single writes first: the volume's count of commands per transaction forgets the bursts.
            while (n < 100) await Single();
            for (int i = 0; i < 1000 && v.BackgroundCheckpointRunning; i++) await Task.Delay(10);
            Assert.That(v.BackgroundCheckpointRunning, Is.False, "the earlier checkpoints finished");
            long done = v.JournalStats.BackgroundCheckpoints;
            int hints = Volatile.Read(ref dev.WritebackHints);
            while (!v.BackgroundCheckpointRunning && v.JournalStats.BackgroundCheckpoints == done)
            {
                Assert.That(n, Is.LessThan(3000), "the ring never got a quarter full again");
                await Single();
            }
            for (int i = 0; i < 1000 && v.JournalStats.BackgroundCheckpoints == done; i++) await Task.Delay(10);
            Assert.That(v.JournalStats.BackgroundCheckpoints, Is.EqualTo(done + 1), v.JournalStats.ToString());
            Assert.That(dev.WritebackHints, Is.GreaterThan(hints), "an idle checkpoint started the writeback before its flush");
        }
        await using var again = await IntegrityVolume.OpenAsync(mem, T.Open(), log);
        foreach (var (lba, ver) in expect)
            Assert.That((await T.ReadOk(again, lba, 1)).AsSpan().SequenceEqual(T.Pattern(lba, 1, bs, ver)), $"LBA {lba} holds version {ver}");
    }

    /// <summary>Power is lost while the background checkpoint has copied some of the older part's blocks home and
    /// commits went on into the newer part: recovery (from the old journal start) keeps every acknowledged write;
    /// a crash at any point of that recovery recovers again to the same contents.</summary>
    [TestCase(0), TestCase(7), TestCase(30)]
    public async Task A_power_cut_during_a_background_checkpoint_recovers_every_acknowledged_write_also_after_a_crash_in_recovery(int homeWritesLanded)
    {
        var (mem, gate, v) = await Filled();
        using var _m = mem;
        gate.Pass = homeWritesLanded;
        var expect = await WriteThroughACut(v, gate, after: 40);
        // The writes were acknowledged once their transactions were written (write-back): a flush makes them durable.
        Assert.That((await v.FlushAsync()).IsOk);
        gate.PowerCut = true;
        var abandoned = v.AbandonAsync().AsTask();
        gate.Open();
        await abandoned;

        // Crash recovery itself after n device writes, for several n, then recover for good.
        for (int n = 1; n < 200; n += 13)
        {
            using var copy = Copy(mem);
            try { await using var broken = await IntegrityVolume.OpenAsync(new CrashAfterDevice(copy, n), T.Open(), Serilog.Core.Logger.None); }
            catch (Exception e) when (e is IOException or IntegrityVolumeException) { }
            await using var ok = await IntegrityVolume.OpenAsync(copy, T.Open(), Serilog.Core.Logger.None);
            await CheckAll(ok, expect, $"recovered after a crash {n} writes into recovery");
        }
        await using var recovered = await IntegrityVolume.OpenAsync(mem, T.Open(), Serilog.Core.Logger.None);
        await CheckAll(recovered, expect, "recovered");
    }

    /// <summary>
    /// The risk write path 7a's deferral guards: chunk 0's slot still has home copies held in the background
    /// checkpoint when a whole-chunk overwrite moves chunk 0 elsewhere and a flush frees its old slot. Were that slot
    /// back in the pool at once, the next whole-chunk write (chunk 1) would take it (the pool hands out the slot
    /// freed last) and the held home copy would then land in chunk 1's data and tag region. With the deferral every
    /// block reads back as written; with it switched off (the self-test) chunk 1 is damaged, so this test can tell.
    /// </summary>
    [TestCase(false), TestCase(true)]
    public async Task A_slot_the_background_checkpoint_still_writes_is_not_reused_before_it_is_done(bool releaseEarly)
    {
        var (mem, gate, v) = await Filled(releaseEarly);
        using var _m = mem;
        await using (v)
        {
            var expect = await WriteThroughACut(v, gate, after: 2);
            await T.WriteOk(v, 0, T.Pattern(0, 32, Bs, 50));
            Assert.That((await v.FlushAsync()).IsOk);
            await T.WriteOk(v, 32, T.Pattern(32, 32, Bs, 51));
            for (ulong lba = 0; lba < 64; lba++) expect[lba] = lba < 32 ? 50 : 51;
            gate.Open();
            for (int i = 0; i < 1000 && v.JournalStats.BackgroundCheckpoints == 0; i++) await Task.Delay(10);
            Assert.That(v.JournalStats.BackgroundCheckpoints, Is.GreaterThanOrEqualTo(1));
            if (!releaseEarly) { await CheckAll(v, expect, "after the background checkpoint"); return; }
            var got = new byte[32 * Bs];
            var r = await v.ReadAsync(32, got);
            Assert.That(!r.IsOk || !got.AsSpan().SequenceEqual(T.Pattern(32, 32, Bs, 51)), Is.True,
                "self-test: with the deferral off, the held home copy lands in the reused slot and chunk 1 is damaged");
        }
    }
}
