using System.Buffers;
using IntegrityTarget.Storage;
using System.Diagnostics;

namespace IntegrityTarget.Integrity;

// Online scrub: every mapped block verified, throttled.
public sealed partial class IntegrityVolume
{
    /// <summary>
    /// Verifies every mapped block while the volume stays online (reads take the same shared range locks
    /// as any read, one chunk at a time), throttled to <see cref="ScrubOptions.MaxMBPerSecond"/>. Each bad
    /// LBA gets its one log event and counts as a mismatch; unmapped chunks read as zeros and are skipped.
    /// </summary>
    public async ValueTask<ScrubReport> ScrubAsync(ScrubOptions options, CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        ulong done = 0, skipped = 0;
        long mismatches = 0, ioErrors = 0;
        var bad = new List<ulong>();
        bool cancelled = false;
        double rate = options.MaxMBPerSecond is double r && r > 0 ? r * 1e6 : 0;
        byte[] buf = _buffers.Rent(_g.ChunkBytes);
        long lastReport = -1;
        try
        {
            for (long c = 0; c < _g.LogicalChunks; c++)
            {
                if (ct.IsCancellationRequested) { cancelled = true; break; }
                int cb = _g.BlocksInChunk(c);
                ulong cs = (ulong)c * (ulong)_bpc;
                var lk = await _locks.AcquireAsync(c, c, shared: true).ConfigureAwait(false);
                try
                {
                    if (Volatile.Read(ref _map[c]) == 0) skipped += (ulong)cb;
                    else
                    {
                        int pos = 0;
                        while (pos < cb)
                        {
                            // Always with the tags on the device (never cached ones), so damage there is found.
                            int b = await ReadPieceAsync(c, cs + (ulong)pos, cb - pos, buf.AsMemory(pos * _bs, (cb - pos) * _bs), fromDevice: true, ct).ConfigureAwait(false);
                            if (b < 0) break;
                            ulong fail = cs + (ulong)(pos + b);
                            ReportFailure(fail, options.Context);
                            mismatches++;
                            if (bad.Count < options.MaxListedBadLbas) bad.Add(fail);
                            pos += b + 1;
                        }
                    }
                }
                catch (IOException e)
                {
                    ioErrors++;
                    _log.Error("Scrub of {Volume}: read error in LBAs {First}..{Last}: {Error}", Name, cs, cs + (ulong)cb - 1, e.Message);
                }
                finally { _locks.Release(lk); }
                done += (ulong)cb;
                long pct = (long)(done * 1000 / BlockCount);
                if (pct != lastReport) { lastReport = pct; options.Progress?.Report(new ScrubProgress(done, BlockCount, mismatches)); }
                if (rate > 0)
                {
                    double due = (done - skipped) * (double)_bs / rate;
                    double ahead = due - sw.Elapsed.TotalSeconds;
                    if (ahead > 0.001)
                    {
                        try { await Task.Delay(TimeSpan.FromSeconds(ahead), ct).ConfigureAwait(false); }
                        catch (OperationCanceledException) { cancelled = true; break; }
                    }
                }
            }
        }
        finally { _buffers.Return(buf); }
        options.Progress?.Report(new ScrubProgress(done, BlockCount, mismatches));
        _log.Information("Scrub of {Volume}: {Checked} blocks checked, {Skipped} unmapped skipped, {Mismatches} mismatches, {IoErrors} read errors in {Seconds:F1} s{Cancelled}",
            Name, done - skipped, skipped, mismatches, ioErrors, sw.Elapsed.TotalSeconds, cancelled ? " (cancelled)" : "");
        return new ScrubReport(done - skipped, skipped, mismatches, bad, ioErrors, sw.Elapsed, cancelled);
    }
}
