using System.Buffers;
using IntegrityTarget.Iscsi.Login;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Iscsi.Session;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi;

// Login phase on the connection side: feeds Login Requests to the LoginNegotiator (which exists only
// until the full feature phase), sends its answers or the failure, and makes the session real.
public sealed partial class IscsiConnection
{
    private LoginNegotiator? _login;

    private async ValueTask HandleLoginPhasePduAsync(InboundPdu pdu)
    {
        if (pdu.Opcode != Opcode.LoginRequest)
        {
            _log.Warning("Closing connection: {Opcode} received before login completed", pdu.Opcode);
            await SendLoginFailureAsync(pdu.Header, 0x02, 0x0b).ConfigureAwait(false);
            await CloseAsync("PDU before login").ConfigureAwait(false);
            return;
        }
        var login = _login ??= new LoginNegotiator(_server, Parameters, _log, Remote?.Address);
        if (!login.Started)
        {
            // The first request fixes the numbering: our first StatSN is its ExpStatSN, its CmdSN starts the window.
            _sender.StartStatSN(Bhs.U32(pdu.Header, 28));
            _window.Start(Bhs.U32(pdu.Header, 24));
        }
        var response = new ArrayBufferWriter<byte>(512);
        try
        {
            var step = login.Process(pdu.Header, pdu.Data, response);
            ushort tsih = 0;
            if (step.Complete) tsih = (await EstablishSessionAsync(login).ConfigureAwait(false)).Tsih;
            await SendLoginResponseAsync(pdu.Header, step.Flags, tsih, response).ConfigureAwait(false);
            if (step.Complete)
            {
                _phase = Phase.FullFeature;
                _login = null;
                _server.Counters.LoginSucceeded();
                if (login.ChapAuthenticated) _server.AuthThrottle.Succeeded(login.InitiatorName, Remote?.Address);
                // Digests apply from the first PDU after the final login response, both ways.
                _sender.HeaderDigest = Parameters.HeaderDigest;
                _sender.DataDigest = Parameters.DataDigest;
                _framer.HeaderDigest = Parameters.HeaderDigest;
                _framer.DataDigest = Parameters.DataDigest;
                _framer.MaxDataSegmentLength = Parameters.TargetMaxRecvDataSegmentLength;
            }
        }
        catch (LoginFailure f)
        {
            await FailLoginAsync(login, pdu.Header, f).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Logs the failure (a few lines per initiator, address and status per 10 s), waits out the growing
    /// delay after failed authentications, answers with the failure status and closes.
    /// </summary>
    private async ValueTask FailLoginAsync(LoginNegotiator login, byte[] request, LoginFailure f)
    {
        var address = Remote?.Address;
        var delay = TimeSpan.Zero;
        int failures = 0;
        var lease = default(AuthThrottle.Lease);
        if (f.Status == LoginStatus.AuthenticationFailure)
        {
            _server.Counters.ChapFailed();
            lease = _server.AuthThrottle.Failed(login.InitiatorName, address, out delay, out failures);
        }
        using (lease)
        {
            var key = $"{address}|{login.InitiatorName}|{f.Status}";
            if (_server.LoginFailureLog.ShouldLog(key, out var repeats))
                _log.Warning("Login failed (status 0x{Status:x4}) for {Initiator} from {Address} to {Target}: {Reason}{Delay}{Repeats}",
                    f.Status, LogText.Escape(login.InitiatorName ?? "?"), address?.ToString() ?? "?",
                    LogText.Escape(login.TargetName ?? (login.Discovery ? "discovery" : "?")), LogText.Escape(f.Message),
                    delay > TimeSpan.Zero ? $"; answered after {delay.TotalSeconds:0.0#} s ({failures} failed authentications of this initiator or address)" : "",
                    repeats > 0 ? $" ({repeats} more such failures since the last line)" : "");
            if (delay > TimeSpan.Zero)
            {
                _server.Counters.LoginFailureDelayed();
                try { await Task.Delay(delay, _closedCts.Token).ConfigureAwait(false); }
                catch (OperationCanceledException) { }
            }
        }
        await SendLoginFailureAsync(request, (byte)(f.Status >> 8), (byte)f.Status).ConfigureAwait(false);
        await CloseAsync("login failed").ConfigureAwait(false);
    }

    private async Task<IscsiSession> EstablishSessionAsync(LoginNegotiator login)
    {
        var target = login.Discovery ? null : login.Target;
        ItNexus? nexus = null;
        if (target is not null)
        {
            var port = LunAddress.InitiatorPortName(login.InitiatorName!, login.Isid);
            nexus = new ItNexus(login.InitiatorName!, port, LunAddress.TargetPortName(target.Iqn, Options.PortalGroupTag),
                Options.PortalGroupTag, LunAddress.TransportId(port));
        }
        var session = await _server.RegisterSessionAsync(target, login.InitiatorName!, login.Isid, login.RequestedTsih, this,
            tsih => new IscsiSession(target, login.InitiatorName!, login.Isid, tsih, nexus, this)).ConfigureAwait(false)
            ?? throw new LoginFailure(LoginStatus.ServiceUnavailable, "server is shutting down");
        Session = session;
        if (nexus is not null) target!.Scsi.NexusCreated(nexus);
        _log.Information("{Kind} session established: {Initiator} ISID {Isid} TSIH {Tsih}{Target} digests H={HeaderDigest} D={DataDigest} MaxRecvDSL={Mrdsl} MaxBurst={MaxBurst} FirstBurst={FirstBurst} InitialR2T={InitialR2T} ImmediateData={ImmediateData}",
            login.Discovery ? "Discovery" : "Normal", LogText.Escape(login.InitiatorName), LunAddress.IsidHex(login.Isid), session.Tsih, target is null ? "" : " on " + target.Iqn,
            Parameters.HeaderDigest, Parameters.DataDigest, Parameters.InitiatorMaxRecvDataSegmentLength, Parameters.MaxBurstLength,
            Parameters.FirstBurstLength, Parameters.InitialR2T, Parameters.ImmediateData);
        return session;
    }

    private async ValueTask SendLoginResponseAsync(byte[] request, byte flags, ushort tsih, ArrayBufferWriter<byte> text)
    {
        var h = TargetPdus.LoginResponse(flags, Bhs.Isid(request), tsih, Bhs.Itt(request));
        var copy = ArrayPool<byte>.Shared.Rent(Math.Max(text.WrittenCount, 1));
        text.WrittenSpan.CopyTo(copy);
        try { await _sender.SendAsync(h, copy.AsMemory(0, text.WrittenCount)).ConfigureAwait(false); }
        finally { ArrayPool<byte>.Shared.Return(copy); }
    }

    private ValueTask<bool> SendLoginFailureAsync(byte[] request, byte statusClass, byte statusDetail)
    {
        _server.Counters.LoginFailed();
        return _sender.SendAsync(TargetPdus.LoginResponse(0, Bhs.Isid(request), 0, Bhs.Itt(request), statusClass, statusDetail));
    }
}
