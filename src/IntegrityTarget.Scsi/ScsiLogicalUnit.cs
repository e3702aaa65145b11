using System.Buffers;
using System.Collections.Concurrent;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Scsi;

/// <summary>Per-I_T-nexus state kept by one logical unit: pending unit attentions.</summary>
internal sealed class NexusState
{
    private readonly List<ScsiError> _unitAttentions = new();
    private int _pending;

    public NexusState(ItNexus nexus) { Nexus = nexus; }
    public ItNexus Nexus { get; set; }
    public (string, string) Key => (Nexus.InitiatorPortName, Nexus.TargetPortName);

    public bool HasUnitAttention => Volatile.Read(ref _pending) != 0;

    // One IoContext per opcode, made on first use, so the data path does not allocate one per command (nor the
    // unit's name, which is composed on each use: it was a fifth of what a 4 KiB read allocated).
    private readonly IntegrityTarget.Storage.IoContext?[] _contexts = new IntegrityTarget.Storage.IoContext?[256];

    public IntegrityTarget.Storage.IoContext Context(ScsiLogicalUnit unit, CommandInfo info) =>
        _contexts[info.Opcode] ??= new IntegrityTarget.Storage.IoContext(unit.UnitName, Nexus.InitiatorName, info.Name);

    public void AddUnitAttention(SenseReason reason)
    {
        lock (_unitAttentions)
        {
            // A power-on/reset supersedes everything queued before it (SAM-5 5.14: most important first).
            if (reason is SenseReason.PowerOnReset or SenseReason.BusDeviceReset or SenseReason.ScsiBusReset) _unitAttentions.Clear();
            foreach (var u in _unitAttentions) if (u.Reason == reason) return;
            if (_unitAttentions.Count >= 16) _unitAttentions.RemoveAt(_unitAttentions.Count - 1);
            _unitAttentions.Add(ScsiError.Of(reason));
            Volatile.Write(ref _pending, _unitAttentions.Count);
        }
    }

    /// <summary>Drops a pending unit attention of <paramref name="reason"/> (REPORT LUNS clears 3F/0E).</summary>
    public void ClearUnitAttention(SenseReason reason)
    {
        if (!HasUnitAttention) return;
        lock (_unitAttentions)
        {
            _unitAttentions.RemoveAll(u => u.Reason == reason);
            Volatile.Write(ref _pending, _unitAttentions.Count);
        }
    }

    public bool TryTakeUnitAttention(out ScsiError ua)
    {
        ua = default;
        if (!HasUnitAttention) return false;
        lock (_unitAttentions)
        {
            if (_unitAttentions.Count == 0) return false;
            ua = _unitAttentions[0];
            _unitAttentions.RemoveAt(0);
            Volatile.Write(ref _pending, _unitAttentions.Count);
            return true;
        }
    }

    // EXTENDED COPY status held for RECEIVE COPY RESULTS, by list identifier; gone with the nexus.
    private Dictionary<byte, CopyStatus>? _copies;

    /// <summary>Registers a copy under <paramref name="listId"/>; false while a copy with that identifier is still running.</summary>
    public bool TryStartCopy(byte listId, out CopyStatus status)
    {
        lock (_unitAttentions)
        {
            _copies ??= new();
            if (_copies.TryGetValue(listId, out var old) && old.State == CopyStatus.InProgress) { status = old; return false; }
            _copies[listId] = status = new CopyStatus();
            return true;
        }
    }

    public bool TryGetCopyStatus(byte listId, out CopyStatus status)
    {
        lock (_unitAttentions)
        {
            status = null!;
            return _copies != null && _copies.TryGetValue(listId, out status!);
        }
    }

    public void ForgetCopyStatus(byte listId)
    {
        lock (_unitAttentions) _copies?.Remove(listId);
    }

    public void ClearUnitAttentions()
    {
        lock (_unitAttentions) { _unitAttentions.Clear(); Volatile.Write(ref _pending, 0); }
    }
}

/// <summary>
/// One SCSI logical unit (SBC-3 direct-access block device) over an <see cref="IBlockVolume"/>. Commands
/// are dispatched through <see cref="OpcodeTable"/>; handlers return reasons and sense is built in
/// <see cref="SenseBuilder"/>. All state is per LU and per nexus.
/// </summary>
public sealed partial class ScsiLogicalUnit : ILogicalUnit
{
    private readonly ConcurrentDictionary<(string, string), NexusState> _nexuses = new();
    private readonly Serilog.ILogger _log;
    private readonly LbaRangeLock _rangeLock = new();
    private readonly byte[] _naa;
    private readonly string _unitName;

    public ScsiLogicalUnit(ulong lun, IBlockVolume volume, LogicalUnitOptions options, Serilog.ILogger log)
    {
        ArgumentNullException.ThrowIfNull(volume);
        ArgumentNullException.ThrowIfNull(options);
        var problems = options.Validate();
        if (problems.Count > 0) throw new ArgumentException($"LUN {lun}: invalid options: {string.Join("; ", problems)}", nameof(options));
        Lun = lun; Volume = volume; Options = options; _log = log.ForContext("Lun", lun);
        _unitName = $"LUN {lun}";
        _naa = DeriveNaa(options.IdentitySeed);
        DeviceErrors = new DeviceErrorLog(_log, options.VolumeLogsDeviceErrors, options.DeviceErrorLogWindow);
        MaxTransferBlocks = options.MaxTransferBlocks != 0 ? options.MaxTransferBlocks : (uint)((16 << 20) / volume.BlockSize);
        _mode = new ModeState(volume.WriteBack);
        var store = options.ReservationStore ?? (options.PersistentReservationFile is { } f ? new IntegrityTarget.Storage.DurableFile(f) : null);
        _pr = new PersistentReservations(store, options.ReservationsSurviveFailover, _log);
        _pr.Load();
        _groups = (options.PortGroups ?? TargetPortGroup.Single).ToArray();
        for (int i = 0; i < _groups.Length; i++)
            foreach (var port in _groups[i].RelativePorts) _groupOfPort[port] = i;
        _groupStates = _groups.Select(g => options.InitialAccessStates?.GetValueOrDefault(g.Id, AluaState.ActiveOptimized) ?? AluaState.ActiveOptimized).ToArray();
        _allActive = _groupStates.All(st => st is AluaState.ActiveOptimized or AluaState.ActiveNonOptimized);
    }

    public ulong Lun { get; }
    public IBlockVolume Volume { get; }
    public LogicalUnitOptions Options { get; }
    public uint MaxTransferBlocks { get; }
    /// <summary>The NAA-6 designator of VPD page 83h (16 bytes), stable for a given identity seed.</summary>
    public ReadOnlyMemory<byte> NaaIdentifier => _naa;
    /// <summary>Blocks known to fail verification and the last scrub (LOG SENSE integrity page, metrics).</summary>
    public UnitHealth Health { get; } = new();
    /// <summary>Device I/O errors met by this unit's commands: counted, and logged once each unless the volume logs them itself.</summary>
    public DeviceErrorLog DeviceErrors { get; }

    internal ScsiTarget? Target { get; private set; }
    public event Action<ulong, IReadOnlyCollection<string>>? AbortTasksRequested;

    public void AttachTo(ScsiTarget target) => Target = target;

    ScsiLogicalUnit? ILogicalUnit.Local => this;

    internal string UnitName => Target == null ? _unitName : $"{Target.Name} {_unitName}";

    internal NexusState GetNexus(ItNexus nexus)
    {
        var key = (nexus.InitiatorPortName, nexus.TargetPortName);
        if (_nexuses.TryGetValue(key, out var s)) return s;
        // A static factory: a lambda capturing the parameter made its closure on every call, found or not.
        return _nexuses.GetOrAdd(key, static (_, n) => new NexusState(n), nexus);
    }

    public void NexusCreated(ItNexus nexus) => NexusCreated(nexus, SenseReason.PowerOnReset);

    /// <summary>A nexus that is new to this unit, reporting <paramref name="ua"/> first (a gateway taking over a LUN reports 2A/06).</summary>
    public void NexusCreated(ItNexus nexus, SenseReason ua)
    {
        var s = new NexusState(nexus);
        s.AddUnitAttention(ua);
        _nexuses[(nexus.InitiatorPortName, nexus.TargetPortName)] = s;
    }

    public void NexusLost(ItNexus nexus)
    {
        _nexuses.TryRemove((nexus.InitiatorPortName, nexus.TargetPortName), out _);
        ReleaseSpc2If(nexus);
    }

    /// <summary>
    /// LOGICAL UNIT RESET / warm reset: SPC-2 reservation released and every nexus, the issuer's included,
    /// gets the reset unit attention (SAM: the reset is reported on every I_T nexus; libiscsi's
    /// MultipathIO.Reset checks each path); PR state survives (SPC-4 5.9.12).
    /// </summary>
    public void Reset(SenseReason ua)
    {
        ReleaseSpc2All();
        foreach (var s in _nexuses.Values) s.AddUnitAttention(ua);
    }

    /// <summary>Queues a unit attention for every nexus except <paramref name="except"/>.</summary>
    internal void UnitAttentionForOthers(NexusState? except, SenseReason reason)
    {
        foreach (var s in _nexuses.Values) if (!ReferenceEquals(s, except)) s.AddUnitAttention(reason);
    }

    /// <summary>Queues a unit attention for one nexus (created when this unit has not seen it yet).</summary>
    public void UnitAttention(ItNexus nexus, SenseReason reason) => GetNexus(nexus).AddUnitAttention(reason);

    // Users of the volume: commands of this unit and EXTENDED COPYs of other units that read or write it.
    // Once retired (drained for removal) the unit admits none: increment-then-check here against
    // set-then-count in DrainAsync (both full fences), so no user slips in after the drain saw zero.
    private int _inFlight;
    private int _retired;

    /// <summary>Counts one user of this unit's volume; false (nothing counted) once the unit is retired.</summary>
    internal bool TryEnter()
    {
        Interlocked.Increment(ref _inFlight);
        if (Volatile.Read(ref _retired) == 0) return true;
        Interlocked.Decrement(ref _inFlight);
        return false;
    }

    internal void Exit() => Interlocked.Decrement(ref _inFlight);

    /// <summary>
    /// Retires the unit (after it was removed from its target) and waits until nothing uses its volume any
    /// more. A command that still finds it answers LOGICAL UNIT NOT SUPPORTED; a copy cannot reach it.
    /// </summary>
    public async Task DrainAsync(CancellationToken ct)
    {
        Interlocked.Exchange(ref _retired, 1);
        while (Volatile.Read(ref _inFlight) > 0) await Task.Delay(10, ct).ConfigureAwait(false);
    }

    /// <summary>Drops a pending unit attention of <paramref name="reason"/> for one nexus, if this unit has one queued.</summary>
    internal void ClearUnitAttention(ItNexus nexus, SenseReason reason)
    {
        if (_nexuses.TryGetValue((nexus.InitiatorPortName, nexus.TargetPortName), out var s)) s.ClearUnitAttention(reason);
    }

    internal void UnitAttentionFor(string initiatorPort, string targetPort, SenseReason reason)
    {
        if (_nexuses.TryGetValue((initiatorPort, targetPort), out var s)) s.AddUnitAttention(reason);
    }

    /// <summary>The volume's capacity changed (e.g. grown by the host): every nexus gets 2A/09.</summary>
    public void NotifyCapacityChanged() => UnitAttentionForOthers(null, SenseReason.CapacityChanged);

    public ValueTask<ScsiResponse> ExecuteAsync(ScsiCommand cmd, CancellationToken ct)
    {
        // Counted so a unit removed by a reload can wait for its last command before its volume closes; a
        // command that looked the unit up just before the removal finds it retired and is refused.
        if (!TryEnter()) return new(Respond(ScsiError.Of(SenseReason.LogicalUnitNotSupported), false));
        ValueTask<ScsiResponse> pending;
        try { pending = ExecuteCoreAsync(cmd, ct); }
        catch { Exit(); throw; }
        if (pending.IsCompleted) { Exit(); return pending; }
        return Counted(pending);
    }

    private async ValueTask<ScsiResponse> Counted(ValueTask<ScsiResponse> pending)
    {
        try { return await pending.ConfigureAwait(false); }
        finally { Exit(); }
    }

    private async ValueTask<ScsiResponse> ExecuteCoreAsync(ScsiCommand cmd, CancellationToken ct)
    {
        var cdb = cmd.Cdb.Span;
        if (cdb.Length == 0) return Respond(ScsiError.Of(SenseReason.InvalidOpcode), false);
        var info = OpcodeTable.Get(cdb[0]);
        var nexus = GetNexus(cmd.Nexus);
        bool dsense = _mode.DSense;
        if (info == null || !info.IsSupported || !Implements(info)) return Fail(nexus, ScsiError.Of(SenseReason.InvalidOpcode), info);
        if (info.ServiceActions != null)
        {
            if (cdb.Length < 2) return Fail(nexus, ScsiError.Cdb(1, 4), info);
            var sa = info.ServiceActions[cdb[1] & 0x1F];
            if (sa == null) return Fail(nexus, ScsiError.Cdb(1, 4), info);
            info = sa;
        }
        if (cdb.Length < info.CdbLength) return Fail(nexus, ScsiError.Cdb(0), info);
        var reserved = Cdb.CheckReserved(cdb, info.Usage);
        if (reserved.IsError) return Fail(nexus, reserved, info);

        if (!info.IgnoresUnitAttention && nexus.TryTakeUnitAttention(out var ua)) return Respond(ua, dsense);
        var inaccessible = AccessCheck(info, cmd.Nexus);
        if (inaccessible.IsError) return Respond(inaccessible, dsense);
        if (IsReservationConflict(info, nexus)) return Respond(ScsiError.Conflict, dsense);
        if (ct.IsCancellationRequested) return Respond(ScsiError.Of(SenseReason.TaskAborted), dsense);

        Outcome o;
        try
        {
            o = await info.Handler!(this, new Request(cmd, info, nexus, ct)).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            return Respond(ScsiError.Of(SenseReason.TaskAborted), dsense);
        }
        catch (Exception e)
        {
            // A bug or an unexpected backend exception: the initiator gets HARDWARE ERROR, we get the stack.
            _log.Error(e, "{Unit}: {Command} from {Initiator} failed unexpectedly", UnitName, info.Name, cmd.Nexus.InitiatorName);
            return Respond(ScsiError.Of(SenseReason.InternalTargetFailure), dsense);
        }
        return ToResponse(o, _mode.DSense);
    }

    /// <summary>Commands of the table this unit offers given its volume (UNMAP needs thin provisioning, WRITE ATOMIC an atomic unit).</summary>
    public bool Implements(CommandInfo c) => c.Opcode switch
    {
        0x42 => Volume.SupportsUnmap,
        0x9C => AtomicWriteBlocks > 0,
        _ => true,
    };

    /// <summary>Whether sense is reported in descriptor format (control mode page D_SENSE).</summary>
    public bool DescriptorSense => _mode.DSense;

    private ScsiResponse Fail(NexusState nexus, ScsiError e, CommandInfo? info)
    {
        // A pending unit attention is reported before a CDB error, except for the commands that ignore it.
        if ((info == null || !info.IgnoresUnitAttention) && nexus.TryTakeUnitAttention(out var ua)) return Respond(ua, _mode.DSense);
        return Respond(e, _mode.DSense);
    }

    /// <summary>The status and (fixed-format) sense of <paramref name="reason"/>, for a command answered without executing it.</summary>
    public static ScsiResponse Refuse(SenseReason reason) => Respond(ScsiError.Of(reason), false);

    internal static ScsiResponse Respond(in ScsiError e, bool descriptor)
    {
        var entry = SenseTable.Get(e.Reason);
        return new ScsiResponse { Status = entry.Status, Sense = SenseBuilder.Build(e, descriptor) };
    }

    private static ScsiResponse ToResponse(in Outcome o, bool descriptor)
    {
        var entry = SenseTable.Get(o.Error.Reason);
        var r = new ScsiResponse(o.Owner)
        {
            Status = entry.Status,
            Sense = o.Error.IsError ? SenseBuilder.Build(o.Error, descriptor) : ReadOnlyMemory<byte>.Empty,
            DataIn = o.Owner != null ? o.Owner.Memory[..o.Length] : ReadOnlyMemory<byte>.Empty,
            TransferLength = o.TransferLength >= 0 ? o.TransferLength : o.Length,
        };
        return r;
    }

    private readonly BufferPool _buffers = new();

    /// <summary>A pooled data-in buffer of exactly <paramref name="length"/> usable bytes, zeroed unless told otherwise.</summary>
    internal IMemoryOwner<byte> Rent(int length, bool clear = true) => _buffers.Rent(length, clear);

    /// <summary>Returns <paramref name="full"/> bytes of a built response truncated to the allocation length.</summary>
    internal static Outcome Reply(IMemoryOwner<byte> owner, int full, long allocationLength) =>
        Outcome.Data(owner, (int)Math.Min(full, allocationLength));

    private static byte[] DeriveNaa(string seed)
    {
        // NAA 6 (IEEE Registered Extended): 4-bit NAA, 24-bit OUI, 36-bit vendor id, 64-bit extension.
        // The OUI is a locally administered value; the rest is a hash of the seed, so it is stable across restarts.
        var h = System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(seed));
        var naa = new byte[16];
        uint oui = 0x0A_0B_0C; // locally administered (bit 1 of the first octet set)
        naa[0] = (byte)(0x60u | (oui >> 20));
        naa[1] = (byte)(oui >> 12);
        naa[2] = (byte)(oui >> 4);
        naa[3] = (byte)(((oui & 0xF) << 4) | (uint)(h[0] & 0x0F));
        h.AsSpan(1, 12).CopyTo(naa.AsSpan(4));
        return naa;
    }
}
