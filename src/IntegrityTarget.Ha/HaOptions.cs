using System.Net;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Ha;

/// <summary>One gateway of the group: its name, its target port group (= iSCSI portal group tag = relative target port), and where its peer link listens.</summary>
public sealed record GatewayInfo(string Name, ushort PortGroup, IPEndPoint Peer);

/// <summary>
/// How the gateways serving the same LUNs find each other and share them. Every gateway has the same
/// options except <see cref="Self"/>.
/// </summary>
public sealed class HaOptions
{
    public required string Self { get; init; }
    public required IReadOnlyList<GatewayInfo> Gateways { get; init; }
    /// <summary>What the groups of gateways that do not own a LUN report: standby (default) or active/non-optimized (they forward I/O to the owner).</summary>
    public AluaState NonOwnerState { get; init; } = AluaState.Standby;
    /// <summary>Shared secret of the peer links (HMAC-SHA256 challenge both ways); never sent.</summary>
    public required byte[] Secret { get; init; }
    /// <summary>How often a gateway without an owner to follow tries to take a LUN's lock.</summary>
    public TimeSpan LockRetryInterval { get; init; } = TimeSpan.FromMilliseconds(500);
    /// <summary>How often each side of a peer link pings the other.</summary>
    public TimeSpan HeartbeatInterval { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>A peer link that carried nothing for this long is dead (a hung or cut-off gateway).</summary>
    public TimeSpan PeerTimeout { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>How often a gateway retries connecting to a peer it is not connected to.</summary>
    public TimeSpan ReconnectInterval { get; init; } = TimeSpan.FromSeconds(1);

    public GatewayInfo SelfGateway => Gateways.First(g => g.Name == Self);

    /// <summary>One ALUA target port group per gateway, holding that gateway's one target port.</summary>
    public IReadOnlyList<TargetPortGroup> PortGroups => Gateways.Select(g => new TargetPortGroup(g.PortGroup, [g.PortGroup])).ToList();

    /// <summary>Access states of a LUN owned by <paramref name="owner"/> (null: owned by nobody we know; this gateway's group is <paramref name="selfState"/>).</summary>
    public IReadOnlyDictionary<ushort, AluaState> StatesWhenOwnedBy(string? owner, AluaState selfState = AluaState.Unavailable) =>
        Gateways.ToDictionary(g => g.PortGroup, g =>
            owner == null ? (g.Name == Self ? selfState : AluaState.ActiveOptimized)
            : g.Name == owner ? AluaState.ActiveOptimized : NonOwnerState);

    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (Gateways.Count < 2) errors.Add("Ha:Gateways needs at least two gateways");
        if (Gateways.All(g => g.Name != Self)) errors.Add($"Ha:Self '{Self}' is not one of Ha:Gateways ({string.Join(", ", Gateways.Select(g => g.Name))})");
        foreach (var dup in Gateways.GroupBy(g => g.Name).Where(g => g.Count() > 1)) errors.Add($"gateway name '{dup.Key}' is used twice");
        foreach (var dup in Gateways.GroupBy(g => g.PortGroup).Where(g => g.Count() > 1)) errors.Add($"port group {dup.Key} is used by {string.Join(" and ", dup.Select(g => g.Name))}");
        foreach (var dup in Gateways.GroupBy(g => g.Peer).Where(g => g.Count() > 1)) errors.Add($"peer address {dup.Key} is used by {string.Join(" and ", dup.Select(g => g.Name))}");
        if (Gateways.Any(g => g.PortGroup == 0)) errors.Add("port group 0 is reserved");
        if (Secret.Length < 16) errors.Add("Ha:PeerSecret must be at least 16 characters");
        if (NonOwnerState is not (AluaState.Standby or AluaState.ActiveNonOptimized)) errors.Add("Ha:NonOwnerState must be standby or active-non-optimized");
        if (PeerTimeout <= HeartbeatInterval) errors.Add("Ha:PeerTimeoutMilliseconds must be longer than Ha:HeartbeatMilliseconds");
        return errors;
    }
}
