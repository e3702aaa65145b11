namespace IntegrityTarget.Integrity;

// The spare pool's durable points (docs/integrity-volume.md, write path 2, "Background flush"): limbo slots come
// back once the transaction that replaced them is flushed, and the committer starts that flush in the
// background when the free pool falls below half the spare, so writers keep writing while the disk catches up.
// Only the committer calls these.
public sealed partial class IntegrityVolume
{
    /// <summary>The flush started in the background and not yet harvested, and the last transaction it covers.</summary>
    private Task? _bgFlush;
    private ulong _bgCovered;

    /// <summary>Test knob (<see cref="OpenOptions.ReleaseLimboAtFlushStart"/>): the bug the crash harness must catch.</summary>
    private readonly bool _releaseLimboAtFlushStart;

    /// <summary>Background flushes started since open (for tests and benchmarks).</summary>
    internal long BackgroundFlushes { get; private set; }

    /// <summary>Called by the committer between transactions. Harvests a background flush that has completed;
    /// when writers are short of slots, waits for the one in flight first; starts a new one when the free pool
    /// is below the background water and limbo holds slots no completed or running flush will free.</summary>
    private async ValueTask SpareFlushAsync(CancellationToken ct)
    {
        if (_bgFlush != null && (_bgFlush.IsCompleted || _slotsLow)) await HarvestBackgroundFlushAsync(ct).ConfigureAwait(false);
        if (_slotsLow && _slots.FreeCount >= _slots.LowWater) _slotsLow = false;
        if (_bgFlush == null && !_slotsLow && _slots.FreeCount < _slots.BackgroundWater
            && _slots.NewestLimbo > _durableThrough && Unflushed)
        {
            _bgCovered = _nextSeq - 1;
            _flushEpoch++;
            BackgroundFlushes++;
            // On the thread pool, not here: a file's flush (fdatasync) runs to its end inside FlushAsync, so called
            // on the committer it stopped every commit, and every writer with it, for the whole flush (milliseconds
            // per background flush at 1 MiB writes). The flush may so start a little later than this point, which
            // only makes it cover more than _bgCovered claims (write path 2, "Background flush").
            _bgFlush = Task.Run(() => _dev.FlushAsync(CancellationToken.None).AsTask());
            _ = _bgFlush.ContinueWith(_ => Wake(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            if (_releaseLimboAtFlushStart)
                foreach (var (slot, discard) in _slots.TakeFlushed(_bgCovered)) await ReleaseSlotAsync(slot, discard, ct).ConfigureAwait(false);
        }
    }

    /// <summary>Waits for the background flush (a failure fails the volume, as any flush's does) and records what it
    /// made durable: limbo slots replaced up to it return to the pool, a marker written before it proves.</summary>
    private async ValueTask HarvestBackgroundFlushAsync(CancellationToken ct)
    {
        var t = _bgFlush!;
        _bgFlush = null;
        await t.ConfigureAwait(false);
        await FlushedThroughAsync(_bgCovered, ct).ConfigureAwait(false);
    }

    /// <summary>A flush that started after transaction <paramref name="covered"/> was written has completed.</summary>
    private async ValueTask FlushedThroughAsync(ulong covered, CancellationToken ct)
    {
        if (covered > _durableThrough) _durableThrough = covered;
        await ReleaseFlushedLimboAsync(ct).ConfigureAwait(false);
        if (_lastMarker != 0 && _lastMarker <= covered) await ProveThroughAsync(_lastMarker - 1, ct).ConfigureAwait(false);
    }

    /// <summary>Limbo slots whose replacing transaction is flushed go back to the pool.</summary>
    private async ValueTask ReleaseFlushedLimboAsync(CancellationToken ct)
    {
        var ready = _slots.TakeFlushed(_durableThrough);
        foreach (var (slot, discard) in ready) await ReleaseSlotAsync(slot, discard, ct).ConfigureAwait(false);
        if (ready.Count > 0) _slots.Signal();
    }

    /// <summary>At the committer's end: nothing may still be flushing when the device is closed. A flush that failed
    /// fails the volume (logged once), so a clean close does not checkpoint and call the volume clean after a device
    /// error; only an abandoned volume (its device already gone) ignores it.</summary>
    private async ValueTask DrainBackgroundFlushAsync()
    {
        var t = _bgFlush;
        _bgFlush = null;
        if (t == null) return;
        try { await t.ConfigureAwait(false); }
        catch (Exception e) when (!_abandon) { Fail(e, []); }
        catch { /* abandoned: nobody is told, the device is not ours any more */ }
    }
}
