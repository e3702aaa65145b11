using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Serving;
using Serilog;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Host.Wiring;

/// <summary>Builds the SCSI target of one configured target from its opened LUN volumes.</summary>
public static class ScsiWiring
{
    public static IScsiTarget Build(ServedTarget target, ILogger log)
    {
        var units = new List<ScsiLogicalUnit>();
        foreach (var l in target.Luns)
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
            units.Add(new ScsiLogicalUnit(l.Lun, l.Volume, options, log.ForContext("Target", target.Iqn).ForContext("Lun", l.Lun)));
        }
        return new ScsiTarget(target.Iqn, units, log.ForContext("Target", target.Iqn));
    }
}
