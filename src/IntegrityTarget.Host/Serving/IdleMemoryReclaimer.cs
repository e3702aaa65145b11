using System.Runtime;
using Serilog;

namespace IntegrityTarget.Host.Serving;

/// <summary>
/// Gives memory back to the system once the server has gone quiet after work. The pools trim themselves
/// (TrimmingArrayPool, the transport's block pool, the volume's record pool), but what they let go stays
/// in the GC heap until a full collection, and an idle process does not collect: after a 32-session soak
/// its RSS stayed at the peak. So when the activity count has not moved for <c>idleAfter</c> since it last
/// moved, one full, compacting, decommitting collection runs (a pause of tens of ms, with nothing to
/// pause). Nothing happens while busy or when already reclaimed.
/// </summary>
public sealed class IdleMemoryReclaimer : IAsyncDisposable
{
    private readonly Func<long> _activity;
    private readonly ILogger _log;
    private readonly TimeSpan _idleAfter;
    private readonly TimeSpan _tick;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    /// <param name="activity">A number that changes whenever the server does work (commands, connections).</param>
    public IdleMemoryReclaimer(Func<long> activity, ILogger log, TimeSpan? idleAfter = null, TimeSpan? tick = null)
    {
        _activity = activity;
        _log = log;
        _idleAfter = idleAfter ?? TimeSpan.FromSeconds(25);
        _tick = tick ?? TimeSpan.FromSeconds(5);
        _loop = RunAsync();
    }

    /// <summary>Collections done so far (tests, status).</summary>
    public int Reclaims { get; private set; }

    private async Task RunAsync()
    {
        long last = _activity();
        var lastChange = DateTime.UtcNow;
        bool worked = false;
        try
        {
            while (true)
            {
                await Task.Delay(_tick, _stop.Token).ConfigureAwait(false);
                long now = _activity();
                if (now != last) { last = now; lastChange = DateTime.UtcNow; worked = true; continue; }
                if (!worked || DateTime.UtcNow - lastChange < _idleAfter) continue;
                worked = false;
                Reclaim();
            }
        }
        catch (OperationCanceledException) { }
        catch (Exception e) { _log.Warning(e, "Idle memory reclaim stopped"); }
    }

    private void Reclaim()
    {
        long before = Environment.WorkingSet;
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        TrimNativeHeap();
        Reclaims++;
        _log.Debug("Idle for {Seconds} s: full collection, working set {Before} -> {After} MiB",
            _idleAfter.TotalSeconds, before >> 20, Environment.WorkingSet >> 20);
    }

    private bool _noMallocTrim;

    /// <summary>
    /// glibc keeps what the runtime and the sockets freed in its arenas (one per thread that allocated, up to
    /// 8 per core) and gives the pages back only when the top of an arena is free; malloc_trim(0) returns the
    /// free pages of every arena. Not there on other C libraries (musl): then nothing is done.
    /// </summary>
    private void TrimNativeHeap()
    {
        if (_noMallocTrim || !OperatingSystem.IsLinux()) return;
        try { malloc_trim(0); }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { _noMallocTrim = true; }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int malloc_trim(nuint pad);

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await _loop.ConfigureAwait(false);
        _stop.Dispose();
    }
}
