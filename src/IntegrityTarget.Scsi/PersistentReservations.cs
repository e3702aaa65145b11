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
/// Persistent reservation state of one logical unit (SPC-4 5.12). Guarded by its own lock; APTPL state is
/// written to a file so it survives a restart.
/// </summary>
internal sealed class PersistentReservations
{
    private readonly string? _file;
    private readonly Serilog.ILogger _log;
    public readonly object Lock = new();
    public readonly List<Registration> Registrations = new();
    public Registration? Holder;          // null with a reservation = all-registrants type
    public volatile bool Reserved; // read without the lock on the command fast path
    public PrType Type;
    public uint Generation;
    public bool Aptpl;

    public PersistentReservations(string? file, Serilog.ILogger log) { _file = file; _log = log; }

    public bool SupportsAptpl => _file != null;

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

    private sealed record Saved(List<SavedReg> Registrations, bool Reserved, byte Type, int HolderIndex, uint Generation);
    private sealed record SavedReg(string InitiatorPort, string TargetPort, ushort RelativeTargetPortId, string TransportId, ulong Key, bool AllTargetPorts);

    /// <summary>Writes the state when APTPL is set, removes the file when it is not (SPC-4 5.12.4).</summary>
    public void Persist()
    {
        if (_file == null) return;
        try
        {
            if (!Aptpl) { if (File.Exists(_file)) File.Delete(_file); return; }
            var saved = new Saved(
                Registrations.Select(r => new SavedReg(r.InitiatorPort, r.TargetPort, r.RelativeTargetPortId, Convert.ToBase64String(r.TransportId), r.Key, r.AllTargetPorts)).ToList(),
                Reserved, (byte)Type, Holder == null ? -1 : Registrations.IndexOf(Holder), Generation);
            var tmp = _file + ".tmp";
            File.WriteAllText(tmp, JsonSerializer.Serialize(saved));
            File.Move(tmp, _file, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _log.Error("Cannot save persistent reservations to {File}: {Error}", _file, e.Message);
        }
    }

    public void Load()
    {
        if (_file == null || !File.Exists(_file)) return;
        try
        {
            var saved = JsonSerializer.Deserialize<Saved>(File.ReadAllText(_file));
            if (saved == null) return;
            foreach (var r in saved.Registrations)
                Registrations.Add(new Registration
                {
                    InitiatorPort = r.InitiatorPort, TargetPort = r.TargetPort, RelativeTargetPortId = r.RelativeTargetPortId,
                    TransportId = Convert.FromBase64String(r.TransportId), Key = r.Key, AllTargetPorts = r.AllTargetPorts,
                });
            Reserved = saved.Reserved && Enum.IsDefined((PrType)saved.Type);
            Type = (PrType)saved.Type;
            Holder = saved.HolderIndex >= 0 && saved.HolderIndex < Registrations.Count ? Registrations[saved.HolderIndex] : null;
            if (Reserved && Holder == null && !IsAllRegistrants(Type)) Reserved = false;
            Generation = saved.Generation;
            Aptpl = true;
        }
        catch (Exception e) when (e is IOException or JsonException or FormatException or UnauthorizedAccessException)
        {
            // A damaged file loses the reservations, not the LUN: say so and carry on without them.
            _log.Error("Persistent reservation file {File} is unreadable ({Error}); starting without reservations", _file, e.Message);
            Registrations.Clear(); Release();
        }
    }
}

// PERSISTENT RESERVE IN/OUT, RESERVE(6)/RELEASE(6) and the reservation conflict check.
public sealed partial class ScsiLogicalUnit
{
    private readonly PersistentReservations _pr;
    private readonly object _spc2Lock = new();
    private (string, string)? _spc2Holder;

    private bool IsReservationConflict(CommandInfo info, NexusState nexus, ReadOnlySpan<byte> cdb)
    {
        var spc2 = _spc2Holder;
        if (spc2 != null && spc2.Value != nexus.Key && !info.AllowedUnderSpc2Reservation) return true;
        if (!_pr.Reserved || info.Access == ReservationAccess.Allowed) return false;
        lock (_pr.Lock) return _pr.Conflicts(info.Access, nexus.Nexus);
    }

    private void ReleaseSpc2If(ItNexus n)
    {
        lock (_spc2Lock) if (_spc2Holder == (n.InitiatorPortName, n.TargetPortName)) _spc2Holder = null;
    }

    private void ReleaseSpc2All() { lock (_spc2Lock) _spc2Holder = null; }

    internal ValueTask<Outcome> Reserve6(Request r)
    {
        lock (_pr.Lock) if (_pr.Reserved) return new(ScsiError.Conflict);
        lock (_spc2Lock)
        {
            if (_spc2Holder != null && _spc2Holder != r.Nexus.Key) return new(ScsiError.Conflict);
            _spc2Holder = r.Nexus.Key;
        }
        return new(Outcome.Good);
    }

    internal ValueTask<Outcome> Release6(Request r)
    {
        lock (_pr.Lock) if (_pr.Reserved) return new(ScsiError.Conflict);
        ReleaseSpc2If(r.Nexus.Nexus); // releasing someone else's reservation is a no-op with GOOD (SPC-2 7.17)
        return new(Outcome.Good);
    }

    internal ValueTask<Outcome> PersistentReserveIn(Request r)
    {
        int sa = r.Cdb[1] & 0x1F;
        int alloc = Cdb.AllocationLength16(r.Cdb, 7);
        lock (_pr.Lock)
        {
            switch (sa)
            {
                case 0: // READ KEYS
                {
                    int len = 8 + 8 * _pr.Registrations.Count;
                    var o = Rent(len); var s = o.Memory.Span;
                    BinaryPrimitives.WriteUInt32BigEndian(s, _pr.Generation);
                    BinaryPrimitives.WriteUInt32BigEndian(s[4..], (uint)(len - 8));
                    for (int i = 0; i < _pr.Registrations.Count; i++) BinaryPrimitives.WriteUInt64BigEndian(s[(8 + 8 * i)..], _pr.Registrations[i].Key);
                    return new(Reply(o, len, alloc));
                }
                case 1: // READ RESERVATION
                {
                    int len = _pr.Reserved ? 24 : 8;
                    var o = Rent(len); var s = o.Memory.Span;
                    BinaryPrimitives.WriteUInt32BigEndian(s, _pr.Generation);
                    BinaryPrimitives.WriteUInt32BigEndian(s[4..], (uint)(len - 8));
                    if (_pr.Reserved)
                    {
                        // All-registrants reservations report key 0 (SPC-4 6.15.3.3).
                        ulong key = PersistentReservations.IsAllRegistrants(_pr.Type) ? 0 : _pr.Holder!.Key;
                        BinaryPrimitives.WriteUInt64BigEndian(s[8..], key);
                        s[21] = (byte)_pr.Type; // scope 0 = LU_SCOPE
                    }
                    return new(Reply(o, len, alloc));
                }
                case 2: // REPORT CAPABILITIES
                {
                    var o = Rent(8); var s = o.Memory.Span;
                    BinaryPrimitives.WriteUInt16BigEndian(s, 8);
                    s[2] = (byte)(0x10 | 0x04 | (_pr.SupportsAptpl ? 0x01 : 0)); // CRH, ATP_C, PTPL_C
                    s[3] = (byte)(0x80 | (_pr.Aptpl ? 0x01 : 0));                 // TMV, ALLOW COMMANDS 0, PTPL_A
                    s[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;                      // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
                    s[5] = 0x01;                                                  // EX_AC_AR
                    return new(Reply(o, 8, alloc));
                }
                default: // 3: READ FULL STATUS
                {
                    int len = 8;
                    foreach (var reg in _pr.Registrations) len += 24 + TransportIdLength(reg.TransportId);
                    var o = Rent(len); var s = o.Memory.Span;
                    BinaryPrimitives.WriteUInt32BigEndian(s, _pr.Generation);
                    BinaryPrimitives.WriteUInt32BigEndian(s[4..], (uint)(len - 8));
                    int pos = 8;
                    foreach (var reg in _pr.Registrations)
                    {
                        var d = s[pos..];
                        int tidLen = TransportIdLength(reg.TransportId);
                        BinaryPrimitives.WriteUInt64BigEndian(d, reg.Key);
                        bool holder = _pr.Reserved && (PersistentReservations.IsAllRegistrants(_pr.Type) || ReferenceEquals(_pr.Holder, reg));
                        d[12] = (byte)((reg.AllTargetPorts ? 0x02 : 0) | (holder ? 0x01 : 0));
                        if (holder) d[13] = (byte)_pr.Type;
                        BinaryPrimitives.WriteUInt16BigEndian(d[18..], reg.RelativeTargetPortId);
                        BinaryPrimitives.WriteUInt32BigEndian(d[20..], (uint)tidLen);
                        reg.TransportId.AsSpan(0, Math.Min(reg.TransportId.Length, tidLen)).CopyTo(d[24..]);
                        pos += 24 + tidLen;
                    }
                    return new(Reply(o, len, alloc));
                }
            }
        }
    }

    /// <summary>TransportIDs are padded to a multiple of 4 bytes and at least 24 long (SPC-4 7.6.4).</summary>
    private static int TransportIdLength(byte[] id) => Math.Max(24, (id.Length + 3) & ~3);

    internal ValueTask<Outcome> PersistentReserveOut(Request r)
    {
        var c = r.Cdb;
        int sa = c[1] & 0x1F;
        int scope = c[2] >> 4;
        var type = (PrType)(c[2] & 0x0F);
        uint paramLen = BinaryPrimitives.ReadUInt32BigEndian(c[5..]);
        var d = r.Command.DataOut.Span;
        if (paramLen != 24 || d.Length < 24) return new(ScsiError.Of(SenseReason.ParameterListLengthError));
        ulong key = BinaryPrimitives.ReadUInt64BigEndian(d);
        ulong saKey = BinaryPrimitives.ReadUInt64BigEndian(d[8..]);
        byte flags = d[20];
        bool specIpt = (flags & 0x08) != 0, allTgPt = (flags & 0x04) != 0, aptpl = (flags & 0x01) != 0;
        var n = r.Nexus.Nexus;
        ScsiError result;
        List<(Registration Reg, SenseReason Ua)> notify = new();
        List<string>? abort = null;

        lock (_pr.Lock)
        {
            var me = _pr.Find(n);
            switch (sa)
            {
                case 0: // REGISTER
                case 6: // REGISTER AND IGNORE EXISTING KEY
                    if (specIpt) { result = ScsiError.Param(20, 3); break; }
                    if (aptpl && !_pr.SupportsAptpl) { result = ScsiError.Param(20, 0); break; }
                    if (me == null)
                    {
                        if (sa == 0 && key != 0) { result = ScsiError.Conflict; break; }
                        if (saKey != 0)
                        {
                            _pr.Registrations.Add(new Registration
                            {
                                InitiatorPort = n.InitiatorPortName, TargetPort = n.TargetPortName, RelativeTargetPortId = n.RelativeTargetPortId,
                                TransportId = n.InitiatorTransportId, Key = saKey, AllTargetPorts = allTgPt,
                            });
                            _pr.Generation++;
                        }
                        _pr.Aptpl = aptpl;
                        result = ScsiError.None; break;
                    }
                    if (sa == 0 && key != me.Key) { result = ScsiError.Conflict; break; }
                    if (saKey == 0)
                    {
                        bool wasHolderRo = _pr.Reserved && PersistentReservations.IsRegistrantsOnly(_pr.Type) && ReferenceEquals(_pr.Holder, me);
                        _pr.Remove(me);
                        // Unregistering the holder of a registrants-only reservation releases it: tell the others.
                        if (wasHolderRo) foreach (var other in _pr.Registrations) notify.Add((other, SenseReason.ReservationsReleased));
                    }
                    else me.Key = saKey;
                    _pr.Generation++;
                    _pr.Aptpl = aptpl;
                    result = ScsiError.None; break;

                case 1: // RESERVE
                    if (me == null || me.Key != key) { result = ScsiError.Conflict; break; }
                    if (scope != 0) { result = ScsiError.Cdb(2, 7); break; }
                    if (!Enum.IsDefined(type)) { result = ScsiError.Cdb(2, 3); break; }
                    if (_pr.Reserved)
                    {
                        result = _pr.IsHolder(n) && _pr.Type == type ? ScsiError.None : ScsiError.Conflict;
                        break;
                    }
                    _pr.Reserved = true; _pr.Type = type; _pr.Holder = me;
                    result = ScsiError.None; break;

                case 2: // RELEASE
                    if (me == null || me.Key != key) { result = ScsiError.Conflict; break; }
                    if (!_pr.Reserved || !_pr.IsHolder(n)) { result = ScsiError.None; break; }
                    if (scope != 0 || type != _pr.Type) { result = ScsiError.Of(SenseReason.InvalidReleaseOfPersistentReservation); break; }
                    {
                        var released = _pr.Type;
                        _pr.Release();
                        if (released is not (PrType.WriteExclusive or PrType.ExclusiveAccess))
                            foreach (var other in _pr.Registrations) if (!ReferenceEquals(other, me)) notify.Add((other, SenseReason.ReservationsReleased));
                    }
                    result = ScsiError.None; break;

                case 3: // CLEAR
                    if (me == null || me.Key != key) { result = ScsiError.Conflict; break; }
                    foreach (var other in _pr.Registrations) if (!ReferenceEquals(other, me)) notify.Add((other, SenseReason.ReservationsPreempted));
                    _pr.Registrations.Clear(); _pr.Release();
                    _pr.Generation++;
                    result = ScsiError.None; break;

                case 4: // PREEMPT
                case 5: // PREEMPT AND ABORT
                    if (me == null || me.Key != key) { result = ScsiError.Conflict; break; }
                    if (scope != 0) { result = ScsiError.Cdb(2, 7); break; }
                    if (!Enum.IsDefined(type)) { result = ScsiError.Cdb(2, 3); break; }
                    result = Preempt(me, n, saKey, type, notify);
                    if (!result.IsError && sa == 5)
                        abort = notify.Where(x => x.Ua == SenseReason.RegistrationsPreempted).Select(x => x.Reg.InitiatorPort).Distinct().ToList();
                    break;

                default:
                    result = ScsiError.Cdb(1, 4); break;
            }
            if (!result.IsError) _pr.Persist();
        }
        foreach (var (reg, ua) in notify) UnitAttentionFor(reg.InitiatorPort, reg.TargetPort, ua);
        if (abort is { Count: > 0 }) AbortTasksRequested?.Invoke(Lun, abort);
        return new(result.IsError ? new Outcome(result) : Outcome.Wrote(24));
    }

    /// <summary>PREEMPT (SPC-4 5.12.11.4): remove the registrations with <paramref name="saKey"/>, maybe take the reservation.</summary>
    private ScsiError Preempt(Registration me, ItNexus n, ulong saKey, PrType type, List<(Registration, SenseReason)> notify)
    {
        void RemoveWhere(Func<Registration, bool> pred)
        {
            foreach (var reg in _pr.Registrations.Where(pred).ToList())
            {
                _pr.Registrations.Remove(reg);
                if (!ReferenceEquals(reg, me)) notify.Add((reg, SenseReason.RegistrationsPreempted));
            }
        }
        if (_pr.Reserved && PersistentReservations.IsAllRegistrants(_pr.Type))
        {
            if (saKey == 0)
            {
                RemoveWhere(reg => !ReferenceEquals(reg, me));
                _pr.Reserved = true; _pr.Type = type; _pr.Holder = me;
            }
            else
            {
                if (!_pr.Registrations.Any(x => x.Key == saKey)) return ScsiError.Conflict;
                RemoveWhere(reg => reg.Key == saKey && !ReferenceEquals(reg, me));
            }
        }
        else if (_pr.Reserved && _pr.Holder != null && _pr.Holder.Key == saKey)
        {
            bool typeChanged = _pr.Type != type;
            RemoveWhere(reg => reg.Key == saKey && !ReferenceEquals(reg, me));
            _pr.Reserved = true; _pr.Type = type; _pr.Holder = me;
            if (typeChanged)
                foreach (var other in _pr.Registrations) if (!ReferenceEquals(other, me)) notify.Add((other, SenseReason.ReservationsReleased));
        }
        else
        {
            if (saKey == 0) return ScsiError.Param(8);
            if (!_pr.Registrations.Any(x => x.Key == saKey)) return ScsiError.Conflict;
            RemoveWhere(reg => reg.Key == saKey && !ReferenceEquals(reg, me));
        }
        _pr.Generation++;
        _ = n;
        return ScsiError.None;
    }
}
