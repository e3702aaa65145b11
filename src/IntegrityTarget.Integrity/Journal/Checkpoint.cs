using System.Buffers.Binary;

namespace IntegrityTarget.Integrity;

// Checkpoints: the journal's effects made permanent so its space can be reused.
public sealed partial class IntegrityVolume
{
    private readonly SortedSet<long> _dirtyMapSectors = new();

    /// <summary>
    /// Makes the journal's effects permanent so its space can be reused: committed map sectors are
    /// written, everything is flushed (home copies included), and only then does the journal superblock
    /// move the start past the applied transactions (one atomic sector write with FUA).
    /// </summary>
    private async ValueTask CheckpointAsync(CancellationToken ct)
    {
        await SyncAndApplyAsync(ct).ConfigureAwait(false);
        var sec = new byte[512];
        foreach (long s in _dirtyMapSectors)
        {
            Array.Clear(sec);
            for (int k = 0; k < Geometry.MapEntriesPerSector; k++)
            {
                long c = s * Geometry.MapEntriesPerSector + k;
                if (c >= _g.LogicalChunks) break;
                BinaryPrimitives.WriteInt64LittleEndian(sec.AsSpan(k * 8), _committedMap[c]);
            }
            BinaryPrimitives.WriteUInt32LittleEndian(sec.AsSpan(504), MapSectorCrc(s, sec));
            await _dev.WriteAsync(_g.MapOffset + s * 512, sec, fua: false, ct).ConfigureAwait(false);
        }
        await _dev.FlushAsync(ct).ConfigureAwait(false);
        _checkpoints++;
        await _dev.WriteAsync(_g.JournalOffset, new JournalSuper(_nextSeq, _checkpoints).Serialize(), fua: true, ct).ConfigureAwait(false);
        _dirtyMapSectors.Clear();
        _head = 0;
    }
}
