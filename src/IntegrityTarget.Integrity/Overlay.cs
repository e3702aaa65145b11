
namespace IntegrityTarget.Integrity;

// The overlay: acknowledged partial-chunk writes shown to reads until their home copies land.
public sealed partial class IntegrityVolume
{
    private readonly Dictionary<ulong, DataRec> _overlay = new();
    /// <summary>Overlay entries per logical chunk, changed under _q: lets reads of a chunk with nothing
    /// pending skip the lock and the per-block lookups.</summary>
    private int[] _overlayInChunk;
    /// <summary>Even when no home copies are being written; bumped under _q before and after each batch of them.</summary>
    private long _homeSeq;
    private TaskCompletionSource _homeCopied = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Copies acknowledged-but-not-yet-applied blocks over what was read from home. False when
    /// home copies started or ended since <paramref name="seq"/> (what was read may predate one).</summary>
    private bool OverlayCopy(ulong start, int n, Memory<byte> mem, long seq, out bool[]? hit)
    {
        hit = null;
        // Writers publish overlay entries under _q before acknowledging; the per-chunk count is re-read under
        // the lock, so skipping the lock when it is zero only skips blocks no acknowledged write still holds.
        // The committer bumps _homeSeq before it writes home copies and again after it drops their entries.
        long c = ChunkOf(start);
        if (Volatile.Read(ref _overlayInChunk[c]) == 0) return Volatile.Read(ref _homeSeq) == seq;
        lock (_q)
        {
            if (_homeSeq != seq) return false;
            if (_overlayInChunk[c] == 0) return true;
            for (int i = 0; i < n; i++)
                if (_overlay.TryGetValue(start + (ulong)i, out var r))
                {
                    r.Buf.AsSpan(0, _bs).CopyTo(mem.Span.Slice(i * _bs, _bs));
                    (hit ??= new bool[n])[i] = true;
                }
            return true;
        }
    }

    private Task HomeCopyDoneAsync()
    {
        lock (_q) return (_homeSeq & 1) != 0 ? _homeCopied.Task : Task.CompletedTask;
    }

    /// <summary>Under _q.</summary>
    private void OverlayPut(DataRec r)
    {
        if (_overlay.TryAdd(r.Lba, r)) _overlayInChunk[ChunkOf(r.Lba)]++;
        else _overlay[r.Lba] = r;
    }

    /// <summary>Under _q.</summary>
    private void OverlayRemove(ulong lba)
    {
        if (_overlay.Remove(lba)) _overlayInChunk[ChunkOf(lba)]--;
    }
}
