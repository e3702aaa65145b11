using System.Buffers;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using IntegrityTarget.Iscsi.Pdus;
using Serilog;

namespace IntegrityTarget.Iscsi.Login;

/// <summary>Login status class/detail (RFC 7143 §11.13.5).</summary>
internal static class LoginStatus
{
    public const ushort InitiatorError = 0x0200, AuthenticationFailure = 0x0201, AuthorizationFailure = 0x0202,
        NotFound = 0x0203, UnsupportedVersion = 0x0205, TooManyConnections = 0x0206, MissingParameter = 0x0207,
        SessionTypeNotSupported = 0x0209, SessionDoesNotExist = 0x020a, InvalidDuringLogin = 0x020b,
        ServiceUnavailable = 0x0301, OutOfResources = 0x0302;
}

/// <summary>A login that cannot go on: answered with <see cref="Status"/> and the connection closed.</summary>
internal sealed class LoginFailure(ushort status, string message) : Exception(message)
{
    public ushort Status { get; } = status;
}

/// <summary>What to answer one Login Request with; <see cref="Complete"/> when it moves to the full feature phase.</summary>
internal readonly record struct LoginStep(byte Flags, bool Complete);

/// <summary>
/// The login phase of one connection (RFC 7143 §6): stages and transitions, the declarative keys,
/// security (None, CHAP one-way and mutual), and operational negotiation driven by
/// <see cref="LoginKeys.Table"/>. It exists only while the connection logs in; the connection feeds it
/// each Login Request and sends what it answers. Failures are <see cref="LoginFailure"/>s carrying
/// their status class/detail.
/// </summary>
internal sealed class LoginNegotiator(IscsiServer server, NegotiatedParameters parameters, ILogger log, System.Net.IPAddress? remote = null)
{
    private enum AuthState { NotStarted, WaitChapA, WaitChapResponse, Done }

    private const int MaxLoginTextBytes = 64 * 1024;

    private readonly IscsiServer _server = server;
    private readonly NegotiatedParameters _parameters = parameters;
    private readonly IscsiServerOptions _options = server.Options;
    private readonly ILogger _log = log;
    private bool _started;
    private byte[]? _loginText;
    private int _loginTextLength;
    private int _currentStage;
    private string? _initiatorAlias;
    private AuthState _auth;
    private byte _chapId;
    private byte[]? _chapChallenge;
    private bool _declarationsSent;
    private bool _firstResponseSent;
    private readonly HashSet<string> _negotiatedKeys = new(StringComparer.Ordinal);
    private readonly List<KeyValuePair<string, string>> _keys = [];

    /// <summary>Whether the initiator proved it knows the CHAP secret (a success that resets the failure delay).</summary>
    public bool ChapAuthenticated { get; private set; }
    /// <summary>Whether a first Login Request has been seen (it fixes ISID, TSIH and the numbering).</summary>
    public bool Started => _started;
    public ulong Isid { get; private set; }
    public ushort RequestedTsih { get; private set; }
    public string? InitiatorName { get; private set; }
    public string? TargetName { get; private set; }
    public bool Discovery { get; private set; }
    /// <summary>The target of a normal session, once the leading request named one that exists and admits the initiator.</summary>
    public IscsiTargetConfig? Target { get; private set; }

    private ChapCredentials? RequiredChap => Discovery ? _options.DiscoveryChap : Target?.Chap;
    private ChapCredentials? MutualChap => Discovery ? _options.DiscoveryMutualChap : Target?.MutualChap;

    public LoginStep Process(byte[] h, ReadOnlySequence<byte> data, ArrayBufferWriter<byte> response)
    {
        bool transit = (h[1] & 0x80) != 0, cont = (h[1] & 0x40) != 0;
        int csg = (h[1] >> 2) & 3, nsg = h[1] & 3;
        byte versionMax = h[2], versionMin = h[3];

        if (!_started)
        {
            _started = true;
            if (versionMin > 0 || versionMax < versionMin)
                throw new LoginFailure(LoginStatus.UnsupportedVersion, $"version range {versionMin}..{versionMax} does not include 0");
            Isid = Bhs.Isid(h);
            RequestedTsih = Bhs.U16(h, 14);
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
            return new LoginStep((byte)(csg << 2), false); // empty response acknowledging the partial text

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
                LoginKeys.Append(response, key, "NotUnderstood");
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
                    LoginKeys.Append(response, key, "Reject");
                    break;
                case KeyKind.AlwaysIrrelevant:
                    LoginKeys.Append(response, key, "Irrelevant");
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
        if (first && !Discovery)
        {
            LoginKeys.Append(response, "TargetPortalGroupTag", _options.PortalGroupTag.ToString(CultureInfo.InvariantCulture));
            if (!string.IsNullOrEmpty(Target?.Alias)) LoginKeys.Append(response, "TargetAlias", Target!.Alias!);
        }
        // Operational keys only in the operational stage (open-iscsi refuses them in the security stage);
        // an initiator that skips that stage assumes the 8192 default for us, which we accept anyway.
        if (csg == 1 && !_declarationsSent && !_negotiatedKeys.Contains("MaxRecvDataSegmentLength"))
        {
            LoginKeys.Append(response, "MaxRecvDataSegmentLength", _options.MaxRecvDataSegmentLength.ToString(CultureInfo.InvariantCulture));
            _declarationsSent = true;
        }
        _firstResponseSent = true;

        bool canTransit = transit && _auth == AuthState.Done;
        if (!canTransit) return new LoginStep((byte)(csg << 2), false);

        if (nsg == 1)
        {
            _currentStage = 1;
            return new LoginStep((byte)(0x80 | (csg << 2) | 1), false);
        }

        // Transition to the full feature phase: the caller makes the session real.
        if (_parameters.FirstBurstLength > _parameters.MaxBurstLength) _parameters.FirstBurstLength = _parameters.MaxBurstLength;
        return new LoginStep((byte)(0x80 | (csg << 2) | 3), true);
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
            case "TargetName":
                // RFC 3722: a name that is not an iSCSI name is refused before it is used or logged as one.
                if (IscsiName.Problem(value) is { } problem)
                    throw new LoginFailure(LoginStatus.InitiatorError, $"{key} '{value}' is not a valid iSCSI name: {problem}");
                if (key == "InitiatorName") InitiatorName = Declare(key, InitiatorName, value);
                else TargetName = Declare(key, TargetName, value);
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
                if (!first && discovery != Discovery)
                    throw new LoginFailure(LoginStatus.InitiatorError, $"SessionType changed to {value} during login");
                Discovery = discovery;
                break;
        }
    }

    private static string Declare(string key, string? current, string value) =>
        current is null || current == value ? value : throw new LoginFailure(LoginStatus.InitiatorError, $"{key} changed during login");

    private void ValidateLeadingLogin()
    {
        if (InitiatorName is null) throw new LoginFailure(LoginStatus.MissingParameter, "InitiatorName missing in the first login request");
        if (_server.IsShuttingDown) throw new LoginFailure(LoginStatus.ServiceUnavailable, "server is shutting down");
        if (RequestedTsih != 0 && !_server.SessionExists(RequestedTsih, InitiatorName, Isid))
            throw new LoginFailure(LoginStatus.SessionDoesNotExist, $"TSIH {RequestedTsih} does not exist");
        if (Discovery) return;
        if (TargetName is null) throw new LoginFailure(LoginStatus.MissingParameter, "TargetName missing for a normal session");
        Target = _server.FindTarget(TargetName) ?? throw new LoginFailure(LoginStatus.NotFound, $"target '{TargetName}' not found");
        if (!Target.Allows(InitiatorName))
            throw new LoginFailure(LoginStatus.AuthorizationFailure, $"initiator '{InitiatorName}' not in the ACL of '{Target.Iqn}'");
    }

    private void NegotiateOperational(LoginKey def, string value, ArrayBufferWriter<byte> response)
    {
        if (Discovery && def.Scope.HasFlag(KeyScope.NormalOnly))
        {
            LoginKeys.Append(response, def.Name, "Irrelevant");
            return;
        }
        if (def.Kind != KeyKind.NumDeclarative && !_negotiatedKeys.Add(def.Name))
            throw new LoginFailure(LoginStatus.InitiatorError, $"key {def.Name} negotiated twice");
        var answer = LoginKeys.Negotiate(def, value, def.Ours!(_options), out var result);
        if (result is not null) def.Apply?.Invoke(_parameters, result);
        if (def.Kind == KeyKind.NumDeclarative)
        {
            if (result is null)
            {
                // One answer per key: after Reject the initiator assumes the default (8192) for us, which is safe.
                LoginKeys.Append(response, def.Name, "Reject");
                _declarationsSent = true;
                return;
            }
            _negotiatedKeys.Add(def.Name);
            // Our own declaration of the same key (our receive limit).
            LoginKeys.Append(response, def.Name, answer);
            _declarationsSent = true;
            return;
        }
        LoginKeys.Append(response, def.Name, answer);
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
                    LoginKeys.Append(response, "AuthMethod", "CHAP");
                    _auth = AuthState.WaitChapA;
                }
                else if (offered.Contains("None"))
                {
                    LoginKeys.Append(response, "AuthMethod", "None");
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
                LoginKeys.Append(response, "CHAP_A", Chap.Md5Algorithm);
                LoginKeys.Append(response, "CHAP_I", _chapId.ToString(CultureInfo.InvariantCulture));
                LoginKeys.Append(response, "CHAP_C", Chap.EncodeHex(_chapChallenge));
                _auth = AuthState.WaitChapResponse;
                return;
            }
            case AuthState.WaitChapResponse:
            {
                var name = Get("CHAP_N");
                var resp = Get("CHAP_R");
                if (name is null || resp is null) throw new LoginFailure(LoginStatus.AuthenticationFailure, "CHAP_N/CHAP_R expected");
                // While enough failed guesses of this initiator or address wait out their delay, more are not checked.
                if (_server.AuthThrottle.IsSaturated(InitiatorName, remote))
                    throw new LoginFailure(LoginStatus.AuthenticationFailure,
                        $"{AuthThrottle.MaxWaitingPerKey} failed CHAP logins of this initiator or address are already waiting; this response was not checked");
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
                    LoginKeys.Append(response, "CHAP_N", mutual.User);
                    LoginKeys.Append(response, "CHAP_R", Chap.EncodeHex(Chap.Response(id, mutual.Secret, challenge)));
                }
                _auth = AuthState.Done;
                ChapAuthenticated = true;
                _log.Information("CHAP authentication succeeded for {Initiator} as user {User}", LogText.Escape(InitiatorName), LogText.Escape(name));
                return;
            }
            case AuthState.Done:
                if (keys is not null && keys.Count > 0) throw new LoginFailure(LoginStatus.InitiatorError, "security keys after authentication completed");
                return;
        }
    }
}
