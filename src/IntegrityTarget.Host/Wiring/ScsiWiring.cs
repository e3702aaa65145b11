using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Serving;
using Serilog;
using IntegrityTarget.Scsi;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Host.Wiring;

/// <summary>Builds the SCSI target of one configured target from its opened LUN volumes (or, with gateways, its shared LUNs).</summary>
public static class ScsiWiring
{
    public static ScsiTarget Build(ServedTarget target, ILogger log, ICopyTargetResolver? copyTargets = null)
    {
        var units = target.Luns.Select(l => l.Ha ?? (ILogicalUnit)BuildUnit(target, l, log)).ToList();
        return new ScsiTarget(target.Iqn, units, log.ForContext("Target", target.Iqn)) { CopyTargets = copyTargets };
    }

    /// <summary>The logical unit of one opened LUN; kept on the <see cref="ServedLun"/> for health, grow and reload.</summary>
    public static ScsiLogicalUnit BuildUnit(ServedTarget target, ServedLun l, ILogger log)
    {
        var unit = CreateUnit(target.Iqn, l.Settings, l.Volume!, UnitOptions(target.Iqn, l.Settings, ha: null), log);
        l.Unit = unit;
        return unit;
    }

    /// <summary>
    /// The identity and policy of a LUN's logical unit. With gateways (<paramref name="ha"/>): one target port
    /// group per gateway, the given starting ALUA states, and reservations kept with the LUN for a failover in
    /// <paramref name="sharedReservations"/> (null for the stand-in of a gateway that does not own the LUN).
    /// </summary>
    public static LogicalUnitOptions UnitOptions(string iqn, LunSettings l, HaSettings? ha,
        IReadOnlyDictionary<ushort, AluaState>? states = null, IDurableRecord? sharedReservations = null)
    {
        var options = new LogicalUnitOptions
        {
            Serial = l.Serial,
            // The NAA identifier is derived from this, so it must not change across restarts, and every
            // gateway of a shared LUN derives the same one (same IQN and LUN number in the shared config).
            IdentitySeed = $"{iqn}/{l.Lun}",
            ReadOnly = l.ReadOnly,
            PersistentReservationFile = ha == null ? l.ReservationFile : null,
            ReservationStore = ha != null ? sharedReservations : null,
            ReservationsSurviveFailover = ha != null,
            PortGroups = ha?.Gateways.Select(g => new TargetPortGroup(g.PortGroup, [g.PortGroup])).ToList(),
            InitialAccessStates = states,
            // An RBD image logs every failed request; the integrity volume its journal and flush failures (after one,
            // every write fails: logged per LBA here they would flood), not a failed device read; a plain volume on a
            // file or block device logs nothing. The unit logs what its volume does not.
            VolumeLogsDeviceErrors = l.Rbd != null ? VolumeOperation.All
                : l.Integrity ? VolumeOperation.Write | VolumeOperation.Flush : VolumeOperation.None,
        };
        if (options.Validate() is { Count: > 0 } errors)
            throw new CliException($"{l.KeyPath}: {string.Join("; ", errors)}", ExitCodes.Usage);
        return options;
    }

    public static ScsiLogicalUnit CreateUnit(string iqn, LunSettings l, IBlockVolume volume, LogicalUnitOptions options, ILogger log)
    {
        var unit = new ScsiLogicalUnit(l.Lun, volume, options, log.ForContext("Target", iqn).ForContext("Lun", l.Lun));
        unit.ProvisioningSource = ct => ProvisioningAsync(l, volume, unit, ct);
        return unit;
    }

    /// <summary>
    /// LOG SENSE page 0Ch for a served LUN: used = blocks holding data (mapped chunks of an integrity volume,
    /// allocated extents of a plain file); available = the rest, but no more than the backing filesystem can
    /// still hold.
    /// </summary>
    private static async ValueTask<ProvisioningReport> ProvisioningAsync(LunSettings l, IBlockVolume volume, ScsiLogicalUnit unit, CancellationToken ct)
    {
        ulong capacity = volume.BlockCount;
        ulong used = IntegrityWiring.Figures(volume) is { } f ? f.MappedBlocks : (await unit.CountMappedBlocksAsync(ct)).UsedBlocks;
        ulong available = capacity - Math.Min(used, capacity);
        try
        {
            var dir = Path.GetDirectoryName(l.Path);
            if (dir != null) available = Math.Min(available, (ulong)Math.Max(0, new DriveInfo(dir).AvailableFreeSpace) / (ulong)volume.BlockSize);
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException) { } // not a filesystem we can ask
        return new ProvisioningReport(used, available);
    }
}
