using System.Collections;
using Microsoft.Extensions.Configuration;

namespace IntegrityTarget.Host.Config;

/// <summary>
/// Environment variables with a prefix, "__" for ":" (the same mapping as the stock provider), read
/// from a snapshot handed in rather than from the process so tests need no global state.
/// </summary>
public sealed class PrefixedEnvironmentSource(IReadOnlyDictionary<string, string?> variables, string prefix) : IConfigurationSource
{
    public IConfigurationProvider Build(IConfigurationBuilder builder) => new PrefixedEnvironmentProvider(variables, prefix);
}

public sealed class PrefixedEnvironmentProvider(IReadOnlyDictionary<string, string?> variables, string prefix) : ConfigurationProvider
{
    public string Prefix => prefix;

    public override void Load()
    {
        var data = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        foreach (var (name, value) in variables)
        {
            if (!name.StartsWith(prefix, StringComparison.OrdinalIgnoreCase)) continue;
            data[name[prefix.Length..].Replace("__", ConfigurationPath.KeyDelimiter)] = value;
        }
        Data = data;
    }

    public static IReadOnlyDictionary<string, string?> ProcessEnvironment()
    {
        var d = new Dictionary<string, string?>(StringComparer.Ordinal);
        foreach (DictionaryEntry e in Environment.GetEnvironmentVariables()) d[(string)e.Key] = (string?)e.Value;
        return d;
    }
}

/// <summary>The configuration used when no config file is given: one target, one 1 GiB LUN, loopback only.</summary>
public static class EmbeddedDefaults
{
    public const string Iqn = "iqn.2026-11.org.example:integrity";

    public static IReadOnlyDictionary<string, string?> Values { get; } = new Dictionary<string, string?>
    {
        ["DataDirectory"] = "data",
        ["Portals:0"] = "127.0.0.1:3260",
        ["Targets:0:Iqn"] = Iqn,
        ["Targets:0:AllowedInitiators:0"] = "*",
        ["Targets:0:Luns:0:Lun"] = "0",
        ["Targets:0:Luns:0:Path"] = "lun0.img",
        ["Targets:0:Luns:0:Size"] = "1GiB",
    };
}
