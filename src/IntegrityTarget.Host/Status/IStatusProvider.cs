namespace IntegrityTarget.Host.Status;

/// <summary>What the status socket asks of the serving process.</summary>
public interface IStatusProvider
{
    StatusSnapshot GetStatus();

    /// <summary>Verifies every block of one served LUN while it stays online.</summary>
    /// <exception cref="Cli.CliException">Unknown target/LUN, or the LUN has no integrity protection.</exception>
    Task<ScrubOutcome> ScrubAsync(string iqn, ulong lun, double? rateMBps, IProgress<double> progress, CancellationToken ct);
}
