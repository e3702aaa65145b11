using System.Buffers;
using System.Buffers.Binary;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Iscsi.Session;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi;

// Full feature phase: CmdSN window, SCSI commands with immediate/unsolicited/solicited Data-Out,
// Data-In and SCSI Response with residuals, NOP-Out.
public sealed partial class IscsiConnection
{
    private readonly Dictionary<uint, ScsiTask> _tasks = [];
    private long _writeBufferBytes;
    private long _readBacklog;
    private int _immediateCommands;
    private TaskCompletionSource? _idleWaiter;
    private TaskCompletionSource? _sendRoomWaiter;

    public int TasksInFlight { get { lock (_sync) return _tasks.Count; } }

    /// <summary>
    /// CmdSN acceptance (RFC 7143 §3.2.2.1): immediate commands are always taken; others must lie in
    /// [ExpCmdSN, MaxCmdSN] or are dropped silently. Returns false for a dropped PDU.
    /// </summary>
    private bool AcceptCmdSN(byte[] header, bool countsAsCommand)
    {
        uint cmdSN = Bhs.U32(header, 24);
        var verdict = _window.Accept(cmdSN, Bhs.Immediate(header), countsAsCommand, out var exp, out var max);
        if (verdict == CmdSnWindow.Verdict.OutsideWindow)
            _log.Debug("Dropping {Opcode} with CmdSN {CmdSN} outside window [{Exp}, {Max}]", Bhs.Op(header), cmdSN, exp, max);
        else if (verdict == CmdSnWindow.Verdict.Duplicate)
            _log.Debug("Dropping duplicate CmdSN {CmdSN}", cmdSN);
        return verdict == CmdSnWindow.Verdict.Accepted;
    }

    // ---------------------------------------------------------------- SCSI Command

    private async ValueTask HandleScsiCommandAsync(InboundPdu pdu)
    {
        _server.Counters.CommandReceived();
        var h = pdu.Header;
        if (Session?.Target is not { } target)
        {
            await RejectAsync(pdu, RejectReason.ProtocolError, "SCSI command in a discovery session").ConfigureAwait(false);
            return;
        }
        bool final = (h[1] & 0x80) != 0, read = (h[1] & 0x40) != 0, write = (h[1] & 0x20) != 0;
        uint edtlRaw = Bhs.U32(h, 20);
        int immediate = pdu.DataLength;
        uint itt = Bhs.Itt(h);

        // Header checks that make the PDU unusable (nothing consumed from the CmdSN window yet).
        string? invalid = null;
        if (itt == Bhs.ReservedTag) invalid = "ITT 0xffffffff is reserved";
        else if (read && write) invalid = "bidirectional commands are not supported";
        else if (write && edtlRaw > (uint)Options.MaxCommandDataLength) invalid = $"expected data transfer length {edtlRaw} exceeds {Options.MaxCommandDataLength}";
        else if (immediate > 0 && !write) invalid = "data segment on a command without the W bit";
        else if (immediate > 0 && !Parameters.ImmediateData) invalid = "immediate data although ImmediateData=No";
        else if (immediate > Math.Min((long)Parameters.FirstBurstLength, edtlRaw)) invalid = "immediate data longer than FirstBurstLength or the expected length";
        else if (!final && (!write || Parameters.InitialR2T)) invalid = "F bit clear without unsolicited data allowed";
        else if (!final && immediate >= edtlRaw) invalid = "F bit clear but all data already sent";
        else if (pdu.AhsLength > 0 && !TryCdbFromAhs(pdu, out _)) invalid = "malformed AHS";
        if (invalid is not null)
        {
            if (AcceptCmdSN(h, countsAsCommand: false))
                await RejectAsync(pdu, RejectReason.InvalidPduField, invalid).ConfigureAwait(false);
            return;
        }

        // Back-pressure: while this connection's read answers wait to be taken by the initiator, it reads no
        // new commands (TCP then holds the initiator back), so unread answers cannot pile up without bound.
        long reserve = write ? Math.Min(edtlRaw, (uint)Options.MaxCommandDataLength)
                     : read ? Math.Min(edtlRaw, (uint)Options.MaxCommandDataLength) : 0;
        if (read && reserve > 0) await WaitForSendRoomAsync(reserve).ConfigureAwait(false);
        if (_phase == Phase.Closed) return;

        if (!AcceptCmdSN(h, countsAsCommand: true)) return;

        var task = new ScsiTask
        {
            Itt = itt,
            LunField = Bhs.Lun(h),
            CmdSN = Bhs.U32(h, 24),
            Read = read,
            Write = write,
            Edtl = (int)Math.Min(edtlRaw, int.MaxValue),
            Attribute = (TaskAttribute)(h[1] & 0x07),
        };
        task.Lun = LunAddress.Decode(task.LunField);
        TryCdbFromAhs(pdu, out var cdb);
        task.Cdb = cdb;

        // Everything the command holds (its share of the process-wide in-flight budget, this connection's write
        // buffer bytes, the buffer) is taken before it enters the task set: from then on a task management
        // function of any connection may abort and finish it, and finishing gives back only what it holds.
        string? full = null;
        if (reserve > 0 && !_server.Budget.TryReserve(reserve)) full = "In-flight data budget spent";
        else task.Reserved = reserve;
        if (full is null && write && task.Edtl > 0)
        {
            lock (_sync)
            {
                if (_writeBufferBytes + task.Edtl > Options.MaxWriteBufferBytesPerConnection) full = "Write buffer budget exhausted";
                else
                {
                    _writeBufferBytes += task.Edtl;
                    task.Buffer = _server.BufferPool.Rent(task.Edtl);
                }
            }
            if (task.Buffer is not null && immediate > 0) pdu.Data.CopyTo(task.Buffer);
        }

        bool immediateLimit = false;
        lock (_sync)
        {
            if (Bhs.Immediate(h) && _immediateCommands >= Options.MaxImmediateCommands)
            {
                ReleaseSlotLocked(task);
                immediateLimit = true;
            }
            else if (_tasks.ContainsKey(itt))
            {
                ReleaseSlotLocked(task);
                invalid = "ITT already in use";
            }
            else if (full is null)
            {
                _tasks.Add(itt, task);
                if (Bhs.Immediate(h))
                {
                    task.Immediate = true;
                    _immediateCommands++;
                }
                if (read) { task.Backlog = task.Reserved; _readBacklog += task.Reserved; }
            }
            else ReleaseSlotLocked(task);
        }
        if (immediateLimit || invalid is not null || full is not null)
            FinishTask(task); // never entered the task set: gives back what it holds, nobody else can
        if (immediateLimit)
        {
            // Immediate commands bypass the CmdSN window, so their number is bounded here (RFC 7143 §11.17.1).
            _server.Counters.ImmediateRejected();
            await RejectAsync(pdu, RejectReason.ImmediateCommandReject, $"more than {Options.MaxImmediateCommands} immediate commands outstanding").ConfigureAwait(false);
            return;
        }
        if (invalid is not null)
        {
            await SendRejectAsync(h, RejectReason.TaskInProgress).ConfigureAwait(false);
            return;
        }
        if (full is not null)
        {
            // A command that does not fit waits at the initiator.
            _log.Debug("{Why}: ITT 0x{Itt:x8} answered TASK SET FULL", full, itt);
            await SendScsiResponseAsync(task, ScsiStatus.TaskSetFull, 0, default, 0).ConfigureAwait(false);
            return;
        }

        if (write && task.Edtl > 0)
        {
            task.Received = immediate;
            task.UnsolicitedNext = immediate;
            if (!final)
            {
                task.UnsolicitedOpen = true;
                task.UnsolicitedEnd = Math.Min(Parameters.FirstBurstLength, task.Edtl);
            }
            task.NextR2TOffset = final ? immediate : task.UnsolicitedEnd;
            // Room for the R2Ts this command can ever have outstanding at once, not the negotiated maximum.
            long bursts = ((long)task.Edtl - task.NextR2TOffset + Parameters.MaxBurstLength - 1) / Parameters.MaxBurstLength;
            task.R2Ts = new R2TState[(int)Math.Clamp(bursts, 1, Math.Max(1, Parameters.MaxOutstandingR2T))];
            if (task.Received < task.Edtl)
            {
                await IssueR2TsAsync(task).ConfigureAwait(false);
                return;
            }
        }
        StartExecution(task, target);
    }

    /// <summary>
    /// Waits while this connection's read data not yet sent is at <see cref="IscsiServerOptions.MaxQueuedReadBytesPerConnection"/>
    /// (one command always fits when nothing is queued). The receive path waits here, so nothing more is read
    /// from the socket meanwhile; a close ends the wait.
    /// </summary>
    private async ValueTask WaitForSendRoomAsync(long bytes)
    {
        bool counted = false;
        while (true)
        {
            Task wait;
            lock (_sync)
            {
                if (_readBacklog == 0 || _readBacklog + bytes <= Options.MaxQueuedReadBytesPerConnection || _phase == Phase.Closed) return;
                _sendRoomWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _sendRoomWaiter.Task;
            }
            if (!counted) { _server.Counters.BackPressureWait(); counted = true; }
            try { await wait.WaitAsync(_closedCts.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
        }
    }

    /// <summary>CDB from the BHS plus an extended-CDB AHS (type 1) when present.</summary>
    private static bool TryCdbFromAhs(InboundPdu pdu, out byte[] cdb)
    {
        var h = pdu.Header;
        int extra = 0, extOffset = 0;
        var ahs = pdu.Ahs.AsSpan(0, pdu.AhsLength);
        int pos = 0;
        while (pos + 4 <= ahs.Length)
        {
            int len = BinaryPrimitives.ReadUInt16BigEndian(ahs[pos..]);
            byte type = ahs[pos + 2];
            if (len == 0 || pos + 3 + len > ahs.Length) { cdb = []; return false; }
            if (type == 1) { extOffset = pos + 4; extra = len - 1; }
            pos += Bhs.Padded(3 + len);
        }
        cdb = new byte[16 + extra];
        h.AsSpan(32, 16).CopyTo(cdb);
        if (extra > 0) ahs.Slice(extOffset, extra).CopyTo(cdb.AsSpan(16));
        return true;
    }

    /// <summary>Sends R2Ts for the data not yet solicited, keeping at most MaxOutstandingR2T outstanding.</summary>
    private async ValueTask IssueR2TsAsync(ScsiTask task)
    {
        // R2Ts wait until the unsolicited burst is over, so that they start where it really ended.
        while (true)
        {
            R2TState r2t;
            lock (_sync)
            {
                if (task.Aborted || task.UnsolicitedOpen || task.NextR2TOffset >= task.Edtl || task.R2TCount >= task.R2Ts.Length) return;
                int len = Math.Min(Parameters.MaxBurstLength, task.Edtl - task.NextR2TOffset);
                r2t = new R2TState { Ttt = NextTttLocked(), R2TSN = task.NextR2TSN++, Offset = task.NextR2TOffset, Length = len };
                task.NextR2TOffset += len;
                task.R2Ts[task.R2TCount++] = r2t;
            }
            // Not flushed here: R2Ts go out with the flush after the received batch is handled.
            await _sender.SendAsync(TargetPdus.R2T(task.LunField, task.Itt, r2t.Ttt, r2t.R2TSN, r2t.Offset, r2t.Length), flush: false).ConfigureAwait(false);
        }
    }

    private uint NextTttLocked()
    {
        var t = _nextTtt++;
        if (_nextTtt == Bhs.ReservedTag) _nextTtt = 1;
        return t;
    }

    // ---------------------------------------------------------------- Data-Out

    private async ValueTask HandleDataOutAsync(InboundPdu pdu)
    {
        var h = pdu.Header;
        uint itt = Bhs.Itt(h), ttt = Bhs.U32(h, 20), dataSN = Bhs.U32(h, 36);
        int offset = (int)Math.Min(Bhs.U32(h, 40), int.MaxValue);
        int len = pdu.DataLength;
        bool final = Bhs.Final(h);
        ScsiTask? task;
        string? error = null;
        var kind = SenseReason.None;
        bool complete = false, moreR2T = false;
        lock (_sync)
        {
            if (!_tasks.TryGetValue(itt, out task) || task.Aborted || task.Executing)
            {
                // Data for a task that was aborted (or never existed) is discarded silently (RFC 7143 §4.2.3.3).
                _log.Debug("Discarding Data-Out for unknown or finished ITT 0x{Itt:x8}", itt);
                return;
            }
            if (ttt == Bhs.ReservedTag)
            {
                if (!task.UnsolicitedOpen) (kind, error) = (SenseReason.UnexpectedUnsolicitedData, "unsolicited Data-Out not expected");
                else if (dataSN != task.UnsolicitedDataSN) (kind, error) = (SenseReason.DataPhaseError, $"DataSN {dataSN}, expected {task.UnsolicitedDataSN}");
                else if (offset != task.UnsolicitedNext) (kind, error) = (SenseReason.DataOffsetError, $"buffer offset {offset}, expected {task.UnsolicitedNext}");
                else if ((long)offset + len > task.UnsolicitedEnd) (kind, error) = (SenseReason.TooMuchWriteData, "unsolicited data beyond FirstBurstLength");
                else if (!final && offset + len == task.UnsolicitedEnd) (kind, error) = (SenseReason.DataPhaseError, "F bit missing on the last unsolicited Data-Out");
                else
                {
                    pdu.Data.CopyTo(task.Buffer.AsSpan(offset, len));
                    task.Received += len;
                    task.UnsolicitedNext += len;
                    task.UnsolicitedDataSN++;
                    if (final)
                    {
                        task.UnsolicitedOpen = false;
                        // Fewer unsolicited bytes than allowed: R2Ts solicit the rest from here.
                        task.UnsolicitedEnd = task.UnsolicitedNext;
                        task.NextR2TOffset = task.UnsolicitedNext;
                    }
                }
            }
            else
            {
                int i = Array.FindIndex(task.R2Ts, 0, task.R2TCount, r => r.Ttt == ttt);
                if (i < 0) (kind, error) = (SenseReason.DataPhaseError, $"TTT 0x{ttt:x8} does not match an outstanding R2T");
                else
                {
                    ref var r2t = ref task.R2Ts[i];
                    if (dataSN != r2t.NextDataSN) (kind, error) = (SenseReason.DataPhaseError, $"DataSN {dataSN}, expected {r2t.NextDataSN}");
                    else if (offset != r2t.Offset + r2t.Received) (kind, error) = (SenseReason.DataOffsetError, $"buffer offset {offset}, expected {r2t.Offset + r2t.Received}");
                    else if (r2t.Received + len > r2t.Length) (kind, error) = (SenseReason.TooMuchWriteData, "more data than the R2T asked for");
                    else if (final != (r2t.Received + len == r2t.Length)) (kind, error) = (SenseReason.DataPhaseError, final ? "F bit before the end of the burst" : "F bit missing at the end of the burst");
                    else
                    {
                        pdu.Data.CopyTo(task.Buffer.AsSpan(offset, len));
                        task.Received += len;
                        r2t.Received += len;
                        r2t.NextDataSN++;
                        if (final)
                        {
                            task.R2Ts[i] = task.R2Ts[task.R2TCount - 1];
                            task.R2TCount--;
                            moreR2T = true;
                        }
                    }
                }
            }
            if (error is null && task.Received == task.Edtl && !task.UnsolicitedOpen && task.R2TCount == 0)
            {
                task.Executing = true;
                complete = true;
            }
            if (error is not null) task.Aborted = true; // later Data-Out for it is discarded
        }
        if (error is not null)
        {
            await FailDataOutAsync(pdu, task, kind, error).ConfigureAwait(false);
            return;
        }
        if (complete) StartExecution(task, Session!.Target!);
        else if (moreR2T || !task.UnsolicitedOpen) await IssueR2TsAsync(task).ConfigureAwait(false);
    }

    /// <summary>
    /// A Data-Out that breaks the sequence is rejected, and at ErrorRecoveryLevel 0 its command cannot be
    /// repaired: it ends with CHECK CONDITION / ABORTED COMMAND before it ever reaches the backend. The
    /// connection stays usable (no buffer was written past, nothing executed).
    /// </summary>
    private async ValueTask FailDataOutAsync(InboundPdu pdu, ScsiTask task, SenseReason reason, string why)
    {
        await RejectAsync(pdu, reason == SenseReason.ProtocolServiceCrcError ? RejectReason.DataDigestError : RejectReason.ProtocolError,
            $"ITT 0x{task.Itt:x8}: {why}").ConfigureAwait(false);
        lock (_sync) ReleaseSlotLocked(task);
        // Status and sense come from the SCSI layer's one reason table, in the LUN's sense format.
        using var failure = Session!.Target!.Scsi.TransportFailure(task.Lun, ScsiError.Of(reason));
        await SendScsiResponseAsync(task, failure.Status, 0, failure.Sense, 0).ConfigureAwait(false);
        FinishTask(task);
    }

    private ValueTask DataOutDigestErrorAsync(InboundPdu pdu)
    {
        ScsiTask? task;
        lock (_sync)
        {
            if (!_tasks.TryGetValue(Bhs.Itt(pdu.Header), out task) || task.Aborted || task.Executing) task = null;
            else task.Aborted = true;
        }
        return task is null
            ? RejectAsync(pdu, RejectReason.DataDigestError, "data digest error in Data-Out")
            : FailDataOutAsync(pdu, task, SenseReason.ProtocolServiceCrcError, "data digest error in Data-Out");
    }

    // ---------------------------------------------------------------- execution and response

    private void StartExecution(ScsiTask task, IscsiTargetConfig target)
    {
        lock (_sync)
        {
            if (task.Aborted) return; // aborted before it started: the abort already finished it
            task.Executing = true;
        }
        _ = ExecuteAndRespondAsync(task, target);
    }

    private async Task ExecuteAndRespondAsync(ScsiTask task, IscsiTargetConfig target)
    {
        ScsiResponse? response = null;
        try
        {
            var command = new ScsiCommand
            {
                Nexus = Session!.Nexus!,
                Lun = task.Lun,
                Cdb = task.Cdb,
                ExpectedTransferLength = (uint)task.Edtl,
                Direction = task.Write ? DataDirection.Write : task.Read ? DataDirection.Read : DataDirection.None,
                DataOut = task.Buffer is null ? ReadOnlyMemory<byte>.Empty : task.Buffer.AsMemory(0, task.Edtl),
                Attribute = task.Attribute,
                TaskTag = task.Itt,
            };
            try
            {
                response = await target.Scsi.ExecuteAsync(command, task.Cts.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (task.Cts.IsCancellationRequested)
            {
                response = null;
            }
            catch (Exception ex)
            {
                _log.Error(ex, "SCSI layer threw for ITT 0x{Itt:x8} CDB {Opcode:x2}; answering target failure", task.Itt, task.Cdb[0]);
            }
            // A CDB asking for more than the expected length: the SCSI layer holds what it produced until it is sent.
            if (response is not null && response.DataIn.Length > task.Reserved)
            {
                long more = response.DataIn.Length - task.Reserved;
                _server.Budget.Add(more);
                lock (_sync) task.Reserved += more;
            }
            bool aborted;
            lock (_sync)
            {
                aborted = task.Aborted;
                // The backend is done: the queue slot is free, and the response about to go out says so in MaxCmdSN.
                ReleaseSlotLocked(task);
            }
            if (!aborted && _phase != Phase.Closed)
            {
                if (response is null) await SendScsiResponseAsync(task, 0, 0x01, default, 0).ConfigureAwait(false);
                else await SendScsiResultAsync(task, response).ConfigureAwait(false);
            }
        }
        finally
        {
            response?.Dispose();
            FinishTask(task);
        }
    }

    private void ReleaseSlotLocked(ScsiTask task)
    {
        if (task.SlotReleased) return;
        task.SlotReleased = true;
        _window.ReleaseSlot();
    }

    private void FinishTask(ScsiTask task)
    {
        TaskCompletionSource? idle = null, room = null, finished;
        long reserved;
        lock (_sync)
        {
            if (_tasks.TryGetValue(task.Itt, out var t) && t == task) _tasks.Remove(task.Itt);
            ReleaseSlotLocked(task);
            if (_tasks.Count == 0) { idle = _idleWaiter; _idleWaiter = null; }
            reserved = task.Reserved;
            task.Reserved = 0;
            if (task.Backlog > 0)
            {
                _readBacklog -= task.Backlog;
                task.Backlog = 0;
                room = _sendRoomWaiter;
                _sendRoomWaiter = null;
            }
            if (task.Immediate) { task.Immediate = false; _immediateCommands--; }
            finished = task.MarkFinishedLocked();
        }
        _server.Budget.Release(reserved);
        room?.TrySetResult();
        if (task.Buffer is not null)
        {
            _server.BufferPool.Return(task.Buffer);
            task.Buffer = null;
            lock (_sync) _writeBufferBytes -= task.Edtl;
        }
        finished?.TrySetResult();
        idle?.TrySetResult();
    }

    /// <summary>
    /// Sends the data (Data-In PDUs of at most the initiator's MaxRecvDataSegmentLength, sequences of at
    /// most MaxBurstLength) and status: in the last Data-In when GOOD without sense, otherwise a SCSI Response.
    /// </summary>
    private async ValueTask SendScsiResultAsync(ScsiTask task, ScsiResponse response)
    {
        int readLimit = task.Read ? task.Edtl : 0;
        var data = response.DataIn;
        int sendLength = Math.Min(data.Length, readLimit);
        long transfer = response.TransferLength;
        byte residualFlags = TargetPdus.ResidualFlags(transfer, task.Edtl);
        uint residual = (uint)Math.Min(Math.Abs(transfer - task.Edtl), uint.MaxValue);
        bool statusInData = sendLength > 0 && response.Sense.IsEmpty &&
                            response.Status is ScsiStatus.Good or ScsiStatus.ConditionMet;
        uint dataSN = 0;
        if (sendLength == 0)
        {
            await SendScsiResponseAsync(task, response.Status, 0, response.Sense, dataSN, residualFlags, residual).ConfigureAwait(false);
            return;
        }
        // Large reads go to the socket from the read buffer itself (no copy into the transport's buffer); the
        // buffer then stays the command's until the transport is done with it, which is awaited below before
        // the caller disposes the response. Small ones are copied: for them the wait would cost more.
        bool borrow = sendLength >= BorrowReadDataFrom;
        var released = ValueTask.CompletedTask;
        try
        {
            using (var batch = await _sender.BeginAsync().ConfigureAwait(false))
            {
                try
                {
                    int maxSeg = Parameters.InitiatorMaxRecvDataSegmentLength;
                    int burst = Parameters.MaxBurstLength;
                    int offset = 0, burstLeft = burst;
                    while (offset < sendLength)
                    {
                        int seg = Math.Min(Math.Min(maxSeg, sendLength - offset), burstLeft);
                        bool last = offset + seg == sendLength;
                        bool endOfSequence = last || seg == burstLeft;
                        var h = last && statusInData
                            ? TargetPdus.DataIn(task.LunField, task.Itt, dataSN++, offset, true, response.Status, residualFlags, residual)
                            : TargetPdus.DataIn(task.LunField, task.Itt, dataSN++, offset, endOfSequence);
                        batch.Emit(h, data.Slice(offset, seg), borrow);
                        offset += seg;
                        burstLeft -= seg;
                        if (burstLeft == 0) burstLeft = burst;
                        if (batch.Unflushed >= 256 * 1024 && !await batch.FlushAsync().ConfigureAwait(false)) return;
                    }
                    if (statusInData) await batch.FlushAsync().ConfigureAwait(false);
                }
                finally { released = batch.TakeBorrowedRelease(); }
            }
            if (!statusInData)
                await SendScsiResponseAsync(task, response.Status, 0, response.Sense, dataSN, residualFlags, residual).ConfigureAwait(false);
        }
        finally
        {
            // Also after a failed flush or a throw: the send loop may still be reading the buffer.
            await _sender.WaitReleasedAsync(released).ConfigureAwait(false);
        }
    }

    /// <summary>Read data from this length on is sent from the read buffer instead of a copy (see <see cref="IBorrowingPduSink"/>).</summary>
    internal const int BorrowReadDataFrom = 64 * 1024;

    private async ValueTask SendScsiResponseAsync(ScsiTask task, byte status, byte iscsiResponse, ReadOnlyMemory<byte> sense,
        uint expDataSN, byte residualFlags = 0, uint residual = 0)
    {
        var h = TargetPdus.ScsiResponse(task.Itt, status, iscsiResponse, residualFlags, residual, expDataSN);
        if (sense.IsEmpty)
        {
            await _sender.SendAsync(h).ConfigureAwait(false);
            return;
        }
        // Sense data is prefixed by its 2-byte length (RFC 7143 §11.4.7.2).
        int n = Math.Min(sense.Length, 0xffff);
        var buf = ArrayPool<byte>.Shared.Rent(n + 2);
        try
        {
            BinaryPrimitives.WriteUInt16BigEndian(buf, (ushort)n);
            sense.Span[..n].CopyTo(buf.AsSpan(2));
            await _sender.SendAsync(h, buf.AsMemory(0, n + 2)).ConfigureAwait(false);
        }
        finally { ArrayPool<byte>.Shared.Return(buf); }
    }

    // ---------------------------------------------------------------- NOP-Out

    private async ValueTask HandleNopOutAsync(InboundPdu pdu)
    {
        var h = pdu.Header;
        uint itt = Bhs.Itt(h), ttt = Bhs.U32(h, 20);
        if (itt == Bhs.ReservedTag)
        {
            // An answer to our ping (TTT ours) or a ping that wants no answer; either way it may not carry the I bit off.
            if (ttt != Bhs.ReservedTag && ttt == _pingTtt) _pingTtt = Bhs.ReservedTag;
            return;
        }
        if (ttt != Bhs.ReservedTag)
        {
            await RejectAsync(pdu, RejectReason.InvalidPduField, "NOP-Out with an ITT must carry TTT 0xffffffff").ConfigureAwait(false);
            return;
        }
        if (!AcceptCmdSN(h, countsAsCommand: false)) return;
        int len = Math.Min(pdu.DataLength, Parameters.InitiatorMaxRecvDataSegmentLength);
        var echo = ArrayPool<byte>.Shared.Rent(Math.Max(len, 1));
        pdu.Data.Slice(0, len).CopyTo(echo);
        try { await _sender.SendAsync(TargetPdus.NopInReply(Bhs.Lun(h), itt), echo.AsMemory(0, len)).ConfigureAwait(false); }
        finally { ArrayPool<byte>.Shared.Return(echo); }
    }

    // ---------------------------------------------------------------- task set helpers

    /// <summary>
    /// Aborts matching tasks: they stop receiving data, their CancellationToken fires, and this completes
    /// only when none of them can touch the backend any more. Their responses are suppressed, or replaced
    /// by TASK ABORTED when <paramref name="notifyInitiator"/> (tasks of another nexus).
    /// </summary>
    internal async Task AbortTasksAsync(Func<ScsiTask, bool> match, bool notifyInitiator, string why)
    {
        List<ScsiTask> hit = [];
        List<ScsiTask> waiting = [];
        List<Task> done = [];
        lock (_sync)
        {
            foreach (var t in _tasks.Values)
            {
                if (t.Aborted || !match(t)) continue;
                t.Aborted = true;
                t.NotifyAborted = notifyInitiator;
                hit.Add(t);
                done.Add(t.WhenFinishedLocked());
                if (!t.Executing) waiting.Add(t);
            }
        }
        if (hit.Count == 0) return;
        _log.Information("Aborting {Count} tasks: {Why}", hit.Count, why);
        foreach (var t in hit)
        {
            try { t.Cts.Cancel(); } catch (Exception ex) { _log.Debug(ex, "cancel callback failed"); }
        }
        foreach (var t in waiting) FinishTask(t); // never reached the backend
        await Task.WhenAll(done).ConfigureAwait(false);
        if (notifyInitiator && _phase == Phase.FullFeature)
        {
            // Not awaited: a slow reader on this connection must not delay the caller (e.g. another
            // session's TMF response, which only depends on the tasks having left the backend).
            _ = NotifyAbortedAsync(hit);
        }
    }

    private async Task NotifyAbortedAsync(List<ScsiTask> tasks)
    {
        try
        {
            foreach (var t in tasks) await SendScsiResponseAsync(t, ScsiStatus.TaskAborted, 0, default, 0).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            _log.Debug(ex, "sending TASK ABORTED failed");
        }
    }

    private Task WaitForTasksAsync(CancellationToken ct)
    {
        lock (_sync)
        {
            if (_tasks.Count == 0) return Task.CompletedTask;
            _idleWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _idleWaiter.Task.WaitAsync(ct);
        }
    }
}
