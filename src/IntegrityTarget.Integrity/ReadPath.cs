using System.Buffers;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity;

// Reads: every block verified against its tag (or taken from the overlay).
public sealed partial class IntegrityVolume
{
    public async ValueTask<VolumeResult> ReadAsync(ulong lba, Memory<byte> buffer, IoContext? context = null, CancellationToken ct = default)
    {
        if (buffer.Length % _bs != 0) return new VolumeResult(VolumeStatus.OutOfRange, lba, 0, $"buffer of {buffer.Length} bytes is not whole {_bs}-byte blocks");
        ulong blocks = (ulong)(buffer.Length / _bs);
        if (!InRange(lba, blocks)) return VolumeResult.Range(lba);
        if (blocks == 0) return VolumeResult.Success;
        if (ct.IsCancellationRequested) return new VolumeResult(VolumeStatus.Cancelled);
        ulong end = lba + blocks;
        var lk = await _locks.AcquireAsync(ChunkOf(lba), ChunkOf(end - 1), shared: true).ConfigureAwait(false);
        try
        {
            ulong cur = lba;
            int off = 0;
            while (cur < end)
            {
                long c = ChunkOf(cur);
                ulong pieceEnd = Math.Min(end, (ulong)(c + 1) * (ulong)_bpc);
                int n = (int)(pieceEnd - cur);
                // The rest of the caller's buffer (from this piece on) lets a piece that ends at its chunk's end
                // read its tags in the same device read: they follow the data in the slot.
                int bad = await ReadPieceAsync(c, cur, n, buffer[off..], ct).ConfigureAwait(false);
                if (bad >= 0)
                {
                    ulong fail = cur + (ulong)bad;
                    ReportFailure(fail, context);
                    return VolumeResult.Integrity(fail, fail - lba, $"{TagAlgorithm} tag mismatch at LBA {fail}");
                }
                cur = pieceEnd; off += n * _bs;
            }
        }
        catch (IOException e) { return VolumeResult.Io(lba, 0, e.Message); }
        finally { _locks.Release(lk); }
        Counters.AddRead(buffer.Length);
        return VolumeResult.Success;
    }

    /// <summary>Reads and verifies blocks of one chunk into the start of <paramref name="rest"/> (n blocks; bytes
    /// after them may be used as scratch and are overwritten by later pieces); on a mismatch re-reads from the
    /// failing block once (a racing home write or a transient read must not fail a good block). Returns the
    /// index of the first block that failed twice, or -1.</summary>
    private async ValueTask<int> ReadPieceAsync(long c, ulong start, int n, Memory<byte> rest, CancellationToken ct)
    {
        int bad = await ReadAndVerifyAsync(c, start, n, rest, ct).ConfigureAwait(false);
        if (bad < 0) return -1;
        int again = await ReadAndVerifyAsync(c, start + (ulong)bad, n - bad, rest.Slice(bad * _bs, (n - bad) * _bs), ct).ConfigureAwait(false);
        return again < 0 ? -1 : bad + again;
    }

    private async ValueTask<int> ReadAndVerifyAsync(long c, ulong start, int n, Memory<byte> rest, CancellationToken ct)
    {
        while (true)
        {
            // Home copies race with reads (the committer takes no range lock): a read that fetched a block
            // from the device before its home copy landed, and looked at the overlay after the entry left
            // it, would return the older content. The home sequence (odd while copies are being written)
            // tells whether that can have happened; then the read is simply done again.
            long seq = Volatile.Read(ref _homeSeq);
            if ((seq & 1) != 0) { await HomeCopyDoneAsync().ConfigureAwait(false); continue; }
            int r = await ReadOnceAsync(c, start, n, rest, seq, ct).ConfigureAwait(false);
            if (r != Stale) return r;
        }
    }

    private const int Stale = -2;

    private async ValueTask<int> ReadOnceAsync(long c, ulong start, int n, Memory<byte> rest, long seq, CancellationToken ct)
    {
        var mem = rest[..(n * _bs)];
        long e = Volatile.Read(ref _map[c]);
        if (e == 0) { mem.Span.Clear(); return -1; } // unmapped: zeros, nothing to verify
        long p = e - 1;
        int idx0 = (int)(start % (ulong)_bpc);
        int ts = _g.TagSize;
        long dOff = _g.SlotOffset(p) + (long)idx0 * _bs;
        // A piece that runs to the end of a full chunk is followed on the device by the tag region: when the
        // caller's buffer has room, one device read brings data and the current tags (never a cached copy).
        int joined = n * _bs + (int)Geometry.RoundUp((long)(idx0 + n) * ts, 512);
        if (idx0 + n == _bpc && rest.Length >= joined)
        {
            await _dev.ReadAsync(dOff, rest[..joined], ct).ConfigureAwait(false);
            return VerifyRead(start, n, mem, rest.Span.Slice(n * _bs + idx0 * ts, n * ts), seq);
        }
        await _dev.ReadAsync(dOff, mem, ct).ConfigureAwait(false);
        long tOff = _g.TagOffset(p, idx0);
        long tStart = tOff & ~511L, tEnd = Geometry.RoundUp(tOff + (long)n * ts, 512);
        byte[] tags = _buffers.Rent((int)(tEnd - tStart));
        try
        {
            await _dev.ReadAsync(tStart, tags.AsMemory(0, (int)(tEnd - tStart)), ct).ConfigureAwait(false);
            return VerifyRead(start, n, mem, tags.AsSpan((int)(tOff - tStart), n * ts), seq);
        }
        finally { _buffers.Return(tags); }
    }

    /// <summary>Lays not-yet-applied journaled blocks over what was read, then verifies every other block.
    /// Returns <see cref="Stale"/> when home copies were written since <paramref name="seq"/>.</summary>
    private int VerifyRead(ulong start, int n, Memory<byte> mem, ReadOnlySpan<byte> tags, long seq)
    {
        if (!OverlayCopy(start, n, mem, seq, out bool[]? fromOverlay)) return Stale;
        return _tagger.VerifyBlocks(start, mem.Span, _bs, tags, fromOverlay);
    }

    /// <summary>The one log event (and counter) of a verification failure.</summary>
    private void ReportFailure(ulong lba, IoContext? ctx)
    {
        Counters.AddMismatch();
        _log.Error("Integrity verification failed on {Volume} at LBA {Lba} ({TagAlgorithm}); unit {Unit}, initiator {Initiator}, command {Command}",
            Name, lba, TagAlgorithm, ctx?.Unit, ctx?.Initiator, ctx?.Command);
    }
}
