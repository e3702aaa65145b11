using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Configuration;

namespace IntegrityTarget.Host.Config;

/// <summary>
/// Turns a <see cref="LoadedConfig"/> into a <see cref="HostConfig"/>, checking everything and collecting
/// every problem (never stopping at the first), each naming its source and key path. Secret values never
/// appear in a message.
/// </summary>
public sealed partial class ConfigReader
{
    public const int MinChapSecretLength = 12;   // RFC 7143 §12.1.3: at least 96 bits
    public const int MaxMsChapSecretLength = 16; // the Microsoft initiator refuses longer ones
    public const long MinLunBytes = 1L << 20;
    /// <summary>A LUN's BlockSize when none is configured, and what `format` makes without --block-size.</summary>
    public const int DefaultBlockSize = 512;
    public const ulong MaxLunNumber = 16383;     // flat space addressing (SAM-5)
    public const int MaxUnixSocketPath = 107;    // sun_path is 108 bytes with the NUL

    private readonly LoadedConfig _loaded;
    private readonly IConfiguration _root;
    private readonly bool _checkFiles;
    private readonly List<ConfigProblem> _problems = [];
    private readonly List<string> _notes = [];

    private ConfigReader(LoadedConfig loaded, bool checkFiles)
    {
        _loaded = loaded; _root = loaded.Root; _checkFiles = checkFiles;
        _problems.AddRange(loaded.Problems);
    }

    /// <param name="checkFiles">Check backing and key files on disk (off for verbs that only need the socket path).</param>
    public static (HostConfig? Config, IReadOnlyList<ConfigProblem> Problems) Read(LoadedConfig loaded, bool checkFiles = true)
    {
        if (loaded.Unreadable) return (null, loaded.Problems);
        var r = new ConfigReader(loaded, checkFiles);
        var config = r.ReadAll();
        bool failed = r._problems.Any(p => p.Severity == ProblemSeverity.Error);
        return (failed ? null : config, r._problems);
    }

    private HostConfig ReadAll()
    {
        CheckUnknownKeys();
        string dataDir = Path.GetFullPath(Str("DataDirectory") ?? "data", _loaded.WorkingDirectory);
        var portals = ReadPortals();
        string transport = ReadTransport();
        var iscsi = ReadIscsi();
        var ceph = ReadCeph(dataDir);
        var targets = ReadTargets(dataDir, ceph);
        var logging = ReadLogging(dataDir);
        string socket = Path.GetFullPath(Str("Status:Socket") ?? "status.sock", dataDir);
        var metrics = ReadMetrics();
        var ha = ReadHa();
        if (Encoding.UTF8.GetByteCount(socket) > MaxUnixSocketPath)
            Error("Status:Socket", $"unix socket path '{socket}' is longer than {MaxUnixSocketPath} bytes; choose a shorter Status:Socket or DataDirectory");
        return new HostConfig
        {
            DataDirectory = dataDir, Portals = portals, Transport = transport, Iscsi = iscsi,
            Targets = targets, Logging = logging, StatusSocket = socket, MetricsListen = metrics, Notes = _notes, Ha = ha, Ceph = ceph,
        };
    }

    // ---- primitives ---------------------------------------------------------------------------

    private void Error(string key, string message) => _problems.Add(ConfigProblem.Error(_loaded.SourceOf(key), key, message));
    private void ErrorFrom(string sourceKey, string key, string message) => _problems.Add(ConfigProblem.Error(_loaded.SourceOf(sourceKey), key, message));

    /// <summary>The key's value comes from the built-in defaults (no file, environment or command line set it).</summary>
    private bool IsBuiltInDefault(string key) => _root[key] != null && _loaded.SourceOf(key) == ConfigLoader.BuiltInDefaults;

    /// <summary>How to set a key on the command line: its short alias when it has one (--chap-secret), else --Key.</summary>
    private static string Flag(string key) =>
        ConfigLoader.SwitchMappings.FirstOrDefault(m => m.Value.Equals(key, StringComparison.OrdinalIgnoreCase)).Key ?? "--" + key;

    private void Warning(string key, string message) => _problems.Add(ConfigProblem.Warning(_loaded.SourceOf(key), key, message));

    /// <summary>The value, or null when absent, empty or JSON null.</summary>
    private string? Str(string key)
    {
        var v = _root[key];
        return string.IsNullOrWhiteSpace(v) ? null : v.Trim();
    }

    private int Int(string key, int fallback, int min, int max)
    {
        var s = Str(key);
        if (s == null) return fallback;
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v))
        {
            Error(key, $"must be a whole number, got '{s}'");
            return fallback;
        }
        if (v < min || v > max) { Error(key, $"must be between {min} and {max}, got {v}"); return fallback; }
        return v;
    }

    private static readonly Dictionary<string, bool> BoolWords = new(StringComparer.OrdinalIgnoreCase)
    {
        ["true"] = true, ["false"] = false, ["yes"] = true, ["no"] = false, ["on"] = true, ["off"] = false, ["1"] = true, ["0"] = false,
    };

    private bool Bool(string key, bool fallback)
    {
        var s = Str(key);
        if (s == null) return fallback;
        if (BoolWords.TryGetValue(s, out bool b)) return b;
        Error(key, $"must be true or false, got '{s}'");
        return fallback;
    }

    /// <summary>Values of an array key; a single string value counts as a one-element array.</summary>
    private List<(string Key, string Value)> List(string key)
    {
        var section = _root.GetSection(key);
        var children = section.GetChildren().ToList();
        if (children.Count == 0)
            return Str(key) is { } single ? [(key, single)] : [];
        var list = new List<(string, string)>();
        foreach (var c in children)
            if (!string.IsNullOrWhiteSpace(c.Value)) list.Add((c.Path, c.Value.Trim()));
        return list;
    }

    // ---- unknown keys --------------------------------------------------------------------------

    private static readonly string[] Schema =
    [
        "DataDirectory", "Portals", "Portals:#", "Transport",
        "Iscsi:MaxRecvDataSegmentLength", "Iscsi:MaxBurstLength", "Iscsi:FirstBurstLength", "Iscsi:ImmediateData",
        "Iscsi:InitialR2T", "Iscsi:MaxOutstandingR2T", "Iscsi:QueueDepth", "Iscsi:NopIntervalSeconds", "Iscsi:NopTimeoutSeconds",
        "Iscsi:ConnectionLimit", "Iscsi:ChapFailureDelayMilliseconds", "Iscsi:ChapFailureMaxDelaySeconds", "Iscsi:MaxInFlightBytes",
        "Iscsi:DiscoveryChap:User", "Iscsi:DiscoveryChap:Secret", "Iscsi:DiscoveryMutualChap:User", "Iscsi:DiscoveryMutualChap:Secret",
        "Targets:#:Iqn", "Targets:#:Alias", "Targets:#:AllowedInitiators", "Targets:#:AllowedInitiators:#",
        "Targets:#:Chap:User", "Targets:#:Chap:Secret", "Targets:#:MutualChap:User", "Targets:#:MutualChap:Secret",
        "Targets:#:Luns:#:Lun", "Targets:#:Luns:#:Path", "Targets:#:Luns:#:Size", "Targets:#:Luns:#:BlockSize",
        "Targets:#:Luns:#:Serial", "Targets:#:Luns:#:Integrity", "Targets:#:Luns:#:TagAlgorithm", "Targets:#:Luns:#:KeyFile",
        "Targets:#:Luns:#:WriteBack", "Targets:#:Luns:#:FormatIfBlank", "Targets:#:Luns:#:ReadOnly", "Targets:#:Luns:#:TagCache",
        "Logging:Level", "Logging:File", "Logging:Json", "Status:Socket", "Metrics:Listen",
        "Ha:Self", "Ha:NonOwnerState", "Ha:PeerSecret", "Ha:LockRetryMilliseconds", "Ha:HeartbeatMilliseconds",
        "Ha:PeerTimeoutMilliseconds", "Ha:ReconnectMilliseconds", "Ha:Gateways:#:Name", "Ha:Gateways:#:PortGroup", "Ha:Gateways:#:Peer",
        "Ceph:Cluster", "Ceph:ClientId", "Ceph:ConfFile", "Ceph:Keyring", "Ceph:TimeoutSeconds",
    ];

    private static readonly HashSet<string> Leaves = new(Schema, StringComparer.OrdinalIgnoreCase);
    private static readonly HashSet<string> Sections = new(
        Schema.SelectMany(s => Enumerable.Range(1, s.Split(':').Length - 1).Select(n => string.Join(':', s.Split(':').Take(n)))),
        StringComparer.OrdinalIgnoreCase);

    [GeneratedRegex(@"(?<=^|:)\d+(?=:|$)")]
    private static partial Regex IndexSegment();

    private void CheckUnknownKeys()
    {
        foreach (var (key, value) in _root.AsEnumerable())
        {
            string pattern = IndexSegment().Replace(key, "#");
            if (Leaves.Contains(pattern)) continue;
            // Sections show up as keys with null values; an empty leaf at a section path is a JSON null.
            if (Sections.Contains(pattern) && string.IsNullOrEmpty(value)) continue;
            if (value == null && _root.GetSection(key).GetChildren().Any()) continue;
            Error(key, "unknown setting (check the spelling; see the config reference in README.md)");
        }
    }

    // ---- sections ------------------------------------------------------------------------------

    private IReadOnlyList<IPEndPoint> ReadPortals()
    {
        var result = new List<IPEndPoint>();
        var entries = List("Portals");
        if (entries.Count == 0) Error("Portals", "no portal to listen on (e.g. \"Portals\": [\"127.0.0.1:3260\"] or --listen 0.0.0.0:3260)");
        foreach (var (key, value) in entries)
        {
            if (!PortalParser.TryParse(value, out var ep, out var meaning, out var why))
            {
                Error(key, why!);
                continue;
            }
            if (result.Contains(ep)) { Error(key, $"portal {ep} is listed twice"); continue; }
            if (meaning != null) _notes.Add($"{_loaded.SourceOf(key)}: {key}: {meaning}");
            result.Add(ep);
        }
        return result;
    }

    /// <summary>True when <paramref name="text"/> is a portal (see <see cref="PortalParser"/>).</summary>
    public static bool TryParsePortal(string text, out IPEndPoint endpoint) => PortalParser.TryParse(text, out endpoint, out _, out _);

    public const int MinPeerSecretLength = 16;

    /// <summary>The Ha section (several gateways for the same LUNs); null when absent.</summary>
    private HaSettings? ReadHa()
    {
        var section = _root.GetSection("Ha");
        if (!section.GetChildren().Any()) return null;
        var gateways = new List<GatewaySettings>();
        var children = _root.GetSection("Ha:Gateways").GetChildren().ToList();
        if (children.Count < 2) Error("Ha:Gateways", "needs at least two gateways, each with a Name and a Peer address (ADDRESS:PORT its peer link listens on)");
        int position = 0;
        foreach (var g in children)
        {
            string k = g.Path;
            position++;
            string? name = Str(k + ":Name");
            if (name == null) { Error(k + ":Name", "is missing (e.g. gw1)"); continue; }
            if (name.Any(c => c < 0x21 || c > 0x7e)) { Error(k + ":Name", $"'{name}' must be printable ASCII without spaces"); continue; }
            int group = Int(k + ":PortGroup", position, 1, ushort.MaxValue);
            if (Str(k + ":Peer") is not { } peerText) { Error(k + ":Peer", $"is missing: the ADDRESS:PORT where {name}'s peer link listens (e.g. 10.0.0.1:3270)"); continue; }
            if (!TryParsePortal(peerText, out var peer) || !peerText.Contains(':') || peer.Port == 0)
            {
                Error(k + ":Peer", $"'{peerText}' is not ADDRESS:PORT with a fixed port (e.g. 10.0.0.1:3270)");
                continue;
            }
            if (gateways.Any(x => x.Name == name)) Error(k + ":Name", $"gateway '{name}' is listed twice");
            else if (gateways.FirstOrDefault(x => x.PortGroup == group) is { } same) Error(k + ":PortGroup", $"port group {group} is already {same.Name}'s");
            else if (gateways.FirstOrDefault(x => x.Peer.Equals(peer)) is { } samePeer) Error(k + ":Peer", $"{peer} is already {samePeer.Name}'s peer address");
            else gateways.Add(new GatewaySettings(name, (ushort)group, peer));
        }
        string? self = Str("Ha:Self");
        // A missing key has no source of its own: name the one the Ha section came from.
        if (self == null) _problems.Add(ConfigProblem.Error(_loaded.SourceOf(children.FirstOrDefault()?.Path + ":Name"), "Ha:Self", $"is missing: which of Ha:Gateways ({string.Join(", ", gateways.Select(g => g.Name))}) is this process? (e.g. --ha-self {gateways.FirstOrDefault()?.Name ?? "gw1"})"));
        else if (gateways.Count > 0 && gateways.All(g => g.Name != self)) Error("Ha:Self", $"'{self}' is not one of Ha:Gateways ({string.Join(", ", gateways.Select(g => g.Name))})");
        string state = (Str("Ha:NonOwnerState") ?? "standby").ToLowerInvariant();
        if (state is not ("standby" or "active-non-optimized"))
            Error("Ha:NonOwnerState", $"must be standby or active-non-optimized, got '{state}'");
        string? secret = _root["Ha:PeerSecret"];
        if (string.IsNullOrEmpty(secret)) Error("Ha:PeerSecret", $"is missing: a secret of at least {MinPeerSecretLength} characters that every gateway shares (it authenticates the peer links)");
        else if (secret.Length < MinPeerSecretLength) Error("Ha:PeerSecret", $"must be at least {MinPeerSecretLength} characters, got {secret.Length}");
        int heartbeat = Int("Ha:HeartbeatMilliseconds", 1000, 50, 60_000);
        int timeout = Int("Ha:PeerTimeoutMilliseconds", 5000, 100, 600_000);
        if (timeout <= heartbeat) Error("Ha:PeerTimeoutMilliseconds", $"must be longer than Ha:HeartbeatMilliseconds ({heartbeat}), got {timeout}");
        return new HaSettings
        {
            Self = self ?? "", Gateways = gateways, NonOwnerState = state, PeerSecret = secret ?? "",
            LockRetryMilliseconds = Int("Ha:LockRetryMilliseconds", 500, 10, 60_000), HeartbeatMilliseconds = heartbeat,
            PeerTimeoutMilliseconds = timeout, ReconnectMilliseconds = Int("Ha:ReconnectMilliseconds", 1000, 10, 60_000),
        };
    }

    /// <summary>Metrics:Listen: where the Prometheus endpoint listens; absent = no endpoint (the default).</summary>
    private IPEndPoint? ReadMetrics()
    {
        if (Str("Metrics:Listen") is not { } text) return null;
        if (!TryParsePortal(text, out var ep) || !text.Contains(':'))
        {
            Error("Metrics:Listen", $"'{text}' is not ADDRESS:PORT (e.g. 127.0.0.1:9400)");
            return null;
        }
        if (ep.Port == 0) { Error("Metrics:Listen", "needs a fixed port (Prometheus must know where to scrape), e.g. 127.0.0.1:9400"); return null; }
        return ep;
    }

    private static readonly Dictionary<string, string> TransportNames = new(StringComparer.OrdinalIgnoreCase)
    {
        ["pipelines"] = "pipelines", ["sockets"] = "pipelines", ["dotnetty"] = "dotnetty",
    };

    private string ReadTransport()
    {
        var s = Str("Transport");
        if (s == null) return "pipelines";
        if (TransportNames.TryGetValue(s, out var t)) return t;
        Error("Transport", $"unknown transport '{s}' (choose pipelines or dotnetty)");
        return "pipelines";
    }

    private IscsiSettings ReadIscsi()
    {
        const int maxSegment = (1 << 24) - 1; // RFC 7143: 512 to 2^24-1
        var s = new IscsiSettings
        {
            MaxRecvDataSegmentLength = Int("Iscsi:MaxRecvDataSegmentLength", 262144, 512, maxSegment),
            MaxBurstLength = Int("Iscsi:MaxBurstLength", 1048576, 512, maxSegment),
            FirstBurstLength = Int("Iscsi:FirstBurstLength", 65536, 512, maxSegment),
            ImmediateData = Bool("Iscsi:ImmediateData", true),
            InitialR2T = Bool("Iscsi:InitialR2T", false),
            MaxOutstandingR2T = Int("Iscsi:MaxOutstandingR2T", 8, 1, 65535),
            QueueDepth = Int("Iscsi:QueueDepth", 128, 1, 65536),
            NopIntervalSeconds = Int("Iscsi:NopIntervalSeconds", 10, 1, 3600),
            NopTimeoutSeconds = Int("Iscsi:NopTimeoutSeconds", 30, 1, 3600),
            ConnectionLimit = Str("Iscsi:ConnectionLimit") is null ? null : Int("Iscsi:ConnectionLimit", 1024, 1, 1_000_000),
            ChapFailureDelayMilliseconds = Int("Iscsi:ChapFailureDelayMilliseconds", 500, 0, 10_000),
            ChapFailureMaxDelaySeconds = Int("Iscsi:ChapFailureMaxDelaySeconds", 16, 1, 25),
            MaxInFlightBytes = InFlightBudget(),
            DiscoveryChap = ReadChap("Iscsi:DiscoveryChap"),
            DiscoveryMutualChap = ReadChap("Iscsi:DiscoveryMutualChap"),
        };
        if (s.FirstBurstLength > s.MaxBurstLength)
            Error("Iscsi:FirstBurstLength", $"must not exceed Iscsi:MaxBurstLength ({s.MaxBurstLength}), got {s.FirstBurstLength} (RFC 7143 §13.14)");
        if (s.DiscoveryMutualChap != null && s.DiscoveryChap == null)
            Error("Iscsi:DiscoveryMutualChap", "mutual CHAP needs Iscsi:DiscoveryChap as well (the initiator authenticates first)");
        CheckDistinctSecrets("Iscsi:DiscoveryMutualChap", s.DiscoveryChap, s.DiscoveryMutualChap);
        return s;
    }

    /// <summary>A LUN's TagCache: memory for its integrity volume's cached tags, a size (0 = off).</summary>
    private long TagCache(string key)
    {
        if (Str(key) is not { } text) return LunSettings.DefaultTagCacheBytes;
        if (!SizeParser.TryParse(text, out long bytes, out var why)) { Error(key, why); return 0; }
        return bytes;
    }

    private long InFlightBudget()
    {
        const string key = "Iscsi:MaxInFlightBytes";
        var text = Str(key);
        if (text == null) return 1L << 30;
        if (!SizeParser.TryParse(text, out long bytes, out var why)) { Error(key, why); return 1L << 30; }
        if (bytes < 16L << 20) { Error(key, $"{text} is too small: at least 16MiB (one largest read must fit)"); return 1L << 30; }
        return bytes;
    }

    private ChapSettings? ReadChap(string key)
    {
        string? user = Str(key + ":User"), secret = _root[key + ":Secret"];
        if (string.IsNullOrEmpty(secret)) secret = null;
        if (user == null && secret == null) return null;
        bool ok = true;
        // A missing half is reported against the source of the half that is there (e.g. "command line
        // (--chap-user)"), which is where the user has to look, with the way to give the other half.
        if (user == null) { ErrorFrom(key + ":Secret", key + ":User", $"is missing (a CHAP secret needs a user name: {Flag(key + ":User")} NAME)"); ok = false; }
        if (secret == null) { ErrorFrom(key + ":User", key + ":Secret", $"is missing (CHAP user '{user}' needs a secret: {Flag(key + ":Secret")} SECRET, or the environment)"); return null; }
        // Only the length is ever reported; the secret itself never leaves this method.
        if (secret.Length < MinChapSecretLength)
        {
            Error(key + ":Secret", $"must be at least {MinChapSecretLength} characters (RFC 7143 requires 96 bits), got {secret.Length} characters");
            ok = false;
        }
        else if (secret.Length > MaxMsChapSecretLength)
            Warning(key + ":Secret", $"is {secret.Length} characters; the Microsoft iSCSI initiator only accepts {MinChapSecretLength}-{MaxMsChapSecretLength}");
        return ok ? new ChapSettings { User = user!, Secret = secret } : null;
    }

    private void CheckDistinctSecrets(string mutualKey, ChapSettings? chap, ChapSettings? mutual)
    {
        if (chap != null && mutual != null && chap.Secret == mutual.Secret)
            Error(mutualKey + ":Secret", "must differ from the one-way CHAP secret (initiators refuse a target that answers with the same secret)");
    }

    /// <summary>iqn./eui./naa. names per RFC 7143 §4.2.7 and RFC 3722: the same check the iSCSI layer applies at login.</summary>
    public static bool IsValidIscsiName(string name) => IntegrityTarget.Iscsi.Login.IscsiName.IsValid(name);

    private IReadOnlyList<TargetSettings> ReadTargets(string dataDir, Storage.Rbd.CephClientOptions ceph)
    {
        var targets = new List<TargetSettings>();
        var sections = _root.GetSection("Targets").GetChildren().ToList();
        if (sections.Count == 0) Error("Targets", "no targets configured (give a config file with Targets, or --iqn and --lun)");
        var iqns = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        var paths = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var t in sections)
        {
            string k = t.Path;
            string? iqn = Str(k + ":Iqn");
            if (iqn == null) Error(k + ":Iqn", "is missing (e.g. iqn.2026-11.org.example:disk1)");
            else if (!IsValidIscsiName(iqn))
                Error(k + ":Iqn", $"'{iqn}' is not an iSCSI name (iqn.YYYY-MM.reversed.domain[:name], eui.<16 hex>, or naa.<16 or 32 hex>)");
            else if (iqns.TryGetValue(iqn, out var first))
                Error(k + ":Iqn", $"'{iqn}' is already used by {first}");
            else iqns[iqn] = k;

            var allowed = new List<string>();
            foreach (var (key, value) in List(k + ":AllowedInitiators"))
            {
                if (value != "*" && !IsValidIscsiName(value)) Error(key, $"'{value}' is neither * nor an initiator name (iqn./eui./naa.)");
                else allowed.Add(value);
            }
            if (allowed.Count == 0 && List(k + ":AllowedInitiators").Count == 0) allowed.Add("*");

            var chap = ReadChap(k + ":Chap");
            var mutual = ReadChap(k + ":MutualChap");
            if (mutual != null && chap == null && Str(k + ":Chap:User") == null)
                Error(k + ":MutualChap", "mutual CHAP needs Chap as well (the initiator authenticates first)");
            CheckDistinctSecrets(k + ":MutualChap", chap, mutual);

            var luns = ReadLuns(k, iqn ?? "", dataDir, paths, ceph);
            targets.Add(new TargetSettings
            {
                Iqn = iqn ?? "", Alias = Str(k + ":Alias"), AllowedInitiators = allowed, Chap = chap, MutualChap = mutual, Luns = luns,
            });
        }
        return targets;
    }

    private List<LunSettings> ReadLuns(string targetKey, string iqn, string dataDir, Dictionary<string, string> paths, Storage.Rbd.CephClientOptions ceph)
    {
        var luns = new List<LunSettings>();
        var sections = _root.GetSection(targetKey + ":Luns").GetChildren().ToList();
        if (sections.Count == 0) Error(targetKey + ":Luns", "target has no LUNs (add at least one with a Path)");
        var numbers = new Dictionary<ulong, string>();
        int position = 0;
        foreach (var l in sections)
        {
            string k = l.Path;
            ulong lun = (ulong)position++;
            if (Str(k + ":Lun") is { } lunText)
            {
                if (!ulong.TryParse(lunText, NumberStyles.None, CultureInfo.InvariantCulture, out lun) || lun > MaxLunNumber)
                    Error(k + ":Lun", $"must be a LUN number from 0 to {MaxLunNumber}, got '{lunText}'");
            }
            if (numbers.TryGetValue(lun, out var firstLun)) Error(k + ":Lun", $"LUN {lun} is already used by {firstLun}");
            else numbers[lun] = k;

            int blockSize = DefaultBlockSize;
            bool blockSizeConfigured = Str(k + ":BlockSize") != null;
            if (Str(k + ":BlockSize") is { } bsText)
            {
                if (!int.TryParse(bsText, NumberStyles.None, CultureInfo.InvariantCulture, out blockSize) || blockSize is not (512 or 4096))
                {
                    Error(k + ":BlockSize", $"must be 512 or 4096, got {bsText}");
                    blockSize = DefaultBlockSize;
                }
            }

            long? size = null;
            // The built-in default's Size belongs to the built-in default's file: a LUN path given on the
            // command line or in the environment is created only with a Size of its own, so a mistyped
            // --lun or --data-dir is an error instead of a new blank 1 GiB LUN.
            bool inheritedSize = IsBuiltInDefault(k + ":Size") && !IsBuiltInDefault(k + ":Path");
            if (!inheritedSize && Str(k + ":Size") is { } sizeText)
            {
                if (!SizeParser.TryParse(sizeText, out long bytes, out var why)) Error(k + ":Size", why);
                else if (bytes < MinLunBytes) Error(k + ":Size", $"{sizeText} is too small (at least {SizeParser.Format(MinLunBytes)})");
                else if (bytes % blockSize != 0) Error(k + ":Size", $"{sizeText} is not a whole number of {blockSize}-byte blocks");
                else size = bytes;
            }

            string path = "";
            Storage.Rbd.RbdImageSpec? rbd = null;
            if (Str(k + ":Path") is not { } pathText) Error(k + ":Path", "is missing (the backing file or block device, relative to DataDirectory)");
            else if (Storage.Rbd.RbdImageSpec.IsRbdPath(pathText))
            {
                rbd = ReadRbdPath(k + ":Path", pathText, paths, ceph);
                path = rbd?.ToString() ?? pathText;
            }
            else
            {
                path = Path.GetFullPath(pathText, dataDir);
                if (paths.TryGetValue(path, out var firstPath)) Error(k + ":Path", $"'{path}' is already served by {firstPath}");
                else paths[path] = k;
                if (_checkFiles)
                {
                    if (Directory.Exists(path)) Error(k + ":Path", $"'{path}' is a directory, not a file or block device");
                    else if (!File.Exists(path) && size == null && (inheritedSize || Str(k + ":Size") == null))
                        Error(k + ":Path", $"backing file '{path}' does not exist (DataDirectory is '{dataDir}'); " +
                            $"check the path, or give a Size to create it ({Flag(k + ":Size")} 10GiB)");
                }
            }

            bool integrity = Bool(k + ":Integrity", true);
            string alg = TagAlgorithms.Crc32c;
            if (Str(k + ":TagAlgorithm") is { } algText && !TagAlgorithms.TryNormalise(algText, out alg))
            {
                Error(k + ":TagAlgorithm", $"unknown tag algorithm '{algText}' (choose {string.Join(", ", TagAlgorithms.All)})");
                alg = TagAlgorithms.Crc32c;
            }
            string? keyFile = Str(k + ":KeyFile") is { } kf ? Path.GetFullPath(kf, dataDir) : null;
            if (integrity) CheckKeyFile(k, alg, keyFile);

            string serial = Str(k + ":Serial") ?? DefaultSerial(iqn, lun);
            if (serial.Length > 32 || serial.Any(c => c < 0x20 || c > 0x7e))
                Error(k + ":Serial", $"must be at most 32 printable ASCII characters, got '{serial}'");

            luns.Add(new LunSettings
            {
                Lun = lun, Path = path, SizeBytes = size, BlockSize = blockSize, BlockSizeConfigured = blockSizeConfigured, Serial = serial,
                Integrity = integrity, TagAlgorithm = alg, KeyFile = keyFile,
                WriteBack = Bool(k + ":WriteBack", true), FormatIfBlank = Bool(k + ":FormatIfBlank", true),
                ReadOnly = Bool(k + ":ReadOnly", false), KeyPath = k,
                Rbd = rbd, Ceph = rbd != null ? ceph : null, ReservationFile = ReservationFileFor(path, rbd, dataDir),
                TagCacheBytes = TagCache(k + ":TagCache"),
            });
        }
        return luns;
    }

    public const int MinKeyBytes = 16;

    private void CheckKeyFile(string lunKey, string alg, string? keyFile)
    {
        string key = lunKey + ":KeyFile";
        if (keyFile == null)
        {
            if (TagAlgorithms.NeedsKey(alg)) Error(key, $"tag algorithm {alg} needs a KeyFile (at least {MinKeyBytes} random bytes, e.g. head -c 32 /dev/urandom > lun.key)");
            return;
        }
        if (!TagAlgorithms.NeedsKey(alg)) { Warning(key, $"is ignored: tag algorithm {alg} uses no key"); return; }
        if (!_checkFiles) return;
        if (!File.Exists(keyFile)) { Error(key, $"key file '{keyFile}' does not exist"); return; }
        try
        {
            long len = new FileInfo(keyFile).Length;
            using var _ = File.OpenRead(keyFile);
            if (len < MinKeyBytes) Error(key, $"key file '{keyFile}' holds {len} bytes; at least {MinKeyBytes} are needed");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Error(key, $"key file '{keyFile}' cannot be read: {e.Message}");
        }
    }

    /// <summary>A stable serial from IQN and LUN, so a LUN keeps its identity across restarts.</summary>
    public static string DefaultSerial(string iqn, ulong lun)
    {
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes($"{iqn.ToLowerInvariant()}/{lun}"));
        return Convert.ToHexString(hash, 0, 8);
    }

    private static readonly HashSet<string> Levels = new(StringComparer.OrdinalIgnoreCase)
    {
        "Verbose", "Debug", "Information", "Warning", "Error", "Fatal",
    };

    private LoggingSettings ReadLogging(string dataDir)
    {
        string level = Str("Logging:Level") ?? "Information";
        if (level.Equals("info", StringComparison.OrdinalIgnoreCase)) level = "Information";
        if (level.Equals("warn", StringComparison.OrdinalIgnoreCase)) level = "Warning";
        if (!Levels.Contains(level))
        {
            Error("Logging:Level", $"unknown level '{level}' (choose {string.Join(", ", Levels)})");
            level = "Information";
        }
        string? file = Str("Logging:File") is { } f ? Path.GetFullPath(f, dataDir) : null;
        return new LoggingSettings { Level = level, File = file, Json = Bool("Logging:Json", false) };
    }
}

public sealed partial class ConfigReader
{
    /// <summary>
    /// Where the status socket of a serving process with this configuration is, without validating the
    /// rest (the status and scrub verbs only need this one path).
    /// </summary>
    public static string StatusSocketPath(LoadedConfig loaded)
    {
        string dataDir = Path.GetFullPath(NonEmpty(loaded.Root["DataDirectory"]) ?? "data", loaded.WorkingDirectory);
        return Path.GetFullPath(NonEmpty(loaded.Root["Status:Socket"]) ?? "status.sock", dataDir);
    }

    private static string? NonEmpty(string? s) => string.IsNullOrWhiteSpace(s) ? null : s.Trim();
}
