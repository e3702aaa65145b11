using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Serving;
using Serilog;
using IntegrityTarget.Scsi;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Host.Wiring;

/// <summary>Builds the SCSI target of one configured target from its opened LUN volumes.</summary>
public static class ScsiWiring
{
    public static ScsiTarget Build(ServedTarget target, ILogger log, ICopyTargetResolver? copyTargets = null)
    {
        var units = target.Luns.Select(l => BuildUnit(target, l, log)).ToList();
        return new ScsiTarget(target.Iqn, units, log.ForContext("Target", target.Iqn)) { CopyTargets = copyTargets };
    }

    /// <summary>The logical unit of one opened LUN; kept on the <see cref="ServedLun"/> for health, grow and reload.</summary>
    public static ScsiLogicalUnit BuildUnit(ServedTarget target, ServedLun l, ILogger log)
    {
        var options = new LogicalUnitOptions
        {
            Serial = l.Settings.Serial,
            // The NAA identifier is derived from this, so it must not change across restarts.
            IdentitySeed = $"{target.Iqn}/{l.Lun}",
            ReadOnly = l.Settings.ReadOnly,
            PersistentReservationFile = l.Settings.Path + ".pr.json",
        };
        if (options.Validate() is { Count: > 0 } errors)
            throw new CliException($"{l.Settings.KeyPath}: {string.Join("; ", errors)}", ExitCodes.Usage);
        var unit = new ScsiLogicalUnit(l.Lun, l.Volume, options, log.ForContext("Target", target.Iqn).ForContext("Lun", l.Lun));
        unit.ProvisioningSource = ct => ProvisioningAsync(l, unit, ct);
        l.Unit = unit;
        return unit;
    }

    /// <summary>
    /// LOG SENSE page 0Ch for a served LUN: used = blocks holding data (mapped chunks of an integrity volume,
    /// allocated extents of a plain file); available = the rest, but no more than the backing filesystem can
    /// still hold.
    /// </summary>
    private static async ValueTask<ProvisioningReport> ProvisioningAsync(ServedLun l, ScsiLogicalUnit unit, CancellationToken ct)
    {
        ulong capacity = l.Volume.BlockCount;
        ulong used = IntegrityWiring.Figures(l.Volume) is { } f ? f.MappedBlocks : (await unit.CountMappedBlocksAsync(ct)).UsedBlocks;
        ulong available = capacity - Math.Min(used, capacity);
        try
        {
            var dir = Path.GetDirectoryName(l.Settings.Path);
            if (dir != null) available = Math.Min(available, (ulong)Math.Max(0, new DriveInfo(dir).AvailableFreeSpace) / (ulong)l.Volume.BlockSize);
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException) { } // not a filesystem we can ask
        return new ProvisioningReport(used, available);
    }
}
