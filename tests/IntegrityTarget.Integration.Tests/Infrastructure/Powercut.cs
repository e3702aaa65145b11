namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>../shared/tools/powercut/powercut.sh: a FUSE disk with a volatile write cache and a power switch.</summary>
public sealed class Powercut
{
    public string BaseFile { get; }
    public string MountDir { get; }
    public string Disk => Path.Combine(MountDir, "disk.img");
    public bool Mounted { get; private set; }
    static string Script => Paths.Require(Path.Combine(Paths.PowercutDir, "powercut.sh"), "powercut.sh");

    public Powercut(string baseFile, string mountDir)
    {
        Tools.RequireTool("fusermount3");
        BaseFile = baseFile;
        MountDir = mountDir;
    }

    static ToolResult Run(params string[] args)
    {
        var r = Tools.Run("/bin/bash", new[] { Script }.Concat(args), TimeSpan.FromMinutes(3));
        Assert.That(r.ExitCode, Is.EqualTo(0), () => r.Describe());
        return r;
    }

    public void Mount() { Run("mount", BaseFile, MountDir); Mounted = true; }

    /// <summary>Power cut: mode is "drop", "keep-all" or "keep-random SEED FRACTION".</summary>
    public string Cut(string mode) => Run(["cut", MountDir, .. mode.Split(' ')]).StdOut.Trim();

    public void Umount() { Run("umount", MountDir); Mounted = false; }

    public string Stats() => Run("stats", MountDir).StdOut;
}
