using System.Net;

namespace IntegrityTarget.Host.Config;

// The validated, fully resolved configuration of one serving process. Everything here has passed
// ConfigReader: paths are absolute, sizes are bytes, names are normalised. Secrets stay in
// ChapSecret values that refuse to print themselves.

public sealed class HostConfig
{
    public required string DataDirectory { get; init; }
    public required IReadOnlyList<IPEndPoint> Portals { get; init; }
    public required string Transport { get; init; }
    public required IscsiSettings Iscsi { get; init; }
    public required IReadOnlyList<TargetSettings> Targets { get; init; }
    public required LoggingSettings Logging { get; init; }
    /// <summary>Absolute path of the unix status/control socket.</summary>
    public required string StatusSocket { get; init; }
    /// <summary>Where the Prometheus /metrics endpoint listens; null = off.</summary>
    public IPEndPoint? MetricsListen { get; init; }
    /// <summary>How settings written in short form were read (e.g. a portal given as a port alone), logged at start.</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];
    /// <summary>Several gateways serving the same LUNs (null: this process serves its LUNs alone).</summary>
    public HaSettings? Ha { get; init; }
    /// <summary>How RBD LUNs (rbd:POOL/IMAGE) reach their cluster (Ceph:* keys; the Ceph CLI's defaults).</summary>
    public Storage.Rbd.CephClientOptions Ceph { get; init; } = new();
}

public sealed class IscsiSettings
{
    public int MaxRecvDataSegmentLength { get; init; } = 262144;
    public int MaxBurstLength { get; init; } = 1048576;
    public int FirstBurstLength { get; init; } = 65536;
    public bool ImmediateData { get; init; } = true;
    public bool InitialR2T { get; init; }
    public int MaxOutstandingR2T { get; init; } = 8;
    public int QueueDepth { get; init; } = 128;
    public int NopIntervalSeconds { get; init; } = 10;
    public int NopTimeoutSeconds { get; init; } = 30;
    /// <summary>Connections held at once; null = derived from RLIMIT_NOFILE (half the soft limit, 16..4096).</summary>
    public int? ConnectionLimit { get; init; }
    /// <summary>First delay before a failed authentication is answered; doubles per failure of the name or address.</summary>
    public int ChapFailureDelayMilliseconds { get; init; } = 500;
    public int ChapFailureMaxDelaySeconds { get; init; } = 16;
    /// <summary>Command data (write buffers, unsent read data) the whole process may hold; beyond it commands get TASK SET FULL.</summary>
    public long MaxInFlightBytes { get; init; } = 1L << 30;
    public ChapSettings? DiscoveryChap { get; init; }
    public ChapSettings? DiscoveryMutualChap { get; init; }
}

/// <summary>CHAP user and secret. <see cref="ToString"/> never shows the secret, so logging the object is safe.</summary>
public sealed class ChapSettings
{
    public required string User { get; init; }
    public required string Secret { get; init; }
    public override string ToString() => $"{User}/<secret redacted>";
}

public sealed class TargetSettings
{
    public required string Iqn { get; init; }
    public string? Alias { get; init; }
    public required IReadOnlyList<string> AllowedInitiators { get; init; }
    public ChapSettings? Chap { get; init; }
    public ChapSettings? MutualChap { get; init; }
    public required IReadOnlyList<LunSettings> Luns { get; init; }
}

public sealed class LunSettings
{
    public required ulong Lun { get; init; }
    /// <summary>Absolute path of the backing file or block device, or rbd:POOL/IMAGE (then <see cref="Rbd"/> is set).</summary>
    public required string Path { get; init; }
    /// <summary>The Ceph RBD image behind this LUN; null for files and block devices.</summary>
    public Storage.Rbd.RbdImageSpec? Rbd { get; init; }
    /// <summary>How to reach the cluster of <see cref="Rbd"/>; null for files.</summary>
    public Storage.Rbd.CephClientOptions? Ceph { get; init; }
    /// <summary>Where persistent reservations with APTPL are kept (beside a file; under DataDirectory for an image).</summary>
    public string ReservationFile { get; init; } = "";
    /// <summary>Logical capacity to create when the file is missing; null = the file must exist.</summary>
    public long? SizeBytes { get; init; }
    public int BlockSize { get; init; } = 512;
    /// <summary>BlockSize was set (not the default): an existing volume with another block size is worth a warning.</summary>
    public bool BlockSizeConfigured { get; init; }
    public required string Serial { get; init; }
    public bool Integrity { get; init; } = true;
    /// <summary>Normalised: crc32c, xxhash64 or hmac-sha256.</summary>
    public string TagAlgorithm { get; init; } = TagAlgorithms.Crc32c;
    public string? KeyFile { get; init; }
    public bool WriteBack { get; init; } = true;
    public const long DefaultTagCacheBytes = 64L << 20;
    /// <summary>Memory for the integrity volume's tag cache (0 = off: every read also reads its tags from the
    /// device). Grows with the blocks read, up to this.</summary>
    public long TagCacheBytes { get; init; } = DefaultTagCacheBytes;
    public bool FormatIfBlank { get; init; } = true;
    public bool ReadOnly { get; init; }
    /// <summary>Config key path of this LUN (e.g. Targets:0:Luns:1), for messages at open time.</summary>
    public required string KeyPath { get; init; }
}

public sealed class LoggingSettings
{
    public string Level { get; init; } = "Information";
    public string? File { get; init; }
    public bool Json { get; init; }
}

/// <summary>The tag algorithm names the config and CLI accept, mapped to one canonical spelling.</summary>
public static class TagAlgorithms
{
    public const string Crc32c = "crc32c";
    public const string XxHash64 = "xxhash64";
    public const string HmacSha256 = "hmac-sha256";

    private static readonly Dictionary<string, string> Names = new(StringComparer.OrdinalIgnoreCase)
    {
        ["crc32c"] = Crc32c, ["crc-32c"] = Crc32c,
        ["xxhash64"] = XxHash64, ["xxh64"] = XxHash64,
        ["hmac-sha256"] = HmacSha256, ["hmacsha256"] = HmacSha256, ["hmac_sha256"] = HmacSha256,
    };

    public static IEnumerable<string> All => [Crc32c, XxHash64, HmacSha256];

    public static bool TryNormalise(string name, out string canonical) => Names.TryGetValue(name.Trim(), out canonical!);

    public static bool NeedsKey(string canonical) => canonical == HmacSha256;
}

/// <summary>One gateway of a group: name, target port group (also its iSCSI portal group tag and relative port), peer-link address.</summary>
public sealed record GatewaySettings(string Name, ushort PortGroup, IPEndPoint Peer);

/// <summary>The Ha section: the gateways serving the same LUNs, which one this process is, and the peer-link timing.</summary>
public sealed class HaSettings
{
    public required string Self { get; init; }
    public required IReadOnlyList<GatewaySettings> Gateways { get; init; }
    /// <summary>standby or active-non-optimized.</summary>
    public required string NonOwnerState { get; init; }
    public required string PeerSecret { get; init; }
    public int LockRetryMilliseconds { get; init; } = 500;
    public int HeartbeatMilliseconds { get; init; } = 1000;
    public int PeerTimeoutMilliseconds { get; init; } = 5000;
    public int ReconnectMilliseconds { get; init; } = 1000;

    public GatewaySettings SelfGateway => Gateways.First(g => g.Name == Self);
    public override string ToString() => $"Ha {{ Self = {Self}, Gateways = {string.Join(", ", Gateways)}, NonOwnerState = {NonOwnerState}, PeerSecret = *** }}";
}
