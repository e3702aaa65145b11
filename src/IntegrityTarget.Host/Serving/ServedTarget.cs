using IntegrityTarget.Host.Config;
using IntegrityTarget.Ha;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Host.Serving;

/// <summary>
/// One served LUN: its settings, the volume the SCSI layer reads and writes, and the device under it. A
/// LUN shared with other gateways (<see cref="Ha"/>) has its volume open only while this gateway owns it.
/// </summary>
public sealed class ServedLun
{
    private readonly IBlockVolume? _volume;
    private Scsi.ScsiLogicalUnit? _unit;

    public ServedLun(LunSettings settings, IBlockVolume volume, IBlockDevice device)
    {
        Settings = settings; _volume = volume; Device = device;
    }

    public ServedLun(LunSettings settings, HaLogicalUnit ha)
    {
        Settings = settings; Ha = ha;
    }

    /// <summary>The settings it is served with; a reload replaces them when only reloadable ones (Size) changed.</summary>
    public LunSettings Settings { get; set; }
    /// <summary>The open volume; null while another gateway owns a shared LUN.</summary>
    public IBlockVolume? Volume => Ha != null ? Ha.Volume : _volume;
    /// <summary>The device this process opened for the LUN (null for a shared LUN: its owner keeps it).</summary>
    public IBlockDevice? Device { get; }
    /// <summary>The LUN's place among the gateways that share it; null when this process serves it alone.</summary>
    public HaLogicalUnit? Ha { get; }
    public ulong Lun => Settings.Lun;
    /// <summary>The SCSI logical unit serving this volume here, once the front end is built.</summary>
    public Scsi.ScsiLogicalUnit? Unit { get => Ha != null ? Ha.Local : _unit; set => _unit = value; }
    /// <summary>Fraction checked by the online scrub running now; null when none runs.</summary>
    public double? ScrubProgress { get; set; }

    // The online scrub running now, so a reload that removes the LUN stops it and waits for it before the
    // volume is closed; a retired LUN starts none.
    private readonly Lock _gate = new();
    private readonly CancellationTokenSource _retirement = new();
    private bool _retired;
    private Task? _scrub;

    /// <summary>Registers an online scrub that ends when <paramref name="done"/> completes; null (not registered) once the LUN is retired.</summary>
    internal CancellationToken? BeginScrub(Task done)
    {
        lock (_gate)
        {
            if (_retired) return null;
            _scrub = done;
            return _retirement.Token;
        }
    }

    internal void EndScrub() { lock (_gate) _scrub = null; }

    /// <summary>Whether a reload removed the LUN (its scrub was stopped for that).</summary>
    internal bool Retired { get { lock (_gate) return _retired; } }

    /// <summary>Stops the online scrub, if one runs, and completes when it has ended; no scrub starts afterwards.</summary>
    internal Task RetireAsync()
    {
        Task? scrub;
        lock (_gate) { _retired = true; scrub = _scrub; }
        _retirement.Cancel(); // outside the lock: cancellation callbacks run inline
        return scrub ?? Task.CompletedTask;
    }
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
