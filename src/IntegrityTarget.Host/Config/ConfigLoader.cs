using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Configuration.CommandLine;
using Microsoft.Extensions.Configuration.Json;
using Microsoft.Extensions.Configuration.Memory;

namespace IntegrityTarget.Host.Config;

/// <summary>What the configuration of one command is built from.</summary>
public sealed record ConfigInput(
    IReadOnlyList<string> Args,
    IReadOnlyDictionary<string, string?> Environment,
    string WorkingDirectory);

/// <summary>The layered configuration plus where each key came from, so every message can name its source.</summary>
public sealed class LoadedConfig
{
    public required IConfigurationRoot Root { get; init; }
    public required string WorkingDirectory { get; init; }
    /// <summary>The JSON file used, as the user would recognise it (null = built-in defaults).</summary>
    public string? FileDisplayName { get; init; }
    public required IReadOnlyList<ConfigProblem> Problems { get; init; }
    /// <summary>Flags the verb handles itself (e.g. --json, --force), with their values ("" for bare flags).</summary>
    public required IReadOnlyDictionary<string, string> Flags { get; init; }
    public required Func<string, string> SourceResolver { get; init; }
    /// <summary>The file could not be parsed: nothing else is worth checking.</summary>
    public bool Unreadable { get; init; }
    /// <summary>The environment the configuration was read with (for defaults that come from it, e.g. CEPH_CONF).</summary>
    public IReadOnlyDictionary<string, string?> Environment { get; init; } = new Dictionary<string, string?>();

    /// <summary>"config/x.json", "environment (INTEGRITYTARGET_Targets__0__Iqn)", "command line (--iqn)" or "built-in defaults".</summary>
    public string SourceOf(string key) => SourceResolver(key);
}

/// <summary>
/// Builds the configuration in the order of precedence: built-in defaults or JSON file &lt; environment
/// (INTEGRITYTARGET_ prefix, "__" separator) &lt; command line (any key as --Key value, plus short aliases).
/// Never throws for bad input: problems are collected for the caller to print all at once.
/// </summary>
public static class ConfigLoader
{
    public const string EnvironmentPrefix = "INTEGRITYTARGET_";
    public const string DefaultConfigFile = "config/integrity-target.json";
    /// <summary>The source name of settings nobody gave (<see cref="EmbeddedDefaults"/>).</summary>
    public const string BuiltInDefaults = "built-in defaults";

    /// <summary>Short command-line aliases so one LUN can be served with no config file.</summary>
    public static readonly IReadOnlyDictionary<string, string> SwitchMappings = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase)
    {
        ["--listen"] = "Portals:0",
        ["--iqn"] = "Targets:0:Iqn",
        ["--alias"] = "Targets:0:Alias",
        ["--allow"] = "Targets:0:AllowedInitiators:0",
        ["--lun"] = "Targets:0:Luns:0:Path",
        ["--size"] = "Targets:0:Luns:0:Size",
        ["--block-size"] = "Targets:0:Luns:0:BlockSize",
        ["--integrity"] = "Targets:0:Luns:0:Integrity",
        ["--tag-algorithm"] = "Targets:0:Luns:0:TagAlgorithm",
        ["--key-file"] = "Targets:0:Luns:0:KeyFile",
        ["--write-back"] = "Targets:0:Luns:0:WriteBack",
        ["--read-only"] = "Targets:0:Luns:0:ReadOnly",
        ["--chap-user"] = "Targets:0:Chap:User",
        ["--chap-secret"] = "Targets:0:Chap:Secret",
        ["--data-dir"] = "DataDirectory",
        ["--log-level"] = "Logging:Level",
        ["--log-file"] = "Logging:File",
        ["--transport"] = "Transport",
        ["--status-socket"] = "Status:Socket",
        ["--metrics"] = "Metrics:Listen",
        ["--ha-self"] = "Ha:Self",
        ["--ceph-conf"] = "Ceph:ConfFile",
        ["--ceph-id"] = "Ceph:ClientId",
        ["--ceph-cluster"] = "Ceph:Cluster",
        ["--ceph-keyring"] = "Ceph:Keyring",
    };

    /// <param name="verbFlags">Flags the verb itself understands: name → whether it takes a value.</param>
    public static LoadedConfig Load(ConfigInput input, IReadOnlyDictionary<string, bool>? verbFlags = null)
    {
        var problems = new List<ConfigProblem>();
        var flags = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        var cleanArgs = new List<string>();
        var aliasOfKey = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        string? configFile = null;
        bool noConfig = false;
        bool commandLineTargets = false;

        var args = input.Args;
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            if (!a.StartsWith("--", StringComparison.Ordinal) || a.Length == 2)
            {
                problems.Add(ConfigProblem.Error("command line", a, "unexpected argument (settings are given as --Key value or --Key=value, e.g. --Targets:0:Iqn iqn.2026-11.org.example:disk)"));
                continue;
            }
            int eq = a.IndexOf('=');
            string name = eq < 0 ? a : a[..eq];
            string? inlineValue = eq < 0 ? null : a[(eq + 1)..];

            if (name.Equals("--no-config", StringComparison.OrdinalIgnoreCase)) { noConfig = true; continue; }
            if (verbFlags != null && verbFlags.TryGetValue(name[2..], out bool takesValue))
            {
                if (!takesValue) { flags[name[2..]] = inlineValue ?? "true"; continue; }
                string? v = inlineValue ?? (i + 1 < args.Count ? args[++i] : null);
                if (v == null) problems.Add(ConfigProblem.Error("command line", name, "needs a value"));
                else flags[name[2..]] = v;
                continue;
            }
            if (name.Equals("--config", StringComparison.OrdinalIgnoreCase))
            {
                configFile = inlineValue ?? (i + 1 < args.Count ? args[++i] : null);
                if (string.IsNullOrWhiteSpace(configFile)) problems.Add(ConfigProblem.Error("command line", "--config", "needs a file name"));
                continue;
            }
            string value;
            if (inlineValue != null) value = inlineValue;
            else if (i + 1 < args.Count) value = args[++i];
            else { problems.Add(ConfigProblem.Error("command line", name, "needs a value")); continue; }

            string key = SwitchMappings.TryGetValue(name, out var mapped) ? mapped : name[2..];
            if (mapped != null) aliasOfKey[key] = name;
            if (key.StartsWith("Targets", StringComparison.OrdinalIgnoreCase)) commandLineTargets = true;
            // Hand the provider one canonical form; it does the layering.
            cleanArgs.Add($"--{key}={value}");
        }

        bool envTargets = input.Environment.Keys.Any(k =>
            k.StartsWith(EnvironmentPrefix + "Targets", StringComparison.OrdinalIgnoreCase));

        // Which JSON file: an explicit --config must exist; the default one is used only when present and
        // the command line does not describe its own targets (a no-config one-liner stays hermetic).
        string? filePath = null, fileDisplay = null;
        if (configFile != null && !string.IsNullOrWhiteSpace(configFile))
        {
            filePath = Path.GetFullPath(configFile, input.WorkingDirectory);
            fileDisplay = configFile;
            if (!File.Exists(filePath))
            {
                // One problem, not three: without the file there are no portals or targets worth complaining about.
                problems.Add(ConfigProblem.Error("command line", "--config", $"config file '{configFile}' does not exist"));
                return Unusable(input, fileDisplay, problems, flags);
            }
        }
        else if (!noConfig && !commandLineTargets && !envTargets)
        {
            var candidate = Path.Combine(input.WorkingDirectory, DefaultConfigFile);
            if (File.Exists(candidate)) { filePath = candidate; fileDisplay = DefaultConfigFile; }
        }

        if (filePath != null && JsonSyntaxError(filePath) is { } syntax)
        {
            // A JSON syntax error: say where, and stop here (nothing after it would be meaningful).
            problems.Add(ConfigProblem.Error(fileDisplay!, "(file)", $"is not valid JSON: {syntax}"));
            return Unusable(input, fileDisplay, problems, flags);
        }

        var builder = new ConfigurationBuilder();
        var names = new List<string>();
        if (filePath == null && configFile == null)
        {
            builder.Add(new MemoryConfigurationSource { InitialData = EmbeddedDefaults.Values });
            names.Add(BuiltInDefaults);
        }
        if (filePath != null)
        {
            builder.AddJsonFile(filePath, optional: false, reloadOnChange: false);
            names.Add(fileDisplay!);
        }
        builder.Add(new PrefixedEnvironmentSource(input.Environment, EnvironmentPrefix));
        names.Add("environment");
        builder.AddCommandLine(cleanArgs.ToArray());
        names.Add("command line");

        IConfigurationRoot root;
        try
        {
            root = builder.Build();
        }
        catch (Exception e) when (e is InvalidDataException or FormatException or IOException or System.Text.Json.JsonException)
        {
            // What the syntax check above lets through (e.g. a top-level array, or the file vanished meanwhile).
            var detail = e.InnerException?.Message ?? e.Message;
            problems.Add(ConfigProblem.Error(fileDisplay ?? "config", "(file)", $"cannot be used: {detail}"));
            return Unusable(input, fileDisplay, problems, flags);
        }

        var providers = root.Providers.ToList();
        string Resolve(string key)
        {
            for (int p = providers.Count - 1; p >= 0; p--)
            {
                if (!HasKeyOrChildren(providers[p], key)) continue;
                return providers[p] switch
                {
                    PrefixedEnvironmentProvider env => $"environment ({env.Prefix}{key.Replace(":", "__")})",
                    CommandLineConfigurationProvider => aliasOfKey.TryGetValue(key, out var alias) ? $"command line ({alias})" : "command line",
                    JsonConfigurationProvider => fileDisplay!,
                    _ => names[p],
                };
            }
            return fileDisplay ?? BuiltInDefaults;
        }

        return new LoadedConfig
        {
            Root = root, WorkingDirectory = input.WorkingDirectory, FileDisplayName = fileDisplay,
            Problems = problems, Flags = flags, SourceResolver = Resolve, Environment = input.Environment,
        };
    }

    private static LoadedConfig Unusable(ConfigInput input, string? fileDisplay, List<ConfigProblem> problems, Dictionary<string, string> flags) => new()
    {
        Root = new ConfigurationBuilder().Build(), WorkingDirectory = input.WorkingDirectory, FileDisplayName = fileDisplay,
        Problems = problems, Flags = flags, SourceResolver = _ => fileDisplay ?? "config", Unreadable = true,
    };

    /// <summary>
    /// The first JSON syntax error in the file with its line and column (1-based), read with the same
    /// leniency as the configuration provider (comments and trailing commas allowed); null when it parses.
    /// </summary>
    private static string? JsonSyntaxError(string path)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return $"cannot be read: {e.Message}"; }
        try
        {
            using var _ = System.Text.Json.JsonDocument.Parse(bytes, new System.Text.Json.JsonDocumentOptions
            {
                CommentHandling = System.Text.Json.JsonCommentHandling.Skip, AllowTrailingCommas = true,
            });
            return null;
        }
        catch (System.Text.Json.JsonException e)
        {
            // The reader's own message ends with "LineNumber: 2 | BytePositionInLine: 4." (0-based); say it once, 1-based.
            string what = e.Message;
            int cut = what.IndexOf(" LineNumber:", StringComparison.Ordinal);
            if (cut > 0) what = what[..cut].TrimEnd();
            return $"line {(e.LineNumber ?? 0) + 1}, column {(e.BytePositionInLine ?? 0) + 1}: {what}";
        }
    }

    private static bool HasKeyOrChildren(IConfigurationProvider provider, string key)
    {
        if (provider.TryGet(key, out _)) return true;
        // A section key (e.g. Targets:0) counts when the provider holds anything under it.
        return provider.GetChildKeys([], key).Any();
    }
}
