using System.Buffers.Binary;

namespace IntegrityTarget.Scsi;

/// <summary>
/// The SCSI side of one target: routes commands to its logical units and answers for LUNs that do not
/// exist (INQUIRY with peripheral qualifier 3, REPORT LUNS, REQUEST SENSE, else LOGICAL UNIT NOT SUPPORTED).
/// </summary>
public sealed class ScsiTarget : IScsiTarget
{
    private readonly Dictionary<ulong, ScsiLogicalUnit> _units;
    private readonly Serilog.ILogger _log;
    private readonly BufferPool _buffers = new();

    public ScsiTarget(string name, IEnumerable<ScsiLogicalUnit> units, Serilog.ILogger log)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("target name must not be empty", nameof(name));
        Name = name; _log = log;
        _units = new Dictionary<ulong, ScsiLogicalUnit>();
        foreach (var u in units)
        {
            if (!_units.TryAdd(u.Lun, u)) throw new ArgumentException($"target {name}: LUN {u.Lun} is configured twice", nameof(units));
            if (u.Lun > 0x3FFF) throw new ArgumentException($"target {name}: LUN {u.Lun} is above 16383 (flat addressing limit)", nameof(units));
            u.Target = this;
            u.AbortTasksRequested += (lun, ports) => AbortTasksRequested?.Invoke(lun, ports);
        }
        Luns = _units.Keys.Order().ToArray();
    }

    public string Name { get; }
    public IReadOnlyList<ulong> Luns { get; }
    public IReadOnlyCollection<ScsiLogicalUnit> Units => _units.Values;

    public event Action<ulong, IReadOnlyCollection<string>>? AbortTasksRequested;

    /// <summary>Resolves EXTENDED COPY source/destination units outside this target (set by the host; null = this target only).</summary>
    public ICopyTargetResolver? CopyTargets { get; set; }

    /// <summary>A unit of this target with that designator, else one the host lets <paramref name="nexus"/>'s initiator reach.</summary>
    internal ScsiLogicalUnit? ResolveCopyTarget(ItNexus nexus, ReadOnlySpan<byte> designator)
    {
        foreach (var u in _units.Values) if (u.MatchesDesignator(designator)) return u;
        return CopyTargets?.Resolve(nexus, designator);
    }

    public ValueTask<ScsiResponse> ExecuteAsync(ScsiCommand command, CancellationToken ct)
    {
        if (_units.TryGetValue(command.Lun, out var lu)) return lu.ExecuteAsync(command, ct);
        return new(NoSuchLun(command));
    }

    public ScsiResponse TransportFailure(ulong lun, in ScsiError error) =>
        ScsiLogicalUnit.Respond(error, _units.TryGetValue(lun, out var lu) && lu.DescriptorSense);

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
                return ToResponse(ReportLuns(Luns, cdb, _buffers));
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
        foreach (var u in _units.Values) u.NexusCreated(nexus);
    }

    public void NexusLost(ItNexus nexus)
    {
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
