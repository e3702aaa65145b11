namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>Locations of the repository, the server binary and the shared test tools.</summary>
public static class Paths
{
    /// <summary>The repository root: the first parent of the test binaries holding IntegrityTarget.sln.</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary>
    /// SHARED_DIR, else the nearest `shared` folder with a `tools` folder beside the repository or one of its
    /// parents (../shared for a CI clone; ../../shared for a git worktree under wt/).
    /// </summary>
    public static string SharedDir =>
        Environment.GetEnvironmentVariable("SHARED_DIR") is { Length: > 0 } s ? s : FindShared();

    static string FindShared()
    {
        for (var d = new DirectoryInfo(RepoRoot).Parent; d != null; d = d.Parent)
            if (Directory.Exists(Path.Combine(d.FullName, "shared", "tools"))) return Path.Combine(d.FullName, "shared");
        return Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));
    }

    public static string PowercutDir =>
        Environment.GetEnvironmentVariable("POWERCUT_DIR") is { Length: > 0 } s ? s : Path.Combine(SharedDir, "tools", "powercut");

    public static string VmInitiatorDir =>
        Environment.GetEnvironmentVariable("VM_INITIATOR_DIR") is { Length: > 0 } s ? s : Path.Combine(SharedDir, "tools", "vm-initiator");

    public static string RefTargetScript => Path.Combine(SharedDir, "tools", "ref-target.sh");

    /// <summary>integrity-target.dll, copied next to the test assembly by the project reference.</summary>
    public static string ServerDll => Path.Combine(AppContext.BaseDirectory, "integrity-target.dll");

    public static string ScriptsDir => Path.Combine(RepoRoot, "tests", "scripts");

    public static bool InCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    /// <summary>A shared file must exist; otherwise the test fails saying where it was looked for.</summary>
    public static string Require(string path, string what)
    {
        if (!File.Exists(path))
            Assert.Fail($"{what} not found at {path} (set the env var or put /work/shared beside the repo as ../shared)");
        return path;
    }

    static string FindRepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "IntegrityTarget.sln"))) return d.FullName;
        throw new InvalidOperationException("IntegrityTarget.sln not found above " + AppContext.BaseDirectory);
    }
}
