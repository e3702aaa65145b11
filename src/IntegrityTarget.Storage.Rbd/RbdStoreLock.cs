using Serilog;

namespace IntegrityTarget.Storage.Rbd;

/// <summary>
/// An image shared by several gateways (failover): its exclusive lock is the one gate to writing it
/// (<see cref="IBackingStoreLock"/>). A live holder is never asked to let go; a holder whose gateway is known to
/// be gone has its lock broken and is blocklisted, as tcmu-runner does, so it cannot write again even if it was
/// only cut off. Each device that gets the lock has its own cluster connection: a blocklisted connection is
/// never used again.
/// </summary>
public sealed class RbdStoreLock(RbdImageSpec spec, CephClientOptions options, ILogger log) : IBackingStoreLock, IDisposable
{
    private RbdClient? _probe; // the connection for attempts that do not get the lock
    private readonly Lock _gate = new();

    public string Name => spec.ToString();

    public ValueTask<LockAttempt> TryAcquireAsync(bool holderIsGone, CancellationToken ct) =>
        new(Task.Run(() => TryAcquire(holderIsGone), ct));

    private LockAttempt TryAcquire(bool holderIsGone)
    {
        lock (_gate)
        {
            var client = _probe ??= RbdClient.Connect(options);
            RbdBlockDevice? device;
            IReadOnlyList<LockHolder> holders;
            try { device = RbdBlockDevice.OpenTakingOver(client, spec, holderIsGone, log, ownsClient: true, out holders); }
            catch { _probe = null; throw; } // the failed open disposed the connection
            if (device == null) return new LockAttempt(null, holders.Count == 0 ? null : string.Join(", ", holders));
            _probe = null; // the device owns the connection now
            log.Information("Opened RBD image {Image} for writing as {Client} ({Address}); holding its exclusive lock", spec.Display, options.ClientName, client.Address);
            return new LockAttempt(device, null) { StillHeld = () => device.Ownership?.IsOwner == true };
        }
    }

    public IBlockDevice OpenReadOnlyUnlocked() => RbdClient.Connect(options).OpenImage(spec, readOnly: true, log, ownsClient: true);

    public void Dispose()
    {
        lock (_gate) { _probe?.Dispose(); _probe = null; }
    }
}
