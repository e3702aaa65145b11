using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using NUnit.Framework;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// A device error during a journal commit fails the volume: the command that needed the commit and every
/// later one get an I/O error (none hangs), nothing queued after the failure is committed, and the device
/// reopened afterwards holds only readable blocks, each an acknowledged version.
/// </summary>
public class CommitFailureTests
{
    private const int Bs = 4096;

    /// <summary>A memory device whose writes and flushes throw while <see cref="Broken"/>; the next
    /// <see cref="FailNext"/> writes that start inside <see cref="FailArea"/> throw too. While
    /// <see cref="Gate"/> is set, writes at or after <see cref="GateFrom"/> announce themselves on
    /// <see cref="Entered"/> and wait for the gate to open.</summary>
    private sealed class BreakableDevice(MemoryBlockDevice inner) : ForwardingDevice(inner)
    {
        public volatile bool Broken;
        public int FailNext;
        public (long Offset, long Bytes) FailArea;
        public volatile TaskCompletionSource? Gate;
        public TaskCompletionSource Entered = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public long GateFrom = long.MaxValue;
        public override string Name => "breakable";

        private bool WriteFails(long offset) => Broken ||
            (offset >= FailArea.Offset && offset < FailArea.Offset + FailArea.Bytes && Volatile.Read(ref FailNext) > 0 && Interlocked.Decrement(ref FailNext) >= 0);

        public override async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
        {
            if (Gate is { } gate && offset >= GateFrom) { Entered.TrySetResult(); await gate.Task; }
            if (WriteFails(offset)) throw new IOException("simulated write error");
            await Inner.WriteAsync(offset, data, fua, ct);
        }

        public override ValueTask FlushAsync(CancellationToken ct = default) =>
            Broken ? ValueTask.FromException(new IOException("simulated flush error")) : Inner.FlushAsync(ct);
    }

    private static async Task<(MemoryBlockDevice Mem, BreakableDevice Dev)> Formatted(ulong blocks)
    {
        var mem = T.Memory(blocks);
        var dev = new BreakableDevice(mem);
        await using (var f = await IntegrityVolume.FormatAsync(dev, T.Format(), new CapturingSink().Logger()))
            await T.WriteOk(f, 0, T.Pattern(0, (int)blocks, Bs, 0), fua: true); // every chunk mapped: small writes are journaled
        return (mem, dev);
    }

    [Test]
    public async Task A_failed_commit_fails_that_command_and_every_later_one_without_hanging()
    {
        var (mem, dev) = await Formatted(256);
        using var _m = mem;
        var v = await IntegrityVolume.OpenAsync(dev, T.Open(), new CapturingSink().Logger());
        await T.WriteOk(v, 3, T.Pattern(3, 2, Bs, 1), fua: true);
        dev.Broken = true;
        var timeout = TimeSpan.FromSeconds(20);
        var fua = await v.WriteAsync(10, T.Pattern(10, 1, Bs, 2), fua: true).AsTask().WaitAsync(timeout);
        Assert.That(fua.Status, Is.EqualTo(VolumeStatus.IoError), $"the FUA write whose commit failed: {fua}");
        var later = await v.WriteAsync(20, T.Pattern(20, 1, Bs, 3), fua: false).AsTask().WaitAsync(timeout);
        var flush = await v.FlushAsync().AsTask().WaitAsync(timeout);
        var zeroes = await v.WriteZeroesAsync(40, 2, deallocate: false).AsTask().WaitAsync(timeout);
        Assert.Multiple(() =>
        {
            Assert.That(later.Status, Is.EqualTo(VolumeStatus.IoError), $"a write after the failure: {later}");
            Assert.That(flush.Status, Is.EqualTo(VolumeStatus.IoError), $"a flush after the failure: {flush}");
            Assert.That(zeroes.Status, Is.EqualTo(VolumeStatus.IoError), $"write-zeroes after the failure: {zeroes}");
        });
        await v.DisposeAsync().AsTask().WaitAsync(timeout);

        dev.Broken = false;
        await using var again = await IntegrityVolume.OpenAsync(dev, T.Open(), new CapturingSink().Logger());
        var all = await T.ReadOk(again, 0, 256);
        var expected = T.Pattern(0, 256, Bs, 0);
        T.Pattern(3, 2, Bs, 1).CopyTo(expected, 3 * Bs);
        Assert.That(all.AsSpan(0, 10 * Bs).SequenceEqual(expected.AsSpan(0, 10 * Bs)), "the durable write before the failure survives");
        Assert.That(all.AsSpan(20 * Bs, Bs).SequenceEqual(expected.AsSpan(20 * Bs, Bs)), "the write refused after the failure never lands");
        Assert.That(all.AsSpan(40 * Bs, 2 * Bs).SequenceEqual(expected.AsSpan(40 * Bs, 2 * Bs)), "the write-zeroes refused after the failure never lands");
    }

    [Test]
    public async Task A_write_in_flight_when_a_commit_fails_is_refused_and_never_committed()
    {
        var (mem, dev) = await Formatted(256);
        using var _m = mem;
        var v = await IntegrityVolume.OpenAsync(dev, T.Open(writeBack: true), new CapturingSink().Logger());
        var timeout = TimeSpan.FromSeconds(20);
        dev.FailArea = v.JournalArea;
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        dev.GateFrom = v.MapArea.Offset + v.MapArea.Bytes; // the data slots
        dev.Gate = gate;
        int chunkBlocks = v.ChunkBytes / Bs;
        // A whole-chunk write passes the volume's failed check, then stalls writing its new slot.
        var inFlight = v.WriteAsync((ulong)chunkBlocks, T.Pattern((ulong)chunkBlocks, chunkBlocks, Bs, 5), fua: false).AsTask();
        await dev.Entered.Task.WaitAsync(timeout);
        dev.Gate = null;
        // Meanwhile a commit fails: the volume is failed from here on.
        Volatile.Write(ref dev.FailNext, 1);
        var failed = await v.WriteAsync(3, T.Pattern(3, 1, Bs, 6), fua: true).AsTask().WaitAsync(timeout);
        Assert.That(failed.Status, Is.EqualTo(VolumeStatus.IoError), $"the write whose commit failed: {failed}");
        gate.SetResult();
        var late = await inFlight.WaitAsync(timeout);
        Assert.That(late.Status, Is.EqualTo(VolumeStatus.IoError), $"the write that was in flight when the volume failed: {late}");
        await v.DisposeAsync().AsTask().WaitAsync(timeout);

        await using var again = await IntegrityVolume.OpenAsync(dev, T.Open(), new CapturingSink().Logger());
        Assert.That(await T.ReadOk(again, (ulong)chunkBlocks, chunkBlocks), Is.EqualTo(T.Pattern((ulong)chunkBlocks, chunkBlocks, Bs, 0)),
            "the refused write's remap was never committed");
    }

    [Test]
    public async Task Writers_racing_a_transient_commit_failure_all_finish_and_leave_only_written_versions()
    {
        const int blocks = 2048; // 8 MiB: writes of 1.5 MiB are split into two atomic pieces
        var (mem, dev) = await Formatted(blocks);
        using var _m = mem;
        var v = await IntegrityVolume.OpenAsync(dev, T.Open(writeBack: true), new CapturingSink().Logger());
        dev.FailArea = v.JournalArea;
        var rnd = new Random(4242);
        var jobs = new List<(ulong Lba, int Blocks, int Version)>();
        for (int i = 0; i < 400; i++)
        {
            int n = i % 25 == 0 ? 384 : 1 + rnd.Next(6);
            jobs.Add(((ulong)rnd.Next(blocks - n), n, i + 1));
        }
        var results = new VolumeResult[jobs.Count];
        var writers = Enumerable.Range(0, 8).Select(w => Task.Run(async () =>
        {
            for (int i = w; i < jobs.Count; i += 8)
            {
                var (lba, n, ver) = jobs[i];
                if (i == 200) Volatile.Write(ref dev.FailNext, 1); // one journal write fails while the writers are busy
                results[i] = await v.WriteAsync(lba, T.Pattern(lba, n, Bs, ver), fua: i % 7 == 0);
            }
        })).ToArray();
        await Task.WhenAll(writers).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.That(results.Count(r => r.Status == VolumeStatus.IoError), Is.GreaterThan(0), "writes after the failure are refused");
        Assert.That(results.All(r => r.Status is VolumeStatus.Ok or VolumeStatus.IoError), Is.True, string.Join("; ", results.Where(r => r.Status is not (VolumeStatus.Ok or VolumeStatus.IoError))));
        await v.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(20));

        await using var again = await IntegrityVolume.OpenAsync(dev, T.Open(), new CapturingSink().Logger());
        var all = await T.ReadOk(again, 0, blocks); // every block verifies
        for (ulong lba = 0; lba < blocks; lba++)
        {
            var got = all.AsSpan((int)lba * Bs, Bs);
            int version = BitConverter.ToInt32(got[8..]);
            bool known = version == 0 || jobs.Any(j => j.Version == version && lba >= j.Lba && lba < j.Lba + (ulong)j.Blocks);
            Assert.That(known && got.SequenceEqual(T.Pattern(lba, 1, Bs, version)), Is.True, $"LBA {lba} holds version {version}, which no write put there");
        }
    }
}
