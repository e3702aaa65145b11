using System.Buffers;
using System.Globalization;
using System.Text;

namespace IntegrityTarget.Iscsi.Login;

/// <summary>The values in force for a session/connection after login (RFC 7143 defaults until negotiated).</summary>
public sealed class NegotiatedParameters
{
    public bool HeaderDigest { get; set; }
    public bool DataDigest { get; set; }
    /// <summary>The initiator's MaxRecvDataSegmentLength: the largest data segment WE may send.</summary>
    public int InitiatorMaxRecvDataSegmentLength { get; set; } = 8192;
    /// <summary>Ours: the largest data segment we accept.</summary>
    public int TargetMaxRecvDataSegmentLength { get; set; } = 8192;
    public int MaxBurstLength { get; set; } = 262144;
    public int FirstBurstLength { get; set; } = 65536;
    public bool InitialR2T { get; set; } = true;
    public bool ImmediateData { get; set; } = true;
    public int MaxOutstandingR2T { get; set; } = 1;
    public bool DataPduInOrder { get; set; } = true;
    public bool DataSequenceInOrder { get; set; } = true;
    public int DefaultTime2Wait { get; set; } = 2;
    public int DefaultTime2Retain { get; set; } = 20;
    public int ErrorRecoveryLevel { get; set; }
    public int MaxConnections { get; set; } = 1;
}

internal enum KeyKind
{
    /// <summary>Boolean, result is the AND of both sides.</summary>
    BoolAnd,
    /// <summary>Boolean, result is the OR of both sides.</summary>
    BoolOr,
    /// <summary>Number, result is the smaller offer.</summary>
    NumMin,
    /// <summary>Number, result is the larger offer.</summary>
    NumMax,
    /// <summary>Number each side declares for itself.</summary>
    NumDeclarative,
    /// <summary>Ordered list; we pick the first value we support.</summary>
    List,
    /// <summary>Free text declared by the initiator (names, alias, session type).</summary>
    Declarative,
    /// <summary>Only the target may send this; an initiator offering it gets Reject.</summary>
    TargetDeclared,
    /// <summary>Security keys handled by the authentication exchange.</summary>
    Security,
    /// <summary>Key we understand but whose offer is meaningless with our other answers (marker intervals).</summary>
    AlwaysIrrelevant,
}

[Flags]
internal enum KeyScope
{
    None = 0,
    /// <summary>Only meaningful in a normal session: Irrelevant in discovery.</summary>
    NormalOnly = 1,
    /// <summary>May only be sent in the leading login (first connection of a session).</summary>
    LeadingOnly = 2,
    /// <summary>Connection-wide rather than session-wide.</summary>
    Connection = 4,
    /// <summary>Only in the security stage.</summary>
    SecurityStage = 8,
    /// <summary>Only in the operational stage (or, leniently, security stage) of login.</summary>
    LoginOnly = 16,
}

/// <summary>One row of the login key table.</summary>
internal sealed record LoginKey(
    string Name,
    KeyKind Kind,
    KeyScope Scope,
    uint Min,
    uint Max,
    string[] Allowed,
    Func<IscsiServerOptions, string>? Ours,
    Action<NegotiatedParameters, string>? Apply);

/// <summary>
/// The operational key table (RFC 7143 §13). Negotiation is driven by this data: each key's kind says
/// how an offer combines with our value, its range says what is a bad value (answered Reject), and its
/// scope says where it is irrelevant. Keys not in the table are answered NotUnderstood.
/// </summary>
internal static class LoginKeys
{
    private static readonly string[] YesNo = ["Yes", "No"];
    private static readonly string[] Digests = ["CRC32C", "None"];

    public static readonly IReadOnlyDictionary<string, LoginKey> Table = new Dictionary<string, LoginKey>(StringComparer.Ordinal)
    {
        ["HeaderDigest"] = new("HeaderDigest", KeyKind.List, KeyScope.Connection | KeyScope.LoginOnly, 0, 0, Digests,
            _ => "CRC32C,None", (p, v) => p.HeaderDigest = v == "CRC32C"),
        ["DataDigest"] = new("DataDigest", KeyKind.List, KeyScope.Connection | KeyScope.LoginOnly, 0, 0, Digests,
            _ => "CRC32C,None", (p, v) => p.DataDigest = v == "CRC32C"),
        ["MaxRecvDataSegmentLength"] = new("MaxRecvDataSegmentLength", KeyKind.NumDeclarative, KeyScope.Connection, 512, 16777215, [],
            o => Num(o.MaxRecvDataSegmentLength), (p, v) => p.InitiatorMaxRecvDataSegmentLength = int.Parse(v, CultureInfo.InvariantCulture)),
        ["MaxBurstLength"] = new("MaxBurstLength", KeyKind.NumMin, KeyScope.NormalOnly | KeyScope.LeadingOnly | KeyScope.LoginOnly, 512, 16777215, [],
            o => Num(o.MaxBurstLength), (p, v) => p.MaxBurstLength = int.Parse(v, CultureInfo.InvariantCulture)),
        ["FirstBurstLength"] = new("FirstBurstLength", KeyKind.NumMin, KeyScope.NormalOnly | KeyScope.LeadingOnly | KeyScope.LoginOnly, 512, 16777215, [],
            o => Num(o.FirstBurstLength), (p, v) => p.FirstBurstLength = int.Parse(v, CultureInfo.InvariantCulture)),
        ["InitialR2T"] = new("InitialR2T", KeyKind.BoolOr, KeyScope.NormalOnly | KeyScope.LeadingOnly | KeyScope.LoginOnly, 0, 0, YesNo,
            o => Bool(o.InitialR2T), (p, v) => p.InitialR2T = v == "Yes"),
        ["ImmediateData"] = new("ImmediateData", KeyKind.BoolAnd, KeyScope.NormalOnly | KeyScope.LeadingOnly | KeyScope.LoginOnly, 0, 0, YesNo,
            o => Bool(o.ImmediateData), (p, v) => p.ImmediateData = v == "Yes"),
        ["MaxOutstandingR2T"] = new("MaxOutstandingR2T", KeyKind.NumMin, KeyScope.NormalOnly | KeyScope.LeadingOnly | KeyScope.LoginOnly, 1, 65535, [],
            o => Num(o.MaxOutstandingR2T), (p, v) => p.MaxOutstandingR2T = int.Parse(v, CultureInfo.InvariantCulture)),
        ["DataPDUInOrder"] = new("DataPDUInOrder", KeyKind.BoolOr, KeyScope.NormalOnly | KeyScope.LeadingOnly | KeyScope.LoginOnly, 0, 0, YesNo,
            _ => "Yes", (p, v) => p.DataPduInOrder = v == "Yes"),
        ["DataSequenceInOrder"] = new("DataSequenceInOrder", KeyKind.BoolOr, KeyScope.NormalOnly | KeyScope.LeadingOnly | KeyScope.LoginOnly, 0, 0, YesNo,
            _ => "Yes", (p, v) => p.DataSequenceInOrder = v == "Yes"),
        ["DefaultTime2Wait"] = new("DefaultTime2Wait", KeyKind.NumMax, KeyScope.LeadingOnly | KeyScope.LoginOnly, 0, 3600, [],
            _ => "2", (p, v) => p.DefaultTime2Wait = int.Parse(v, CultureInfo.InvariantCulture)),
        ["DefaultTime2Retain"] = new("DefaultTime2Retain", KeyKind.NumMin, KeyScope.LeadingOnly | KeyScope.LoginOnly, 0, 3600, [],
            _ => "0", (p, v) => p.DefaultTime2Retain = int.Parse(v, CultureInfo.InvariantCulture)),
        // We implement error recovery level 0 only; min() makes any offer come out as 0.
        ["ErrorRecoveryLevel"] = new("ErrorRecoveryLevel", KeyKind.NumMin, KeyScope.LeadingOnly | KeyScope.LoginOnly, 0, 2, [],
            _ => "0", (p, v) => p.ErrorRecoveryLevel = int.Parse(v, CultureInfo.InvariantCulture)),
        ["MaxConnections"] = new("MaxConnections", KeyKind.NumMin, KeyScope.NormalOnly | KeyScope.LeadingOnly | KeyScope.LoginOnly, 1, 65535, [],
            _ => "1", (p, v) => p.MaxConnections = int.Parse(v, CultureInfo.InvariantCulture)),
        ["OFMarker"] = new("OFMarker", KeyKind.BoolAnd, KeyScope.Connection | KeyScope.LoginOnly, 0, 0, YesNo, _ => "No", null),
        ["IFMarker"] = new("IFMarker", KeyKind.BoolAnd, KeyScope.Connection | KeyScope.LoginOnly, 0, 0, YesNo, _ => "No", null),
        ["OFMarkInt"] = new("OFMarkInt", KeyKind.AlwaysIrrelevant, KeyScope.Connection | KeyScope.LoginOnly, 0, 0, [], null, null),
        ["IFMarkInt"] = new("IFMarkInt", KeyKind.AlwaysIrrelevant, KeyScope.Connection | KeyScope.LoginOnly, 0, 0, [], null, null),
        ["InitiatorName"] = new("InitiatorName", KeyKind.Declarative, KeyScope.LeadingOnly | KeyScope.LoginOnly, 0, 0, [], null, null),
        ["InitiatorAlias"] = new("InitiatorAlias", KeyKind.Declarative, KeyScope.None, 0, 0, [], null, null),
        ["TargetName"] = new("TargetName", KeyKind.Declarative, KeyScope.LeadingOnly | KeyScope.LoginOnly, 0, 0, [], null, null),
        ["SessionType"] = new("SessionType", KeyKind.Declarative, KeyScope.LeadingOnly | KeyScope.LoginOnly, 0, 0, ["Discovery", "Normal"], null, null),
        ["TargetAlias"] = new("TargetAlias", KeyKind.TargetDeclared, KeyScope.None, 0, 0, [], null, null),
        ["TargetAddress"] = new("TargetAddress", KeyKind.TargetDeclared, KeyScope.None, 0, 0, [], null, null),
        ["TargetPortalGroupTag"] = new("TargetPortalGroupTag", KeyKind.TargetDeclared, KeyScope.None, 0, 0, [], null, null),
        ["AuthMethod"] = new("AuthMethod", KeyKind.Security, KeyScope.SecurityStage | KeyScope.LoginOnly, 0, 0, [], null, null),
        ["CHAP_A"] = new("CHAP_A", KeyKind.Security, KeyScope.SecurityStage | KeyScope.LoginOnly, 0, 0, [], null, null),
        ["CHAP_N"] = new("CHAP_N", KeyKind.Security, KeyScope.SecurityStage | KeyScope.LoginOnly, 0, 0, [], null, null),
        ["CHAP_R"] = new("CHAP_R", KeyKind.Security, KeyScope.SecurityStage | KeyScope.LoginOnly, 0, 0, [], null, null),
        ["CHAP_I"] = new("CHAP_I", KeyKind.Security, KeyScope.SecurityStage | KeyScope.LoginOnly, 0, 0, [], null, null),
        ["CHAP_C"] = new("CHAP_C", KeyKind.Security, KeyScope.SecurityStage | KeyScope.LoginOnly, 0, 0, [], null, null),
    };

    private static string Num(int v) => v.ToString(CultureInfo.InvariantCulture);
    private static string Bool(bool v) => v ? "Yes" : "No";

    /// <summary>
    /// Combines the initiator's offer with our value per the key's kind. Returns the value to answer
    /// ("Reject" for a bad value) and sets <paramref name="result"/> to the value now in force (null when rejected).
    /// </summary>
    public static string Negotiate(LoginKey key, string offer, string ours, out string? result)
    {
        result = null;
        switch (key.Kind)
        {
            case KeyKind.BoolAnd:
            case KeyKind.BoolOr:
            {
                if (offer != "Yes" && offer != "No") return "Reject";
                bool a = offer == "Yes", b = ours == "Yes";
                bool r = key.Kind == KeyKind.BoolAnd ? a && b : a || b;
                result = r ? "Yes" : "No";
                return result;
            }
            case KeyKind.NumMin:
            case KeyKind.NumMax:
            case KeyKind.NumDeclarative:
            {
                if (!TryParseNumber(offer, out var v) || v < key.Min || v > key.Max) return "Reject";
                if (key.Kind == KeyKind.NumDeclarative) { result = offer; return ours; }
                var o = uint.Parse(ours, CultureInfo.InvariantCulture);
                var r = key.Kind == KeyKind.NumMin ? Math.Min(v, o) : Math.Max(v, o);
                result = r.ToString(CultureInfo.InvariantCulture);
                return result;
            }
            case KeyKind.List:
            {
                foreach (var part in offer.Split(','))
                {
                    if (key.Allowed.Contains(part, StringComparer.Ordinal)) { result = part; return part; }
                }
                return "Reject";
            }
            default:
                return "Reject";
        }
    }

    /// <summary>Decimal numbers only for the numeric keys we negotiate; hex/base64 forms of small numbers are unusual but legal.</summary>
    public static bool TryParseNumber(string s, out uint value)
    {
        value = 0;
        if (s.Length == 0 || s.Length > 20) return false;
        if (s.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            return uint.TryParse(s.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value);
        foreach (var c in s) if (c is < '0' or > '9') return false;
        return uint.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out value);
    }

    /// <summary>
    /// Parses "key=value\0" pairs. Returns false (with a reason) for text that is not key=value pairs
    /// or has over-long keys: a login with such text fails as an initiator error.
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> text, List<KeyValuePair<string, string>> into, out string? error)
    {
        error = null;
        while (text.Length > 0)
        {
            int end = text.IndexOf((byte)0);
            var pair = end < 0 ? text : text[..end];
            text = end < 0 ? default : text[(end + 1)..];
            if (pair.Length == 0) continue; // padding or double NUL
            int eq = pair.IndexOf((byte)'=');
            if (eq <= 0) { error = "text key without '='"; return false; }
            if (eq > 63) { error = "text key longer than 63 bytes"; return false; }
            if (pair.Length - eq - 1 > 8192) { error = "text value longer than 8192 bytes"; return false; }
            foreach (var b in pair[..eq])
                if (b is < 0x20 or > 0x7e) { error = "text key with non-printable bytes"; return false; }
            into.Add(new(System.Text.Encoding.UTF8.GetString(pair[..eq]), System.Text.Encoding.UTF8.GetString(pair[(eq + 1)..])));
        }
        return true;
    }

    /// <summary>Appends "key=value\0" to a text or login response.</summary>
    public static void Append(ArrayBufferWriter<byte> w, string key, string value)
    {
        int n = Encoding.UTF8.GetByteCount(key) + 1 + Encoding.UTF8.GetByteCount(value) + 1;
        var span = w.GetSpan(n);
        int k = Encoding.UTF8.GetBytes(key, span);
        span[k] = (byte)'=';
        int v = Encoding.UTF8.GetBytes(value, span[(k + 1)..]);
        span[k + 1 + v] = 0;
        w.Advance(n);
    }
}
