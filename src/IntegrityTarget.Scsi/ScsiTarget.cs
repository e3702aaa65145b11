using System.Buffers.Binary;

namespace IntegrityTarget.Scsi;

/// <summary>
/// The SCSI side of one target: routes commands to its logical units and answers for LUNs that do not
/// exist (INQUIRY with peripheral qualifier 3, REPORT LUNS, REQUEST SENSE, else LOGICAL UNIT NOT SUPPORTED).
/// </summary>
public sealed class ScsiTarget : IScsiTarget
{
    // Copy-on-write: commands read the current dictionary without a lock; a reload swaps in a new one.
    private volatile Dictionary<ulong, ILogicalUnit> _units;
    private readonly Lock _change = new();
    private readonly System.Collections.Concurrent.ConcurrentDictionary<(string, string), ItNexus> _nexuses = new();
    private readonly Serilog.ILogger _log;
    private readonly BufferPool _buffers = new();

    public ScsiTarget(string name, IEnumerable<ILogicalUnit> units, Serilog.ILogger log)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("target name must not be empty", nameof(name));
        Name = name; _log = log;
        var map = new Dictionary<ulong, ILogicalUnit>();
        foreach (var u in units)
        {
            if (!map.TryAdd(u.Lun, u)) throw new ArgumentException($"target {name}: LUN {u.Lun} is configured twice", nameof(units));
            Attach(u);
        }
        _units = map;
        _luns = map.Keys.Order().ToArray();
    }

    private void Attach(ILogicalUnit u)
    {
        if (u.Lun > 0x3FFF) throw new ArgumentException($"target {Name}: LUN {u.Lun} is above 16383 (flat addressing limit)");
        u.AttachTo(this);
        u.AbortTasksRequested += (lun, ports) => AbortTasksRequested?.Invoke(lun, ports);
    }

    public string Name { get; }
    private volatile ulong[] _luns;
    public IReadOnlyList<ulong> Luns => _luns;
    public IReadOnlyCollection<ILogicalUnit> Units => _units.Values;

    /// <summary>
    /// Adds a logical unit while the target is served (reload). Every I_T nexus of the target gets REPORTED
    /// LUNS DATA HAS CHANGED on its other units, so initiators rescan.
    /// </summary>
    public void AddUnit(ILogicalUnit unit)
    {
        lock (_change)
        {
            if (_units.ContainsKey(unit.Lun)) throw new ArgumentException($"target {Name}: LUN {unit.Lun} exists already");
            Attach(unit);
            var map = new Dictionary<ulong, ILogicalUnit>(_units) { [unit.Lun] = unit };
            Publish(map);
        }
        _log.Information("{Target}: LUN {Lun} added", Name, unit.Lun);
    }

    /// <summary>
    /// Removes a logical unit while the target is served (reload): from now on its LUN answers LOGICAL UNIT
    /// NOT SUPPORTED, and every nexus gets REPORTED LUNS DATA HAS CHANGED on the remaining units. Commands
    /// already running finish; <see cref="ScsiLogicalUnit.DrainAsync"/> waits for them.
    /// </summary>
    public ILogicalUnit? RemoveUnit(ulong lun)
    {
        ILogicalUnit? gone;
        lock (_change)
        {
            if (!_units.TryGetValue(lun, out gone)) return null;
            var map = new Dictionary<ulong, ILogicalUnit>(_units);
            map.Remove(lun);
            Publish(map);
        }
        _log.Information("{Target}: LUN {Lun} removed", Name, lun);
        return gone;
    }

    private void Publish(Dictionary<ulong, ILogicalUnit> map)
    {
        _units = map;
        _luns = map.Keys.Order().ToArray();
        foreach (var u in map.Values)
            foreach (var n in _nexuses.Values) u.UnitAttention(n, SenseReason.ReportedLunsDataChanged);
    }

    public event Action<ulong, IReadOnlyCollection<string>>? AbortTasksRequested;

    /// <summary>Resolves EXTENDED COPY source/destination units outside this target (set by the host; null = this target only).</summary>
    public ICopyTargetResolver? CopyTargets { get; set; }

    /// <summary>A unit of this target with that designator, else one the host lets <paramref name="nexus"/>'s initiator reach.</summary>
    internal ScsiLogicalUnit? ResolveCopyTarget(ItNexus nexus, ReadOnlySpan<byte> designator)
    {
        foreach (var u in _units.Values) if (u.Local is { } l && l.MatchesDesignator(designator)) return l;
        return CopyTargets?.Resolve(nexus, designator);
    }

    public ValueTask<ScsiResponse> ExecuteAsync(ScsiCommand command, CancellationToken ct)
    {
        if (_units.TryGetValue(command.Lun, out var lu)) return lu.ExecuteAsync(command, ct);
        return new(NoSuchLun(command));
    }

    public ScsiResponse TransportFailure(ulong lun, in ScsiError error) =>
        ScsiLogicalUnit.Respond(error, _units.TryGetValue(lun, out var lu) && lu.DescriptorSense);

    /// <summary>The nexuses logged in to this target now.</summary>
    public IReadOnlyCollection<ItNexus> Nexuses => _nexuses.Values.ToList();

    private ScsiResponse NoSuchLun(ScsiCommand command)
    {
        var cdb = command.Cdb.Span;
        byte op = cdb.Length > 0 ? cdb[0] : (byte)0xFF;
        switch (op)
        {
            case 0x12 when cdb.Length >= 6 && (cdb[1] & 1) == 0 && cdb[2] == 0:
            {
                var owner = _buffers.Rent(ScsiLogicalUnit.StandardInquiryLength);
                ScsiLogicalUnit.WriteStandardInquiry(owner.Memory.Span, null, connected: false);
                int n = Math.Min(ScsiLogicalUnit.StandardInquiryLength, (int)BinaryPrimitives.ReadUInt16BigEndian(cdb[3..]));
                return new ScsiResponse(owner) { DataIn = owner.Memory[..n], TransferLength = n };
            }
            case 0xA0 when cdb.Length >= 12:
            {
                var o = ReportLuns(Luns, cdb, _buffers);
                if (!o.Error.IsError) InventoryReported(command.Nexus);
                return ToResponse(o);
            }
            case 0x03 when cdb.Length >= 6:
            {
                // REQUEST SENSE to a missing LUN reports LOGICAL UNIT NOT SUPPORTED as data, status GOOD (SPC-4 6.39).
                var sense = SenseBuilder.Build(ScsiError.Of(SenseReason.LogicalUnitNotSupported), (cdb[1] & 1) != 0);
                var owner = _buffers.Rent(sense.Length);
                sense.CopyTo(owner.Memory.Span);
                int n = Math.Min(sense.Length, (int)cdb[4]);
                return new ScsiResponse(owner) { DataIn = owner.Memory[..n], TransferLength = n };
            }
            default:
                return ScsiLogicalUnit.Respond(ScsiError.Of(SenseReason.LogicalUnitNotSupported), false);
        }
    }

    private static ScsiResponse ToResponse(Outcome o)
    {
        if (o.Error.IsError) return ScsiLogicalUnit.Respond(o.Error, false);
        return new ScsiResponse(o.Owner) { DataIn = o.Owner!.Memory[..o.Length], TransferLength = o.Length };
    }

    /// <summary>
    /// A REPORT LUNS was answered on <paramref name="nexus"/>: its pending REPORTED LUNS DATA HAS CHANGED unit
    /// attentions are cleared on every unit of the target (SAM-5 5.14 with UA_INTLCK_CTRL 00b), so an initiator
    /// that has the new inventory is not sent back to rescan by each of its other LUNs.
    /// </summary>
    internal void InventoryReported(ItNexus nexus)
    {
        foreach (var u in _units.Values) u.Local?.ClearUnitAttention(nexus, SenseReason.ReportedLunsDataChanged);
    }

    /// <summary>REPORT LUNS (SPC-4 6.33): peripheral addressing below 256, flat space addressing above.</summary>
    internal static Outcome ReportLuns(IReadOnlyList<ulong> luns, ReadOnlySpan<byte> cdb, BufferPool buffers)
    {
        byte select = cdb[2];
        long alloc = Cdb.AllocationLength32(cdb, 6);
        if (alloc < 16) return ScsiError.Cdb(6);
        if (select is not (0x00 or 0x01 or 0x02)) return ScsiError.Cdb(2);
        var list = select == 0x01 ? Array.Empty<ulong>() : luns; // no well-known LUNs
        int len = 8 + 8 * list.Count;
        var owner = buffers.Rent(len);
        var s = owner.Memory.Span;
        BinaryPrimitives.WriteUInt32BigEndian(s, (uint)(8 * list.Count));
        for (int i = 0; i < list.Count; i++)
        {
            ulong lun = list[i];
            var e = s.Slice(8 + 8 * i, 8);
            if (lun < 256) e[1] = (byte)lun;
            else { e[0] = (byte)(0x40 | (lun >> 8)); e[1] = (byte)lun; }
        }
        return ScsiLogicalUnit.Reply(owner, len, alloc);
    }

    public void NexusCreated(ItNexus nexus)
    {
        _nexuses[(nexus.InitiatorPortName, nexus.TargetPortName)] = nexus;
        foreach (var u in _units.Values) u.NexusCreated(nexus);
    }

    public void NexusLost(ItNexus nexus)
    {
        _nexuses.TryRemove((nexus.InitiatorPortName, nexus.TargetPortName), out _);
        foreach (var u in _units.Values) u.NexusLost(nexus);
    }

    public void LogicalUnitReset(ulong lun, ItNexus nexus)
    {
        if (_units.TryGetValue(lun, out var u)) u.Reset(SenseReason.BusDeviceReset);
        _log.Information("LUN reset of {Target} LUN {Lun} by {Initiator}", Name, lun, nexus.InitiatorName);
    }

    public void TargetReset(ItNexus nexus)
    {
        foreach (var u in _units.Values) u.Reset(SenseReason.ScsiBusReset);
        _log.Information("Target reset of {Target} by {Initiator}", Name, nexus.InitiatorName);
    }
}
