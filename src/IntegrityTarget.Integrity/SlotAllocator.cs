
namespace IntegrityTarget.Integrity;

// Free physical slots for redirect-on-write, and when replaced slots may be reused.
public sealed partial class IntegrityVolume
{
    private readonly object _freeLock = new();
    private readonly Stack<long> _free = new();
    private TaskCompletionSource _freed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly long _lowWater;
    /// <summary>Slots replaced (or unmapped) by remaps in transactions not yet durable: reused only after the
    /// next flush (non-empty only while _unsynced).</summary>
    private readonly List<(long Slot, bool Unmap)> _replaced = new();
    /// <summary>A writer waits for free slots: the committer flushes instead of leaving commits plain.</summary>
    private volatile bool _slotsWanted;

    private async ValueTask<List<long>> AllocateAsync(int n, CancellationToken ct)
    {
        while (true)
        {
            Task wait;
            lock (_freeLock)
            {
                if (_free.Count >= n)
                {
                    var list = new List<long>(n);
                    for (int i = 0; i < n; i++) list.Add(_free.Pop());
                    // Low water: start a commit now so replaced slots return before writers must wait.
                    if (_free.Count < _lowWater) RequestCommit();
                    return list;
                }
                wait = _freed.Task;
            }
            // Old slots come back once the remaps that replaced them are durable.
            _slotsWanted = true;
            RequestCommit();
            await wait.WaitAsync(ct).ConfigureAwait(false);
        }
    }

    /// <summary>Every written transaction is durable now: slots their remaps replaced return to the pool.</summary>
    private async ValueTask DurableAsync(CancellationToken ct)
    {
        _unsynced = false;
        _slotsWanted = false;
        if (_replaced.Count == 0) return;
        foreach (var (p, unmap) in _replaced)
        {
            // Unmap releases space; a slot replaced by an overwrite is reused soon, so punching it would only
            // churn the filesystem's allocation.
            if (unmap && _dev.CanDeallocate) await _dev.DiscardAsync(_g.SlotOffset(p), _g.SlotBytes, ct).ConfigureAwait(false);
            lock (_freeLock) _free.Push(p);
        }
        _replaced.Clear();
        TaskCompletionSource f;
        lock (_freeLock) { f = _freed; _freed = new(TaskCreationOptions.RunContinuationsAsynchronously); }
        f.TrySetResult();
    }
}
