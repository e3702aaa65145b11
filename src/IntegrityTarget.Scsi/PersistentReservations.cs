using System.Buffers.Binary;
using System.Text.Json;

namespace IntegrityTarget.Scsi;

/// <summary>Persistent reservation types (SPC-4 6.15.2 table 170).</summary>
public enum PrType : byte
{
    WriteExclusive = 1, ExclusiveAccess = 3, WriteExclusiveRegistrantsOnly = 5, ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7, ExclusiveAccessAllRegistrants = 8,
}

/// <summary>One registered I_T nexus.</summary>
internal sealed class Registration
{
    public required string InitiatorPort { get; init; }
    public required string TargetPort { get; init; }
    public ushort RelativeTargetPortId { get; init; }
    public required byte[] TransportId { get; init; }
    public ulong Key { get; set; }
    public bool AllTargetPorts { get; init; }

    public bool Matches(ItNexus n) => InitiatorPort == n.InitiatorPortName && (AllTargetPorts || TargetPort == n.TargetPortName);
}

/// <summary>
/// Persistent reservation state of one logical unit (SPC-4 5.12). Guarded by its own lock. APTPL state is
/// kept in a durable record with the LUN so it survives a restart; when the LUN is served by several
/// gateways (<c>keepAll</c>), every change is kept there, because to the initiator a failover to another
/// gateway is not a power loss: its registrations and reservation must still be there.
/// </summary>
internal sealed class PersistentReservations
{
    private readonly IntegrityTarget.Storage.IDurableRecord? _store;
    private readonly bool _keepAll;
    private readonly Serilog.ILogger _log;
    public readonly object Lock = new();
    public readonly List<Registration> Registrations = new();
    public Registration? Holder;          // null with a reservation = all-registrants type
    public volatile bool Reserved; // read without the lock on the command fast path
    public PrType Type;
    public uint Generation;
    public bool Aptpl;

    public PersistentReservations(IntegrityTarget.Storage.IDurableRecord? store, bool keepAll, Serilog.ILogger log)
    { _store = store; _keepAll = keepAll && store != null; _log = log; }

    public bool SupportsAptpl => _store != null;

    public static bool IsAllRegistrants(PrType t) => t is PrType.WriteExclusiveAllRegistrants or PrType.ExclusiveAccessAllRegistrants;
    public static bool IsRegistrantsOnly(PrType t) => t is PrType.WriteExclusiveRegistrantsOnly or PrType.ExclusiveAccessRegistrantsOnly;

    public Registration? Find(ItNexus n)
    {
        foreach (var r in Registrations) if (r.Matches(n)) return r;
        return null;
    }

    /// <summary>Whether <paramref name="n"/> holds the reservation (all registrants hold an all-registrants one).</summary>
    public bool IsHolder(ItNexus n) =>
        Reserved && (IsAllRegistrants(Type) ? Find(n) != null : Holder != null && Holder.Matches(n));

    /// <summary>SPC-4 table 63: does a command of <paramref name="access"/> from <paramref name="n"/> conflict?</summary>
    public bool Conflicts(ReservationAccess access, ItNexus n)
    {
        if (!Reserved || access == ReservationAccess.Allowed || IsHolder(n)) return false;
        bool registered = Find(n) != null;
        switch (Type)
        {
            case PrType.WriteExclusive: return access == ReservationAccess.Write;
            case PrType.ExclusiveAccess: return true;
            case PrType.WriteExclusiveRegistrantsOnly:
            case PrType.WriteExclusiveAllRegistrants: return !registered && access == ReservationAccess.Write;
            default: return !registered; // exclusive access, registrants only / all registrants
        }
    }

    public void Remove(Registration r)
    {
        Registrations.Remove(r);
        if (!Reserved) return;
        if (IsAllRegistrants(Type)) { if (Registrations.Count == 0) Release(); }
        else if (ReferenceEquals(Holder, r)) Release();
    }

    public void Release() { Reserved = false; Holder = null; Type = 0; }

    internal sealed record Saved(List<SavedReg> Registrations, bool Reserved, byte Type, int HolderIndex, uint Generation, bool? Aptpl = null);
    internal sealed record SavedReg(string InitiatorPort, string TargetPort, ushort RelativeTargetPortId, string TransportId, ulong Key, bool AllTargetPorts);

    /// <summary>The whole state as a value (what is stored, and what a failed store rolls back to).</summary>
    public Saved Snapshot() => new(
        Registrations.Select(r => new SavedReg(r.InitiatorPort, r.TargetPort, r.RelativeTargetPortId, Convert.ToBase64String(r.TransportId), r.Key, r.AllTargetPorts)).ToList(),
        Reserved, (byte)Type, Holder == null ? -1 : Registrations.IndexOf(Holder), Generation, Aptpl);

    public void Restore(Saved saved)
    {
        Registrations.Clear();
        foreach (var r in saved.Registrations)
            Registrations.Add(new Registration
            {
                InitiatorPort = r.InitiatorPort, TargetPort = r.TargetPort, RelativeTargetPortId = r.RelativeTargetPortId,
                TransportId = Convert.FromBase64String(r.TransportId), Key = r.Key, AllTargetPorts = r.AllTargetPorts,
            });
        Type = (PrType)saved.Type;
        Holder = saved.HolderIndex >= 0 && saved.HolderIndex < Registrations.Count ? Registrations[saved.HolderIndex] : null;
        Reserved = saved.Reserved && Enum.IsDefined(Type) && (Holder != null || IsAllRegistrants(Type));
        if (!Reserved) { Holder = null; Type = 0; }
        Generation = saved.Generation;
        Aptpl = saved.Aptpl ?? true; // records written before the flag existed only held APTPL state
    }

    /// <summary>
    /// Stores the state: always when every change is kept, else when APTPL is set (and removes the record when it
    /// is not, SPC-4 5.12.4). Returns false when the store failed (logged); the caller rolls the change back.
    /// </summary>
    public bool Persist()
    {
        if (_store == null) return true;
        try
        {
            if (!_keepAll && !Aptpl) { _store.Delete(); return true; }
            _store.Write(JsonSerializer.SerializeToUtf8Bytes(Snapshot()));
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _log.Error("Cannot save persistent reservations to {Store}: {Error}", _store.Name, e.Message);
            return false;
        }
    }

    public void Load()
    {
        if (_store == null) return;
        try
        {
            var bytes = _store.Read();
            if (bytes == null) return;
            var saved = JsonSerializer.Deserialize<Saved>(bytes);
            if (saved == null) return;
            Restore(saved);
        }
        catch (Exception e) when (e is IOException or JsonException or FormatException or UnauthorizedAccessException)
        {
            // A damaged record loses the reservations, not the LUN: say so and carry on without them.
            _log.Error("Persistent reservation record {Store} is unreadable ({Error}); starting without reservations", _store.Name, e.Message);
            Registrations.Clear(); Release();
        }
    }
}
