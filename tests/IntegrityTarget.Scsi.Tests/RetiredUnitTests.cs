using IntegrityTarget.Scsi;
using IntegrityTarget.Storage;
using static IntegrityTarget.Scsi.Tests.ThirdPartyCopyTests;

namespace IntegrityTarget.Scsi.Tests;

/// <summary>
/// A unit removed by a reload is drained before its volume closes: nothing may reach the volume after the
/// drain finished, whether a command that looked the unit up just before the removal or an EXTENDED COPY
/// of another unit that reads or writes it.
/// </summary>
public class RetiredUnitTests
{
    /// <summary>A volume whose reads wait until <see cref="Open"/>; <see cref="ReadStarted"/> fires when one waits.</summary>
    private sealed class GatedVolume(ulong blocks) : IBlockVolume
    {
        private readonly PlainVolume _inner = new(new MemoryBlockDevice((long)blocks * 512), 512);
        private readonly TaskCompletionSource _gate = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly TaskCompletionSource ReadStarted = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public void Open() => _gate.TrySetResult();
        public string Name => "gated";
        public int BlockSize => 512;
        public ulong BlockCount => _inner.BlockCount;
        public uint MaxAtomicWriteBlocks => 8;
        public bool WriteBack { get => _inner.WriteBack; set => _inner.WriteBack = value; }
        public bool SupportsUnmap => false;
        public string TagAlgorithm => "none";
        public VolumeCounters Counters => _inner.Counters;
        public async ValueTask<VolumeResult> ReadAsync(ulong lba, Memory<byte> buffer, IoContext? context = null, CancellationToken ct = default)
        {
            ReadStarted.TrySetResult();
            await _gate.Task.WaitAsync(ct);
            return await _inner.ReadAsync(lba, buffer, context, ct);
        }
        public ValueTask<VolumeResult> WriteAsync(ulong lba, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) => _inner.WriteAsync(lba, data, fua, ct);
        public ValueTask<VolumeResult> FlushAsync(CancellationToken ct = default) => _inner.FlushAsync(ct);
        public ValueTask<VolumeResult> UnmapAsync(ulong lba, ulong blocks, CancellationToken ct = default) => _inner.UnmapAsync(lba, blocks, ct);
        public ValueTask<VolumeResult> WriteZeroesAsync(ulong lba, ulong blocks, bool deallocate, CancellationToken ct = default) => _inner.WriteZeroesAsync(lba, blocks, deallocate, ct);
        public ValueTask<LbaExtent> GetLbaStatusAsync(ulong lba, CancellationToken ct = default) => _inner.GetLbaStatusAsync(lba, ct);
        public bool CanGrow => false;
        public ValueTask<VolumeResult> GrowAsync(ulong newBlockCount, CancellationToken ct = default) => _inner.GrowAsync(newBlockCount, ct);
        public ValueTask DisposeAsync() => _inner.DisposeAsync();
    }

    static ScsiLogicalUnit Unit(ulong lun, IBlockVolume v) =>
        new(lun, v, new LogicalUnitOptions { Serial = $"S{lun}", IdentitySeed = $"retired-{lun}" }, Serilog.Core.Logger.None);

    static ScsiCommand Command(byte[] cdb, ItNexus nexus, ulong lun, byte[]? dataOut = null) => new()
    {
        Nexus = nexus, Lun = lun, Cdb = cdb, DataOut = dataOut ?? ReadOnlyMemory<byte>.Empty,
        ExpectedTransferLength = (uint)(dataOut?.Length ?? 512),
        Direction = dataOut != null ? DataDirection.Write : DataDirection.Read,
    };

    [Test]
    public async Task A_command_that_found_the_unit_before_its_removal_is_refused_once_the_drain_began()
    {
        var h = new Harness();
        var volume = new FlakyVolume(256);
        var unit = Unit(1, volume);
        h.Target.AddUnit(unit);
        h.Quiet(h.A);
        using (var ok = h.Exec(Harness.Read16(0, 1), lun: 1)) Assert.That(ok.Status, Is.EqualTo(ScsiStatus.Good));
        int reads = volume.Reads;

        h.Target.RemoveUnit(1);
        await unit.DrainAsync(CancellationToken.None);
        // The iSCSI layer looked the unit up before the removal and hands it the command only now.
        using var late = await unit.ExecuteAsync(Command(Harness.Read16(0, 1), h.A, 1), CancellationToken.None);
        SenseAssert.Is(late, 0x05, 0x25, 0x00);
        Assert.That(volume.Reads, Is.EqualTo(reads), "the retired unit's volume was not touched");
    }

    [Test]
    public async Task A_copy_writing_into_a_removed_unit_holds_its_drain_until_the_copy_is_done()
    {
        var source = new GatedVolume(1024);
        var destination = new FlakyVolume(1024);
        var src = Unit(0, source);
        var dst = Unit(1, destination);
        var target = new ScsiTarget(Harness.TargetName, [src, dst], Serilog.Core.Logger.None);
        var nexus = Harness.MakeNexus("iqn.2026-11.test:a", 1);
        Assert.That((await source.WriteAsync(0, Harness.Pattern(16 * 512, 8), fua: false)).IsOk, Is.True);

        var p = Params(1, 3, [NaaDesignator(src), NaaDesignator(dst)], [new Seg(0, 1, 16, 0, 100)]);
        var copy = target.ExecuteAsync(Command(XcopyCdb(p.Length), nexus, 0, p), CancellationToken.None).AsTask();
        await source.ReadStarted.Task.WaitAsync(TimeSpan.FromSeconds(30)); // the copy resolved both units and reads now

        target.RemoveUnit(1);
        var drain = dst.DrainAsync(CancellationToken.None);
        Assert.That(drain.IsCompleted, Is.False, "the drain waits for the copy that writes into the unit");
        source.Open();
        using (var r = await copy.WaitAsync(TimeSpan.FromSeconds(30)))
            Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), () => Convert.ToHexString(r.Sense.Span));
        await drain.WaitAsync(TimeSpan.FromSeconds(30));
        var back = new byte[16 * 512];
        Assert.That((await destination.ReadAsync(100, back)).IsOk, Is.True);
        Assert.That(back, Is.EqualTo(Harness.Pattern(16 * 512, 8)));
    }

    /// <summary>The host's resolver, still handing out a unit of another target that a reload is removing.</summary>
    private sealed class StaleResolver(ScsiLogicalUnit unit) : ICopyTargetResolver
    {
        public ScsiLogicalUnit? Resolve(ItNexus nexus, ReadOnlySpan<byte> designator) => unit.MatchesDesignator(designator) ? unit : null;
    }

    [Test]
    public async Task A_copy_cannot_reach_a_unit_whose_drain_began()
    {
        var h = new Harness();
        h.Quiet(h.A);
        var elsewhere = new FlakyVolume(1024);
        var gone = Unit(5, elsewhere);
        h.Target.CopyTargets = new StaleResolver(gone);
        await gone.DrainAsync(CancellationToken.None);

        var p = Params(2, 3, [NaaDesignator(h.Unit), NaaDesignator(gone)], [new Seg(0, 1, 8, 0, 0)]);
        using var r = h.Exec(XcopyCdb(p.Length), p);
        SenseAssert.Is(r, SenseKey.CopyAborted, 0x0D, 0x02);
        Assert.That(elsewhere.Writes, Is.EqualTo(0));
    }
}
