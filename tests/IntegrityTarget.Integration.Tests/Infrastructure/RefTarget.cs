namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>tgt via ../shared/tools/ref-target.sh: a known-good target to prove the harness itself.</summary>
public sealed class RefTarget : IDisposable
{
    public const string TargetIqn = "iqn.2026-11.org.example:ref";
    public const int Lun = 1;
    public string Dir { get; }
    public int Port { get; }
    public string Url => $"iscsi://127.0.0.1:{Port}/{TargetIqn}/{Lun}";

    public RefTarget(string size = "64M")
    {
        Tools.RequireTool("tgtd");
        Dir = Directory.CreateTempSubdirectory("it-tgt-").FullName;
        Port = Tools.FreeLowPort();
        var r = Tools.Run("/bin/bash", [Paths.Require(Paths.RefTargetScript, "ref-target.sh"), "start", Dir, Port.ToString(), size], TimeSpan.FromMinutes(2));
        Assert.That(r.ExitCode, Is.EqualTo(0), () => r.Describe());
    }

    /// <summary>Requires CHAP: an incoming account (initiator proves itself) or an outgoing one (mutual).</summary>
    public void AddChapAccount(string user, string secret, bool outgoing = false)
    {
        void Adm(params string[] a)
        {
            var r = Tools.Run(Tools.RequireTool("tgtadm"), ["-C", Port.ToString(), "--lld", "iscsi", .. a], TimeSpan.FromSeconds(30));
            Assert.That(r.ExitCode, Is.EqualTo(0), () => r.Describe());
        }
        Adm("--op", "new", "--mode", "account", "--user", user, "--password", secret);
        Adm(["--op", "bind", "--mode", "account", "--tid", "1", "--user", user, .. (outgoing ? new[] { "--outgoing" } : [])]);
    }

    public void Dispose()
    {
        Tools.Run("/bin/bash", [Paths.RefTargetScript, "stop", Dir], TimeSpan.FromMinutes(1));
        try { Directory.Delete(Dir, true); } catch (IOException) { }
    }
}
