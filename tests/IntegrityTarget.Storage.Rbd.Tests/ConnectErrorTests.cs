using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using IntegrityTarget.Storage.Rbd;

namespace IntegrityTarget.Storage.Rbd.Tests;

/// <summary>Connection failures through the real librados, without a cluster: each ends quickly with a clear message.</summary>
public class ConnectErrorTests
{
    string _dir = null!;

    [SetUp] public void MakeDir() => _dir = Directory.CreateTempSubdirectory("rbd-connect-").FullName;
    [TearDown] public void RemoveDir() => Directory.Delete(_dir, true);

    string Conf(string text)
    {
        var path = Path.Combine(_dir, "ceph.conf");
        File.WriteAllText(path, text);
        return path;
    }

    [Test]
    public void A_missing_conf_file_is_named()
    {
        var e = Assert.Throws<RbdException>(() => RbdClient.Connect(new CephClientOptions { ConfFile = Path.Combine(_dir, "nope.conf") }))!;
        Assert.That(e.Message, Does.Contain("nope.conf").And.Contain("does not exist"));
    }

    [Test]
    public void A_conf_without_monitors_is_refused_before_connecting()
    {
        var e = Assert.Throws<RbdException>(() => RbdClient.Connect(new CephClientOptions { ConfFile = Conf("[global]\nfsid = 00000000-0000-0000-0000-000000000000\n") }))!;
        Assert.That(e.Message, Does.Contain("no monitor (mon_host)"));
    }

    [Test]
    public void A_missing_keyring_is_named()
    {
        var e = Assert.Throws<RbdException>(() => RbdClient.Connect(new CephClientOptions
        {
            ConfFile = Conf("[global]\nmon_host = 127.0.0.1:1\n"), Keyring = Path.Combine(_dir, "no.keyring"),
        }))!;
        Assert.That(e.Message, Does.Contain("no.keyring").And.Contain("does not exist"));
    }

    [Test]
    public void A_cluster_that_does_not_answer_times_out_after_the_configured_limit()
    {
        // A port nobody listens on: librados retries the monitor until client_mount_timeout.
        int port;
        using (var l = new TcpListener(IPAddress.Loopback, 0)) { l.Start(); port = ((IPEndPoint)l.LocalEndpoint).Port; }
        var keyring = Path.Combine(_dir, "k");
        File.WriteAllText(keyring, "[client.admin]\n\tkey = AQBxk1BnAAAAABAAVjOhXJkS0Sk9ht2IYvgwRA==\n");
        var sw = Stopwatch.StartNew();
        var e = Assert.Throws<RbdException>(() => RbdClient.Connect(new CephClientOptions
        {
            ConfFile = Conf($"[global]\nmon_host = 127.0.0.1:{port}\nauth_client_required = cephx\n"), Keyring = keyring, TimeoutSeconds = 2,
        }))!;
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(20)), "bounded by the timeout, not Ceph's default 300 s");
        Assert.That(e.Errno, Is.EqualTo(CephError.ETIMEDOUT), e.Message);
        Assert.That(e.Message, Does.Contain("2 s").And.Contain("monitor"));
    }
}
