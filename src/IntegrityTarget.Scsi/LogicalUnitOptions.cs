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
    /// <summary>Largest READ/WRITE in blocks (Block Limits MAXIMUM TRANSFER LENGTH); 0 = 16 MiB worth.</summary>
    public uint MaxTransferBlocks { get; init; }

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
        return errors;
    }
}
