using IntegrityTarget.Host.Config;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Host.Serving;

/// <summary>One opened LUN: its settings, the volume the SCSI layer reads and writes, and the device under it.</summary>
public sealed class ServedLun(LunSettings settings, IBlockVolume volume, IBlockDevice device)
{
    /// <summary>The settings it is served with; a reload replaces them when only reloadable ones (Size) changed.</summary>
    public LunSettings Settings { get; set; } = settings;
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
    /// <summary>Replaced by a reload (ACL, CHAP, alias); read as one reference.</summary>
    public TargetSettings Settings { get; set; } = settings;
    /// <summary>Copy-on-write list: a reload publishes a new one.</summary>
    public IReadOnlyList<ServedLun> Luns { get; set; } = luns;
    public string Iqn => Settings.Iqn;
    /// <summary>Its SCSI layer and iSCSI record, once the front end serves it.</summary>
    public Scsi.ScsiTarget? Scsi { get; set; }
    public IntegrityTarget.Iscsi.IscsiTargetConfig? Iscsi { get; set; }
}
