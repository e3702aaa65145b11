using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace IntegrityTarget.Host.Status;

// The status/control protocol over the serving process's unix socket: one request per line, each
// answered by one or more JSON lines. Documented in README ("Status socket protocol").
//
//   request  {"command":"status"}                                   (or the text line: status)
//   reply    {"type":"status","ok":true,"status":{...StatusSnapshot...}}
//   request  {"command":"scrub","iqn":"iqn...","lun":0,"rateMBps":50} (or: scrub IQN LUN [RATE])
//   replies  {"type":"progress","fraction":0.25} ... then
//            {"type":"scrub-result","ok":true,"result":{...ScrubOutcome...}}
//   request  {"command":"resize","iqn":"iqn...","lun":0,"size":"2GiB"}   (or: resize IQN LUN SIZE)
//   reply    {"type":"resize-result","ok":true,"result":{...ResizeOutcome...}}
//   request  {"command":"reload"}                                    (or: reload)
//   reply    {"type":"reload-result","ok":true,"result":{"source":"...","applied":["..."]}}
//   any error {"type":"error","ok":false,"error":"what went wrong"}

public sealed record StatusRequest(string Command, string? Iqn = null, ulong? Lun = null, double? RateMBps = null, string? Size = null);

/// <summary>What a reload applied (one sentence per change; empty when the configuration was unchanged).</summary>
public sealed record ReloadOutcome(string Source, IReadOnlyList<string> Applied);

/// <summary>What an online grow did: sizes in bytes before and after.</summary>
public sealed record ResizeOutcome(string Iqn, ulong Lun, long OldBytes, long NewBytes, ulong Blocks);

public sealed record StatusSnapshot(
    int Pid,
    string Version,
    DateTimeOffset StartedUtc,
    string Transport,
    IReadOnlyList<string> Portals,
    IReadOnlyList<TargetStatus> Targets,
    IReadOnlyList<JsonNode?> Sessions,
    IntegrityTarget.Iscsi.IscsiCountersSnapshot? Iscsi = null);

public sealed record TargetStatus(string Iqn, string? Alias, bool Chap, IReadOnlyList<string> AllowedInitiators, IReadOnlyList<LunStatus> Luns);

public sealed record LunStatus(
    ulong Lun,
    string Path,
    bool Integrity,
    string TagAlgorithm,
    int BlockSize,
    ulong Blocks,
    bool WriteBack,
    bool ReadOnly,
    IReadOnlyDictionary<string, long> Counters,
    // Shared LUNs only (null otherwise): owner, follower, transitioning or unowned; the owning gateway; volume opens here.
    string? Ha = null,
    string? OwnerGateway = null,
    int? Opens = null);

/// <summary>Result of verifying every block of one volume. <see cref="BadLbas"/> may be capped; <see cref="Mismatches"/> is the full count.</summary>
public sealed record ScrubOutcome(string Volume, ulong BlocksChecked, ulong BlocksSkippedUnmapped, long Mismatches,
    IReadOnlyList<ulong> BadLbas, long IoErrors, double Seconds)
{
    public bool Clean => Mismatches == 0 && IoErrors == 0 && BadLbas.Count == 0;
}

public static class StatusJson
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
        WriteIndented = false,
    };

    public static readonly JsonSerializerOptions Indented = new(Options) { WriteIndented = true };

    public static string Line(string type, bool ok, string? field = null, object? value = null)
    {
        var o = new JsonObject { ["type"] = type, ["ok"] = ok };
        if (field != null) o[field] = value as JsonNode ?? JsonSerializer.SerializeToNode(value, Options);
        return o.ToJsonString(Options);
    }

    public static string Error(string message) => Line("error", false, "error", JsonValue.Create(message));

    /// <summary>Parses a JSON request or the text form "status" / "scrub IQN LUN [RATE]".</summary>
    public static StatusRequest? ParseRequest(string line, out string? error)
    {
        error = null;
        line = line.Trim();
        if (line.StartsWith('{'))
        {
            try
            {
                var r = JsonSerializer.Deserialize<StatusRequest>(line, Options);
                if (r?.Command == null) { error = "request has no \"command\""; return null; }
                return r;
            }
            catch (JsonException e) { error = $"request is not valid JSON: {e.Message}"; return null; }
        }
        var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) { error = "empty request"; return null; }
        if (parts[0] == "resize")
        {
            if (parts.Length != 4 || !ulong.TryParse(parts[2], out var rlun)) { error = "usage: resize IQN LUN SIZE"; return null; }
            return new StatusRequest("resize", parts[1], rlun, Size: parts[3]);
        }
        if (parts[0] == "scrub")
        {
            if (parts.Length < 3 || !ulong.TryParse(parts[2], out var lun)) { error = "usage: scrub IQN LUN [RATE_MBPS]"; return null; }
            double? rate = null;
            if (parts.Length > 3)
            {
                if (!double.TryParse(parts[3], System.Globalization.CultureInfo.InvariantCulture, out var r) || r <= 0)
                { error = "scrub: RATE_MBPS must be a positive number"; return null; }
                rate = r;
            }
            return new StatusRequest("scrub", parts[1], lun, rate);
        }
        return new StatusRequest(parts[0]);
    }
}
