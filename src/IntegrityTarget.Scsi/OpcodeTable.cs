using System.Buffers;

namespace IntegrityTarget.Scsi;

/// <summary>How a command behaves while another I_T nexus holds a reservation (SPC-4 5.9.1 table 63, SBC-3 4.17).</summary>
public enum ReservationAccess : byte
{
    /// <summary>Never conflicts (INQUIRY, REPORT LUNS, REQUEST SENSE, PERSISTENT RESERVE IN/OUT, READ CAPACITY...).</summary>
    Allowed,
    /// <summary>Reads medium or state: conflicts under Exclusive Access types for non-holders.</summary>
    Read,
    /// <summary>Changes medium or state: conflicts under every type for non-holders.</summary>
    Write,
}

/// <summary>Per-command dispatch data, one row of the 256-entry opcode table (or of a service-action sub-table).</summary>
public sealed class CommandInfo
{
    public required byte Opcode { get; init; }
    /// <summary>Service action, or -1 when the opcode has none.</summary>
    public int ServiceAction { get; init; } = -1;
    public required string Name { get; init; }
    /// <summary>CDB usage data (SPC-4 6.35.3): byte 0 = opcode, then the bits the device server looks at. Its length is the CDB length.</summary>
    public required byte[] Usage { get; init; }
    public DataDirection Direction { get; init; }
    public ReservationAccess Access { get; init; }
    /// <summary>Executes while a unit attention is pending without reporting it (INQUIRY, REPORT LUNS, REQUEST SENSE).</summary>
    public bool IgnoresUnitAttention { get; init; }
    /// <summary>Allowed while another nexus holds an SPC-2 RESERVE(6) (INQUIRY, REPORT LUNS, REQUEST SENSE, RELEASE(6)).</summary>
    public bool AllowedUnderSpc2Reservation { get; init; }
    /// <summary>Non-active ALUA states in which the command still executes (SPC-4 5.15.2.4); elsewhere NOT READY 04/0A-0C.</summary>
    public AluaAllowed AluaAllowed { get; init; }
    public CdbLayout Layout { get; init; }
    /// <summary>Nominal timeout in seconds for the RSOC timeouts descriptor.</summary>
    public uint TimeoutSeconds { get; init; } = 30;
    internal CommandHandler? Handler { get; init; }
    /// <summary>Service-action sub-table (32 entries, null where unsupported) when the opcode has service actions.</summary>
    public CommandInfo?[]? ServiceActions { get; init; }
    public int CdbLength => Usage.Length;
    public bool IsSupported => Handler != null || ServiceActions != null;
}

internal delegate ValueTask<Outcome> CommandHandler(ScsiLogicalUnit lu, Request r);

/// <summary>What a handler hands back: an error (reason), or data-in from a pooled buffer.</summary>
internal readonly struct Outcome
{
    public readonly ScsiError Error;
    public readonly IMemoryOwner<byte>? Owner;
    public readonly int Length;
    /// <summary>Byte count the CDB asked to move (data-out commands), or -1 meaning "the data-in length".</summary>
    public readonly long TransferLength;

    public Outcome(ScsiError error, IMemoryOwner<byte>? owner = null, int length = 0, long transferLength = -1)
    { Error = error; Owner = owner; Length = length; TransferLength = transferLength; }

    public static readonly Outcome Good = new(ScsiError.None);
    public static implicit operator Outcome(ScsiError e) => new(e);
    public static Outcome Data(IMemoryOwner<byte> owner, int length) => new(ScsiError.None, owner, length);
    public static Outcome Wrote(long bytes) => new(ScsiError.None, null, 0, bytes);
}

/// <summary>One command on its way through a logical unit.</summary>
internal readonly struct Request
{
    public readonly ScsiCommand Command;
    public readonly CommandInfo Info;
    public readonly NexusState Nexus;
    public readonly CancellationToken Ct;
    public Request(ScsiCommand command, CommandInfo info, NexusState nexus, CancellationToken ct)
    { Command = command; Info = info; Nexus = nexus; Ct = ct; }
    public ReadOnlySpan<byte> Cdb => Command.Cdb.Span;
    public CdbFields Fields => Scsi.Cdb.Decode(Info.Layout, Command.Cdb.Span);
}

/// <summary>
/// The opcode table: 256 entries, null = unsupported (INVALID COMMAND OPERATION CODE). REPORT SUPPORTED
/// OPERATION CODES is generated from it, and the dispatcher reads data direction, reservation behaviour
/// and the CDB usage mask (used to reject reserved bits) from the same row.
/// </summary>
public static class OpcodeTable
{
    private const byte Ctl = 0x00; // CONTROL byte: NACA and LINK unsupported, so no bit may be set
    private static readonly CommandInfo?[] Table = Build();

    public static CommandInfo? Get(byte opcode) => Table[opcode];
    public static IEnumerable<CommandInfo> Supported => Table.Where(e => e != null && e.IsSupported)!;

    /// <summary>Every (opcode, service action) pair the device server implements, in opcode order.</summary>
    public static IEnumerable<CommandInfo> AllCommands()
    {
        foreach (var e in Table)
        {
            if (e == null) continue;
            if (e.ServiceActions == null) { if (e.Handler != null) yield return e; continue; }
            foreach (var sa in e.ServiceActions) if (sa != null) yield return sa;
        }
    }

    private static CommandInfo?[] Build()
    {
        var t = new CommandInfo?[256];
        void Add(CommandInfo c) => t[c.Opcode] = c;
        static byte[] U(params byte[] b) => b;
        const ReservationAccess A = ReservationAccess.Allowed, R = ReservationAccess.Read, W = ReservationAccess.Write;
        // ALUA columns: Always = INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS, REQUEST SENSE (every state);
        // Sb = also in standby (SPC-4 5.15.2.4.4; READ CAPACITY too, which Linux needs to size a standby path).
        const AluaAllowed Always = AluaAllowed.Always, Sb = AluaAllowed.Standby;
        const DataDirection In = DataDirection.Read, Out = DataDirection.Write;

        Add(new() { Opcode = 0x00, Name = "TEST UNIT READY", Usage = U(0x00, 0, 0, 0, 0, Ctl), Access = A, Handler = static (lu, r) => lu.TestUnitReady(r) });
        Add(new() { Opcode = 0x03, Name = "REQUEST SENSE", Usage = U(0x03, 0x01, 0, 0, 0xFF, Ctl), Direction = In, Access = A, IgnoresUnitAttention = true, AllowedUnderSpc2Reservation = true, AluaAllowed = Always, Handler = static (lu, r) => lu.RequestSense(r) });
        Add(new() { Opcode = 0x08, Name = "READ(6)", Usage = U(0x08, 0x1F, 0xFF, 0xFF, 0xFF, Ctl), Direction = In, Access = R, Layout = CdbLayout.Rw6, Handler = static (lu, r) => lu.Read(r) });
        Add(new() { Opcode = 0x0A, Name = "WRITE(6)", Usage = U(0x0A, 0x1F, 0xFF, 0xFF, 0xFF, Ctl), Direction = Out, Access = W, Layout = CdbLayout.Rw6, Handler = static (lu, r) => lu.Write(r) });
        Add(new() { Opcode = 0x12, Name = "INQUIRY", Usage = U(0x12, 0x01, 0xFF, 0xFF, 0xFF, Ctl), Direction = In, Access = A, IgnoresUnitAttention = true, AllowedUnderSpc2Reservation = true, AluaAllowed = Always, Handler = static (lu, r) => lu.Inquiry(r) });
        Add(new() { Opcode = 0x15, Name = "MODE SELECT(6)", Usage = U(0x15, 0x11, 0, 0, 0xFF, Ctl), Direction = Out, Access = W, AluaAllowed = Sb, Handler = static (lu, r) => lu.ModeSelect(r) });
        Add(new() { Opcode = 0x16, Name = "RESERVE(6)", Usage = U(0x16, 0, 0, 0, 0, Ctl), Access = A, Handler = static (lu, r) => lu.Reserve6(r) });
        Add(new() { Opcode = 0x17, Name = "RELEASE(6)", Usage = U(0x17, 0, 0, 0, 0, Ctl), Access = A, AllowedUnderSpc2Reservation = true, Handler = static (lu, r) => lu.Release6(r) });
        Add(new() { Opcode = 0x1A, Name = "MODE SENSE(6)", Usage = U(0x1A, 0x08, 0xFF, 0xFF, 0xFF, Ctl), Direction = In, Access = R, AluaAllowed = Sb, Handler = static (lu, r) => lu.ModeSense(r) });
        Add(new() { Opcode = 0x1B, Name = "START STOP UNIT", Usage = U(0x1B, 0x01, 0, 0x0F, 0xF7, Ctl), Access = A, Handler = static (lu, r) => lu.StartStopUnit(r) });
        Add(new() { Opcode = 0x1E, Name = "PREVENT ALLOW MEDIUM REMOVAL", Usage = U(0x1E, 0, 0, 0, 0x03, Ctl), Access = A, Handler = static (lu, r) => lu.PreventAllow(r) });
        Add(new() { Opcode = 0x25, Name = "READ CAPACITY(10)", Usage = U(0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, Ctl), Direction = In, Access = A, AluaAllowed = Sb, Handler = static (lu, r) => lu.ReadCapacity10(r) });
        Add(new() { Opcode = 0x28, Name = "READ(10)", Usage = U(0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl), Direction = In, Access = R, Layout = CdbLayout.Rw10, Handler = static (lu, r) => lu.Read(r) });
        Add(new() { Opcode = 0x2A, Name = "WRITE(10)", Usage = U(0x2A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl), Direction = Out, Access = W, Layout = CdbLayout.Rw10, Handler = static (lu, r) => lu.Write(r) });
        Add(new() { Opcode = 0x2E, Name = "WRITE AND VERIFY(10)", Usage = U(0x2E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl), Direction = Out, Access = W, Layout = CdbLayout.Rw10, Handler = static (lu, r) => lu.WriteAndVerify(r) });
        Add(new() { Opcode = 0x2F, Name = "VERIFY(10)", Usage = U(0x2F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl), Direction = Out, Access = R, Layout = CdbLayout.Rw10, Handler = static (lu, r) => lu.Verify(r) });
        Add(new() { Opcode = 0x34, Name = "PRE-FETCH(10)", Usage = U(0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl), Access = R, Layout = CdbLayout.Rw10, Handler = static (lu, r) => lu.PreFetch(r) });
        Add(new() { Opcode = 0x35, Name = "SYNCHRONIZE CACHE(10)", Usage = U(0x35, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl), Access = W, Layout = CdbLayout.Rw10, Handler = static (lu, r) => lu.SynchronizeCache(r) });
        Add(new() { Opcode = 0x37, Name = "READ DEFECT DATA(10)", Usage = U(0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, Ctl), Direction = In, Access = R, Handler = static (lu, r) => lu.ReadDefectData(r) });
        Add(new() { Opcode = 0x41, Name = "WRITE SAME(10)", Usage = U(0x41, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl), Direction = Out, Access = W, Layout = CdbLayout.Rw10, Handler = static (lu, r) => lu.WriteSame(r) });
        Add(new() { Opcode = 0x42, Name = "UNMAP", Usage = U(0x42, 0, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, Ctl), Direction = Out, Access = W, Handler = static (lu, r) => lu.Unmap(r) });
        Add(new() { Opcode = 0x4D, Name = "LOG SENSE", Usage = U(0x4D, 0, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0xFF, 0xFF, Ctl), Direction = In, Access = A, AluaAllowed = Sb, Handler = static (lu, r) => lu.LogSense(r) });
        Add(new() { Opcode = 0x55, Name = "MODE SELECT(10)", Usage = U(0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, Ctl), Direction = Out, Access = W, AluaAllowed = Sb, Handler = static (lu, r) => lu.ModeSelect(r) });
        Add(new() { Opcode = 0x5A, Name = "MODE SENSE(10)", Usage = U(0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, Ctl), Direction = In, Access = R, AluaAllowed = Sb, Handler = static (lu, r) => lu.ModeSense(r) });

        // PERSISTENT RESERVE IN/OUT: one row and one handler per service action (REGISTER AND MOVE is not supported).
        byte[] prInUsage = U(0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, Ctl);
        var prIn = new CommandInfo?[32];
        void PrIn(int sa, string name, CommandHandler h) =>
            prIn[sa] = new() { Opcode = 0x5E, ServiceAction = sa, Name = "PERSISTENT RESERVE IN/" + name, Usage = prInUsage, Direction = In, Access = A, AluaAllowed = Sb, Handler = h };
        PrIn(0x00, "READ KEYS", static (lu, r) => lu.PrInReadKeys(r));
        PrIn(0x01, "READ RESERVATION", static (lu, r) => lu.PrInReadReservation(r));
        PrIn(0x02, "REPORT CAPABILITIES", static (lu, r) => lu.PrInReportCapabilities(r));
        PrIn(0x03, "READ FULL STATUS", static (lu, r) => lu.PrInReadFullStatus(r));
        Add(new() { Opcode = 0x5E, Name = "PERSISTENT RESERVE IN", Usage = prInUsage, ServiceActions = prIn });
        byte[] prOutUsage = U(0x5F, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, Ctl);
        var prOut = new CommandInfo?[32];
        void PrOut(int sa, string name, CommandHandler h) =>
            prOut[sa] = new() { Opcode = 0x5F, ServiceAction = sa, Name = "PERSISTENT RESERVE OUT/" + name, Usage = prOutUsage, Direction = Out, Access = A, AluaAllowed = Sb, Handler = h };
        PrOut(0x00, "REGISTER", static (lu, r) => lu.PrOutRegister(r));
        PrOut(0x01, "RESERVE", static (lu, r) => lu.PrOutReserve(r));
        PrOut(0x02, "RELEASE", static (lu, r) => lu.PrOutRelease(r));
        PrOut(0x03, "CLEAR", static (lu, r) => lu.PrOutClear(r));
        PrOut(0x04, "PREEMPT", static (lu, r) => lu.PrOutPreempt(r));
        PrOut(0x05, "PREEMPT AND ABORT", static (lu, r) => lu.PrOutPreemptAndAbort(r));
        PrOut(0x06, "REGISTER AND IGNORE EXISTING KEY", static (lu, r) => lu.PrOutRegisterAndIgnoreExistingKey(r));
        Add(new() { Opcode = 0x5F, Name = "PERSISTENT RESERVE OUT", Usage = prOutUsage, ServiceActions = prOut });

        // Third-party copy (SPC-4 6.4, 6.18): EXTENDED COPY(LID1) and RECEIVE COPY RESULTS.
        var xcopy = new CommandInfo?[32];
        xcopy[0x00] = new() { Opcode = 0x83, ServiceAction = 0x00, Name = "EXTENDED COPY(LID1)", Usage = U(0x83, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl), Direction = Out, Access = W, TimeoutSeconds = 120, Handler = static (lu, r) => lu.ExtendedCopy(r) };
        Add(new() { Opcode = 0x83, Name = "THIRD-PARTY COPY OUT", Usage = U(0x83, 0x1F), ServiceActions = xcopy });
        var rcr = new CommandInfo?[32];
        rcr[0x00] = new() { Opcode = 0x84, ServiceAction = 0x00, Name = "RECEIVE COPY RESULTS/COPY STATUS", Usage = U(0x84, 0x1F, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl), Direction = In, Access = R, Handler = static (lu, r) => lu.ReceiveCopyResults(r) };
        rcr[0x03] = new() { Opcode = 0x84, ServiceAction = 0x03, Name = "RECEIVE COPY RESULTS/OPERATING PARAMETERS", Usage = U(0x84, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl), Direction = In, Access = A, Handler = static (lu, r) => lu.ReceiveCopyResults(r) };
        Add(new() { Opcode = 0x84, Name = "THIRD-PARTY COPY IN", Usage = U(0x84, 0x1F), ServiceActions = rcr });

        byte[] Rw16(byte op, byte flags) => U(op, flags, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl);
        byte[] Rw12(byte op, byte flags) => U(op, flags, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl);
        Add(new() { Opcode = 0x88, Name = "READ(16)", Usage = Rw16(0x88, 0x18), Direction = In, Access = R, Layout = CdbLayout.Rw16, Handler = static (lu, r) => lu.Read(r) });
        Add(new() { Opcode = 0x89, Name = "COMPARE AND WRITE", Usage = U(0x89, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x1F, Ctl), Direction = Out, Access = W, Layout = CdbLayout.CompareAndWrite, Handler = static (lu, r) => lu.CompareAndWrite(r) });
        Add(new() { Opcode = 0x8A, Name = "WRITE(16)", Usage = Rw16(0x8A, 0x18), Direction = Out, Access = W, Layout = CdbLayout.Rw16, Handler = static (lu, r) => lu.Write(r) });
        Add(new() { Opcode = 0x8B, Name = "ORWRITE(16)", Usage = Rw16(0x8B, 0x18), Direction = Out, Access = W, Layout = CdbLayout.Rw16, Handler = static (lu, r) => lu.OrWrite(r) });
        Add(new() { Opcode = 0x8E, Name = "WRITE AND VERIFY(16)", Usage = Rw16(0x8E, 0x16), Direction = Out, Access = W, Layout = CdbLayout.Rw16, Handler = static (lu, r) => lu.WriteAndVerify(r) });
        Add(new() { Opcode = 0x8F, Name = "VERIFY(16)", Usage = Rw16(0x8F, 0x16), Direction = Out, Access = R, Layout = CdbLayout.Rw16, Handler = static (lu, r) => lu.Verify(r) });
        Add(new() { Opcode = 0x90, Name = "PRE-FETCH(16)", Usage = Rw16(0x90, 0x02), Access = R, Layout = CdbLayout.Rw16, Handler = static (lu, r) => lu.PreFetch(r) });
        Add(new() { Opcode = 0x91, Name = "SYNCHRONIZE CACHE(16)", Usage = Rw16(0x91, 0x06), Access = W, Layout = CdbLayout.Rw16, Handler = static (lu, r) => lu.SynchronizeCache(r) });
        Add(new() { Opcode = 0x93, Name = "WRITE SAME(16)", Usage = Rw16(0x93, 0x09), Direction = Out, Access = W, Layout = CdbLayout.Rw16, Handler = static (lu, r) => lu.WriteSame(r) });

        Add(new() { Opcode = 0x9C, Name = "WRITE ATOMIC(16)", Usage = U(0x9C, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0xFF, 0xFF, 0x1F, Ctl), Direction = Out, Access = W, Layout = CdbLayout.Atomic16, Handler = static (lu, r) => lu.WriteAtomic(r) });
        var sai = new CommandInfo?[32];
        sai[0x10] = new() { Opcode = 0x9E, ServiceAction = 0x10, Name = "READ CAPACITY(16)", Usage = U(0x9E, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, Ctl), Direction = In, Access = A, AluaAllowed = Sb, Handler = static (lu, r) => lu.ReadCapacity16(r) };
        sai[0x12] = new() { Opcode = 0x9E, ServiceAction = 0x12, Name = "GET LBA STATUS", Usage = U(0x9E, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl), Direction = In, Access = R, Handler = static (lu, r) => lu.GetLbaStatus(r) };
        Add(new() { Opcode = 0x9E, Name = "SERVICE ACTION IN(16)", Usage = U(0x9E, 0x1F), ServiceActions = sai });

        Add(new() { Opcode = 0xA0, Name = "REPORT LUNS", Usage = U(0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl), Direction = In, Access = A, IgnoresUnitAttention = true, AllowedUnderSpc2Reservation = true, AluaAllowed = Always, Handler = static (lu, r) => lu.ReportLuns(r) });
        var mi = new CommandInfo?[32];
        mi[0x0C] = new() { Opcode = 0xA3, ServiceAction = 0x0C, Name = "REPORT SUPPORTED OPERATION CODES", Usage = U(0xA3, 0x1F, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl), Direction = In, Access = A, Handler = static (lu, r) => lu.ReportSupportedOpcodes(r) };
        mi[0x0A] = new() { Opcode = 0xA3, ServiceAction = 0x0A, Name = "REPORT TARGET PORT GROUPS", Usage = U(0xA3, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl), Direction = In, Access = A, AluaAllowed = Always, Handler = static (lu, r) => lu.ReportTargetPortGroups(r) };
        Add(new() { Opcode = 0xA3, Name = "MAINTENANCE IN", Usage = U(0xA3, 0x1F), ServiceActions = mi });
        Add(new() { Opcode = 0xA8, Name = "READ(12)", Usage = Rw12(0xA8, 0x18), Direction = In, Access = R, Layout = CdbLayout.Rw12, Handler = static (lu, r) => lu.Read(r) });
        Add(new() { Opcode = 0xAA, Name = "WRITE(12)", Usage = Rw12(0xAA, 0x18), Direction = Out, Access = W, Layout = CdbLayout.Rw12, Handler = static (lu, r) => lu.Write(r) });
        Add(new() { Opcode = 0xAE, Name = "WRITE AND VERIFY(12)", Usage = Rw12(0xAE, 0x16), Direction = Out, Access = W, Layout = CdbLayout.Rw12, Handler = static (lu, r) => lu.WriteAndVerify(r) });
        Add(new() { Opcode = 0xAF, Name = "VERIFY(12)", Usage = Rw12(0xAF, 0x16), Direction = Out, Access = R, Layout = CdbLayout.Rw12, Handler = static (lu, r) => lu.Verify(r) });
        Add(new() { Opcode = 0xB7, Name = "READ DEFECT DATA(12)", Usage = U(0xB7, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl), Direction = In, Access = R, Handler = static (lu, r) => lu.ReadDefectData(r) });
        return t;
    }
}
