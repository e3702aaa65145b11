using System.Text.RegularExpressions;
using IntegrityTarget.Storage.Rbd;

namespace IntegrityTarget.Host.Config;

// The Ceph part of the configuration: Ceph:* keys and rbd:POOL/IMAGE LUN paths. What needs the cluster
// itself (does the pool exist, the image, is the key right) is checked when the LUN is opened, with a message
// from Storage.Rbd's error table.
public sealed partial class ConfigReader
{
    [GeneratedRegex(@"^[A-Za-z0-9_.-]+$")]
    private static partial Regex CephName();

    private CephClientOptions ReadCeph(string dataDir)
    {
        string cluster = Str("Ceph:Cluster") ?? CephClientOptions.DefaultCluster;
        if (!CephName().IsMatch(cluster)) { Error("Ceph:Cluster", $"'{cluster}' is not a cluster name (letters, digits, '.', '_', '-')"); cluster = CephClientOptions.DefaultCluster; }
        string id = CephClientOptions.NormaliseClientId(Str("Ceph:ClientId") ?? CephClientOptions.DefaultClientId);
        if (!CephName().IsMatch(id)) { Error("Ceph:ClientId", $"'{id}' is not a client id (e.g. admin or iscsi, for client.admin / client.iscsi)"); id = CephClientOptions.DefaultClientId; }
        // Without Ceph:ConfFile, $CEPH_CONF as the Ceph CLI would (taken from the environment the configuration
        // was read with, so what is validated is what is used); with neither, librados' search (/etc/ceph/...).
        string? conf = Str("Ceph:ConfFile") is { } c ? CephPath("Ceph:ConfFile", c, dataDir)
            : _loaded.Environment.TryGetValue("CEPH_CONF", out var env) && !string.IsNullOrWhiteSpace(env) ? Path.GetFullPath(env, _loaded.WorkingDirectory) : null;
        string? keyring = Str("Ceph:Keyring") is { } k ? CephPath("Ceph:Keyring", k, dataDir) : null;
        return new CephClientOptions
        {
            Cluster = cluster, ClientId = id, ConfFile = conf, Keyring = keyring,
            TimeoutSeconds = Int("Ceph:TimeoutSeconds", CephClientOptions.DefaultTimeoutSeconds, 1, 3600),
        };
    }

    /// <summary>
    /// A Ceph file as the user meant it: written in the JSON file, relative to DataDirectory like every path there;
    /// typed on the command line (--ceph-conf, --ceph-keyring) or set in the environment, relative to the working
    /// directory, as `rbd -c FILE` and $CEPH_CONF read it (and as format, scrub and dump read the same flags).
    /// </summary>
    private string CephPath(string key, string path, string dataDir) =>
        Path.GetFullPath(path, _loaded.FileDisplayName != null && _loaded.SourceOf(key) == _loaded.FileDisplayName ? dataDir : _loaded.WorkingDirectory);

    /// <summary>Validates one rbd: LUN path and, once per configuration, the files the Ceph client will need.</summary>
    private RbdImageSpec? ReadRbdPath(string key, string text, Dictionary<string, string> paths, CephClientOptions ceph)
    {
        if (!RbdImageSpec.TryParse(text, out var spec, out var error)) { Error(key, error); return null; }
        if (paths.TryGetValue(spec.ToString(), out var first)) Error(key, $"'{spec}' is already served by {first}");
        else paths[spec.ToString()] = key[..key.LastIndexOf(':')]; // the LUN's key, as file paths record it
        if (_checkFiles && !_cephFilesChecked)
        {
            _cephFilesChecked = true;
            if (ceph.ConfFile is { } conf)
            {
                if (!File.Exists(conf))
                    Error(Str("Ceph:ConfFile") != null ? "Ceph:ConfFile" : key, $"Ceph configuration file '{conf}' does not exist" +
                        (Str("Ceph:ConfFile") != null ? "" : " (from CEPH_CONF)"));
            }
            else if (!File.Exists($"/etc/ceph/{ceph.Cluster}.conf"))
                Error(key, $"{spec} needs a Ceph configuration, and there is none: give Ceph:ConfFile (--ceph-conf FILE) or set CEPH_CONF " +
                           $"(the default /etc/ceph/{ceph.Cluster}.conf does not exist)");
            if (ceph.Keyring is { } keyring && !File.Exists(keyring)) Error("Ceph:Keyring", $"keyring '{keyring}' does not exist");
        }
        return spec;
    }

    private bool _cephFilesChecked;

    /// <summary>APTPL reservations: beside a backing file; for an image, under DataDirectory (named after it).</summary>
    private static string ReservationFileFor(string path, RbdImageSpec? rbd, string dataDir) =>
        rbd == null ? path + ".pr.json" : Path.Combine(dataDir, $"rbd.{rbd.Display.Replace('/', '.')}.pr.json");
}
