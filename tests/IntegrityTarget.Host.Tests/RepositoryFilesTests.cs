using System.Text.Json;
using System.Text.RegularExpressions;

namespace IntegrityTarget.Host.Tests;

/// <summary>The sample config and the container entry point shipped in the repository are valid as shipped.</summary>
public partial class RepositoryFilesTests
{
    internal static string RepoRoot()
    {
        for (var d = new DirectoryInfo(TestContext.CurrentContext.TestDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "IntegrityTarget.sln"))) return d.FullName;
        throw new InvalidOperationException("IntegrityTarget.sln not found above the test directory");
    }

    [Test]
    public async Task Sample_config_validates_with_two_targets_and_chap_on_one()
    {
        using var dir = new TempDir();
        var sample = Path.Combine(RepoRoot(), "config", "integrity-target.json");
        var run = await CliRun.RunAsync(dir.Path, ["serve", "--check", "--config", sample]);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.AllOutput);
        Assert.That(run.Out.ToString(), Does.Contain("2 target(s), 3 LUN(s)"));

        var (config, _) = ConfigTestExtensions.Load(dir.Path, ["--config", sample]);
        Assert.That(config!.Targets.Count(t => t.Chap != null), Is.EqualTo(1));
        Assert.That(config.Targets[0].Iqn, Is.EqualTo(Config.EmbeddedDefaults.Iqn), "the sample's first target is the built-in default");
    }

    [GeneratedRegex(@"^ENTRYPOINT\s+(\[.*\])\s*$", RegexOptions.Multiline)]
    private static partial Regex EntryPoint();

    [Test]
    public async Task Container_entry_point_is_serve_with_the_mounted_config_and_that_config_validates()
    {
        var dockerfile = File.ReadAllText(Path.Combine(RepoRoot(), "Dockerfile"));
        var entry = JsonSerializer.Deserialize<string[]>(EntryPoint().Match(dockerfile).Groups[1].Value)!;
        Assert.That(entry, Is.EqualTo(new[] { "integrity-target", "serve", "--config", "/etc/integrity-target/integrity-target.json" }));

        // Same arguments and environment as the container, with config/ where the compose file mounts it.
        using var dir = new TempDir();
        var args = entry.Skip(1).Select(a => a.Replace("/etc/integrity-target", Path.Combine(RepoRoot(), "config"))).Append("--check").ToArray();
        var env = new Dictionary<string, string?>
        {
            ["INTEGRITYTARGET_Portals__0"] = "0.0.0.0:3260",
            ["INTEGRITYTARGET_DataDirectory"] = dir.Path,
        };
        var run = await CliRun.RunAsync(dir.Path, args, env);
        Assert.That(run.ExitCode, Is.EqualTo(0), run.AllOutput);
        Assert.That(run.Out.ToString(), Does.Contain("portals 0.0.0.0:3260"));
    }
}
