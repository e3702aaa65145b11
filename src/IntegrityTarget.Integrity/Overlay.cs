
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

    /// <summary>Overlay blocks of one read whose images are in the ring: their indexes in the read, ring positions and
    /// tags (copied under _q: the records may be reused once homed).</summary>
    private sealed class RingReads(int tagSize)
    {
        public readonly List<(int Index, long Pos)> Blocks = new();
        public byte[] Tags = new byte[8 * tagSize];
        public void Add(int index, long pos, ReadOnlySpan<byte> tag)
        {
            int at = Blocks.Count * tag.Length;
            if (at + tag.Length > Tags.Length) Array.Resize(ref Tags, Tags.Length * 2);
            tag.CopyTo(Tags.AsSpan(at));
            Blocks.Add((index, pos));
        }
    }

    /// <summary>Copies acknowledged-but-not-yet-applied blocks whose images are still in memory over what was read
    /// from home; those already in the ring go into <paramref name="ring"/>, to be read from there and verified
    /// (<see cref="RingVerifyAsync"/>). False when home copies started or ended since <paramref name="seq"/> (what was
    /// read may predate one).</summary>
    private bool OverlayCopy(ulong start, int n, Memory<byte> mem, long seq, out bool[]? hit, out RingReads? ring)
    {
        hit = null;
        ring = null;
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
                    if (r.Buf != null) r.Buf.AsSpan(0, _bs).CopyTo(mem.Span.Slice(i * _bs, _bs));
                    else (ring ??= new RingReads(_g.TagSize)).Add(i, r.RingPos, r.Tag);
                    (hit ??= new bool[n])[i] = true;
                }
            return true;
        }
    }

    /// <summary>
    /// Reads the blocks <see cref="OverlayCopy"/> found in the ring into their places in <paramref name="mem"/> (one
    /// read per run of consecutive ring positions) and verifies each against its index tag. Returns the first failing
    /// block of the read, the earlier of that and <paramref name="homeBad"/> (the first failure among the blocks read
    /// from home), or <see cref="Stale"/> when home copies started or ended meanwhile. The ring bytes an entry names are
    /// not overwritten while it exists, and the read's shared range lock keeps every writer of its blocks out, so only
    /// a home copy can end an entry under the read: the home sequence tells.
    /// </summary>
    private async ValueTask<int> RingVerifyAsync(int homeBad, RingReads ring, ulong start, Memory<byte> mem, long seq, CancellationToken ct)
    {
        if (homeBad == Stale) return Stale;
        var b = ring.Blocks;
        for (int k = 0; k < b.Count;)
        {
            int j = k + 1;
            while (j < b.Count && b[j].Index == b[j - 1].Index + 1 && b[j].Pos == b[j - 1].Pos + _bs) j++;
            await _dev.ReadAsync(_g.JournalAreaOffset + b[k].Pos, mem.Slice(b[k].Index * _bs, (j - k) * _bs), ct).ConfigureAwait(false);
            k = j;
        }
        Interlocked.Add(ref _stRingReadBlocks, b.Count);
        if (Volatile.Read(ref _homeSeq) != seq) return Stale;
        int ts = _g.TagSize;
        for (int k = 0; k < b.Count; k++)
        {
            int i = b[k].Index;
            if (homeBad >= 0 && i > homeBad) break;
            if (!_tagger.Verify(start + (ulong)i, mem.Span.Slice(i * _bs, _bs), ring.Tags.AsSpan(k * ts, ts))) return i;
        }
        return homeBad;
    }

    /// <summary>Where the image of a journaled block lies on the device while the volume only indexes it (its transaction
    /// written, its home copy not yet made); null otherwise (tests).</summary>
    internal long? JournaledImageOffset(ulong lba)
    {
        lock (_q) return _overlay.TryGetValue(lba, out var r) && r.Buf == null ? _g.JournalAreaOffset + r.RingPos : null;
    }

    /// <summary>Journaled blocks shown to reads, and how many of them still hold their image in memory (tests).</summary>
    internal (int Entries, int Images) OverlayCounts
    {
        get { lock (_q) return (_overlay.Count, _overlay.Values.Count(r => r.Buf != null)); }
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
