namespace IntegrityTarget.Integrity.Tests.Crash;

/// <summary>
/// What a volume may show after a crash, derived from the recorded run: per LBA the commands that
/// changed it, per command when it was issued/completed (in harness order and in device operations).
/// A crash at point k means the device saw exactly its first k operations.
/// </summary>
internal sealed class CrashModel
{
    private readonly Command[] _byId;          // index = command id
    private readonly List<Command>[] _writers; // per LBA: data-changing commands, in issue order
    private readonly List<Command> _flushes;
    private readonly List<Command> _atomicCandidates;

    public CrashModel(IEnumerable<Command> commands, ulong blocks, bool writeThrough, uint atomicWriteBlocks)
    {
        var all = commands.OrderBy(c => c.Id).ToList();
        _byId = new Command[all.Count + 1];
        foreach (var c in all) _byId[c.Id] = c;
        _writers = new List<Command>[blocks];
        for (ulong b = 0; b < blocks; b++) _writers[b] = new List<Command>();
        foreach (var c in all.Where(c => c.ChangesData).OrderBy(c => c.StartSeq))
            for (ulong b = c.Lba; b < c.Lba + c.Blocks; b++) _writers[b].Add(c);
        _flushes = all.Where(c => c.Kind == CommandKind.Flush).ToList();
        _atomicCandidates = all.Where(c => c.Kind == CommandKind.Write && c.Blocks >= 2 && c.Blocks <= atomicWriteBlocks).ToList();
        WriteThrough = writeThrough;
        AtomicWriteBlocks = atomicWriteBlocks;
    }

    public bool WriteThrough { get; }
    public uint AtomicWriteBlocks { get; }
    public ulong Blocks => (ulong)_writers.Length;

    /// <summary>Checks the block versions read after a crash at device operation <paramref name="k"/>.</summary>
    public List<string> CheckCrash(long k, long[] versions, string?[] why, int limit = 12)
    {
        var errors = new List<string>();
        // A completed flush covers every command completed before the flush was issued.
        long flushedSeq = long.MinValue;
        Command? coveringFlush = null;
        foreach (var f in _flushes)
            if (f.CompleteOps <= k && f.StartSeq > flushedSeq) { flushedSeq = f.StartSeq; coveringFlush = f; }

        // Reached the device: issued before the cut, or completed by then (a queued write-back command or an
        // unmap of never-mapped blocks may complete without any device operation).
        bool Visible(Command c) => c.StartOps < k || c.CompleteOps <= k;
        bool Durable(Command c) => c.CompleteOps <= k && (WriteThrough || c.Fua || c.CompleteSeq < flushedSeq);
        string DurableWhy(Command c) => WriteThrough ? "completed with write-back off" : c.Fua ? "FUA completed" : $"flushed by completed {coveringFlush}";

        for (ulong b = 0; b < Blocks && errors.Count < limit; b++)
        {
            Command? required = null;
            foreach (var c in _writers[b])
                if (Durable(c) && (required is null || c.StartSeq > required.StartSeq)) required = c;
            var e = CheckBlock(b, versions[b], why[b], Visible, required, required is null ? "" : DurableWhy(required));
            if (e != null) errors.Add(e);
        }

        // (c) command atomicity: blocks of a write that no concurrent or later command touched show it all or not at all.
        foreach (var w in _atomicCandidates)
        {
            if (errors.Count >= limit) break;
            if (!Visible(w)) continue;
            var showing = new List<ulong>();
            var notShowing = new List<ulong>();
            for (ulong b = w.Lba; b < w.Lba + w.Blocks; b++)
            {
                bool contested = _writers[b].Any(c => c != w && Visible(c) && !c.OrderedBefore(w));
                if (contested || versions[b] < 0) continue;
                (versions[b] == w.Id ? showing : notShowing).Add(b);
            }
            if (showing.Count > 0 && notShowing.Count > 0)
                errors.Add($"(c) write {w} is not atomic (limit {AtomicWriteBlocks} blocks, {(w.CompleteOps <= k ? "completed" : "in flight")} at the crash): " +
                           $"LBAs {Ranges(showing)} show it, LBAs {Ranges(notShowing)} show older versions ({Describe(versions[notShowing[0]])} at {notShowing[0]})");
        }
        return errors;
    }

    /// <summary>Checks the blocks returned by a read issued during the workload.</summary>
    public string? CheckRead(Command read, ulong lba, long version, string? why)
    {
        Command? required = null;
        foreach (var c in _writers[lba])
            if (c.OrderedBefore(read) && (required is null || c.StartSeq > required.StartSeq)) required = c;
        var e = CheckBlock(lba, version, why, c => c.StartSeq < read.CompleteSeq, required, "completed before the read was issued");
        return e is null ? null : $"read {read}: {e}";
    }

    /// <param name="visible">Commands that could have reached the device.</param>
    /// <param name="required">The newest command this block must not be older than (durable / completed), if any.</param>
    private string? CheckBlock(ulong b, long v, string? why, Func<Command, bool> visible, Command? required, string requiredWhy)
    {
        if (v == BlockStamp.ReadFailed) return $"(a) LBA {b} does not read back: {why}";
        if (v == BlockStamp.Garbage) return $"(e) LBA {b} holds garbage: {why}";
        bool NotSuperseded(Command c) => required is null || c == required || !c.OrderedBefore(required);
        string lost = required is null ? "" : $"{required} ({requiredWhy})";
        if (v == BlockStamp.Zero)
        {
            if (required is null) return null; // never-written, or only non-durable writes: the initial zeros may stay
            if (_writers[b].Any(c => c.Kind != CommandKind.Write && visible(c) && NotSuperseded(c))) return null;
            return $"(b) LBA {b} lost durable {lost}: reads as zeros";
        }
        var w = v < _byId.Length ? _byId[v] : null;
        if (w is null || w.Kind != CommandKind.Write || !w.Touches(b))
            return $"(e) LBA {b} holds a version of command #{v}, which never wrote it";
        if (!visible(w)) return $"(e) LBA {b} holds the version of {w}, which was not issued yet";
        if (!NotSuperseded(w)) return $"(b) LBA {b} lost durable {lost}: holds the older {w}";
        return null;
    }

    private static string Describe(long v) => v == BlockStamp.Zero ? "zeros" : $"#{v}";

    private static string Ranges(List<ulong> lbas)
    {
        var parts = new List<string>();
        for (int i = 0; i < lbas.Count && parts.Count < 4;)
        {
            int j = i;
            while (j + 1 < lbas.Count && lbas[j + 1] == lbas[j] + 1) j++;
            parts.Add(i == j ? $"{lbas[i]}" : $"{lbas[i]}-{lbas[j]}");
            i = j + 1;
        }
        return string.Join(",", parts) + (parts.Count == 4 ? ",..." : "");
    }
}
