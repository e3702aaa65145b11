using System.Diagnostics;
using IntegrityTarget.Scsi;
using IntegrityTarget.Storage;
using Serilog;

namespace IntegrityTarget.Ha;

/// <summary>What the host tells the HA layer about one LUN: its lock, how to open its volume, how to make its logical unit.</summary>
public sealed class HaLunSpec
{
    public required string TargetIqn { get; init; }
    public required ulong Lun { get; init; }
    /// <summary>The backing store's lock: the only way this gateway gets a writable device for the LUN.</summary>
    public required IBackingStoreLock Lock { get; init; }
    /// <summary>Opens the LUN's volume on a device that holds the lock (the integrity journal is replayed here).</summary>
    public required Func<IBlockDevice, CancellationToken, ValueTask<IBlockVolume>> OpenVolume { get; init; }
    /// <summary>Block size, block count and thin provisioning read from a store opened read-only without the lock; null when unreadable.</summary>
    public required Func<IBlockDevice, (int BlockSize, ulong Blocks, bool Thin)?> ProbeGeometry { get; init; }
    /// <summary>Block size to report while the geometry cannot be read (the configured one).</summary>
    public int FallbackBlockSize { get; init; } = 512;
    /// <summary>
    /// Makes the LUN's logical unit over a volume with the given initial ALUA states; the device is the one the
    /// owner holds the lock on (where its reservations are kept, e.g. in image metadata). No device: a stand-in
    /// over <see cref="OfflineVolume"/> that must not touch the reservation store.
    /// </summary>
    public required Func<IBlockVolume, IBlockDevice?, IReadOnlyDictionary<ushort, AluaState>, ScsiLogicalUnit> CreateUnit { get; init; }

    public string Name => $"{TargetIqn}/{Lun}";
}

/// <summary>Who serves a LUN from this gateway's point of view.</summary>
public enum HaRole
{
    /// <summary>No owner reachable; this gateway waits for the lock (its port group is unavailable).</summary>
    Unowned,
    /// <summary>This gateway has the lock and is opening the volume (its port group is transitioning).</summary>
    Transitioning,
    /// <summary>This gateway holds the lock and serves the volume.</summary>
    Owner,
    /// <summary>Another gateway owns the LUN; this one forwards every command to it.</summary>
    Follower,
}

/// <summary>
/// One LUN as a gateway of a group serves it. Exactly one gateway owns it (holds the backing store's
/// lock and has the volume open); every other gateway forwards the LUN's commands and nexus events to the
/// owner over its peer link, so reservations, unit attentions, ALUA states and the data all live in one
/// logical unit. When no owner is reachable, this gateway answers from a stand-in unit whose port group
/// is unavailable, and keeps trying the lock; once it gets it, it opens the volume (replaying the
/// journal), becomes the owner, and every nexus gets ASYMMETRIC ACCESS STATE CHANGED.
/// </summary>
public sealed class HaLogicalUnit : ILogicalUnit
{
    private abstract record Mode(HaRole Role);
    private sealed record OwnerMode(ScsiLogicalUnit Unit, IBlockVolume Volume, IBlockDevice Device, Func<bool> StillHeld) : Mode(HaRole.Owner);
    private sealed record FollowerMode(OutgoingPeer Peer) : Mode(HaRole.Follower);
    private sealed record LocalMode(ScsiLogicalUnit Unit, HaRole Role) : Mode(Role);

    private readonly HaCoordinator _coordinator;
    private readonly HaOptions _o;
    private readonly ILogger _log;
    private readonly object _sync = new();
    private readonly Dictionary<(string, string), ItNexus> _localNexuses = new();
    private readonly SemaphoreSlim _wake = new(0, int.MaxValue);
    private volatile Mode _mode;
    private ScsiTarget? _target;
    private (int BlockSize, ulong Blocks, bool Thin) _geometry;

    internal HaLogicalUnit(HaCoordinator coordinator, HaLunSpec spec, ILogger log)
    {
        _coordinator = coordinator; _o = coordinator.Options; Spec = spec;
        _log = log.ForContext("Lun", spec.Lun);
        _geometry = (spec.FallbackBlockSize, 0, false);
        _mode = new LocalMode(Placeholder(AluaState.Unavailable), HaRole.Unowned);
    }

    public HaLunSpec Spec { get; }
    public ulong Lun => Spec.Lun;
    public string Name => Spec.Name;
    public HaRole Role => _mode.Role;
    /// <summary>The gateway that owns the LUN as far as this one knows (null while unowned).</summary>
    public string? OwnerGateway => _mode switch { OwnerMode => _o.Self, FollowerMode f => f.Peer.Gateway.Name, _ => null };
    /// <summary>The open volume while this gateway owns the LUN.</summary>
    public IBlockVolume? Volume => (_mode as OwnerMode)?.Volume;
    public ScsiLogicalUnit? Local => (_mode as OwnerMode)?.Unit;
    /// <summary>The LUN's block size and block count as last read from the store (also where another gateway owns it).</summary>
    public (int BlockSize, ulong Blocks) Geometry => (_geometry.BlockSize, _geometry.Blocks);
    /// <summary>Times this gateway opened the volume (each open replays the journal).</summary>
    public int Opens { get; private set; }
    /// <summary>Raised (on a pool thread) whenever <see cref="Role"/> changes.</summary>
    public event Action<HaLogicalUnit>? RoleChanged;
    public event Action<ulong, IReadOnlyCollection<string>>? AbortTasksRequested;

    public void AttachTo(ScsiTarget target)
    {
        _target = target;
        // The unit answering here now (an owner may have opened the volume before the target existed).
        switch (_mode)
        {
            case LocalMode l: l.Unit.AttachTo(target); break;
            case OwnerMode o: o.Unit.AttachTo(target); break;
        }
    }

    // ---- the ILogicalUnit surface: route by mode ---------------------------------------------------

    /// <summary>The unit answering here: the owner's, or the stand-in's; null while following another gateway.</summary>
    private ScsiLogicalUnit? HereUnit => _mode switch { OwnerMode o => o.Unit, LocalMode l => l.Unit, _ => null };

    public async ValueTask<ScsiResponse> ExecuteAsync(ScsiCommand command, CancellationToken ct)
    {
        var mode = _mode;
        if (mode is not FollowerMode f) return await HereUnitOf(mode).ExecuteAsync(command, ct).ConfigureAwait(false);
        var r = await f.Peer.ForwardAsync(Spec.TargetIqn, Spec.Lun, command, ct).ConfigureAwait(false);
        if (r != null) return r;
        // The owner is gone or gave the LUN up while this command was on its way: its outcome is
        // unknown, so tell the initiator to retry once the LUN has settled on a gateway.
        Wake();
        return ScsiLogicalUnit.Refuse(SenseReason.NotAccessibleTransitioning);
    }

    private static ScsiLogicalUnit HereUnitOf(Mode mode) => mode switch
    {
        OwnerMode o => o.Unit,
        LocalMode l => l.Unit,
        _ => throw new InvalidOperationException("a follower has no unit of its own"),
    };

    public void NexusCreated(ItNexus nexus)
    {
        lock (_sync)
        {
            _localNexuses[(nexus.InitiatorPortName, nexus.TargetPortName)] = nexus;
            HereUnit?.NexusCreated(nexus);
        }
        _coordinator.LocalNexusUp(Spec.TargetIqn, nexus);
    }

    public void NexusLost(ItNexus nexus)
    {
        lock (_sync)
        {
            _localNexuses.Remove((nexus.InitiatorPortName, nexus.TargetPortName));
            HereUnit?.NexusLost(nexus);
        }
        _coordinator.LocalNexusDown(Spec.TargetIqn, nexus);
    }

    public void Reset(SenseReason ua)
    {
        if (_mode is FollowerMode f) f.Peer.SendReset(Spec.TargetIqn, Spec.Lun, ua);
        else HereUnit?.Reset(ua);
    }

    /// <summary>A follower's nexuses live in the owner's unit, which raises its own unit attentions.</summary>
    public void UnitAttention(ItNexus nexus, SenseReason reason) => HereUnit?.UnitAttention(nexus, reason);

    public bool DescriptorSense => HereUnit?.DescriptorSense ?? false;

    // ---- used by the coordinator --------------------------------------------------------------------

    /// <summary>The owner's unit, for commands and nexus events that arrive over a peer link.</summary>
    internal ScsiLogicalUnit? OwnerUnit => (_mode as OwnerMode)?.Unit;

    /// <summary>A peer's ownership claims changed or a link closed: re-decide soon.</summary>
    internal void Wake() => _wake.Release();

    /// <summary>Abort tasks of these initiator ports on this LUN (PREEMPT AND ABORT decided by the owner).</summary>
    internal void RaiseAbortTasks(IReadOnlyCollection<string> ports) => AbortTasksRequested?.Invoke(Spec.Lun, ports);

    private void SetMode(Mode mode)
    {
        var old = _mode;
        _mode = mode;
        if (old.Role != mode.Role || (old is FollowerMode fo && mode is FollowerMode fn && fo.Peer != fn.Peer))
        {
            _log.Information("{Lun}: {Role}{Owner}", Name, Describe(mode.Role), mode is FollowerMode f ? $" (owner: {f.Peer.Gateway.Name})" : "");
            ThreadPool.QueueUserWorkItem(_ => RoleChanged?.Invoke(this));
        }
    }

    private static string Describe(HaRole r) => r switch
    {
        HaRole.Owner => "this gateway owns the LUN",
        HaRole.Follower => "another gateway owns the LUN; commands are forwarded to it",
        HaRole.Transitioning => "taking the LUN over",
        _ => "no gateway owns the LUN that this one can reach; waiting for its lock",
    };

    private ScsiLogicalUnit Placeholder(AluaState selfState)
    {
        var (bs, blocks, thin) = _geometry;
        var unit = Spec.CreateUnit(new OfflineVolume(Name, bs, blocks, thin), null, _o.StatesWhenOwnedBy(null, selfState));
        if (_target != null) unit.AttachTo(_target);
        return unit;
    }

    /// <summary>Swaps the stand-in unit for another (new state), carrying the local nexuses over with 2A/06.</summary>
    private void SwitchToLocal(AluaState selfState, HaRole role)
    {
        lock (_sync)
        {
            var unit = Placeholder(selfState);
            foreach (var n in _localNexuses.Values) unit.NexusCreated(n, SenseReason.AsymmetricAccessStateChanged);
            SetMode(new LocalMode(unit, role));
        }
    }

    // ---- ownership ----------------------------------------------------------------------------------

    /// <summary>Reads the volume's geometry from its header without the lock, for the stand-in's answers.</summary>
    internal void ProbeGeometry()
    {
        try
        {
            using var d = Spec.Lock.OpenReadOnlyUnlocked();
            if (Spec.ProbeGeometry(d) is { } g) _geometry = g;
        }
        catch (Exception e) when (e is StorageException or IOException or UnauthorizedAccessException)
        {
            _log.Debug("{Lun}: geometry not readable yet ({Error})", Name, e.Message);
        }
        lock (_sync) if (_mode is LocalMode { Role: HaRole.Unowned }) SwitchToLocal(AluaState.Unavailable, HaRole.Unowned);
    }

    /// <summary>
    /// Decides, over and over, who serves the LUN: follow a peer that owns it, else try its lock; while
    /// owning, check the lock is still held (an RBD lock can be broken by a gateway that fenced this one).
    /// </summary>
    internal async Task RunAsync(CancellationToken stop)
    {
        var unclaimedSince = Stopwatch.GetTimestamp();
        string? heldBy = null, toldOf = null; // who held the lock at the last attempt that did not get it; who was logged
        while (!stop.IsCancellationRequested)
        {
            try
            {
                var mode = _mode;
                if (mode is OwnerMode o)
                {
                    if (!o.StillHeld())
                    {
                        _log.Error("{Lun}: the lock on {Store} was taken by another gateway; this gateway was fenced and stops serving the LUN", Name, Spec.Lock.Name);
                        await DemoteAsync(o, flush: false).ConfigureAwait(false);
                        continue;
                    }
                    await WaitAsync(_o.LockRetryInterval, stop).ConfigureAwait(false);
                    continue;
                }
                var claimant = _coordinator.PeerOwning(Spec.TargetIqn, Spec.Lun);
                if (claimant != null)
                {
                    if (mode is not FollowerMode f || f.Peer != claimant) lock (_sync) SetMode(new FollowerMode(claimant));
                    await WaitAsync(Timeout.InfiniteTimeSpan, stop).ConfigureAwait(false);
                    // Woken: the owner's claim may be gone from now on; a stale lock is broken only after a
                    // whole peer timeout without any claim (the owner's link closing is not proof enough).
                    unclaimedSince = Stopwatch.GetTimestamp();
                    continue;
                }
                if (mode is FollowerMode) SwitchToLocal(AluaState.Unavailable, HaRole.Unowned);
                // Nobody we can reach owns it. Break a stale lock only after the owner has been silent for a whole
                // peer timeout, or at once when every other gateway's host refuses connections (their processes are
                // gone, so the holder is no live gateway). RBD only; a file lock is never broken.
                bool refused = _coordinator.EveryPeerRefuses;
                bool holderIsGone = refused || Stopwatch.GetElapsedTime(unclaimedSince) >= _o.PeerTimeout;
                if (holderIsGone && heldBy != null && heldBy != toldOf)
                {
                    toldOf = heldBy; // once per holder
                    _log.Warning("{Lun}: {Holder} held the lock and no gateway that could be it is alive ({Why})", Name, heldBy,
                        refused ? "every other gateway's peer port refuses connections" : $"no owner heard from for {_o.PeerTimeout.TotalMilliseconds:0} ms");
                }
                var attempt = await Spec.Lock.TryAcquireAsync(holderIsGone, stop).ConfigureAwait(false);
                heldBy = attempt.Holder;
                if (attempt.Device != null)
                {
                    await TakeOverAsync(attempt, stop).ConfigureAwait(false);
                    continue;
                }
                await WaitAsync(_o.LockRetryInterval, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
            catch (Exception e) when (!stop.IsCancellationRequested)
            {
                // Whatever went wrong, keep deciding: a LUN must never be left without this loop.
                if (e is StorageException or IOException or UnauthorizedAccessException) _log.Error("{Lun}: cannot take the LUN over: {Error}", Name, e.Message);
                else _log.Error(e, "{Lun}: ownership loop failed", Name);
                await WaitAsync(_o.LockRetryInterval * 4, stop).ConfigureAwait(false);
            }
        }
    }

    private async Task WaitAsync(TimeSpan delay, CancellationToken stop)
    {
        try { await _wake.WaitAsync(delay, stop).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
        while (_wake.CurrentCount > 0) _wake.Wait(0); // one decision per burst of wake-ups
    }

    private async Task TakeOverAsync(LockAttempt attempt, CancellationToken stop)
    {
        var device = attempt.Device!;
        var sw = Stopwatch.StartNew();
        _log.Information("{Lun}: got the lock on {Store}; opening the volume", Name, Spec.Lock.Name);
        SwitchToLocal(AluaState.Transitioning, HaRole.Transitioning);
        IBlockVolume volume;
        try
        {
            volume = await Spec.OpenVolume(device, stop).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            device.Dispose(); // gives the lock back
            SwitchToLocal(AluaState.Unavailable, HaRole.Unowned);
            if (e is OperationCanceledException && stop.IsCancellationRequested) return;
            _log.Error(e is StorageException or IOException ? null : e, "{Lun}: the lock was ours but the volume did not open: {Error}", Name, e.Message);
            await WaitAsync(_o.LockRetryInterval * 4, stop).ConfigureAwait(false);
            return;
        }
        Opens++;
        _geometry = (volume.BlockSize, volume.BlockCount, volume.SupportsUnmap);
        var unit = Spec.CreateUnit(volume, device, _o.StatesWhenOwnedBy(_o.Self));
        if (_target != null) unit.AttachTo(_target);
        unit.AbortTasksRequested += (lun, ports) =>
        {
            AbortTasksRequested?.Invoke(lun, ports);
            _coordinator.BroadcastAbortTasks(Spec.TargetIqn, lun, ports);
        };
        lock (_sync)
        {
            foreach (var n in _localNexuses.Values) unit.NexusCreated(n, SenseReason.AsymmetricAccessStateChanged);
            foreach (var n in _coordinator.RemoteNexuses(Spec.TargetIqn)) unit.NexusCreated(n, SenseReason.AsymmetricAccessStateChanged);
            SetMode(new OwnerMode(unit, volume, device, attempt.StillHeld));
        }
        _coordinator.OwnershipChanged();
        _log.Information("{Lun}: this gateway is now the owner (active/optimized), {Ms} ms after getting the lock", Name, sw.ElapsedMilliseconds);
    }

    /// <summary>Gives the LUN up: the stand-in takes over the local nexuses, the volume is closed and the lock released.</summary>
    private async Task DemoteAsync(OwnerMode o, bool flush)
    {
        SwitchToLocal(AluaState.Unavailable, HaRole.Unowned);
        _coordinator.OwnershipChanged();
        if (flush)
        {
            var r = await o.Volume.FlushAsync(CancellationToken.None).ConfigureAwait(false);
            if (!r.IsOk) _log.Error("{Lun}: flushing before giving the LUN up failed: {Status} {Detail}", Name, r.Status, r.Detail);
        }
        try { await o.Volume.DisposeAsync().ConfigureAwait(false); }
        catch (Exception e) { _log.Error(e, "{Lun}: closing the volume failed", Name); }
        o.Device.Dispose();
    }

    /// <summary>At shutdown: flush and close the volume and release the lock, so another gateway takes over at once.</summary>
    internal async Task ReleaseAsync()
    {
        if (_mode is OwnerMode o)
        {
            await DemoteAsync(o, flush: true).ConfigureAwait(false);
            _log.Information("{Lun}: volume flushed and closed, lock on {Store} released", Name, Spec.Lock.Name);
        }
    }
}
