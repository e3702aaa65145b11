using IntegrityTarget.Storage;

namespace IntegrityTarget.Ha.Tests;

/// <summary>
/// A backing store two in-process gateways share, with the lock semantics of a file's flock: one holder at
/// a time, released when the holder disposes its device (or "dies": <see cref="CrashHolder"/>).
/// </summary>
internal sealed class SharedStore(long bytes)
{
    public readonly MemoryBlockDevice Memory = new(bytes);
    private readonly object _gate = new();
    private HeldDevice? _holder;

    public bool Held { get { lock (_gate) return _holder != null; } }

    /// <summary>
    /// The lock semantics of an RBD image instead: a holder that goes away without releasing (its process
    /// died) keeps the lock, and only a gateway that knows the holder is gone breaks it (fencing the old holder).
    /// </summary>
    public bool LikeRbd { get; init; }

    /// <summary>With <see cref="LikeRbd"/>: the holder's next dispose does not release the lock (its process dies).</summary>
    public void NextHolderDiesHoldingTheLock() { lock (_gate) if (_holder != null) _holder.DiesHolding = true; }

    /// <summary>Times a gateway broke the lock of a holder it was told is gone.</summary>
    public int Breaks { get; private set; }

    /// <summary>
    /// Someone outside the test's gateways breaks the lock and takes it (as a gateway fencing a dead-looking
    /// owner does with RBD): the old holder's device refuses writes from now on. Disposing the result frees the lock.
    /// </summary>
    public IDisposable Steal()
    {
        lock (_gate)
        {
            if (_holder != null) _holder.Fenced = true;
            var thief = new HeldDevice(this, "thief", readOnly: false);
            _holder = thief;
            return thief;
        }
    }

    public IBackingStoreLock LockFor(string gateway) => new StoreLock(this, gateway);

    private sealed class StoreLock(SharedStore store, string gateway) : IBackingStoreLock
    {
        public string Name => $"shared store (seen by {gateway})";

        public ValueTask<LockAttempt> TryAcquireAsync(bool holderIsGone, CancellationToken ct)
        {
            lock (store._gate)
            {
                if (store._holder != null && store.LikeRbd && holderIsGone)
                {
                    store._holder.Fenced = true; // broken and blocklisted
                    store._holder = null;
                    store.Breaks++;
                }
                if (store._holder != null) return new(new LockAttempt(null, store._holder.Gateway));
                var d = new HeldDevice(store, gateway, readOnly: false);
                store._holder = d;
                return new(new LockAttempt(d, null) { StillHeld = () => !d.Fenced });
            }
        }

        public IBlockDevice OpenReadOnlyUnlocked() => new HeldDevice(store, gateway, readOnly: true);
    }

    private sealed class HeldDevice(SharedStore store, string gateway, bool readOnly) : IBlockDevice
    {
        public string Gateway => gateway;
        public volatile bool Fenced;
        public volatile bool DiesHolding;
        public string Name => "shared";
        public long Length => store.Memory.Length;
        public int SectorSize => 512;
        /// <summary>Like the device it stands for: RBD prefers 4 KiB writes, a file or memory 512 B.</summary>
        public int PreferredWriteUnit => store.LikeRbd ? 4096 : store.Memory.PreferredWriteUnit;
        public bool CanDeallocate => true;

        private void CheckWrite()
        {
            if (readOnly) throw new IOException("read-only open");
            if (Fenced) throw new IOException("fenced: this gateway no longer holds the lock");
        }

        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) => store.Memory.ReadAsync(offset, buffer, ct);
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) { CheckWrite(); return store.Memory.WriteAsync(offset, data, fua, ct); }
        public ValueTask FlushAsync(CancellationToken ct = default) { if (Fenced) throw new IOException("fenced"); return store.Memory.FlushAsync(ct); }
        public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) { CheckWrite(); return store.Memory.DiscardAsync(offset, length, ct); }
        public (bool Allocated, long Length) GetAllocation(long offset) => store.Memory.GetAllocation(offset);

        public void Dispose()
        {
            if (readOnly || DiesHolding) return;
            lock (store._gate) if (store._holder == this) store._holder = null;
        }
    }
}
