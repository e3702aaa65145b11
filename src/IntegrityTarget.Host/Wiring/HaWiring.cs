using System.Text;
using IntegrityTarget.Ha;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Serving;
using IntegrityTarget.Scsi;
using IntegrityTarget.Storage;
using IntegrityTarget.Storage.Rbd;
using Serilog;

namespace IntegrityTarget.Host.Wiring;

/// <summary>
/// Several gateways serving the same LUNs: the HA coordinator, and for each LUN its lock (the flock of the
/// shared file), how its volume is opened once the lock is ours, and how its logical unit is made.
/// </summary>
public static class HaWiring
{
    public static HaOptions Options(HaSettings ha) => new()
    {
        Self = ha.Self,
        Gateways = ha.Gateways.Select(g => new GatewayInfo(g.Name, g.PortGroup, g.Peer)).ToList(),
        NonOwnerState = ha.NonOwnerState == "active-non-optimized" ? AluaState.ActiveNonOptimized : AluaState.Standby,
        Secret = Encoding.UTF8.GetBytes(ha.PeerSecret),
        LockRetryInterval = TimeSpan.FromMilliseconds(ha.LockRetryMilliseconds),
        HeartbeatInterval = TimeSpan.FromMilliseconds(ha.HeartbeatMilliseconds),
        PeerTimeout = TimeSpan.FromMilliseconds(ha.PeerTimeoutMilliseconds),
        ReconnectInterval = TimeSpan.FromMilliseconds(ha.ReconnectMilliseconds),
    };

    /// <summary>
    /// What two gateways must agree on, as text: gateways, ALUA policy, and every LUN's identity and format.
    /// Paths are left out (each gateway may mount the shared store elsewhere), as is everything local
    /// (portals, logging, data directory).
    /// </summary>
    public static string Canonical(HostConfig c)
    {
        var sb = new StringBuilder();
        var ha = c.Ha!;
        foreach (var g in ha.Gateways) sb.Append($"gateway {g.Name} {g.PortGroup} {g.Peer}\n");
        sb.Append($"non-owner {ha.NonOwnerState}\n");
        foreach (var t in c.Targets)
            foreach (var l in t.Luns)
                sb.Append($"lun {t.Iqn.ToLowerInvariant()} {l.Lun} {l.Serial} {l.Integrity} {l.TagAlgorithm} {l.BlockSize} {l.ReadOnly}\n");
        return sb.ToString();
    }

    public static (HaCoordinator Coordinator, List<ServedTarget> Targets) Build(HostConfig config, ILogger log)
    {
        var ha = config.Ha!;
        var coordinator = new HaCoordinator(Options(ha), HaCoordinator.FingerprintOf(Canonical(config)), log);
        var targets = new List<ServedTarget>();
        foreach (var t in config.Targets)
        {
            var luns = new List<ServedLun>();
            foreach (var l in t.Luns)
            {
                string name = $"{t.Iqn}/{l.Lun}";
                bool created = CreateIfMissing(l, log, name);
                var spec = new HaLunSpec
                {
                    TargetIqn = t.Iqn,
                    Lun = l.Lun,
                    Lock = l.Rbd is { } image ? new RbdStoreLock(image, l.Ceph ?? new CephClientOptions(), log) : new FileStoreLock(l.Path),
                    FallbackBlockSize = l.BlockSize,
                    OpenVolume = async (device, ct) => l.Integrity
                        ? await IntegrityWiring.OpenOnDeviceAsync(l, device, created, name, log, ct)
                        : new PlainVolume(device, l.BlockSize, name, ownsDevice: false) { WriteBack = l.WriteBack },
                    ProbeGeometry = device => l.Integrity
                        ? IntegrityWiring.ReadGeometry(device)
                        : (l.BlockSize, (ulong)(device.Length / l.BlockSize), device.CanDeallocate),
                    CreateUnit = (volume, device, states) =>
                        ScsiWiring.CreateUnit(t.Iqn, l, volume, ScsiWiring.UnitOptions(t.Iqn, l, ha, states, SharedReservations(l, device)), log),
                };
                luns.Add(new ServedLun(l, coordinator.AddLun(spec)));
            }
            targets.Add(new ServedTarget(t, luns));
        }
        return (coordinator, targets);
    }

    /// <summary>
    /// Where the owner keeps a shared LUN's reservations: beside the file, or in the image's metadata
    /// (every gateway reaches the image, not one gateway's data directory). None for a stand-in.
    /// </summary>
    private static IDurableRecord? SharedReservations(LunSettings l, IBlockDevice? device) => device switch
    {
        null => null,
        RbdBlockDevice rbd => rbd.Metadata(RbdReservationsKey),
        _ => new DurableFile(l.ReservationFile),
    };

    /// <summary>The image metadata key of a shared RBD LUN's persistent reservations.</summary>
    public const string RbdReservationsKey = "integrity-target.reservations";

    /// <summary>
    /// A missing LUN file or image with a configured size is created by whichever gateway starts first; it is
    /// formatted later by whichever gateway takes its lock first. Returns whether this gateway created it.
    /// </summary>
    private static bool CreateIfMissing(LunSettings l, ILogger log, string name)
    {
        if (l.Rbd != null)
        {
            using var backing = Backing.For(l);
            if (l.SizeBytes == null || backing.Exists()) return false;
            try
            {
                backing.Create(l.Integrity ? IntegrityWiring.DeviceBytesFor(l) : l.SizeBytes.Value, log).Dispose();
                return true;
            }
            catch (Exception e) when (backing.IsInUse(e) || e is RbdException { Errno: CephError.EEXIST }) { return false; } // another gateway was first
        }
        if (File.Exists(l.Path) || l.SizeBytes == null) return false;
        try
        {
            var dir = Path.GetDirectoryName(l.Path);
            if (dir != null) Directory.CreateDirectory(dir);
            using (var fs = new FileStream(l.Path, FileMode.CreateNew, FileAccess.ReadWrite))
                fs.SetLength(l.Integrity ? IntegrityWiring.DeviceBytesFor(l) : l.SizeBytes.Value);
            log.Information("Created sparse backing file {Path} for {Lun}", l.Path, name);
            return true;
        }
        catch (IOException) when (File.Exists(l.Path)) { return false; } // another gateway was first
    }
}
