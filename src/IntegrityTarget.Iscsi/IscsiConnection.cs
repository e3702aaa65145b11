using System.Buffers;
using System.Diagnostics;
using System.Net;
using IntegrityTarget.Iscsi.Login;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Iscsi.Session;
using Serilog;

namespace IntegrityTarget.Iscsi;

/// <summary>
/// The protocol state of one iSCSI connection: login, then the full feature phase. It consumes framed
/// PDUs from <see cref="ReceiveAsync"/> (called by the transport, one call at a time) and writes PDUs to
/// its <see cref="IPduSink"/>. Commands execute concurrently; their responses are sent as they complete,
/// serialized by a send lock that also assigns StatSN in send order.
/// </summary>
public sealed partial class IscsiConnection
{
    private enum Phase { Login, FullFeature, Closed }

    private delegate ValueTask PduHandler(IscsiConnection c, InboundPdu pdu);

    /// <summary>Full-feature-phase opcode table: what each initiator opcode does. Null = not supported.</summary>
    private static readonly PduHandler?[] FfpHandlers = BuildHandlerTable();

    private static PduHandler?[] BuildHandlerTable()
    {
        var t = new PduHandler?[64];
        t[(int)Opcode.NopOut] = static (c, p) => c.HandleNopOutAsync(p);
        t[(int)Opcode.ScsiCommand] = static (c, p) => c.HandleScsiCommandAsync(p);
        t[(int)Opcode.TaskManagementRequest] = static (c, p) => c.HandleTaskManagementAsync(p);
        t[(int)Opcode.LoginRequest] = static (c, p) => c.RejectAsync(p, RejectReason.ProtocolError, "Login Request in full feature phase");
        t[(int)Opcode.TextRequest] = static (c, p) => c.HandleTextRequestAsync(p);
        t[(int)Opcode.DataOut] = static (c, p) => c.HandleDataOutAsync(p);
        t[(int)Opcode.LogoutRequest] = static (c, p) => c.HandleLogoutAsync(p);
        t[(int)Opcode.Snack] = static (c, p) => c.RejectAsync(p, RejectReason.CommandNotSupported, "SNACK needs ErrorRecoveryLevel > 0");
        return t;
    }

    private readonly IscsiServer _server;
    private readonly ILogger _log;
    private readonly PduFramer _framer = new();
    private readonly InboundPdu _rx = new();
    private readonly PduSender _sender;
    private readonly CmdSnWindow _window;
    private readonly object _sync = new();
    private readonly CancellationTokenSource _closedCts = new();
    private readonly TaskCompletionSource _closedTcs = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile Phase _phase = Phase.Login;
    private long _lastReceiveTimestamp;
    private long _pingSentTimestamp;
    private uint _pingTtt = Bhs.ReservedTag;
    private uint _nextTtt = 1;
    private readonly long _createdTimestamp;
    private int _closeStarted;

    internal IscsiConnection(IscsiServer server, IPduSink sink, IPEndPoint? local, IPEndPoint? remote)
    {
        _server = server;
        Local = local;
        Remote = remote;
        _log = server.Log.ForContext("Remote", remote?.ToString() ?? "?");
        _framer.MaxDataSegmentLength = Math.Max(8192, server.Options.MaxRecvDataSegmentLength);
        _window = new CmdSnWindow(server.Options.QueueDepth);
        _sender = new PduSender(sink, _window, _log);
        Parameters.TargetMaxRecvDataSegmentLength = server.Options.MaxRecvDataSegmentLength;
        _createdTimestamp = _lastReceiveTimestamp = Stopwatch.GetTimestamp();
        _ = KeepAliveLoopAsync();
    }

    public IPEndPoint? Local { get; }
    public IPEndPoint? Remote { get; }
    public IscsiSession? Session { get; private set; }
    public NegotiatedParameters Parameters { get; } = new();
    public bool IsClosed => _phase == Phase.Closed;
    public bool IsFullFeature => _phase == Phase.FullFeature;
    /// <summary>Accepted, not logged in yet, not closing.</summary>
    internal bool IsLoggingIn => _phase == Phase.Login && Volatile.Read(ref _closeStarted) == 0;
    internal long CreatedTimestamp => _createdTimestamp;
    /// <summary>Completes when the connection is closed and its tasks are finished.</summary>
    public Task Closed => _closedTcs.Task;
    private IscsiServerOptions Options => _server.Options;

    /// <summary>
    /// Frames and handles as many whole PDUs as <paramref name="buffer"/> holds. Returns the position up
    /// to which bytes were consumed. After a framing error or a close the connection is closed and the
    /// transport should stop reading.
    /// </summary>
    public async ValueTask<SequencePosition> ReceiveAsync(ReadOnlySequence<byte> buffer)
    {
        while (_phase != Phase.Closed)
        {
            var r = _framer.TryRead(ref buffer, _rx, out var error);
            if (r == FrameResult.NeedMoreData) break;
            if (r == FrameResult.Error)
            {
                await HandleFrameErrorAsync(error).ConfigureAwait(false);
                return buffer.End;
            }
            Volatile.Write(ref _lastReceiveTimestamp, Stopwatch.GetTimestamp());
            try
            {
                await DispatchAsync(_rx).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                // A bug or an unexpected input must cost this connection only, never the process.
                _log.Error(ex, "Closing connection after an unexpected error handling {Opcode}", _rx.Opcode);
                await CloseAsync("internal error").ConfigureAwait(false);
            }
            await _sender.FlushPendingAsync().ConfigureAwait(false);
        }
        return _phase == Phase.Closed ? buffer.End : buffer.Start;
    }

    private ValueTask DispatchAsync(InboundPdu pdu)
    {
        if (_phase == Phase.Login) return HandleLoginPhasePduAsync(pdu);
        if (!pdu.DataDigestOk)
        {
            // Data must be discarded; at ERL 0 a Data-Out lost this way cannot be recovered.
            if (pdu.Opcode == Opcode.DataOut)
                return DataOutDigestErrorAsync(pdu);
            return RejectAsync(pdu, RejectReason.DataDigestError, "data digest error");
        }
        var handler = FfpHandlers[(int)pdu.Opcode];
        return handler is null
            ? RejectAsync(pdu, RejectReason.CommandNotSupported, $"opcode 0x{(int)pdu.Opcode:x2} not supported")
            : handler(this, pdu);
    }

    private async ValueTask HandleFrameErrorAsync(FrameError error)
    {
        switch (error)
        {
            case FrameError.DataSegmentTooLarge:
                _log.Warning("Closing connection: PDU {Opcode} announces a {Length}-byte data segment, more than the {Max} we accept",
                    _rx.Opcode, _framer.RefusedLength, _framer.MaxDataSegmentLength);
                if (_phase == Phase.FullFeature)
                    await SendRejectAsync(_rx.Header, RejectReason.ProtocolError).ConfigureAwait(false);
                else
                    await SendLoginFailureAsync(_rx.Header, 0x02, 0x00).ConfigureAwait(false);
                break;
            case FrameError.HeaderDigestMismatch:
                // RFC 7143 §7.8: with a bad header digest the PDU boundaries cannot be trusted.
                _log.Warning("Closing connection: header digest mismatch");
                break;
        }
        await CloseAsync(error.ToString()).ConfigureAwait(false);
    }

    // ---------------------------------------------------------------- sending

    private ValueTask RejectAsync(InboundPdu pdu, RejectReason reason, string why)
    {
        _log.Warning("Reject {Reason} for {Opcode} ITT 0x{Itt:x8}: {Why}", reason, pdu.Opcode, Bhs.Itt(pdu.Header), LogText.Escape(why));
        return SendRejectAsync(pdu.Header, reason);
    }

    private async ValueTask RejectAndCloseAsync(InboundPdu pdu, RejectReason reason, string why)
    {
        await RejectAsync(pdu, reason, why).ConfigureAwait(false);
        await CloseAsync(why).ConfigureAwait(false);
    }

    private async ValueTask SendRejectAsync(byte[] rejectedHeader, RejectReason reason)
    {
        if (_phase == Phase.Closed) return;
        _server.Counters.PduRejected();
        // The rejected header is the data segment, so copy it before waiting to send (the rx buffer is reused).
        var copy = ArrayPool<byte>.Shared.Rent(Bhs.Length);
        rejectedHeader.AsSpan(0, Bhs.Length).CopyTo(copy);
        try { await _sender.SendAsync(TargetPdus.Reject(reason), copy.AsMemory(0, Bhs.Length)).ConfigureAwait(false); }
        finally { ArrayPool<byte>.Shared.Return(copy); }
    }

    // ---------------------------------------------------------------- keep-alive

    /// <summary>
    /// Pings an idle connection with NOP-In and closes it when the ping goes unanswered for NopTimeout
    /// (any received PDU counts as an answer: a busy initiator may be slow to answer pings). Also drops
    /// connections that never finish login.
    /// </summary>
    private async Task KeepAliveLoopAsync()
    {
        var tick = TimeSpan.FromMilliseconds(Math.Clamp(Math.Min(Options.NopInterval.TotalMilliseconds, Options.NopTimeout.TotalMilliseconds) / 4, 10, 1000));
        try
        {
            while (_phase != Phase.Closed)
            {
                await Task.Delay(tick, _closedCts.Token).ConfigureAwait(false);
                var now = Stopwatch.GetTimestamp();
                if (_phase == Phase.Login)
                {
                    if (Stopwatch.GetElapsedTime(_createdTimestamp, now) > Options.LoginTimeout)
                    {
                        _log.Warning("Closing connection: login not completed within {Timeout}", Options.LoginTimeout);
                        await CloseAsync("login timeout").ConfigureAwait(false);
                    }
                    continue;
                }
                // Life is anything received, or the initiator taking what we send (a connection busy sending a
                // large read may receive nothing for a while, and stops reading while its answers queue up).
                var last = Math.Max(Volatile.Read(ref _lastReceiveTimestamp), _sender.LastFlushCompleted);
                if (_pingTtt != Bhs.ReservedTag)
                {
                    if (last > _pingSentTimestamp) { _pingTtt = Bhs.ReservedTag; continue; }
                    if (Stopwatch.GetElapsedTime(_pingSentTimestamp, now) > Options.NopTimeout)
                    {
                        _log.Warning("Closing connection: NOP-In ping unanswered for {Timeout}", Options.NopTimeout);
                        await CloseAsync("NOP timeout").ConfigureAwait(false);
                    }
                    continue;
                }
                // Not awaited: with a peer that reads nothing the ping cannot go out, and the timeout must still run.
                if (Stopwatch.GetElapsedTime(last, now) >= Options.NopInterval)
                    _ = SendPingAsync();
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception ex)
        {
            _log.Error(ex, "keep-alive loop failed");
        }
    }

    private async Task SendPingAsync()
    {
        if (_phase != Phase.FullFeature) return;
        var ttt = NextTtt();
        _pingSentTimestamp = Stopwatch.GetTimestamp();
        _pingTtt = ttt;
        try { await _sender.SendAsync(TargetPdus.NopInPing(ttt)).ConfigureAwait(false); }
        catch (Exception ex) { _log.Debug(ex, "sending a NOP-In ping failed"); }
    }

    /// <summary>Target transfer tags: unique per connection, never 0xffffffff.</summary>
    private uint NextTtt()
    {
        lock (_sync)
        {
            var t = _nextTtt++;
            if (_nextTtt == Bhs.ReservedTag) _nextTtt = 1;
            return t;
        }
    }

    // ---------------------------------------------------------------- closing

    /// <summary>Closes the connection: aborts its tasks (awaiting them), ends its session and nexus.</summary>
    public async Task CloseAsync(string reason)
    {
        if (Interlocked.Exchange(ref _closeStarted, 1) != 0) { await _closedTcs.Task.ConfigureAwait(false); return; }
        _log.Debug("Closing connection: {Reason}", reason);
        _phase = Phase.Closed;
        // Let pending sends finish (e.g. a Reject or Logout Response) before the transport is told to close.
        await _sender.CloseAsync().ConfigureAwait(false);
        _closedCts.Cancel();
        try
        {
            await AbortTasksAsync(_ => true, notifyInitiator: false, "connection closed").ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            _log.Error(ex, "aborting tasks on close failed");
        }
        EndSession();
        _server.ConnectionClosed(this);
        _closedTcs.TrySetResult();
    }

    private void EndSession()
    {
        var s = Session;
        if (s?.Nexus is { } nexus && s.Target is { } t)
        {
            try { t.Scsi.NexusLost(nexus); }
            catch (Exception ex) { _log.Error(ex, "NexusLost failed for {Nexus}", nexus); }
            _log.Information("Session closed: {Initiator} ISID {Isid} TSIH {Tsih} on {Target}", LogText.Escape(s.InitiatorName), LunAddress.IsidHex(s.Isid), s.Tsih, t.Iqn);
        }
    }

    /// <summary>Called by the transport once, when the peer went away or the socket failed.</summary>
    public Task OnTransportClosedAsync() => CloseAsync("transport closed");

    /// <summary>Waits for in-flight commands to complete, then closes (server shutdown).</summary>
    internal async Task DrainAndCloseAsync(CancellationToken ct)
    {
        try
        {
            await WaitForTasksAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        await CloseAsync("server shutdown").ConfigureAwait(false);
    }
}
