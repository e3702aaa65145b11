namespace IntegrityTarget.Iscsi;

/// <summary>
/// The whole process's budget for command data in flight (write buffers being gathered, read data not yet
/// handed to the transport), across every connection: a command that would exceed it is answered TASK
/// SET FULL instead of allocating, so no mix of sessions can make the target hold more than the budget
/// (plus one command, so that a command larger than an empty budget still runs). Thread-safe.
/// </summary>
public sealed class InFlightBudget(long limit)
{
    private long _used, _peak, _refused;

    public long Limit => limit;
    public long Used => Interlocked.Read(ref _used);
    /// <summary>The most that was in use at once since start.</summary>
    public long Peak => Interlocked.Read(ref _peak);
    /// <summary>Commands refused because the budget was spent.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>Takes <paramref name="bytes"/> when they fit (or nothing else is in use); false when the budget is spent.</summary>
    public bool TryReserve(long bytes)
    {
        if (bytes <= 0) return true;
        while (true)
        {
            long used = Interlocked.Read(ref _used);
            if (used > 0 && used + bytes > limit)
            {
                Interlocked.Increment(ref _refused);
                return false;
            }
            if (Interlocked.CompareExchange(ref _used, used + bytes, used) == used)
            {
                UpdatePeak(used + bytes);
                return true;
            }
        }
    }

    /// <summary>Adds what a command turned out to need beyond its reservation (it already holds the memory).</summary>
    public void Add(long bytes)
    {
        if (bytes > 0) UpdatePeak(Interlocked.Add(ref _used, bytes));
    }

    public void Release(long bytes)
    {
        if (bytes > 0) Interlocked.Add(ref _used, -bytes);
    }

    private void UpdatePeak(long value)
    {
        long peak;
        while (value > (peak = Interlocked.Read(ref _peak)) && Interlocked.CompareExchange(ref _peak, value, peak) != peak) { }
    }
}
