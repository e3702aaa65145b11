using System.Buffers.Binary;

namespace IntegrityTarget.Scsi;

// ALUA state of one logical unit: the access state of each target port group, the check every command
// passes, REPORT TARGET PORT GROUPS, and the unit attention raised when a state changes.
public sealed partial class ScsiLogicalUnit
{
    private readonly TargetPortGroup[] _groups;
    private readonly Dictionary<ushort, int> _groupOfPort = new();
    private readonly object _aluaLock = new();
    private volatile AluaState[] _groupStates; // replaced whole under _aluaLock, read without it
    private byte _statusCode;             // RTPG STATUS CODE: 0 none, 2 altered by implicit ALUA
    private volatile bool _allActive = true;

    /// <summary>The configured target port groups (one group holding port 1 when none were configured).</summary>
    public IReadOnlyList<TargetPortGroup> PortGroups => _groups;

    /// <summary>The current state of every target port group, in configuration order.</summary>
    public IReadOnlyList<(TargetPortGroup Group, AluaState State)> AccessStates
    {
        get { var s = _groupStates; return _groups.Select((g, i) => (g, s[i])).ToList(); }
    }

    /// <summary>Access state of the group holding <paramref name="relativePort"/>; ports in no group are active/optimized.</summary>
    public AluaState AccessStateOf(ushort relativePort) =>
        _groupOfPort.TryGetValue(relativePort, out int i) ? _groupStates[i] : AluaState.ActiveOptimized;

    /// <summary>The target port group of <paramref name="relativePort"/>, or null when it is in none.</summary>
    public TargetPortGroup? GroupOf(ushort relativePort) => _groupOfPort.TryGetValue(relativePort, out int i) ? _groups[i] : null;

    /// <summary>
    /// An implicit ALUA transition (SPC-4 5.15.2.3): sets the listed groups' states (others keep theirs).
    /// When anything changed, every I_T nexus gets ASYMMETRIC ACCESS STATE CHANGED (2A/06) and RTPG
    /// reports the groups as altered by implicit ALUA. Returns whether anything changed.
    /// </summary>
    public bool SetAccessStates(IReadOnlyDictionary<ushort, AluaState> states)
    {
        bool changed = false;
        lock (_aluaLock)
        {
            var next = (AluaState[])_groupStates.Clone();
            foreach (var (id, state) in states)
            {
                int i = Array.FindIndex(_groups, g => g.Id == id);
                if (i < 0) throw new ArgumentException($"{UnitName}: no target port group {id}", nameof(states));
                if (next[i] != state) { next[i] = state; changed = true; }
            }
            if (!changed) return false;
            _groupStates = next;
            _statusCode = 0x02;
            _allActive = next.All(s => s is AluaState.ActiveOptimized or AluaState.ActiveNonOptimized);
        }
        _log.Information("{Unit}: ALUA states now {States}", UnitName,
            string.Join(", ", AccessStates.Select(x => $"group {x.Group.Id} {AluaStates.Describe(x.State)}")));
        UnitAttentionForOthers(null, SenseReason.AsymmetricAccessStateChanged);
        return true;
    }

    /// <summary>The refusal for a command that the state of the nexus's port group does not allow, or None.</summary>
    private ScsiError AccessCheck(CommandInfo info, ItNexus nexus)
    {
        if (_allActive) return ScsiError.None;
        var state = AccessStateOf(nexus.RelativeTargetPortId);
        return AluaStates.Executes(state, info.AluaAllowed) ? ScsiError.None : ScsiError.Of(AluaStates.RefusalOf(state));
    }

    /// <summary>REPORT TARGET PORT GROUPS (SPC-4 6.36), length-only or extended header format.</summary>
    internal ValueTask<Outcome> ReportTargetPortGroups(Request r)
    {
        var c = r.Cdb;
        int format = c[1] >> 5;
        if (format > 1) return new(ScsiError.Cdb(1, 7));
        long alloc = Cdb.AllocationLength32(c, 6);
        var states = _groupStates;
        byte status = _statusCode;
        int header = format == 1 ? 8 : 4;
        int len = header + _groups.Sum(g => 8 + 4 * g.RelativePorts.Count);
        var owner = Rent(len);
        var s = owner.Memory.Span;
        BinaryPrimitives.WriteUInt32BigEndian(s, (uint)(len - 4));
        if (format == 1)
        {
            s[4] = 0x10;                               // FORMAT TYPE 001b: extended header
            s[5] = Options.ImplicitTransitionSeconds;  // how long a transition may take
        }
        int pos = header;
        for (int i = 0; i < _groups.Length; i++)
        {
            var g = _groups[i];
            s[pos] = (byte)states[i];                  // PREF 0, ASYMMETRIC ACCESS STATE
            s[pos + 1] = 0x80 | 0x08 | 0x04 | 0x02 | 0x01; // T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP
            BinaryPrimitives.WriteUInt16BigEndian(s[(pos + 2)..], g.Id);
            s[pos + 5] = status;
            s[pos + 7] = (byte)g.RelativePorts.Count;
            pos += 8;
            foreach (var p in g.RelativePorts)
            {
                BinaryPrimitives.WriteUInt16BigEndian(s[(pos + 2)..], p);
                pos += 4;
            }
        }
        return new(Reply(owner, len, alloc));
    }
}
