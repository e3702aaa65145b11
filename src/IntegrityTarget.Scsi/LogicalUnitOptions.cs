namespace IntegrityTarget.Scsi;

/// <summary>Identity and policy of one logical unit, as configured by the host.</summary>
public sealed class LogicalUnitOptions
{
    /// <summary>T10 vendor identification, at most 8 printable ASCII characters.</summary>
    public string VendorId { get; init; } = "INTEGRTY";
    /// <summary>Product identification, at most 16 printable ASCII characters.</summary>
    public string ProductId { get; init; } = "IntegrityTarget";
    /// <summary>Product revision level, at most 4 printable ASCII characters.</summary>
    public string Revision { get; init; } = "0001";
    /// <summary>Unit serial number (VPD page 80h), printable ASCII.</summary>
    public required string Serial { get; init; }
    /// <summary>Seed of the NAA identifier (e.g. target IQN + LUN number); the same seed gives the same id after restarts.</summary>
    public required string IdentitySeed { get; init; }
    public bool ReadOnly { get; init; }
    /// <summary>Where persistent reservations with APTPL are kept across restarts; null = APTPL unsupported.</summary>
    public string? PersistentReservationFile { get; init; }
    /// <summary>Where persistent reservations are kept (overrides <see cref="PersistentReservationFile"/>), e.g. image metadata.</summary>
    public IntegrityTarget.Storage.IDurableRecord? ReservationStore { get; init; }
    /// <summary>
    /// Keep every reservation change in the store, APTPL or not, and reload all of it: for a LUN that
    /// several gateways serve, where another gateway taking over must still know the reservations.
    /// </summary>
    public bool ReservationsSurviveFailover { get; init; }
    /// <summary>Largest READ/WRITE in blocks (Block Limits MAXIMUM TRANSFER LENGTH); 0 = 16 MiB worth.</summary>
    public uint MaxTransferBlocks { get; init; }
    /// <summary>ALUA target port groups; null = one group (id 1) holding relative target port 1.</summary>
    public IReadOnlyList<TargetPortGroup>? PortGroups { get; init; }
    /// <summary>Starting access state per group id; groups not listed start active/optimized.</summary>
    public IReadOnlyDictionary<ushort, AluaState>? InitialAccessStates { get; init; }
    /// <summary>IMPLICIT TRANSITION TIME reported by RTPG (extended header): how long a transition may last.</summary>
    public byte ImplicitTransitionSeconds { get; init; } = 30;
    /// <summary>
    /// The operations whose device I/O errors the volume, or the device under it, logs itself (an RBD image every
    /// failed request: <see cref="VolumeOperation.All"/>; the integrity volume its journal and flush failures, which
    /// fail every later write: Write and Flush): the unit only counts those. For the others (all of them for a plain
    /// volume on a file or block device, which logs nothing) the unit logs each distinct failure (<see cref="DeviceErrorLog"/>).
    /// </summary>
    public VolumeOperation VolumeLogsDeviceErrors { get; init; }
    /// <summary>Shortest time between two summaries of repeated device I/O errors (<see cref="DeviceErrorLog"/>).</summary>
    public TimeSpan DeviceErrorLogWindow { get; init; } = TimeSpan.FromMinutes(1);

    /// <summary>Problems with these options, each a sentence naming the field; empty when valid.</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        void Ascii(string name, string? v, int max, bool required = true)
        {
            if (string.IsNullOrEmpty(v)) { if (required) errors.Add($"{name} must not be empty"); return; }
            if (v.Length > max) errors.Add($"{name} \"{v}\" is longer than {max} characters");
            if (v.Any(ch => ch < 0x20 || ch > 0x7E)) errors.Add($"{name} \"{v}\" must be printable ASCII");
        }
        Ascii(nameof(VendorId), VendorId, 8);
        Ascii(nameof(ProductId), ProductId, 16);
        Ascii(nameof(Revision), Revision, 4);
        Ascii(nameof(Serial), Serial, 252);
        if (string.IsNullOrEmpty(IdentitySeed)) errors.Add($"{nameof(IdentitySeed)} must not be empty");
        if (DeviceErrorLogWindow < TimeSpan.Zero) errors.Add($"{nameof(DeviceErrorLogWindow)} {DeviceErrorLogWindow} must not be negative");
        if (PortGroups != null)
        {
            if (PortGroups.Count == 0) errors.Add($"{nameof(PortGroups)} must hold at least one target port group");
            errors.AddRange(TargetPortGroup.Validate(PortGroups));
            foreach (var id in InitialAccessStates?.Keys ?? [])
                if (PortGroups.All(g => g.Id != id)) errors.Add($"{nameof(InitialAccessStates)} names target port group {id}, which is not configured");
        }
        return errors;
    }
}
