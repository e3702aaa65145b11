using System.Buffers.Binary;
using System.Text.RegularExpressions;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Operations;

/// <summary>`integrity-target reload` and SIGHUP against the real process while initiators keep working.</summary>
[TestFixture, Category("Operations")]
public class ReloadTests
{
    const string Qemu = "iqn.2008-11.org.linux-kvm";           // QEMU's default initiator name
    const string Keeper = "iqn.2026-11.org.example:test-initiator";
    const string Evicted = "iqn.2026-11.org.example:evicted";

    static string Config(ServerProcess srv, string dir, string acl, bool reloaded) => $$"""
        {
          "Targets": [
            { "Iqn": "{{srv.Iqn}}", "AllowedInitiators": [ {{acl}} ],
              "Luns": [
                { "Lun": 0, "Path": "{{srv.LunPath}}", "Size": "64MiB" },
                {{(reloaded
                    ? $"{{ \"Lun\": 2, \"Path\": \"{dir}/added.img\", \"Size\": \"16MiB\" }}"
                    : $"{{ \"Lun\": 1, \"Path\": \"{dir}/removed.img\", \"Size\": \"32MiB\", \"Integrity\": false }}")}}
              ] }
          ]
        }
        """;

    [Test]
    public void Reload_adds_and_removes_luns_and_evicts_initiators_while_a_qemu_session_on_another_lun_keeps_verifying()
    {
        var dir = Directory.CreateTempSubdirectory("it-reload-").FullName;
        var file = Path.Combine(dir, "server.json");
        var o = new ServerOptions { Size = "64MiB", LunPath = Path.Combine(dir, "lun0.img") };
        o.Extra.AddRange(["--config", file]);
        using var srv = new ServerProcess(o, dataDir: dir);
        File.WriteAllText(file, Config(srv, dir, "\"*\"", reloaded: false));
        srv.Start();
        try
        {
            var ls = Tools.Run(Tools.RequireTool("iscsi-ls"), "-s", "-i", Keeper, srv.PortalUrl);
            Assert.That(ls.StdOut, Does.Contain("Lun:1").And.Not.Contain("Lun:2"), () => ls.Describe());

            using var keeper = TestInitiator.Connect(srv);
            keeper.ClearUnitAttention(0);
            keeper.ClearUnitAttention(1);
            using var evicted = TestInitiator.Connect(srv, new LoginOptions { InitiatorName = Evicted });
            evicted.ClearUnitAttention(0);

            // QEMU (libiscsi) writes and verifies LUN 0 over and over, before, during and after the reload.
            var ops = new List<string> { "-f", "raw" };
            for (int i = 0; i < 16; i++) ops.AddRange(["-c", $"write -P 0x{0x20 + i:x2} {i}M 1M", "-c", $"read -P 0x{0x20 + i:x2} {i}M 1M", "-c", "sleep 400"]);
            ops.Add(srv.Url(0));
            var qemu = Task.Run(() => Tools.Run(Tools.RequireTool("qemu-io"), ops, TimeSpan.FromMinutes(3)));
            Thread.Sleep(2000);

            File.WriteAllText(file, Config(srv, dir, $"\"{Qemu}\", \"{Keeper}\"", reloaded: true));
            var reload = ServerProcess.Cli(TimeSpan.FromSeconds(60), "reload", "--socket", srv.StatusSocket);
            Assert.That(reload.ExitCode, Is.EqualTo(0), () => reload.Describe());
            Assert.That(reload.StdOut, Does.Contain($"LUN {srv.Iqn}/1 removed"), () => reload.Describe());
            Assert.That(reload.StdOut, Does.Contain($"LUN {srv.Iqn}/2 added"), () => reload.Describe());
            Assert.That(reload.StdOut, Does.Contain($"ACL - *"), () => reload.Describe());
            Assert.That(reload.StdOut, Does.Contain("1 session of initiators no longer allowed closed"), () => reload.Describe());

            var q = qemu.GetAwaiter().GetResult();
            Assert.That(q.ExitCode, Is.EqualTo(0), () => q.Describe());
            Assert.That(Regex.Matches(q.StdOut, @"^read 1048576/1048576 bytes", RegexOptions.Multiline), Has.Count.EqualTo(16), () => q.Describe());
            Assert.That(q.Combined, Does.Not.Contain("Pattern verification failed"), () => q.Describe());

            // The evicted initiator's session is gone; the kept one hears REPORTED LUNS DATA HAS CHANGED.
            Assert.That(evicted.WaitClosed(TimeSpan.FromSeconds(10)), Is.True, "the removed initiator's session was closed");
            var ua = keeper.TestUnitReady(0);
            Assert.That((ua.Sense?.Key, ua.Sense?.Asc, ua.Sense?.Ascq), Is.EqualTo(((byte?)0x06, (byte?)0x3F, (byte?)0x0E)), ua.ToString);
            var gone = keeper.TestUnitReady(1);
            Assert.That((gone.Sense?.Key, gone.Sense?.Asc, gone.Sense?.Ascq), Is.EqualTo(((byte?)0x05, (byte?)0x25, (byte?)0x00)), () => "removed LUN: LOGICAL UNIT NOT SUPPORTED, " + gone);
            var luns = keeper.Execute(0, [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], readLength: 256);
            Assert.That(luns.Good, Is.True, luns.ToString);
            Assert.That(BinaryPrimitives.ReadUInt32BigEndian(luns.Data), Is.EqualTo(16), "REPORT LUNS: two LUNs");
            Assert.That((luns.Data[9], luns.Data[17]), Is.EqualTo(((byte)0, (byte)2)));
            var first = keeper.TestUnitReady(2);
            Assert.That(first.Good || first.Sense?.Key == 0x06, Is.True, () => "the added LUN answers (at most a unit attention first): " + first);
            keeper.ClearUnitAttention(2);
            var w = keeper.Write16(2, 0, new byte[4096], 512, fua: true);
            Assert.That(w.Good, Is.True, () => "the added LUN is usable on the existing session: " + w);

            ls = Tools.Run(Tools.RequireTool("iscsi-ls"), "-s", "-i", Keeper, srv.PortalUrl);
            Assert.That(ls.StdOut, Does.Match(@"Lun:0\s+Type:DIRECT_ACCESS \(Size:63M\)\nLun:2\s+Type:DIRECT_ACCESS \(Size:15M\)"), () => ls.Describe());
            Assert.That(ls.StdOut, Does.Not.Contain("Lun:1"), () => ls.Describe());
            Assert.That(Assert.Throws<LoginFailedException>(() => TestInitiator.Connect(srv, new LoginOptions { InitiatorName = Evicted }).Dispose())!.StatusClass, Is.EqualTo(2));

            // A broken configuration changes nothing and says why; SIGHUP reloads the same way.
            File.WriteAllText(file, Config(srv, dir, "\"not-an-iqn\"", reloaded: true));
            var bad = ServerProcess.Cli(TimeSpan.FromSeconds(60), "reload", "--socket", srv.StatusSocket);
            Assert.That(bad.ExitCode, Is.EqualTo(1), () => bad.Describe());
            Assert.That(bad.Combined, Does.Contain("nothing was changed").And.Contain("AllowedInitiators"), () => bad.Describe());
            Assert.That(keeper.Read16(2, 0, 8, 512).Good, Is.True, "still served after a refused reload");

            // A setting only a restart can change is refused as a whole, even with a valid change beside it.
            File.WriteAllText(file, Config(srv, dir, $"\"{Qemu}\", \"{Keeper}\", \"{Evicted}\"", reloaded: true).Replace("\"Targets\"", "\"Transport\": \"dotnetty\", \"Targets\""));
            var fixedKey = ServerProcess.Cli(TimeSpan.FromSeconds(60), "reload", "--socket", srv.StatusSocket);
            Assert.That(fixedKey.Combined, Does.Contain("Transport cannot change while serving"), () => fixedKey.Describe());
            Assert.Throws<LoginFailedException>(() => TestInitiator.Connect(srv, new LoginOptions { InitiatorName = Evicted }).Dispose(), "the ACL change beside it was not applied");

            // SIGHUP reloads the same way: the evicted initiator is let back in.
            File.WriteAllText(file, Config(srv, dir, $"\"{Qemu}\", \"{Keeper}\", \"{Evicted}\"", reloaded: true));
            Tools.Bash($"kill -HUP {srv.Pid}");
            Assert.That(srv.WaitForLog($@"Reload applied: target {Regex.Escape(srv.Iqn)}: ACL \+ {Regex.Escape(Evicted)}", TimeSpan.FromSeconds(15)), Is.True, () => srv.Output());
            using (var back = TestInitiator.Connect(srv, new LoginOptions { InitiatorName = Evicted })) back.ClearUnitAttention(0);
            srv.Stop();
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }
}
