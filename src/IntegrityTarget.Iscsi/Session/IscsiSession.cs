using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi.Session;

/// <summary>
/// One iSCSI session (one connection: MaxConnections=1). Owns the CmdSN window; its connection owns the
/// tasks. Identified by (initiator name, ISID, target) for reinstatement and by TSIH on the wire.
/// </summary>
public sealed class IscsiSession
{
    internal IscsiSession(IscsiTargetConfig? target, string initiatorName, ulong isid, ushort tsih, ItNexus? nexus, IscsiConnection connection)
    {
        Target = target;
        InitiatorName = initiatorName;
        Isid = isid;
        Tsih = tsih;
        Nexus = nexus;
        Connection = connection;
    }

    /// <summary>Null for a discovery session.</summary>
    public IscsiTargetConfig? Target { get; }
    public string InitiatorName { get; }
    public ulong Isid { get; }
    public ushort Tsih { get; }
    public ItNexus? Nexus { get; }
    public IscsiConnection Connection { get; }
    public bool IsDiscovery => Target is null;

    internal SessionInfo Snapshot() => new(
        Target?.Iqn ?? "(discovery)", InitiatorName, LunAddress.IsidHex(Isid), Tsih, IsDiscovery,
        Connection.IsClosed ? 0 : 1, Connection.TasksInFlight, Connection.Remote?.ToString());
}
