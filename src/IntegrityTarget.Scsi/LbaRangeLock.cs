namespace IntegrityTarget.Scsi;

/// <summary>
/// Exclusive locks on LBA ranges of one logical unit. COMPARE AND WRITE holds its range across the read,
/// compare and write so no other write to those blocks interleaves (SBC-3 5.2); plain writes take the
/// range too so they wait for an overlapping COMPARE AND WRITE. Non-overlapping holders never wait.
/// </summary>
internal sealed class LbaRangeLock
{
    private sealed class Held
    {
        public ulong Lba, End;
        public TaskCompletionSource? Waiters;
    }

    private readonly List<Held> _held = new();
    private readonly Stack<Held> _free = new();

    public readonly struct Releaser : IDisposable
    {
        private readonly LbaRangeLock? _owner; private readonly object? _entry;
        internal Releaser(LbaRangeLock owner, object entry) { _owner = owner; _entry = entry; }
        public void Dispose() => _owner?.Release((Held)_entry!);
    }

    public ValueTask<Releaser> AcquireAsync(ulong lba, ulong blocks, CancellationToken ct)
    {
        ulong end = blocks == 0 ? lba : lba + blocks;
        lock (_held)
        {
            if (FindOverlap(lba, end) == null) return ValueTask.FromResult(new Releaser(this, Add(lba, end)));
        }
        return SlowAcquire(lba, end, ct);
    }

    private async ValueTask<Releaser> SlowAcquire(ulong lba, ulong end, CancellationToken ct)
    {
        while (true)
        {
            Task wait;
            lock (_held)
            {
                var h = FindOverlap(lba, end);
                if (h == null) return new Releaser(this, Add(lba, end));
                h.Waiters ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = h.Waiters.Task;
            }
            await wait.WaitAsync(ct).ConfigureAwait(false);
        }
    }

    private Held? FindOverlap(ulong lba, ulong end)
    {
        foreach (var h in _held)
            if (lba < h.End && h.Lba < end || (lba == end && h.Lba <= lba && lba < h.End)) return h;
        return null;
    }

    private Held Add(ulong lba, ulong end)
    {
        var h = _free.Count > 0 ? _free.Pop() : new Held();
        h.Lba = lba; h.End = end; h.Waiters = null;
        _held.Add(h);
        return h;
    }

    private void Release(Held h)
    {
        TaskCompletionSource? w;
        lock (_held)
        {
            _held.Remove(h);
            w = h.Waiters; h.Waiters = null;
            if (_free.Count < 64) _free.Push(h);
        }
        w?.TrySetResult();
    }
}
