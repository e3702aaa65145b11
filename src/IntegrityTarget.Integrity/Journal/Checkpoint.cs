using System.Buffers.Binary;

namespace IntegrityTarget.Integrity;

// Checkpoints: the journal's effects made permanent so its space can be reused.
public sealed partial class IntegrityVolume
{
    private readonly SortedSet<long> _dirtyMapSectors = new();

    /// <summary>
    /// Makes the journal's effects permanent so its space can be reused (write path 7): a durable point
    /// that proves everything, every pending block home, the dirty sectors of the committed map (now equal
    /// to the proven one), a flush (home copies included), and only then the journal superblock moving the
    /// start past every transaction (one atomic sector write with FUA).
    /// </summary>
    private async ValueTask CheckpointAsync(CancellationToken ct)
    {
        await EnsureProvenAsync(ct).ConfigureAwait(false);
        await ApplyPendingAsync(ct).ConfigureAwait(false);
        if (_pendingHome.Count > 0) throw new InvalidOperationException($"{Name}: {_pendingHome.Count} journaled blocks could not go home at a checkpoint");
        await WriteMapSectorsAsync(_dirtyMapSectors, _committedMap, ct).ConfigureAwait(false);
        await FlushDeviceAsync(ct).ConfigureAwait(false);
        _checkpoints++;
        await WriteJournalSuperAsync(new JournalSuper(_journalEpoch, _nextSeq, 0, _checkpoints, 0), ct).ConfigureAwait(false);
        _dirtyMapSectors.Clear();
        _ringHead = 0;
        _ringUsed = 0;
    }

    private ValueTask WriteJournalSuperAsync(JournalSuper js, CancellationToken ct) =>
        _dev.WriteAsync(_g.JournalOffset, js.Serialize(), fua: true, ct);

    /// <summary>Writes the given map sectors from <paramref name="map"/>, each with its checksum.</summary>
    private async ValueTask WriteMapSectorsAsync(IEnumerable<long> sectors, long[] map, CancellationToken ct)
    {
        var sec = new byte[512];
        foreach (long s in sectors)
        {
            Array.Clear(sec);
            var (offset, first, count) = _g.MapSector(s);
            for (int k = 0; k < count; k++) BinaryPrimitives.WriteInt64LittleEndian(sec.AsSpan(k * 8), map[first + k]);
            BinaryPrimitives.WriteUInt32LittleEndian(sec.AsSpan(504), MapSectorCrc(s, sec));
            await _dev.WriteAsync(offset, sec, fua: false, ct).ConfigureAwait(false);
        }
    }
}
