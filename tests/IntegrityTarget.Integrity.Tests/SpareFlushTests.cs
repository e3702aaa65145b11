using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// The spare pool's background flush on a device whose flush runs to its end inside <c>FlushAsync</c>, as a file's
/// fdatasync does: commits must go on while it runs (write path 2, "Background flush"), and the limbo slots it frees
/// come back once it completes. Until 2026-12-07 (evening) the committer called such a flush itself and every commit,
/// so every writer, waited for it.
/// </summary>
public class SpareFlushTests
{
    private const int Bs = 4096, Bpc = 32;
    private const ulong Blocks = 16 * Bpc;

    /// <summary>Once armed, the next flush blocks the calling thread until released (a synchronous flush).</summary>
    private sealed class BlockingFlushDevice(MemoryBlockDevice inner) : ForwardingDevice(inner)
    {
        public readonly ManualResetEventSlim Entered = new(), Release = new();
        public volatile bool Armed;

        public override ValueTask FlushAsync(CancellationToken ct = default)
        {
            if (Armed)
            {
                Armed = false;
                Entered.Set();
                Release.Wait(TimeSpan.FromSeconds(30));
            }
            return Inner.FlushAsync(ct);
        }
    }

    [Test]
    public async Task Commits_go_on_while_a_synchronous_background_flush_runs_and_its_limbo_slots_return_after_it()
    {
        long bytes = IntegrityVolume.DeviceBytesFor(Blocks, Bs, TagAlgorithm.Crc32c, spareSlots: 4);
        var dev = new BlockingFlushDevice(new MemoryBlockDevice(bytes, "blocking-flush"));
        var tuning = new OpenOptions { IdleHomeMs = Timeout.Infinite };
        await using var v = await IntegrityVolume.FormatAsync(dev, new FormatOptions { BlockSize = Bs, LogicalBlocks = Blocks, SpareSlots = 4, AllowTinySparePool = true, Tuning = tuning }, Serilog.Core.Logger.None);
        try
        {
            for (long c = 0; c < 16; c++) await T.WriteOk(v, (ulong)c * Bpc, T.Pattern((ulong)c * Bpc, Bpc, Bs, 1), fua: c == 15);

            // Three whole-chunk overwrites send three slots to limbo; one free slot is left, below the background
            // water (2): the committer starts a flush without waiting for it, and the device holds it.
            dev.Armed = true;
            long background = v.BackgroundFlushes;
            // (On pool threads, as the server's commands run: the test's own thread must not be the one a
            // synchronous flush holds.)
            var overwrites = Task.Run(async () => { for (long c = 0; c < 3; c++) await T.WriteOk(v, (ulong)c * Bpc, T.Pattern((ulong)c * Bpc, Bpc, Bs, 2)); });
            Assert.That(await Task.Run(() => dev.Entered.Wait(TimeSpan.FromSeconds(20))), Is.True, "the background flush started");
            Assert.That(await Task.WhenAny(overwrites, Task.Delay(TimeSpan.FromSeconds(20))), Is.SameAs(overwrites), "the overwrites committed although the flush is held");
            await overwrites;
            Assert.That(v.BackgroundFlushes, Is.EqualTo(background + 1));
            Assert.That(v.FreeSlots, Is.EqualTo(1), "the three replaced slots wait in limbo for the flush");

            // Writes that need no slot (journaled blocks of mapped chunks) commit while the flush is held.
            var writes = Enumerable.Range(4, 8).Select(c => Task.Run(() => v.WriteAsync((ulong)c * Bpc + 3, T.Pattern((ulong)c * Bpc + 3, 2, Bs, 3), fua: false).AsTask())).ToArray();
            var all = Task.WhenAll(writes);
            Assert.That(await Task.WhenAny(all, Task.Delay(TimeSpan.FromSeconds(20))), Is.SameAs(all), "commits went on during the flush");
            Assert.That(writes.Select(w => w.Result.IsOk), Is.All.True);
            Assert.That(v.FreeSlots, Is.EqualTo(1), "still in limbo: the flush has not completed");

            dev.Release.Set();
            // The committer harvests the flush on its next turn; a write gives it one.
            for (int i = 0; i < 400 && v.FreeSlots < 4; i++)
            {
                await T.WriteOk(v, 13 * Bpc + 5, T.Pattern(13 * Bpc + 5, 1, Bs, 4 + i));
                await Task.Delay(5);
            }
            Assert.That(v.FreeSlots, Is.EqualTo(4), "the flush completed and the limbo slots returned");

            for (long c = 0; c < 16; c++)
            {
                var got = await T.ReadOk(v, (ulong)c * Bpc, Bpc);
                Assert.That(got.AsSpan(0, 3 * Bs).SequenceEqual(T.Pattern((ulong)c * Bpc, 3, Bs, c < 3 ? 2 : 1)), Is.True, $"chunk {c}'s first blocks");
            }
            for (int c = 4; c < 12; c++)
                Assert.That((await T.ReadOk(v, (ulong)c * Bpc + 3, 2)).SequenceEqual(T.Pattern((ulong)c * Bpc + 3, 2, Bs, 3)), Is.True, $"chunk {c}'s journaled blocks");
        }
        finally { dev.Release.Set(); }
    }

    [Test]
    public async Task A_whole_chunk_written_from_the_callers_buffer_is_not_changed_by_reusing_the_buffer_afterwards()
    {
        // Whole chunks are written from the caller's buffer with no private copy (write path 1): that is safe because
        // WriteAsync returns only once no write of the command is running any more. Reuse the buffer at once.
        await using var v = await IntegrityVolume.FormatAsync(T.Memory(Blocks), T.Format(), Serilog.Core.Logger.None);
        var buf = T.Pattern(2 * Bpc, 3 * Bpc, Bs, 1); // three whole chunks
        var want = buf.ToArray();
        await T.WriteOk(v, 2 * Bpc, buf);
        Array.Fill(buf, (byte)0xEE);
        await T.WriteOk(v, 8 * Bpc, buf); // the same buffer, now other data, to other chunks
        Assert.That((await T.ReadOk(v, 2 * Bpc, 3 * Bpc)).SequenceEqual(want), Is.True, "what was written is what the buffer held during the call");
        Assert.That((await T.ReadOk(v, 8 * Bpc, 3 * Bpc)).All(b => b == 0xEE), Is.True);
    }
}
