using System.Buffers;

namespace IntegrityTarget.Scsi;

// The boundary between a SCSI transport (iSCSI here) and the SCSI layer. Nothing in this file knows
// about PDUs; nothing in the SCSI layer knows about iSCSI beyond the TransportID bytes it is handed.

/// <summary>
/// An I_T nexus: one initiator port talking to one target port. For iSCSI the initiator port name is
/// "IQN,i,0xISID" and the target port name "IQN,t,0xTPGT" (RFC 7143 §4.4.1 / SPC-4 TransportID).
/// Reservations, unit attentions and sense are kept per nexus.
/// </summary>
public sealed record ItNexus(
    string InitiatorName,
    string InitiatorPortName,
    string TargetPortName,
    ushort RelativeTargetPortId,
    byte[] InitiatorTransportId)
{
    public override string ToString() => InitiatorPortName;
}

public enum DataDirection { None, Read, Write, Bidirectional }

public enum TaskAttribute { Simple = 0, HeadOfQueue = 1, Ordered = 2, Aca = 4 }

/// <summary>One SCSI command as delivered by the transport, with all of its Data-Out already gathered.</summary>
public sealed class ScsiCommand
{
    public required ItNexus Nexus { get; init; }
    /// <summary>LUN as a flat number (the transport decodes the 8-byte LUN structure).</summary>
    public required ulong Lun { get; init; }
    public required ReadOnlyMemory<byte> Cdb { get; init; }
    /// <summary>Bytes the initiator expects to transfer (iSCSI EDTL).</summary>
    public uint ExpectedTransferLength { get; init; }
    public DataDirection Direction { get; init; }
    /// <summary>Data-Out received for this command (length == ExpectedTransferLength for writes).</summary>
    public ReadOnlyMemory<byte> DataOut { get; init; }
    public TaskAttribute Attribute { get; init; }
    /// <summary>Transport tag (iSCSI ITT), for logs.</summary>
    public ulong TaskTag { get; init; }
}

/// <summary>
/// The result of a command. <see cref="DataIn"/> is what the command produced (it may be longer than
/// the transport may send: the transport truncates and reports overflow). <see cref="TransferLength"/>
/// is the byte count the CDB asked to move, which the transport compares with its expected length to
/// report residuals: for data-in commands it equals <c>DataIn.Length</c> unless the command failed part
/// way (then the bytes actually good); for data-out commands the bytes the CDB wanted.
/// Dispose returns pooled buffers.
/// </summary>
public sealed class ScsiResponse : IDisposable
{
    private IMemoryOwner<byte>? _owner;

    public byte Status { get; init; }
    public ReadOnlyMemory<byte> Sense { get; init; }
    public ReadOnlyMemory<byte> DataIn { get; init; }
    public long TransferLength { get; init; }

    public ScsiResponse() { }
    public ScsiResponse(IMemoryOwner<byte>? owner) { _owner = owner; }

    public void Dispose() { _owner?.Dispose(); _owner = null; }
}

public static class ScsiStatus
{
    public const byte Good = 0x00;
    public const byte CheckCondition = 0x02;
    public const byte ConditionMet = 0x04;
    public const byte Busy = 0x08;
    public const byte ReservationConflict = 0x18;
    public const byte TaskSetFull = 0x28;
    public const byte AcaActive = 0x30;
    public const byte TaskAborted = 0x40;
}

/// <summary>What a transport needs from the SCSI layer of one target (its set of logical units).</summary>
public interface IScsiTarget
{
    /// <summary>The LUNs this target exposes (REPORT LUNS answers from the same list).</summary>
    IReadOnlyList<ulong> Luns { get; }

    /// <summary>
    /// Executes one command. Never throws for bad CDBs or backend failures: those come back as
    /// CHECK CONDITION with sense. Cancellation means the task was aborted: the implementation checks it
    /// before touching the backend, and once it returns the command no longer touches the backend.
    /// </summary>
    ValueTask<ScsiResponse> ExecuteAsync(ScsiCommand command, CancellationToken ct);

    /// <summary>A new I_T nexus exists (login): it gets a POWER ON/RESET unit attention.</summary>
    void NexusCreated(ItNexus nexus);

    /// <summary>The nexus is gone (logout, connection loss, reinstatement).</summary>
    void NexusLost(ItNexus nexus);

    /// <summary>LOGICAL UNIT RESET from <paramref name="nexus"/>, after the transport has aborted that LUN's tasks.</summary>
    void LogicalUnitReset(ulong lun, ItNexus nexus);

    /// <summary>TARGET WARM RESET, after the transport has aborted every task.</summary>
    void TargetReset(ItNexus nexus);

    /// <summary>
    /// The response for a command the transport ended itself (e.g. a broken Data-Out sequence): status and
    /// sense from the one reason table, in the sense format the LUN uses (D_SENSE). Touches no state.
    /// </summary>
    ScsiResponse TransportFailure(ulong lun, in ScsiError error) =>
        new() { Status = SenseTable.Get(error.Reason).Status, Sense = SenseBuilder.Build(error, descriptor: false) };

    /// <summary>
    /// Raised when the SCSI layer needs the transport to abort tasks (PERSISTENT RESERVE OUT PREEMPT AND
    /// ABORT): abort all tasks of the listed nexuses on that LUN.
    /// </summary>
    event Action<ulong /*lun*/, IReadOnlyCollection<string> /*initiator port names*/>? AbortTasksRequested;
}

/// <summary>
/// What a <see cref="ScsiTarget"/> routes one LUN's commands and nexus events to: a
/// <see cref="ScsiLogicalUnit"/> serving its volume here, or (with several gateways) a unit that
/// forwards to whichever gateway owns the LUN.
/// </summary>
public interface ILogicalUnit
{
    ulong Lun { get; }

    /// <summary>The unit serving this LUN's volume in this process, or null (e.g. another gateway owns it now).</summary>
    ScsiLogicalUnit? Local { get; }

    /// <summary>Called once by the target the unit belongs to (REPORT LUNS and the target device name come from it).</summary>
    void AttachTo(ScsiTarget target);

    /// <summary>As <see cref="IScsiTarget.ExecuteAsync"/>, for this LUN.</summary>
    ValueTask<ScsiResponse> ExecuteAsync(ScsiCommand command, CancellationToken ct);

    void NexusCreated(ItNexus nexus);
    void NexusLost(ItNexus nexus);

    /// <summary>LOGICAL UNIT RESET or a target reset: every nexus gets <paramref name="ua"/>.</summary>
    void Reset(SenseReason ua);

    /// <summary>Queues a unit attention for one nexus (e.g. REPORTED LUNS DATA HAS CHANGED after a reload).</summary>
    void UnitAttention(ItNexus nexus, SenseReason reason);

    /// <summary>Whether sense is in descriptor format (D_SENSE of the control mode page).</summary>
    bool DescriptorSense { get; }

    /// <summary>PREEMPT AND ABORT: abort this LUN's tasks of the listed initiator ports.</summary>
    event Action<ulong, IReadOnlyCollection<string>>? AbortTasksRequested;
}
