namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>
/// Two integrity-target processes configured as gateways gw1 and gw2 of one group, serving the same LUN
/// file (in a directory of its own, beside neither data directory) on their own iSCSI and peer ports.
/// Each has its own data directory (status socket, logs); the LUN's reservations live beside the file.
/// </summary>
public sealed class GatewayPair : IDisposable
{
    public const string Secret = "peer-secret-of-the-test-pair";
    readonly string _dir;

    public ServerProcess Gw1 { get; }
    public ServerProcess Gw2 { get; }
    public string LunPath { get; }
    public string Iqn => Gw1.Iqn;

    /// <param name="nonOwner">standby or active-non-optimized.</param>
    /// <param name="extra">More arguments for both gateways (timings, more ACL entries).</param>
    /// <param name="image">Share this RBD image instead of a file (its exclusive lock decides the owner).</param>
    public GatewayPair(string nonOwner = "standby", string size = "64MiB", int blockSize = 512, IEnumerable<string>? extra = null, RbdImage? image = null)
    {
        _dir = Directory.CreateTempSubdirectory("it-gateways-").FullName;
        LunPath = image?.LunPath ?? Path.Combine(_dir, "shared", "lun0.img");
        // All four ports of the pair at once: chosen one by one, gw2's iSCSI port once came out equal to gw1's peer port.
        var ports = Tools.FreePorts(4);
        int peer1 = ports[0], peer2 = ports[1];
        var common = new List<string>
        {
            $"--Ha:PeerSecret={Secret}", $"--Ha:NonOwnerState={nonOwner}",
            "--Ha:Gateways:0:Name=gw1", $"--Ha:Gateways:0:Peer=127.0.0.1:{peer1}",
            "--Ha:Gateways:1:Name=gw2", $"--Ha:Gateways:1:Peer=127.0.0.1:{peer2}",
        };
        common.AddRange(extra ?? []);
        if (image != null) common.AddRange(["--ceph-conf", RbdImage.Conf]);
        ServerProcess Make(string self, int port)
        {
            var o = new ServerOptions { LunPath = LunPath, Size = size, BlockSize = blockSize, Integrity = true };
            o.Extra.AddRange(common);
            o.Extra.AddRange(["--ha-self", self]);
            return new ServerProcess(o, Path.Combine(_dir, self), port);
        }
        Gw1 = Make("gw1", ports[2]);
        Gw2 = Make("gw2", ports[3]);
    }

    public const string OwnerLog = "this gateway is now the owner";
    public const string FollowerLog = "another gateway owns the LUN; commands are forwarded to it";

    /// <summary>Starts gw1, waits until it owns the LUN, then gw2, until it follows.</summary>
    public GatewayPair Start()
    {
        Gw1.Start();
        Assert.That(Gw1.WaitForLog(OwnerLog, TimeSpan.FromSeconds(30)), Is.True, () => "gw1 did not take the LUN\n" + Gw1.Output());
        Gw2.Start();
        Assert.That(Gw2.WaitForLog(FollowerLog, TimeSpan.FromSeconds(30)), Is.True, () => "gw2 did not follow gw1\n" + Gw2.Output());
        return this;
    }

    public void Dispose()
    {
        Gw2.Dispose();
        Gw1.Dispose();
        if (Environment.GetEnvironmentVariable("KEEP_TEST_DATA") != "1")
        {
            try { Directory.Delete(_dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}
