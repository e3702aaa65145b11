using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity;

// Growing a volume online (docs/integrity-volume.md, "Growing a volume online").
public sealed partial class IntegrityVolume
{
    /// <summary>The device can be enlarged (a file) and the superblock has room for one more segment.</summary>
    public bool CanGrow => _dev.CanGrow && _g.Segments.Count < Geometry.MaxSegments;

    /// <summary>
    /// Grows the volume to <paramref name="newBlockCount"/> blocks while it is served: the device grows, a new
    /// segment (map + slots) is appended at its end, and the superblock copies are rewritten one after the
    /// other with FUA. A crash at any point leaves the old or the new size, every block readable and verified.
    /// <see cref="BlockCount"/> changes only once the new size is durable.
    /// </summary>
    public async ValueTask<VolumeResult> GrowAsync(ulong newBlockCount, CancellationToken ct = default)
    {
        ulong now = BlockCount;
        if (newBlockCount < now)
            return VolumeResult.Unsupported($"{Name}: cannot shrink from {now} to {newBlockCount} blocks: shrinking a volume is not supported (it would discard the blocks past the new end)");
        if (newBlockCount == now) return VolumeResult.Unsupported($"{Name}: the volume already has {now} blocks");
        if (_failed != null) return FailedResult(now);
        var target = _g.Grown(newBlockCount);
        if (target.Segments.Count > Geometry.MaxSegments)
            return VolumeResult.Unsupported($"{Name}: cannot grow again: the superblock records at most {Geometry.MaxSegments} segments (one per grow); copy the data to a new volume of the size wanted");
        if (_dev.Length < target.DeviceBytes && !_dev.CanGrow)
            return VolumeResult.Unsupported($"{Name}: the device ({_dev.Name}, {_dev.Length} bytes) cannot grow and {target.DeviceBytes} bytes are needed for {newBlockCount} blocks");
        // Quiesce: every chunk exclusively (waits for the commands in flight), then the geometry switch runs on the
        // committer after everything queued before it, so no transaction is written while it changes.
        var lk = await _locks.AcquireAsync(0, long.MaxValue, shared: false).ConfigureAwait(false);
        try
        {
            // Not cancellable once queued: a switch stopped between the two superblock copies would leave the copy
            // on disk ahead of the size served.
            var u = new Unit { Exclusive = () => SwitchGeometryAsync(newBlockCount, CancellationToken.None) };
            if (!Enqueue(u)) return FailedResult(now);
            try { await u.Done.Task.ConfigureAwait(false); }
            catch (NotSupportedException e) { return VolumeResult.Unsupported($"{Name}: grow to {newBlockCount} blocks failed: {e.Message}"); }
            catch (Exception e) { return VolumeResult.Io(now, 0, $"{Name}: grow to {newBlockCount} blocks failed: {e.Message}"); }
        }
        finally { _locks.Release(lk); }
        _log.Information("Grew {Volume} from {Old} to {New} blocks ({Segments} segments, {Slots} slots)", Name, now, newBlockCount, _g.Segments.Count, _g.PhysicalSlots);
        return VolumeResult.Success;
    }

    /// <summary>
    /// The grow's steps, on the committer: (1) grow the device (durable when it returns); (2) zero the new
    /// segment's map area and flush; (3) the superblock with the next sequence into copy B, FUA, the commit
    /// point; (4) the same into copy A, FUA; then the in-memory map, overlay counts and slot pool grow.
    /// </summary>
    private async ValueTask SwitchGeometryAsync(ulong newBlockCount, CancellationToken ct)
    {
        var g2 = _g.Grown(newBlockCount);
        if (_dev.Length < g2.DeviceBytes) await _dev.GrowAsync(g2.DeviceBytes, ct).ConfigureAwait(false);
        if (g2.Segments.Count > _g.Segments.Count)
        {
            var seg = g2.Segments[^1];
            await ZeroAsync(_dev, seg.MapOffset, seg.MapBytes, ct).ConfigureAwait(false);
            await FlushDeviceAsync(ct).ConfigureAwait(false);
        }
        var sb2 = _sb.With(g2);
        var bytes = sb2.Serialize();
        await _dev.WriteAsync(Superblock.CopyOffset(1), bytes, fua: true, ct).ConfigureAwait(false);
        await _dev.WriteAsync(Superblock.CopyOffset(0), bytes, fua: true, ct).ConfigureAwait(false);
        long chunks = g2.LogicalChunks;
        if (chunks > _map.Length)
        {
            lock (_q)
            {
                var map = _map; Array.Resize(ref map, (int)chunks); _map = map;
                var committed = _committedMap; Array.Resize(ref committed, (int)chunks); _committedMap = committed;
                var inChunk = _overlayInChunk; Array.Resize(ref inChunk, (int)chunks); _overlayInChunk = inChunk;
            }
            _slots.Grow(g2.PhysicalSlots);
            _slots.LowWater = SlotAllocator.LowWaterFor(g2.SpareSlots);
            _slots.BackgroundWater = Math.Max(_slots.BackgroundWater, SlotAllocator.BackgroundWaterFor(g2.SpareSlots));
        }
        _sb = sb2;
        _g = g2;
    }
}
