namespace IntegrityTarget.Host.Config;

public enum ProblemSeverity { Error, Warning }

/// <summary>One thing wrong with the configuration, naming where it came from and which key.</summary>
public sealed record ConfigProblem(ProblemSeverity Severity, string Source, string Key, string Message)
{
    public static ConfigProblem Error(string source, string key, string message) => new(ProblemSeverity.Error, source, key, message);
    public static ConfigProblem Warning(string source, string key, string message) => new(ProblemSeverity.Warning, source, key, message);

    public override string ToString() =>
        (Severity == ProblemSeverity.Warning ? "warning: " : "") + $"{Source}: {Key}: {Message}";
}
