using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Text;
using IntegrityTarget.Iscsi.Login;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Iscsi.Session;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi;

// Task management, Text (SendTargets) and Logout.
public sealed partial class IscsiConnection
{
    private enum TmfFunction : byte
    {
        AbortTask = 1, AbortTaskSet = 2, ClearAca = 3, ClearTaskSet = 4, LogicalUnitReset = 5,
        TargetWarmReset = 6, TargetColdReset = 7, TaskReassign = 8,
    }

    private enum TmfResponse : byte
    {
        FunctionComplete = 0, TaskDoesNotExist = 1, LunDoesNotExist = 2, TaskStillAllegiant = 3,
        ReassignmentNotSupported = 4, FunctionNotSupported = 5, AuthorizationFailed = 6, Rejected = 255,
    }

    // ---------------------------------------------------------------- Task management

    private async ValueTask HandleTaskManagementAsync(InboundPdu pdu)
    {
        var h = pdu.Header;
        if (!AcceptCmdSN(h, countsAsCommand: false)) return;
        var target = Session?.Target;
        var function = (TmfFunction)(h[1] & 0x7f);
        uint itt = Bhs.Itt(h), referenced = Bhs.U32(h, 20), refCmdSN = Bhs.U32(h, 32), cmdSN = Bhs.U32(h, 24);
        ulong lunField = Bhs.Lun(h);
        ulong lun = LunAddress.Decode(lunField);
        var response = TmfResponse.FunctionComplete;

        if (target is null)
        {
            await SendTmfResponseAsync(itt, TmfResponse.Rejected).ConfigureAwait(false);
            return;
        }
        bool lunScoped = function is TmfFunction.AbortTask or TmfFunction.AbortTaskSet or TmfFunction.ClearTaskSet or TmfFunction.LogicalUnitReset or TmfFunction.ClearAca;
        if (lunScoped && !target.Scsi.Luns.Contains(lun))
        {
            await SendTmfResponseAsync(itt, TmfResponse.LunDoesNotExist).ConfigureAwait(false);
            return;
        }
        var nexus = Session!.Nexus!;
        _log.Information("Task management {Function} LUN {Lun} from {Nexus}", function, lun, nexus);
        switch (function)
        {
            case TmfFunction.AbortTask:
            {
                bool exists;
                lock (_sync) exists = _tasks.TryGetValue(referenced, out var t) && t.Lun == lun && !t.Aborted;
                if (exists)
                {
                    await AbortTasksAsync(t => t.Itt == referenced, notifyInitiator: false, "ABORT TASK").ConfigureAwait(false);
                }
                else
                {
                    // RFC 7143 §11.5.1: a command not received yet (RefCmdSN inside the window, before the TMF)
                    // is considered received and aborted, so it is dropped when it arrives; a command already
                    // answered is simply a task that does not exist.
                    bool notYetReceived = _window.ConsumeIfNotYetReceived(refCmdSN, cmdSN);
                    response = notYetReceived ? TmfResponse.FunctionComplete : TmfResponse.TaskDoesNotExist;
                }
                break;
            }
            case TmfFunction.AbortTaskSet:
                await AbortTasksAsync(t => t.Lun == lun, notifyInitiator: false, "ABORT TASK SET").ConfigureAwait(false);
                break;
            case TmfFunction.ClearTaskSet:
                await AbortLunEverywhereAsync(target, lun, "CLEAR TASK SET").ConfigureAwait(false);
                break;
            case TmfFunction.LogicalUnitReset:
                await AbortLunEverywhereAsync(target, lun, "LOGICAL UNIT RESET").ConfigureAwait(false);
                target.Scsi.LogicalUnitReset(lun, nexus);
                break;
            case TmfFunction.TargetWarmReset:
                await AbortTargetEverywhereAsync(target, "TARGET WARM RESET").ConfigureAwait(false);
                target.Scsi.TargetReset(nexus);
                break;
            case TmfFunction.ClearAca:
            case TmfFunction.TargetColdReset:
            case TmfFunction.TaskReassign:
                response = function == TmfFunction.TaskReassign ? TmfResponse.ReassignmentNotSupported : TmfResponse.FunctionNotSupported;
                break;
            default:
                await RejectAsync(pdu, RejectReason.InvalidPduField, $"task management function {(int)function} is invalid").ConfigureAwait(false);
                return;
        }
        await SendTmfResponseAsync(itt, response).ConfigureAwait(false);
    }

    /// <summary>Aborts a LUN's tasks of every session of the target; other nexuses get TASK ABORTED.</summary>
    private async Task AbortLunEverywhereAsync(IscsiTargetConfig target, ulong lun, string why)
    {
        var all = _server.ConnectionsOf(target).Select(c =>
            c.AbortTasksAsync(t => t.Lun == lun, notifyInitiator: c != this, why));
        await Task.WhenAll(all).ConfigureAwait(false);
    }

    private async Task AbortTargetEverywhereAsync(IscsiTargetConfig target, string why)
    {
        var all = _server.ConnectionsOf(target).Select(c => c.AbortTasksAsync(_ => true, notifyInitiator: c != this, why));
        await Task.WhenAll(all).ConfigureAwait(false);
    }

    private ValueTask<bool> SendTmfResponseAsync(uint itt, TmfResponse response) =>
        _sender.SendAsync(TargetPdus.TaskManagementResponse(itt, (byte)response));

    // ---------------------------------------------------------------- Text (SendTargets)

    private byte[]? _textPending;
    private int _textPendingOffset;
    private uint _textTtt = Bhs.ReservedTag;

    private async ValueTask HandleTextRequestAsync(InboundPdu pdu)
    {
        var h = pdu.Header;
        if (!AcceptCmdSN(h, countsAsCommand: false)) return;
        uint itt = Bhs.Itt(h), ttt = Bhs.U32(h, 20);
        if ((h[1] & 0x40) != 0)
        {
            await RejectAsync(pdu, RejectReason.CommandNotSupported, "continued Text requests are not supported").ConfigureAwait(false);
            return;
        }
        if (ttt != Bhs.ReservedTag)
        {
            // Continuation of a long answer: the initiator asks for the next part with an empty request.
            if (ttt != _textTtt || _textPending is null)
            {
                await RejectAsync(pdu, RejectReason.InvalidPduField, "Text request TTT does not match").ConfigureAwait(false);
                return;
            }
            await SendTextPartAsync(itt).ConfigureAwait(false);
            return;
        }
        var keys = new List<KeyValuePair<string, string>>();
        var text = new byte[pdu.DataLength];
        pdu.Data.CopyTo(text);
        if (!LoginKeys.TryParse(text, keys, out var error))
        {
            await RejectAsync(pdu, RejectReason.InvalidPduField, error!).ConfigureAwait(false);
            return;
        }
        var response = new ArrayBufferWriter<byte>(256);
        foreach (var (key, value) in keys)
        {
            if (key == "SendTargets") AppendSendTargets(response, value);
            else if (key == "MaxRecvDataSegmentLength" && LoginKeys.TryParseNumber(value, out var n) && n is >= 512 and <= 16777215)
            {
                Parameters.InitiatorMaxRecvDataSegmentLength = (int)n;
                LoginKeys.Append(response, key, Options.MaxRecvDataSegmentLength.ToString(System.Globalization.CultureInfo.InvariantCulture));
            }
            else if (LoginKeys.Table.ContainsKey(key)) LoginKeys.Append(response, key, "Reject"); // login-only keys
            else LoginKeys.Append(response, key, "NotUnderstood");
        }
        _textPending = response.WrittenSpan.ToArray();
        _textPendingOffset = 0;
        await SendTextPartAsync(itt).ConfigureAwait(false);
    }

    private void AppendSendTargets(ArrayBufferWriter<byte> w, string value)
    {
        IEnumerable<IscsiTargetConfig> targets;
        if (Session?.Target is { } own)
            targets = value is "All" or "" || value == own.Iqn ? [own] : [];
        else if (value == "All")
            targets = _server.Targets;
        else
            targets = _server.Targets.Where(t => string.Equals(t.Iqn, value, StringComparison.OrdinalIgnoreCase));
        var initiator = Session?.InitiatorName ?? "";
        int hidden = 0, shown = 0;
        foreach (var t in targets)
        {
            if (!t.Allows(initiator)) { hidden++; continue; }
            shown++;
            LoginKeys.Append(w, "TargetName", t.Iqn);
            LoginKeys.Append(w, "TargetAddress", AdvertisedAddress() + "," + Options.PortalGroupTag.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
        // An empty answer looks like "no targets" to the initiator; say in our log why it was empty.
        if (shown == 0 && hidden > 0 && _server.DiscoveryHints.ShouldLog(initiator, out var repeats))
            _log.Warning("Discovery by {Initiator} from {Remote} was answered with no targets: the initiator is not allowed by the AllowedInitiators of {Hidden} target(s); " +
                         "add it to a target's AllowedInitiators (or \"*\") to let it see that target{Repeats}",
                LogText.Escape(initiator), Remote?.ToString() ?? "?", hidden, repeats > 0 ? $" ({repeats} more such discoveries by it since the last hint)" : "");
    }

    /// <summary>The address this connection came in on: reachable by the initiator even when we listen on 0.0.0.0.</summary>
    private string AdvertisedAddress()
    {
        var ep = Local ?? new IPEndPoint(IPAddress.Loopback, 3260);
        var addr = ep.Address.IsIPv4MappedToIPv6 ? ep.Address.MapToIPv4() : ep.Address;
        return addr.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{addr}]:{ep.Port}" : $"{addr}:{ep.Port}";
    }

    /// <summary>Sends the next part of the pending text answer, at most the initiator's MaxRecvDataSegmentLength; C bit while more remains.</summary>
    private async ValueTask SendTextPartAsync(uint itt)
    {
        var all = _textPending!;
        int len = Math.Min(all.Length - _textPendingOffset, Parameters.InitiatorMaxRecvDataSegmentLength);
        int start = _textPendingOffset;
        _textPendingOffset += len;
        bool more = _textPendingOffset < all.Length;
        _textTtt = more ? NextTtt() : Bhs.ReservedTag;
        await _sender.SendAsync(TargetPdus.TextResponse(itt, _textTtt, more), all.AsMemory(start, len)).ConfigureAwait(false);
        if (!more) _textPending = null;
    }

    // ---------------------------------------------------------------- Logout

    private async ValueTask HandleLogoutAsync(InboundPdu pdu)
    {
        var h = pdu.Header;
        if (!AcceptCmdSN(h, countsAsCommand: false)) return;
        int reason = h[1] & 0x7f;
        uint itt = Bhs.Itt(h);
        byte response = reason switch
        {
            0 or 1 => 0,  // close session / close connection: one connection per session, same thing
            2 => 2,       // remove connection for recovery: needs ErrorRecoveryLevel 2
            _ => 255,
        };
        if (response == 255)
        {
            await RejectAsync(pdu, RejectReason.InvalidPduField, $"logout reason {reason} is invalid").ConfigureAwait(false);
            return;
        }
        if (response == 0)
        {
            // The response goes out once every command of the connection has completed (RFC 7143 §11.14);
            // commands still waiting for Data-Out can never complete now, so they are dropped.
            await AbortTasksAsync(t => !t.Executing, notifyInitiator: false, "logout").ConfigureAwait(false);
            await WaitForTasksAsync(CancellationToken.None).ConfigureAwait(false);
        }
        await _sender.SendAsync(TargetPdus.LogoutResponse(itt, response, (ushort)Parameters.DefaultTime2Wait, (ushort)Parameters.DefaultTime2Retain)).ConfigureAwait(false);
        if (response == 0)
        {
            _log.Information("Logout from {Initiator} (reason {Reason})", LogText.Escape(Session?.InitiatorName), reason);
            await CloseAsync("logout").ConfigureAwait(false);
        }
    }
}
