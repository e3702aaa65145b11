using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi.Session;

/// <summary>One outstanding R2T of a write: the burst it asked for and how much of it has arrived.</summary>
internal struct R2TState
{
    public uint Ttt;
    public uint R2TSN;
    public int Offset;
    public int Length;
    public int Received;
    public uint NextDataSN;
}

/// <summary>
/// One SCSI task of a connection, from its SCSI Command PDU until its response is sent (or it is
/// aborted). Write data is gathered into a pooled buffer before the command is executed.
/// </summary>
internal sealed class ScsiTask
{
    public uint Itt;
    public ulong LunField;
    public ulong Lun;
    public uint CmdSN;
    public bool Read, Write;
    public int Edtl;
    public TaskAttribute Attribute;
    public byte[] Cdb = [];
    public byte[]? Buffer;          // pooled, Edtl bytes, writes only
    public int Received;             // Data-Out bytes in place

    // Unsolicited data (immediate data + Data-Out with TTT 0xffffffff, up to FirstBurstLength).
    public bool UnsolicitedOpen;
    public int UnsolicitedEnd;
    public int UnsolicitedNext;
    public uint UnsolicitedDataSN;

    // Solicited data.
    public int NextR2TOffset;
    public uint NextR2TSN;
    public R2TState[] R2Ts = [];
    public int R2TCount;

    /// <summary>Bytes this task holds of the server's in-flight budget.</summary>
    public long Reserved;
    /// <summary>Bytes of read data counted against the connection's unsent-read limit.</summary>
    public long Backlog;
    /// <summary>Marked immediate: counted against the connection's immediate-command limit.</summary>
    public bool Immediate;

    public bool Executing;
    public bool SlotReleased;
    public bool Aborted;
    /// <summary>When aborted by another I_T nexus (or PREEMPT AND ABORT), answer TASK ABORTED instead of nothing.</summary>
    public bool NotifyAborted;
    public readonly CancellationTokenSource Cts = new();
    // Made only when someone waits for this task (an abort): most tasks finish unobserved, and a
    // completion source per command was a tenth of what a 4 KiB read allocated.
    private TaskCompletionSource? _finished;
    private bool _isFinished;

    /// <summary>Completes when the task can no longer touch the backend (after ExecuteAsync returned, or it never started). Caller holds the connection's lock.</summary>
    public Task WhenFinishedLocked() =>
        _isFinished ? Task.CompletedTask : (_finished ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;

    /// <summary>Marks the task finished; returns the completion to set outside the lock, if anyone waits. Caller holds the connection's lock.</summary>
    public TaskCompletionSource? MarkFinishedLocked()
    {
        _isFinished = true;
        return _finished;
    }

    public int DataOutstanding => Edtl - Received;
}
