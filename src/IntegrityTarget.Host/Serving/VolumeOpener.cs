using IntegrityTarget.Host.Cli;
using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Wiring;
using IntegrityTarget.Storage;
using Serilog;

namespace IntegrityTarget.Host.Serving;

/// <summary>
/// Opens the volume of one configured LUN: an integrity volume by default (created and formatted when
/// the file is missing or blank), a plain volume when integrity is off. Never formats a file that holds
/// anything else.
/// </summary>
public static class VolumeOpener
{
    /// <exception cref="CliException">With a message naming the LUN's key path and file.</exception>
    public static async Task<ServedLun> OpenAsync(TargetSettings target, LunSettings lun, ILogger log, CancellationToken ct)
    {
        string name = $"{target.Iqn}/{lun.Lun}";
        try
        {
            if (lun.Integrity)
            {
                var (volume, device) = await IntegrityWiring.OpenLunAsync(lun, name, log, ct);
                volume.WriteBack = lun.WriteBack;
                return new ServedLun(lun, volume, device);
            }
            return OpenPlain(lun, name, log);
        }
        catch (CliException e)
        {
            throw new CliException($"{lun.KeyPath} ({lun.Path}): {e.Message}");
        }
        catch (Exception e) when (e is StorageException or IOException or UnauthorizedAccessException || IntegrityWiring.IsVolumeError(e))
        {
            throw new CliException($"{lun.KeyPath} ({lun.Path}): {e.Message}");
        }
    }

    private static ServedLun OpenPlain(LunSettings lun, string name, ILogger log)
    {
        using var backing = Backing.For(lun);
        IBlockDevice device;
        if (!backing.Exists())
        {
            if (lun.SizeBytes is not { } size)
                throw new CliException($"{backing.Noun} {backing.Display} does not exist and no Size is given to create it");
            device = backing.Create(size, log);
            log.Information("Created {Noun} {Path} ({Size}) for {Lun} without integrity", backing.Noun, lun.Path, SizeParser.Format(size), name);
        }
        else device = backing.Open(readOnly: false, log);
        try
        {
            if (device.Length % lun.BlockSize != 0)
                log.Warning("{Path}: length {Length} is not a multiple of {BlockSize}; the last partial block is not served", lun.Path, device.Length, lun.BlockSize);
            var volume = new PlainVolume(device, lun.BlockSize, name, ownsDevice: false) { WriteBack = lun.WriteBack };
            return new ServedLun(lun, volume, device);
        }
        catch
        {
            device.Dispose();
            throw;
        }
    }
}
