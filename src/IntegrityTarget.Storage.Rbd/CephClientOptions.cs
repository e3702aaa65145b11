namespace IntegrityTarget.Storage.Rbd;

/// <summary>
/// How the gateway connects to a Ceph cluster, with the defaults the Ceph command line uses: cluster
/// <c>ceph</c>, client <c>client.admin</c>, configuration from <c>$CEPH_CONF</c> or
/// <c>/etc/ceph/$cluster.conf</c>, keyring from the configuration's <c>keyring</c> search path.
/// </summary>
public sealed record CephClientOptions
{
    public const string DefaultCluster = "ceph";
    public const string DefaultClientId = "admin";
    public const int DefaultTimeoutSeconds = 30;

    /// <summary>Cluster name (picks /etc/ceph/$cluster.conf and the default keyring names).</summary>
    public string Cluster { get; init; } = DefaultCluster;

    /// <summary>Client id without the "client." prefix (the CLI's --id).</summary>
    public string ClientId { get; init; } = DefaultClientId;

    /// <summary>ceph.conf to read; null = librados' search ($CEPH_CONF, /etc/ceph/$cluster.conf, ~/.ceph/$cluster.conf, ./$cluster.conf).</summary>
    public string? ConfFile { get; init; }

    /// <summary>Keyring file; null = whatever ceph.conf and librados' default search find.</summary>
    public string? Keyring { get; init; }

    /// <summary>
    /// Upper bound on how long any single request may take: client_mount_timeout (connecting),
    /// rados_mon_op_timeout and rados_osd_op_timeout (each I/O). A request that takes longer fails with
    /// ETIMEDOUT instead of hanging the LUN.
    /// </summary>
    public int TimeoutSeconds { get; init; } = DefaultTimeoutSeconds;

    /// <summary>"client.admin".</summary>
    public string ClientName => "client." + ClientId;

    /// <summary>Accepts "admin" and "client.admin" (the CLI's --id and --name forms).</summary>
    public static string NormaliseClientId(string id) =>
        id.StartsWith("client.", StringComparison.Ordinal) ? id["client.".Length..] : id;

    /// <summary>
    /// The librados/librbd options the gateway always sets, after ceph.conf is read (so they win over it):
    /// timeouts, so nothing hangs forever; and no librbd cache, so a write completes only once the OSDs have
    /// it. A gateway must never acknowledge a write that lives only in its own memory: after its death (a
    /// SIGKILL, a failover to another gateway) the initiator's next flush is answered by a process that never
    /// saw that write. librbd's write-around cache completes a plain write once it is queued to be sent, and a
    /// write behind an overlapping one waits in librbd's memory, so it is not used. The integrity volume's
    /// journal turns small writes into appends and commits many commands per device write, so the round trip
    /// per write is paid once per group, not per command. Reads are never served from a cache.
    /// </summary>
    public IReadOnlyList<(string Option, string Value)> ForcedSettings() =>
    [
        ("client_mount_timeout", TimeoutSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)),
        ("rados_mon_op_timeout", TimeoutSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)),
        ("rados_osd_op_timeout", TimeoutSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)),
        ("rbd_cache", "false"),
    ];
}
