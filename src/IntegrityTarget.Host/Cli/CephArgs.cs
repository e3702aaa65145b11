using IntegrityTarget.Storage.Rbd;

namespace IntegrityTarget.Host.Cli;

/// <summary>
/// The Ceph options of the offline verbs (format, scrub, dump) for rbd:POOL/IMAGE paths, with the Ceph CLI's
/// defaults: cluster ceph, client.admin, $CEPH_CONF or /etc/ceph/$cluster.conf, the conf's keyring.
/// </summary>
internal static class CephArgs
{
    public const string Usage = """
          --ceph-conf FILE     ceph.conf for rbd:POOL/IMAGE paths (default $CEPH_CONF, /etc/ceph/ceph.conf)
          --ceph-id ID         Ceph client id (default admin, i.e. client.admin)
          --ceph-keyring FILE  keyring (default: the keyring ceph.conf names)
          --ceph-cluster NAME  cluster name (default ceph)
        """;

    /// <summary>The verb's own flags plus the Ceph ones (all take a value).</summary>
    public static Dictionary<string, bool> With(Dictionary<string, bool> known)
    {
        foreach (var f in new[] { "ceph-conf", "ceph-id", "ceph-keyring", "ceph-cluster" }) known[f] = true;
        return known;
    }

    public static CephClientOptions Options(VerbArgs va, CliContext ctx)
    {
        string? Full(string? p) => p is { Length: > 0 } ? Path.GetFullPath(p, ctx.WorkingDirectory) : null;
        var env = ctx.Environment.TryGetValue("CEPH_CONF", out var c) ? c : null;
        return new CephClientOptions
        {
            Cluster = va.Get("ceph-cluster") ?? CephClientOptions.DefaultCluster,
            ClientId = CephClientOptions.NormaliseClientId(va.Get("ceph-id") ?? CephClientOptions.DefaultClientId),
            ConfFile = Full(va.Get("ceph-conf")) ?? Full(env),
            Keyring = Full(va.Get("ceph-keyring")),
        };
    }
}
