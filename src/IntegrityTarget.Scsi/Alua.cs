namespace IntegrityTarget.Scsi;

// Asymmetric logical unit access (ALUA, SPC-4 5.15): target port groups, their access states, and
// which commands each non-active state still executes. Only implicit ALUA is offered (TPGS = 01b):
// the device server changes states itself (a gateway taking over a LUN); SET TARGET PORT GROUPS is
// not supported, because moving a LUN to another gateway means moving its lock, which only the
// holder giving it up (death, fencing, shutdown) does.

/// <summary>Primary target port asymmetric access states (SPC-4 table 157; the value is the RTPG code).</summary>
public enum AluaState : byte
{
    ActiveOptimized = 0x0,
    ActiveNonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
    Transitioning = 0xF,
}

/// <summary>States other than the two active ones in which a command still executes (a column of the opcode table).</summary>
[Flags]
public enum AluaAllowed : byte
{
    /// <summary>Only in an active state.</summary>
    None = 0,
    Standby = 1,
    Unavailable = 2,
    Transitioning = 4,
    /// <summary>INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS, REQUEST SENSE: every state (SPC-4 5.15.2.4).</summary>
    Always = Standby | Unavailable | Transitioning,
}

/// <summary>One target port group as configured: its identifier and the relative target port identifiers in it.</summary>
public sealed record TargetPortGroup(ushort Id, IReadOnlyList<ushort> RelativePorts)
{
    /// <summary>Checks a set of groups: ids and ports nonzero and each used once. Returns problems, empty when valid.</summary>
    public static IReadOnlyList<string> Validate(IReadOnlyList<TargetPortGroup> groups)
    {
        var errors = new List<string>();
        var ids = new HashSet<ushort>();
        var ports = new HashSet<ushort>();
        foreach (var g in groups)
        {
            if (g.Id == 0) errors.Add("target port group id 0 is reserved");
            if (!ids.Add(g.Id)) errors.Add($"target port group {g.Id} is listed twice");
            if (g.RelativePorts.Count == 0) errors.Add($"target port group {g.Id} has no ports");
            if (g.RelativePorts.Count > 255) errors.Add($"target port group {g.Id} has more than 255 ports");
            foreach (var p in g.RelativePorts)
            {
                if (p == 0) errors.Add($"target port group {g.Id}: relative target port identifier 0 is reserved");
                else if (!ports.Add(p)) errors.Add($"relative target port {p} is in more than one target port group");
            }
        }
        return errors;
    }

    /// <summary>What a logical unit with no configured groups reports: one group, id 1, holding target port 1.</summary>
    public static readonly IReadOnlyList<TargetPortGroup> Single = [new TargetPortGroup(1, [1])];
}

public static class AluaStates
{
    /// <summary>The sense reason for a command refused in <paramref name="s"/> (NOT READY, LOGICAL UNIT NOT ACCESSIBLE, SPC-4 5.15.2.4).</summary>
    public static SenseReason RefusalOf(AluaState s) => s switch
    {
        AluaState.Standby => SenseReason.NotAccessibleStandby,
        AluaState.Unavailable => SenseReason.NotAccessibleUnavailable,
        _ => SenseReason.NotAccessibleTransitioning,
    };

    /// <summary>Whether a command with <paramref name="allowed"/> executes in state <paramref name="s"/>.</summary>
    public static bool Executes(AluaState s, AluaAllowed allowed) => s switch
    {
        AluaState.ActiveOptimized or AluaState.ActiveNonOptimized => true,
        AluaState.Standby => (allowed & AluaAllowed.Standby) != 0,
        AluaState.Unavailable => (allowed & AluaAllowed.Unavailable) != 0,
        _ => (allowed & AluaAllowed.Transitioning) != 0,
    };

    public static string Describe(AluaState s) => s switch
    {
        AluaState.ActiveOptimized => "active/optimized",
        AluaState.ActiveNonOptimized => "active/non-optimized",
        AluaState.Standby => "standby",
        AluaState.Unavailable => "unavailable",
        _ => "transitioning",
    };
}
