namespace IntegrityTarget.Host.Status;

/// <summary>What the status socket asks of the serving process.</summary>
public interface IStatusProvider
{
    StatusSnapshot GetStatus();

    /// <summary>Verifies every block of one served LUN while it stays online.</summary>
    /// <exception cref="Cli.CliException">Unknown target/LUN, or the LUN has no integrity protection.</exception>
    Task<ScrubOutcome> ScrubAsync(string iqn, ulong lun, double? rateMBps, IProgress<double> progress, CancellationToken ct);

    /// <summary>Grows one served LUN online to <paramref name="bytes"/>; its initiators get CAPACITY DATA HAS CHANGED.</summary>
    /// <exception cref="Cli.CliException">Unknown target/LUN, a smaller size, or a volume that cannot grow.</exception>
    Task<ResizeOutcome> ResizeAsync(string iqn, ulong lun, long bytes, CancellationToken ct);

    /// <summary>Re-reads the configuration, validates all of it, then applies the difference (or nothing).</summary>
    /// <exception cref="Cli.CliException">Every problem found; nothing was changed.</exception>
    Task<ReloadOutcome> ReloadAsync(CancellationToken ct);
}
