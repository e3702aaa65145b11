namespace IntegrityTarget.Host.Cli;

/// <summary>
/// The arguments of one verb split into positionals, the verb's own flags, and everything else (which
/// verbs that read the configuration pass on to <see cref="Config.ConfigLoader"/>).
/// </summary>
public sealed class VerbArgs
{
    public List<string> Positionals { get; } = [];
    public Dictionary<string, string> Flags { get; } = new(StringComparer.OrdinalIgnoreCase);
    public List<string> Rest { get; } = [];

    /// <param name="known">Flag name (without --) → whether it takes a value.</param>
    /// <param name="passUnknown">Pass unknown --flags (and their values) to <see cref="Rest"/> instead of failing.</param>
    public static VerbArgs Parse(string verb, IReadOnlyList<string> args, IReadOnlyDictionary<string, bool> known, bool passUnknown)
    {
        var r = new VerbArgs();
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            if (a.StartsWith("--", StringComparison.Ordinal) && a.Length > 2)
            {
                int eq = a.IndexOf('=');
                string name = (eq < 0 ? a : a[..eq])[2..];
                if (known.TryGetValue(name, out bool takesValue))
                {
                    if (!takesValue) { r.Flags[name] = eq < 0 ? "true" : a[(eq + 1)..]; continue; }
                    string? v = eq >= 0 ? a[(eq + 1)..] : i + 1 < args.Count ? args[++i] : null;
                    r.Flags[name] = v ?? throw new CliException($"{verb}: --{name} needs a value", ExitCodes.Usage);
                    continue;
                }
                if (!passUnknown) throw new CliException($"{verb}: unknown option {a} (see: integrity-target help {verb})", ExitCodes.Usage);
                r.Rest.Add(a);
                if (eq < 0 && i + 1 < args.Count && !args[i + 1].StartsWith("--", StringComparison.Ordinal)) r.Rest.Add(args[++i]);
                continue;
            }
            r.Positionals.Add(a);
        }
        return r;
    }

    public string? Get(string name) => Flags.TryGetValue(name, out var v) ? v : null;
    public bool Has(string name) => Flags.TryGetValue(name, out var v) && !v.Equals("false", StringComparison.OrdinalIgnoreCase);
}
