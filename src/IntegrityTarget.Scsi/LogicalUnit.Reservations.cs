using System.Buffers.Binary;

namespace IntegrityTarget.Scsi;

// PERSISTENT RESERVE IN/OUT (one handler per service action, one opcode-table row each),
// RESERVE(6)/RELEASE(6) and the reservation conflict check.
public sealed partial class ScsiLogicalUnit
{
    private readonly PersistentReservations _pr;
    private readonly object _spc2Lock = new();
    private (string, string)? _spc2Holder;

    private bool IsReservationConflict(CommandInfo info, NexusState nexus)
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

    // ---- PERSISTENT RESERVE IN ------------------------------------------------------------------

    /// <summary>Runs a PR IN builder under the reservation lock and truncates to the allocation length.</summary>
    private ValueTask<Outcome> PrIn(Request r, Func<ScsiLogicalUnit, (System.Buffers.IMemoryOwner<byte> Owner, int Length)> build)
    {
        int alloc = Cdb.AllocationLength16(r.Cdb, 7);
        lock (_pr.Lock)
        {
            var (owner, len) = build(this);
            return new(Reply(owner, len, alloc));
        }
    }

    private (System.Buffers.IMemoryOwner<byte>, int) Header(int len)
    {
        var o = Rent(len); var s = o.Memory.Span;
        BinaryPrimitives.WriteUInt32BigEndian(s, _pr.Generation);
        BinaryPrimitives.WriteUInt32BigEndian(s[4..], (uint)(len - 8));
        return (o, len);
    }

    internal ValueTask<Outcome> PrInReadKeys(Request r) => PrIn(r, static lu =>
    {
        var regs = lu._pr.Registrations;
        var (o, len) = lu.Header(8 + 8 * regs.Count);
        var s = o.Memory.Span;
        for (int i = 0; i < regs.Count; i++) BinaryPrimitives.WriteUInt64BigEndian(s[(8 + 8 * i)..], regs[i].Key);
        return (o, len);
    });

    internal ValueTask<Outcome> PrInReadReservation(Request r) => PrIn(r, static lu =>
    {
        var pr = lu._pr;
        var (o, len) = lu.Header(pr.Reserved ? 24 : 8);
        if (pr.Reserved)
        {
            var s = o.Memory.Span;
            // All-registrants reservations report key 0 (SPC-4 6.15.3.3).
            ulong key = PersistentReservations.IsAllRegistrants(pr.Type) ? 0 : pr.Holder!.Key;
            BinaryPrimitives.WriteUInt64BigEndian(s[8..], key);
            s[21] = (byte)pr.Type; // scope 0 = LU_SCOPE
        }
        return (o, len);
    });

    internal ValueTask<Outcome> PrInReportCapabilities(Request r) => PrIn(r, static lu =>
    {
        var o = lu.Rent(8); var s = o.Memory.Span;
        BinaryPrimitives.WriteUInt16BigEndian(s, 8);
        s[2] = (byte)(0x10 | 0x04 | (lu._pr.SupportsAptpl ? 0x01 : 0)); // CRH, ATP_C, PTPL_C
        s[3] = (byte)(0x80 | (lu._pr.Aptpl ? 0x01 : 0));                 // TMV, ALLOW COMMANDS 0, PTPL_A
        s[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;                         // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
        s[5] = 0x01;                                                     // EX_AC_AR
        return (o, 8);
    });

    internal ValueTask<Outcome> PrInReadFullStatus(Request r) => PrIn(r, static lu =>
    {
        var pr = lu._pr;
        int len = 8;
        foreach (var reg in pr.Registrations) len += 24 + TransportIdLength(reg.TransportId);
        var (o, _) = lu.Header(len);
        var s = o.Memory.Span;
        int pos = 8;
        foreach (var reg in pr.Registrations)
        {
            var d = s[pos..];
            int tidLen = TransportIdLength(reg.TransportId);
            BinaryPrimitives.WriteUInt64BigEndian(d, reg.Key);
            bool holder = pr.Reserved && (PersistentReservations.IsAllRegistrants(pr.Type) || ReferenceEquals(pr.Holder, reg));
            d[12] = (byte)((reg.AllTargetPorts ? 0x02 : 0) | (holder ? 0x01 : 0));
            if (holder) d[13] = (byte)pr.Type;
            BinaryPrimitives.WriteUInt16BigEndian(d[18..], reg.RelativeTargetPortId);
            BinaryPrimitives.WriteUInt32BigEndian(d[20..], (uint)tidLen);
            reg.TransportId.AsSpan(0, Math.Min(reg.TransportId.Length, tidLen)).CopyTo(d[24..]);
            pos += 24 + tidLen;
        }
        return (o, len);
    });

    /// <summary>TransportIDs are padded to a multiple of 4 bytes and at least 24 long (SPC-4 7.6.4).</summary>
    private static int TransportIdLength(byte[] id) => Math.Max(24, (id.Length + 3) & ~3);

    // ---- PERSISTENT RESERVE OUT -----------------------------------------------------------------

    /// <summary>The CDB's scope and type and the 24-byte basic parameter list (SPC-4 6.16.2, 6.16.3).</summary>
    private readonly record struct PrOutParameters(int Scope, PrType Type, ulong Key, ulong ServiceActionKey, bool SpecIpt, bool AllTgPt, bool Aptpl);

    /// <summary>What a service action does besides changing the state: unit attentions to queue, nexuses whose tasks to abort.</summary>
    private sealed class PrOutEffects
    {
        public readonly List<(Registration Reg, SenseReason Ua)> Notify = [];
        public List<string>? Abort;
    }

    /// <summary>One service action, run under the reservation lock with the issuing nexus's registration (or null).</summary>
    private delegate ScsiError PrOutAction(ScsiLogicalUnit lu, in PrOutParameters p, ItNexus n, Registration? me, PrOutEffects fx);

    /// <summary>
    /// Common frame of every PR OUT service action: checks the parameter list, runs the action under the
    /// lock, persists a successful change, then queues unit attentions and requests aborts outside the lock.
    /// </summary>
    private ValueTask<Outcome> PrOut(Request r, PrOutAction action)
    {
        var c = r.Cdb;
        uint paramLen = BinaryPrimitives.ReadUInt32BigEndian(c[5..]);
        var d = r.Command.DataOut.Span;
        if (paramLen != 24 || d.Length < 24) return new(ScsiError.Of(SenseReason.ParameterListLengthError));
        byte flags = d[20];
        var p = new PrOutParameters(c[2] >> 4, (PrType)(c[2] & 0x0F),
            BinaryPrimitives.ReadUInt64BigEndian(d), BinaryPrimitives.ReadUInt64BigEndian(d[8..]),
            SpecIpt: (flags & 0x08) != 0, AllTgPt: (flags & 0x04) != 0, Aptpl: (flags & 0x01) != 0);
        var n = r.Nexus.Nexus;
        var fx = new PrOutEffects();
        ScsiError result;
        lock (_pr.Lock)
        {
            var before = _pr.Snapshot();
            result = action(this, p, n, _pr.Find(n), fx);
            if (!result.IsError && !_pr.Persist())
            {
                // Not stored means it would not survive a restart or failover: undo it and say the command failed.
                _pr.Restore(before);
                return new(ScsiError.Of(SenseReason.InternalTargetFailure));
            }
        }
        foreach (var (reg, ua) in fx.Notify) UnitAttentionFor(reg.InitiatorPort, reg.TargetPort, ua);
        if (fx.Abort is { Count: > 0 }) AbortTasksRequested?.Invoke(Lun, fx.Abort);
        return new(result.IsError ? new Outcome(result) : Outcome.Wrote(24));
    }

    internal ValueTask<Outcome> PrOutRegister(Request r) =>
        PrOut(r, static (ScsiLogicalUnit lu, in PrOutParameters p, ItNexus n, Registration? me, PrOutEffects fx) => lu.Register(p, n, me, ignoreExisting: false, fx));

    internal ValueTask<Outcome> PrOutRegisterAndIgnoreExistingKey(Request r) =>
        PrOut(r, static (ScsiLogicalUnit lu, in PrOutParameters p, ItNexus n, Registration? me, PrOutEffects fx) => lu.Register(p, n, me, ignoreExisting: true, fx));

    internal ValueTask<Outcome> PrOutReserve(Request r) =>
        PrOut(r, static (ScsiLogicalUnit lu, in PrOutParameters p, ItNexus n, Registration? me, PrOutEffects fx) => lu.ReserveAction(p, n, me));

    internal ValueTask<Outcome> PrOutRelease(Request r) =>
        PrOut(r, static (ScsiLogicalUnit lu, in PrOutParameters p, ItNexus n, Registration? me, PrOutEffects fx) => lu.ReleaseAction(p, n, me, fx));

    internal ValueTask<Outcome> PrOutClear(Request r) =>
        PrOut(r, static (ScsiLogicalUnit lu, in PrOutParameters p, ItNexus n, Registration? me, PrOutEffects fx) => lu.ClearAction(p, me, fx));

    internal ValueTask<Outcome> PrOutPreempt(Request r) =>
        PrOut(r, static (ScsiLogicalUnit lu, in PrOutParameters p, ItNexus n, Registration? me, PrOutEffects fx) => lu.PreemptAction(p, me, abort: false, fx));

    internal ValueTask<Outcome> PrOutPreemptAndAbort(Request r) =>
        PrOut(r, static (ScsiLogicalUnit lu, in PrOutParameters p, ItNexus n, Registration? me, PrOutEffects fx) => lu.PreemptAction(p, me, abort: true, fx));

    /// <summary>REGISTER / REGISTER AND IGNORE EXISTING KEY (SPC-4 5.12.7).</summary>
    private ScsiError Register(in PrOutParameters p, ItNexus n, Registration? me, bool ignoreExisting, PrOutEffects fx)
    {
        if (p.SpecIpt) return ScsiError.Param(20, 3);
        if (p.Aptpl && !_pr.SupportsAptpl) return ScsiError.Param(20, 0);
        if (me == null)
        {
            if (!ignoreExisting && p.Key != 0) return ScsiError.Conflict;
            if (p.ServiceActionKey != 0)
            {
                _pr.Registrations.Add(new Registration
                {
                    InitiatorPort = n.InitiatorPortName, TargetPort = n.TargetPortName, RelativeTargetPortId = n.RelativeTargetPortId,
                    TransportId = n.InitiatorTransportId, Key = p.ServiceActionKey, AllTargetPorts = p.AllTgPt,
                });
                _pr.Generation++;
            }
            _pr.Aptpl = p.Aptpl;
            return ScsiError.None;
        }
        if (!ignoreExisting && p.Key != me.Key) return ScsiError.Conflict;
        if (p.ServiceActionKey == 0)
        {
            bool wasHolderRo = _pr.Reserved && PersistentReservations.IsRegistrantsOnly(_pr.Type) && ReferenceEquals(_pr.Holder, me);
            _pr.Remove(me);
            // Unregistering the holder of a registrants-only reservation releases it: tell the others.
            if (wasHolderRo) foreach (var other in _pr.Registrations) fx.Notify.Add((other, SenseReason.ReservationsReleased));
        }
        else me.Key = p.ServiceActionKey;
        _pr.Generation++;
        _pr.Aptpl = p.Aptpl;
        return ScsiError.None;
    }

    /// <summary>RESERVE (SPC-4 5.12.9).</summary>
    private ScsiError ReserveAction(in PrOutParameters p, ItNexus n, Registration? me)
    {
        if (me == null || me.Key != p.Key) return ScsiError.Conflict;
        if (p.Scope != 0) return ScsiError.Cdb(2, 7);
        if (!Enum.IsDefined(p.Type)) return ScsiError.Cdb(2, 3);
        if (_pr.Reserved) return _pr.IsHolder(n) && _pr.Type == p.Type ? ScsiError.None : ScsiError.Conflict;
        _pr.Reserved = true; _pr.Type = p.Type; _pr.Holder = me;
        return ScsiError.None;
    }

    /// <summary>RELEASE (SPC-4 5.12.11.2).</summary>
    private ScsiError ReleaseAction(in PrOutParameters p, ItNexus n, Registration? me, PrOutEffects fx)
    {
        if (me == null || me.Key != p.Key) return ScsiError.Conflict;
        if (!_pr.Reserved || !_pr.IsHolder(n)) return ScsiError.None;
        if (p.Scope != 0 || p.Type != _pr.Type) return ScsiError.Of(SenseReason.InvalidReleaseOfPersistentReservation);
        var released = _pr.Type;
        _pr.Release();
        if (released is not (PrType.WriteExclusive or PrType.ExclusiveAccess))
            foreach (var other in _pr.Registrations) if (!ReferenceEquals(other, me)) fx.Notify.Add((other, SenseReason.ReservationsReleased));
        return ScsiError.None;
    }

    /// <summary>CLEAR (SPC-4 5.12.11.6).</summary>
    private ScsiError ClearAction(in PrOutParameters p, Registration? me, PrOutEffects fx)
    {
        if (me == null || me.Key != p.Key) return ScsiError.Conflict;
        foreach (var other in _pr.Registrations) if (!ReferenceEquals(other, me)) fx.Notify.Add((other, SenseReason.ReservationsPreempted));
        _pr.Registrations.Clear(); _pr.Release();
        _pr.Generation++;
        return ScsiError.None;
    }

    /// <summary>
    /// PREEMPT / PREEMPT AND ABORT (SPC-4 5.12.11.4, 5.12.11.5): remove the registrations with the service
    /// action key, maybe take the reservation; with abort, the preempted nexuses' tasks are aborted too.
    /// </summary>
    private ScsiError PreemptAction(in PrOutParameters p, Registration? me, bool abort, PrOutEffects fx)
    {
        if (me == null || me.Key != p.Key) return ScsiError.Conflict;
        if (p.Scope != 0) return ScsiError.Cdb(2, 7);
        if (!Enum.IsDefined(p.Type)) return ScsiError.Cdb(2, 3);
        var result = Preempt(me, p.ServiceActionKey, p.Type, fx.Notify);
        if (!result.IsError && abort)
            fx.Abort = fx.Notify.Where(x => x.Ua == SenseReason.RegistrationsPreempted).Select(x => x.Reg.InitiatorPort).Distinct().ToList();
        return result;
    }

    private ScsiError Preempt(Registration me, ulong saKey, PrType type, List<(Registration, SenseReason)> notify)
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
        return ScsiError.None;
    }
}
