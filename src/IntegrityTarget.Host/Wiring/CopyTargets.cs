using IntegrityTarget.Host.Serving;
using IntegrityTarget.Iscsi;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Host.Wiring;

/// <summary>
/// Which logical units of other targets an EXTENDED COPY may name: only those the same initiator could use
/// itself. A target qualifies when its ACL admits the initiator's name and, if it demands CHAP, the initiator
/// holds a logged-in (so authenticated) session to it right now; a name alone proves nothing there.
/// </summary>
public sealed class CopyTargets(Func<IReadOnlyList<ServedTarget>> targets, Func<IReadOnlyList<SessionInfo>> sessions) : ICopyTargetResolver
{
    public ScsiLogicalUnit? Resolve(ItNexus nexus, ReadOnlySpan<byte> designator)
    {
        foreach (var t in targets())
        {
            if (!Admits(t, nexus.InitiatorName)) continue;
            foreach (var l in t.Luns)
                if (l.Unit is { } u && u.MatchesDesignator(designator)) return u;
        }
        return null;
    }

    private bool Admits(ServedTarget t, string initiator)
    {
        var acl = t.Settings.AllowedInitiators;
        bool listed = acl.Count == 0 || acl.Any(a => a == "*" || string.Equals(a, initiator, StringComparison.OrdinalIgnoreCase));
        if (!listed) return false;
        if (t.Settings.Chap == null) return true;
        return sessions().Any(s => !s.Discovery && string.Equals(s.Target, t.Iqn, StringComparison.OrdinalIgnoreCase)
                                   && string.Equals(s.Initiator, initiator, StringComparison.OrdinalIgnoreCase));
    }
}
