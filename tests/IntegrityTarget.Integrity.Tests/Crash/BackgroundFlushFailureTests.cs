using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Crash;

/// <summary>
/// A flush the committer started in the background fails while the volume is being closed. The close must not
/// go on as if the device were fine (flush again, checkpoint, move the journal start: a volume closed "clean"
/// after a device error); the volume fails instead, and nothing more is written to the device.
/// </summary>
public class BackgroundFlushFailureTests
{
    private const int Bs = 4096, Bpc = 32;
    private const ulong Blocks = 16 * Bpc;

    /// <summary>Passes everything through (gather writes arrive as one plain write); once armed, the next flush waits
    /// until released and then fails; counts what reaches the device after that.</summary>
    private sealed class GatedFlushDevice(MemoryBlockDevice inner) : ForwardingDevice(inner)
    {
        public readonly TaskCompletionSource FlushEntered = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly TaskCompletionSource Release = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public volatile bool Armed;
        public int WritesAfterFailure, FlushesAfterFailure;
        private volatile bool _failed;

        public override ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
        { if (_failed) Interlocked.Increment(ref WritesAfterFailure); return Inner.WriteAsync(offset, data, fua, ct); }
        public override ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
        { if (_failed) Interlocked.Increment(ref WritesAfterFailure); return Inner.DiscardAsync(offset, length, ct); }

        public override async ValueTask FlushAsync(CancellationToken ct = default)
        {
            if (_failed) Interlocked.Increment(ref FlushesAfterFailure);
            if (!Armed) { await Inner.FlushAsync(ct); return; }
            Armed = false;
            FlushEntered.TrySetResult();
            await Release.Task;
            _failed = true;
            throw new IOException("injected: flush failed (EIO)");
        }
    }

    [Test]
    public async Task A_background_flush_that_fails_during_close_fails_the_volume_instead_of_a_clean_checkpoint()
    {
        long bytes = IntegrityVolume.DeviceBytesFor(Blocks, Bs, TagAlgorithm.Crc32c, spareSlots: 4);
        var dev = new GatedFlushDevice(new MemoryBlockDevice(bytes, "gated"));
        var tuning = new OpenOptions { IdleHomeMs = Timeout.Infinite };
        var v = await IntegrityVolume.FormatAsync(dev, new FormatOptions { BlockSize = Bs, LogicalBlocks = Blocks, SpareSlots = 4, AllowTinySparePool = true, Tuning = tuning }, Serilog.Core.Logger.None);
        for (long c = 0; c < 16; c++)
            Assert.That((await v.WriteAsync((ulong)c * Bpc, T.Pattern((ulong)c * Bpc, Bpc, Bs, 1), fua: c == 15)).IsOk);

        // Three whole-chunk overwrites send three slots to limbo; the pool falls below half the spare and the
        // committer starts a flush in the background, which the device holds.
        dev.Armed = true;
        long background = v.BackgroundFlushes;
        for (long c = 0; c < 3; c++)
            Assert.That((await v.WriteAsync((ulong)c * Bpc, T.Pattern((ulong)c * Bpc, Bpc, Bs, 2), fua: false)).IsOk);
        await dev.FlushEntered.Task.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.That(v.BackgroundFlushes, Is.EqualTo(background + 1), "the held flush is the background one");

        var closing = v.DisposeAsync().AsTask();
        await Task.Delay(50);
        dev.Release.TrySetResult();
        await closing.WaitAsync(TimeSpan.FromSeconds(20));

        Assert.That(dev.FlushesAfterFailure, Is.Zero, "no flush after the failed one: it would claim what the failed one lost");
        Assert.That(dev.WritesAfterFailure, Is.Zero, "no checkpoint (map, journal start) written after a device error");
    }
}
