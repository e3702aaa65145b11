using System.Buffers;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using IntegrityTarget.Iscsi.Login;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Iscsi.Session;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi;

// Login phase: security negotiation (None / CHAP one-way and mutual), operational negotiation from
// the key table, stage transitions, and the login failures with their status class/detail.
public sealed partial class IscsiConnection
{
    private enum AuthState { NotStarted, WaitChapA, WaitChapResponse, Done }

    /// <summary>Login status class/detail (RFC 7143 §11.13.5).</summary>
    private static class LoginStatus
    {
        public const ushort InitiatorError = 0x0200, AuthenticationFailure = 0x0201, AuthorizationFailure = 0x0202,
            NotFound = 0x0203, UnsupportedVersion = 0x0205, TooManyConnections = 0x0206, MissingParameter = 0x0207,
            SessionTypeNotSupported = 0x0209, SessionDoesNotExist = 0x020a, InvalidDuringLogin = 0x020b,
            ServiceUnavailable = 0x0301, OutOfResources = 0x0302;
    }

    private sealed class LoginFailure(ushort status, string message) : Exception(message)
    {
        public ushort Status { get; } = status;
    }

    private const int MaxLoginTextBytes = 64 * 1024;

    // Login state (touched only by the receive path).
    private bool _loginStarted;
    private byte[]? _loginText;
    private int _loginTextLength;
    private ulong _isid;
    private ushort _requestedTsih;
    private uint _loginItt;
    private int _currentStage;
    private string? _initiatorName, _targetName, _initiatorAlias;
    private bool _discovery;
    private IscsiTargetConfig? _loginTarget;
    private AuthState _auth;
    private byte _chapId;
    private byte[]? _chapChallenge;
    private bool _declarationsSent;
    private bool _firstResponseSent;
    private readonly HashSet<string> _negotiatedKeys = new(StringComparer.Ordinal);
    private readonly List<KeyValuePair<string, string>> _keys = [];

    private ChapCredentials? RequiredChap => _discovery ? Options.DiscoveryChap : _loginTarget?.Chap;
    private ChapCredentials? MutualChap => _discovery ? Options.DiscoveryMutualChap : _loginTarget?.MutualChap;

    private async ValueTask HandleLoginPhasePduAsync(InboundPdu pdu)
    {
        if (pdu.Opcode != Opcode.LoginRequest)
        {
            _log.Warning("Closing connection: {Opcode} received before login completed", pdu.Opcode);
            await SendLoginFailureAsync(pdu.Header, 0x02, 0x0b).ConfigureAwait(false);
            await CloseAsync("PDU before login").ConfigureAwait(false);
            return;
        }
        var response = new ArrayBufferWriter<byte>(512);
        try
        {
            if (await ProcessLoginRequestAsync(pdu, response).ConfigureAwait(false) is { } reply)
                await SendLoginResponseAsync(pdu.Header, reply.Flags, reply.Tsih, response).ConfigureAwait(false);
            if (_phase == Phase.FullFeature)
            {
                _server.Counters.LoginSucceeded();
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
            if (f.Status == LoginStatus.AuthenticationFailure) _server.Counters.ChapFailed();
            _log.Warning("Login failed (status 0x{Status:x4}) for {Initiator} to {Target}: {Reason}",
                f.Status, _initiatorName ?? "?", _targetName ?? (_discovery ? "discovery" : "?"), f.Message);
            await SendLoginFailureAsync(pdu.Header, (byte)(f.Status >> 8), (byte)f.Status).ConfigureAwait(false);
            await CloseAsync("login failed").ConfigureAwait(false);
        }
    }

    private readonly record struct LoginReply(byte Flags, ushort Tsih);

    private async ValueTask<LoginReply?> ProcessLoginRequestAsync(InboundPdu pdu, ArrayBufferWriter<byte> response)
    {
        var h = pdu.Header;
        bool transit = (h[1] & 0x80) != 0, cont = (h[1] & 0x40) != 0;
        int csg = (h[1] >> 2) & 3, nsg = h[1] & 3;
        byte versionMax = h[2], versionMin = h[3];

        if (!_loginStarted)
        {
            _loginStarted = true;
            if (versionMin > 0 || versionMax < versionMin)
                throw new LoginFailure(LoginStatus.UnsupportedVersion, $"version range {versionMin}..{versionMax} does not include 0");
            _isid = Bhs.Isid(h);
            _requestedTsih = Bhs.U16(h, 14);
            _loginItt = Bhs.Itt(h);
            _sender.StartStatSN(Bhs.U32(h, 28));
            _window.Start(Bhs.U32(h, 24));
            _currentStage = csg;
        }

        if (transit && cont) throw new LoginFailure(LoginStatus.InitiatorError, "T and C bits both set");
        if (csg == 2 || csg != _currentStage && !(csg == 1 && _currentStage == 0))
            throw new LoginFailure(LoginStatus.InitiatorError, $"unexpected CSG {csg} in stage {_currentStage}");
        if (transit && (nsg == 2 || nsg <= csg))
            throw new LoginFailure(LoginStatus.InitiatorError, $"invalid stage transition {csg}->{nsg}");
        if (csg == 1 && _currentStage == 0)
        {
            // Skipping the security stage is only possible when no authentication is required: checked below.
            _currentStage = 1;
        }

        // Text may span several PDUs (C bit); keys are processed once the last part arrives.
        var data = pdu.Data;
        if (_loginTextLength + data.Length > MaxLoginTextBytes)
            throw new LoginFailure(LoginStatus.OutOfResources, "login text longer than 64 KiB");
        if (data.Length > 0)
        {
            if (_loginText is null || _loginText.Length < _loginTextLength + data.Length)
                Array.Resize(ref _loginText, Math.Max(_loginTextLength + (int)data.Length, 1024));
            data.CopyTo(_loginText.AsSpan(_loginTextLength));
            _loginTextLength += (int)data.Length;
        }
        if (cont)
            return new LoginReply((byte)(csg << 2), 0); // empty response acknowledging the partial text

        _keys.Clear();
        var text = _loginText.AsSpan(0, _loginTextLength);
        _loginTextLength = 0;
        if (!LoginKeys.TryParse(text, _keys, out var textError))
            throw new LoginFailure(LoginStatus.InitiatorError, textError!);

        bool first = !_firstResponseSent;
        Dictionary<string, string>? security = null;
        foreach (var (key, value) in _keys)
        {
            if (!LoginKeys.Table.TryGetValue(key, out var def))
            {
                AppendKey(response, key, "NotUnderstood");
                continue;
            }
            switch (def.Kind)
            {
                case KeyKind.Declarative:
                    ApplyDeclarative(key, value, first);
                    break;
                case KeyKind.Security:
                    if (csg != 0) throw new LoginFailure(LoginStatus.InitiatorError, $"{key} outside the security stage");
                    (security ??= new(StringComparer.Ordinal))[key] = value;
                    break;
                case KeyKind.TargetDeclared:
                    AppendKey(response, key, "Reject");
                    break;
                case KeyKind.AlwaysIrrelevant:
                    AppendKey(response, key, "Irrelevant");
                    break;
                default:
                    NegotiateOperational(def, value, response);
                    break;
            }
        }

        if (first) ValidateLeadingLogin();

        if (csg == 0)
        {
            ProcessSecurity(security, response, transit);
        }
        else if (_auth != AuthState.Done)
        {
            if (RequiredChap is not null)
                throw new LoginFailure(LoginStatus.AuthenticationFailure, "authentication required but the initiator skipped the security stage");
            _auth = AuthState.Done;
        }

        // Declarations the target always makes (once): TPGT in the first response of a normal session
        // (Windows needs it), alias, and our MaxRecvDataSegmentLength once operational keys are in play.
        if (first && !_discovery)
        {
            AppendKey(response, "TargetPortalGroupTag", Options.PortalGroupTag.ToString(CultureInfo.InvariantCulture));
            if (!string.IsNullOrEmpty(_loginTarget?.Alias)) AppendKey(response, "TargetAlias", _loginTarget!.Alias!);
        }
        // Operational keys only in the operational stage (open-iscsi refuses them in the security stage);
        // an initiator that skips that stage assumes the 8192 default for us, which we accept anyway.
        if (csg == 1 && !_declarationsSent && !_negotiatedKeys.Contains("MaxRecvDataSegmentLength"))
        {
            AppendKey(response, "MaxRecvDataSegmentLength", Options.MaxRecvDataSegmentLength.ToString(CultureInfo.InvariantCulture));
            _declarationsSent = true;
        }
        _firstResponseSent = true;

        bool canTransit = transit && _auth == AuthState.Done;
        if (!canTransit) return new LoginReply((byte)(csg << 2), 0);

        if (nsg == 1)
        {
            _currentStage = 1;
            return new LoginReply((byte)(0x80 | (csg << 2) | 1), 0);
        }

        // Transition to the full feature phase: the session becomes real.
        if (Parameters.FirstBurstLength > Parameters.MaxBurstLength) Parameters.FirstBurstLength = Parameters.MaxBurstLength;
        var session = await EstablishSessionAsync().ConfigureAwait(false);
        _phase = Phase.FullFeature;
        return new LoginReply((byte)(0x80 | (csg << 2) | 3), session.Tsih);
    }

    /// <summary>
    /// Declarative keys (names, alias, session type). An initiator may repeat one in a later login
    /// request of the same login (libiscsi re-sends InitiatorName and SessionType after AuthMethod=None):
    /// the same value again is accepted, a different value is an initiator error.
    /// </summary>
    private void ApplyDeclarative(string key, string value, bool first)
    {
        switch (key)
        {
            case "InitiatorName":
                if (value.Length == 0 || value.Length > 223) throw new LoginFailure(LoginStatus.InitiatorError, "InitiatorName empty or longer than 223 bytes");
                _initiatorName = Declare(key, _initiatorName, value);
                break;
            case "TargetName":
                _targetName = Declare(key, _targetName, value);
                break;
            case "InitiatorAlias":
                _initiatorAlias = Declare(key, _initiatorAlias, value);
                break;
            case "SessionType":
                bool discovery = value switch
                {
                    "Discovery" => true,
                    "Normal" => false,
                    _ => throw new LoginFailure(LoginStatus.SessionTypeNotSupported, $"SessionType '{value}' not supported"),
                };
                // Absent from the first request means Normal (RFC 7143 §13.3); later it may only be repeated.
                if (!first && discovery != _discovery)
                    throw new LoginFailure(LoginStatus.InitiatorError, $"SessionType changed to {value} during login");
                _discovery = discovery;
                break;
        }
    }

    private static string Declare(string key, string? current, string value) =>
        current is null || current == value ? value : throw new LoginFailure(LoginStatus.InitiatorError, $"{key} changed during login");

    private void ValidateLeadingLogin()
    {
        if (_initiatorName is null) throw new LoginFailure(LoginStatus.MissingParameter, "InitiatorName missing in the first login request");
        if (_server.IsShuttingDown) throw new LoginFailure(LoginStatus.ServiceUnavailable, "server is shutting down");
        if (_requestedTsih != 0 && !_server.SessionExists(_requestedTsih, _initiatorName, _isid))
            throw new LoginFailure(LoginStatus.SessionDoesNotExist, $"TSIH {_requestedTsih} does not exist");
        if (_discovery) return;
        if (_targetName is null) throw new LoginFailure(LoginStatus.MissingParameter, "TargetName missing for a normal session");
        _loginTarget = _server.FindTarget(_targetName) ?? throw new LoginFailure(LoginStatus.NotFound, $"target '{_targetName}' not found");
        if (!_loginTarget.Allows(_initiatorName))
            throw new LoginFailure(LoginStatus.AuthorizationFailure, $"initiator '{_initiatorName}' not in the ACL of '{_loginTarget.Iqn}'");
    }

    private void NegotiateOperational(LoginKey def, string value, ArrayBufferWriter<byte> response)
    {
        if (_discovery && def.Scope.HasFlag(KeyScope.NormalOnly))
        {
            AppendKey(response, def.Name, "Irrelevant");
            return;
        }
        if (def.Kind != KeyKind.NumDeclarative && !_negotiatedKeys.Add(def.Name))
            throw new LoginFailure(LoginStatus.InitiatorError, $"key {def.Name} negotiated twice");
        var answer = LoginKeys.Negotiate(def, value, def.Ours!(Options), out var result);
        if (result is not null) def.Apply?.Invoke(Parameters, result);
        if (def.Kind == KeyKind.NumDeclarative)
        {
            if (result is null)
            {
                // One answer per key: after Reject the initiator assumes the default (8192) for us, which is safe.
                AppendKey(response, def.Name, "Reject");
                _declarationsSent = true;
                return;
            }
            _negotiatedKeys.Add(def.Name);
            // Our own declaration of the same key (our receive limit).
            AppendKey(response, def.Name, answer);
            _declarationsSent = true;
            return;
        }
        AppendKey(response, def.Name, answer);
    }

    private void ProcessSecurity(Dictionary<string, string>? keys, ArrayBufferWriter<byte> response, bool transit)
    {
        var required = RequiredChap;
        string? Get(string k) => keys is not null && keys.TryGetValue(k, out var v) ? v : null;

        switch (_auth)
        {
            case AuthState.NotStarted:
            {
                var methods = Get("AuthMethod");
                if (methods is null)
                {
                    if (required is not null) throw new LoginFailure(LoginStatus.AuthenticationFailure, "CHAP required but no AuthMethod offered");
                    if (transit) _auth = AuthState.Done;
                    return;
                }
                var offered = methods.Split(',');
                if (required is not null)
                {
                    if (!offered.Contains("CHAP")) throw new LoginFailure(LoginStatus.AuthenticationFailure, $"CHAP required, initiator offered '{methods}'");
                    AppendKey(response, "AuthMethod", "CHAP");
                    _auth = AuthState.WaitChapA;
                }
                else if (offered.Contains("None"))
                {
                    AppendKey(response, "AuthMethod", "None");
                    _auth = AuthState.Done;
                }
                else
                {
                    throw new LoginFailure(LoginStatus.AuthenticationFailure, $"no CHAP credentials configured and initiator offered only '{methods}'");
                }
                return;
            }
            case AuthState.WaitChapA:
            {
                var algorithms = Get("CHAP_A") ?? throw new LoginFailure(LoginStatus.AuthenticationFailure, "CHAP_A expected");
                if (!algorithms.Split(',').Contains(Chap.Md5Algorithm))
                    throw new LoginFailure(LoginStatus.AuthenticationFailure, $"CHAP_A '{algorithms}' does not offer MD5 (5)");
                _chapId = (byte)RandomNumberGenerator.GetInt32(256);
                _chapChallenge = RandomNumberGenerator.GetBytes(Chap.ChallengeLength);
                AppendKey(response, "CHAP_A", Chap.Md5Algorithm);
                AppendKey(response, "CHAP_I", _chapId.ToString(CultureInfo.InvariantCulture));
                AppendKey(response, "CHAP_C", Chap.EncodeHex(_chapChallenge));
                _auth = AuthState.WaitChapResponse;
                return;
            }
            case AuthState.WaitChapResponse:
            {
                var name = Get("CHAP_N");
                var resp = Get("CHAP_R");
                if (name is null || resp is null) throw new LoginFailure(LoginStatus.AuthenticationFailure, "CHAP_N/CHAP_R expected");
                var respBytes = Chap.DecodeBinary(resp);
                var expected = Chap.Response(_chapId, required!.Secret, _chapChallenge);
                if (name != required.User || respBytes is null || !Chap.FixedTimeEquals(respBytes, expected))
                    throw new LoginFailure(LoginStatus.AuthenticationFailure, $"CHAP response for user '{name}' does not match");
                var idText = Get("CHAP_I");
                var challengeText = Get("CHAP_C");
                if (idText is not null || challengeText is not null)
                {
                    var mutual = MutualChap ?? throw new LoginFailure(LoginStatus.AuthenticationFailure, "initiator asked for mutual CHAP but none is configured");
                    if (idText is null || challengeText is null || !byte.TryParse(idText, NumberStyles.None, CultureInfo.InvariantCulture, out var id))
                        throw new LoginFailure(LoginStatus.AuthenticationFailure, "mutual CHAP needs both CHAP_I (0-255) and CHAP_C");
                    var challenge = Chap.DecodeBinary(challengeText);
                    if (challenge is null || challenge.Length == 0 || challenge.Length > 1024)
                        throw new LoginFailure(LoginStatus.AuthenticationFailure, "mutual CHAP challenge is malformed");
                    if (challenge.AsSpan().SequenceEqual(_chapChallenge))
                        throw new LoginFailure(LoginStatus.AuthenticationFailure, "mutual CHAP challenge reflects ours");
                    AppendKey(response, "CHAP_N", mutual.User);
                    AppendKey(response, "CHAP_R", Chap.EncodeHex(Chap.Response(id, mutual.Secret, challenge)));
                }
                _auth = AuthState.Done;
                _log.Information("CHAP authentication succeeded for {Initiator} as user {User}", _initiatorName, name);
                return;
            }
            case AuthState.Done:
                if (keys is not null && keys.Count > 0) throw new LoginFailure(LoginStatus.InitiatorError, "security keys after authentication completed");
                return;
        }
    }

    private async Task<IscsiSession> EstablishSessionAsync()
    {
        var target = _discovery ? null : _loginTarget;
        ItNexus? nexus = null;
        if (target is not null)
        {
            var port = LunAddress.InitiatorPortName(_initiatorName!, _isid);
            nexus = new ItNexus(_initiatorName!, port, LunAddress.TargetPortName(target.Iqn, Options.PortalGroupTag),
                Options.PortalGroupTag, LunAddress.TransportId(port));
        }
        var session = await _server.RegisterSessionAsync(target, _initiatorName!, _isid, _requestedTsih, this,
            tsih => new IscsiSession(target, _initiatorName!, _isid, tsih, nexus, this)).ConfigureAwait(false)
            ?? throw new LoginFailure(LoginStatus.ServiceUnavailable, "server is shutting down");
        Session = session;
        if (nexus is not null) target!.Scsi.NexusCreated(nexus);
        _log.Information("{Kind} session established: {Initiator} ISID {Isid} TSIH {Tsih}{Target} digests H={HeaderDigest} D={DataDigest} MaxRecvDSL={Mrdsl} MaxBurst={MaxBurst} FirstBurst={FirstBurst} InitialR2T={InitialR2T} ImmediateData={ImmediateData}",
            _discovery ? "Discovery" : "Normal", _initiatorName, LunAddress.IsidHex(_isid), session.Tsih, target is null ? "" : " on " + target.Iqn,
            Parameters.HeaderDigest, Parameters.DataDigest, Parameters.InitiatorMaxRecvDataSegmentLength, Parameters.MaxBurstLength,
            Parameters.FirstBurstLength, Parameters.InitialR2T, Parameters.ImmediateData);
        return session;
    }

    private static void AppendKey(ArrayBufferWriter<byte> w, string key, string value)
    {
        int n = Encoding.UTF8.GetByteCount(key) + 1 + Encoding.UTF8.GetByteCount(value) + 1;
        var span = w.GetSpan(n);
        int k = Encoding.UTF8.GetBytes(key, span);
        span[k] = (byte)'=';
        int v = Encoding.UTF8.GetBytes(value, span[(k + 1)..]);
        span[k + 1 + v] = 0;
        w.Advance(n);
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
