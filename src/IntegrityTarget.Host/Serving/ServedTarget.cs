using IntegrityTarget.Host.Config;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Host.Serving;

/// <summary>One opened LUN: its settings, the volume the SCSI layer reads and writes, and the device under it.</summary>
public sealed class ServedLun(LunSettings settings, IBlockVolume volume, IBlockDevice device)
{
    public LunSettings Settings { get; } = settings;
    public IBlockVolume Volume { get; } = volume;
    public IBlockDevice Device { get; } = device;
    public ulong Lun => Settings.Lun;
    /// <summary>The SCSI logical unit serving this volume, once the front end is built.</summary>
    public Scsi.ScsiLogicalUnit? Unit { get; set; }
    /// <summary>Fraction checked by the online scrub running now; null when none runs.</summary>
    public double? ScrubProgress { get; set; }
}

public sealed class ServedTarget(TargetSettings settings, IReadOnlyList<ServedLun> luns)
{
    public TargetSettings Settings { get; } = settings;
    public IReadOnlyList<ServedLun> Luns { get; } = luns;
    public string Iqn => Settings.Iqn;
}
