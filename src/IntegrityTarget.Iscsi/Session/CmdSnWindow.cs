using IntegrityTarget.Iscsi.Pdus;

namespace IntegrityTarget.Iscsi.Session;

/// <summary>
/// The command numbering of one session (RFC 7143 §3.2.2.1): ExpCmdSN, the commands received ahead of
/// it, and MaxCmdSN derived from the free queue slots. Thread-safe (its own lock, never held while
/// calling out).
/// </summary>
internal sealed class CmdSnWindow(int queueDepth)
{
    private readonly object _lock = new();
    private readonly SortedSet<uint> _ahead = new(); // CmdSNs received inside the window but ahead of ExpCmdSN
    private uint _expCmdSN;
    private int _active;
    private uint _advertisedMax;
    private bool _advertised;

    /// <summary>The first login request sets the session's starting CmdSN.</summary>
    public void Start(uint cmdSN)
    {
        lock (_lock) _expCmdSN = cmdSN;
    }

    public uint ExpCmdSN { get { lock (_lock) return _expCmdSN; } }

    /// <summary>Commands holding a queue slot (accepted, not yet released).</summary>
    public int Active { get { lock (_lock) return _active; } }

    /// <summary>ExpCmdSN and MaxCmdSN for an outgoing PDU; MaxCmdSN counts as advertised from here on.</summary>
    public (uint ExpCmdSN, uint MaxCmdSN) Advertise()
    {
        lock (_lock) return (_expCmdSN, MaxLocked());
    }

    /// <summary>
    /// MaxCmdSN = ExpCmdSN + free queue slots - 1 (the window closes when the queue is full), never below
    /// what was already advertised (an initiator may use what it was given).
    /// </summary>
    private uint MaxLocked()
    {
        int free = Math.Max(0, queueDepth - _active);
        uint max = _expCmdSN + (uint)free - 1;
        if (_advertised && Bhs.SnLess(max, _advertisedMax)) max = _advertisedMax;
        _advertisedMax = max;
        _advertised = true;
        return max;
    }

    public enum Verdict { Accepted, OutsideWindow, Duplicate }

    /// <summary>
    /// Immediate commands are always taken; others must lie in [ExpCmdSN, MaxCmdSN as advertised] and
    /// are dropped otherwise. An accepted command that <paramref name="takesSlot"/> holds a queue slot
    /// until <see cref="ReleaseSlot"/>.
    /// </summary>
    public Verdict Accept(uint cmdSN, bool immediate, bool takesSlot, out uint exp, out uint max)
    {
        lock (_lock)
        {
            exp = _expCmdSN;
            max = _advertised ? _advertisedMax : MaxLocked();
            if (!immediate)
            {
                // Only what was advertised counts: a queue slot freed since then is not yet known to the initiator.
                if (Bhs.SnLess(cmdSN, _expCmdSN) || Bhs.SnLess(max, cmdSN)) return Verdict.OutsideWindow;
                if (cmdSN == _expCmdSN) AdvanceLocked();
                else if (!_ahead.Add(cmdSN)) return Verdict.Duplicate;
            }
            if (takesSlot) _active++;
            return Verdict.Accepted;
        }
    }

    public void ReleaseSlot()
    {
        lock (_lock) _active--;
    }

    /// <summary>
    /// ABORT TASK for a command not received yet (RFC 7143 §11.5.1): when <paramref name="refCmdSN"/> lies
    /// before the TMF's own CmdSN and inside the advertised window and has not arrived, it counts as
    /// received (and so aborted): its number is consumed. Returns whether that was the case.
    /// </summary>
    public bool ConsumeIfNotYetReceived(uint refCmdSN, uint tmfCmdSN)
    {
        lock (_lock)
        {
            bool notYet = Bhs.SnLess(refCmdSN, tmfCmdSN) && Bhs.SnLessOrEqual(_expCmdSN, refCmdSN)
                          && Bhs.SnLessOrEqual(refCmdSN, _advertisedMax) && !_ahead.Contains(refCmdSN);
            if (!notYet) return false;
            if (refCmdSN == _expCmdSN) AdvanceLocked();
            else _ahead.Add(refCmdSN);
            return true;
        }
    }

    private void AdvanceLocked()
    {
        _expCmdSN++;
        while (_ahead.Remove(_expCmdSN)) _expCmdSN++;
    }
}
