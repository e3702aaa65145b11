using System.Buffers.Binary;
using System.Globalization;
using System.Text.RegularExpressions;
using IntegrityTarget.Integration.Tests.Infrastructure;

namespace IntegrityTarget.Integration.Tests.Operations;

/// <summary>The Prometheus endpoint of the real process, scraped over HTTP after I/O whose counts are known.</summary>
[TestFixture, Category("Operations")]
public class MetricsTests
{
    const string ChapIqn = "iqn.2026-11.org.example:chap";
    const int Bs = 512;

    /// <summary>Value of one sample: metric name and every label given must match; 0 when the series is absent.</summary>
    internal static double Sample(string text, string name, params (string Label, string Value)[] labels)
    {
        foreach (var line in text.Split('\n'))
        {
            var m = Regex.Match(line, @"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)");
            if (!m.Success || m.Groups[1].Value != name) continue;
            var l = m.Groups[2].Value;
            if (labels.All(p => l.Contains($"{p.Label}=\"{p.Value}\"", StringComparison.Ordinal)))
                return double.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture);
        }
        return 0;
    }

    internal static string Scrape(int port)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        var resp = http.GetAsync($"http://127.0.0.1:{port}/metrics").GetAwaiter().GetResult();
        Assert.That((int)resp.StatusCode, Is.EqualTo(200));
        Assert.That(resp.Content.Headers.ContentType?.MediaType, Is.EqualTo("text/plain"));
        return resp.Content.ReadAsStringAsync().GetAwaiter().GetResult();
    }

    [Test]
    public void Scrape_after_known_io_shows_counts_latency_sessions_chap_failures_and_a_mismatch()
    {
        int mport = Tools.FreePort();
        var dir = Directory.CreateTempSubdirectory("it-metrics-").FullName;
        var o = new ServerOptions { Size = "64MiB", LunPath = Path.Combine(dir, "lun0.img") };
        o.Extra.AddRange(["--metrics", $"127.0.0.1:{mport}",
            $"--Targets:1:Iqn={ChapIqn}", $"--Targets:1:Luns:0:Path={Path.Combine(dir, "chap0.img")}", "--Targets:1:Luns:0:Size=16MiB",
            "--Targets:1:Chap:User=client", "--Targets:1:Chap:Secret=right-secret-1"]);
        using var srv = new ServerProcess(o, dataDir: dir).Start();
        try
        {
            Assert.That(srv.WaitForLog($@"Metrics on http://127\.0\.0\.1:{mport}/metrics", TimeSpan.FromSeconds(5)), Is.True, () => srv.Output());
            (string, string)[] lun = [("target", srv.Iqn), ("lun", "0")];
            var before = Scrape(mport);

            using var ini = TestInitiator.Connect(srv);
            ini.ClearUnitAttention(0);
            // One whole 128 KiB chunk of unique blocks (so each block's bytes occur once in the file), then 8 small writes and 5 reads.
            var chunk = new byte[128 * 1024];
            new Random(unchecked((int)DateTime.UtcNow.Ticks)).NextBytes(chunk);
            for (int i = 0; i < chunk.Length / Bs; i++) BinaryPrimitives.WriteUInt64BigEndian(chunk.AsSpan(i * Bs), 2048UL + (ulong)i);
            Assert.That(ini.Write16(0, 2048, chunk, Bs, fua: true).Good, Is.True);
            for (int i = 0; i < 8; i++) Assert.That(ini.Write16(0, (ulong)(i * 8), new byte[8 * Bs], Bs, fua: true).Good, Is.True);
            for (int i = 0; i < 5; i++) Assert.That(ini.Read16(0, 0, 16, Bs).Good, Is.True);

            var after = Scrape(mport);
            double Delta(string name, params (string, string)[] labels) => Sample(after, name, labels) - Sample(before, name, labels);
            Assert.Multiple(() =>
            {
                Assert.That(Delta("integritytarget_lun_writes_total", lun), Is.EqualTo(9));
                Assert.That(Delta("integritytarget_lun_written_bytes_total", lun), Is.EqualTo(chunk.Length + 8 * 8 * Bs));
                Assert.That(Delta("integritytarget_lun_reads_total", lun), Is.EqualTo(5));
                Assert.That(Delta("integritytarget_lun_read_bytes_total", lun), Is.EqualTo(5 * 16 * Bs));
                Assert.That(Delta("integritytarget_scsi_command_duration_seconds_count", [.. lun, ("class", "write")]), Is.EqualTo(9));
                Assert.That(Delta("integritytarget_scsi_command_duration_seconds_count", [.. lun, ("class", "read")]), Is.EqualTo(5));
                Assert.That(Delta("integritytarget_scsi_command_duration_seconds_bucket", [.. lun, ("class", "read"), ("le", "+Inf")]), Is.EqualTo(5));
                Assert.That(Delta("integritytarget_lun_journal_commits_total", lun), Is.GreaterThanOrEqualTo(1));
                Assert.That(Sample(after, "integritytarget_lun_capacity_bytes", lun), Is.EqualTo(64 << 20));
                Assert.That(Sample(after, "integritytarget_lun_slots", lun), Is.GreaterThan(Sample(after, "integritytarget_lun_free_slots", lun)));
                Assert.That(Sample(after, "integritytarget_target_sessions", ("target", srv.Iqn)), Is.EqualTo(1));
                Assert.That(Sample(after, "integritytarget_target_connections", ("target", srv.Iqn)), Is.EqualTo(1));
                Assert.That(Sample(after, "integritytarget_target_sessions", ("target", ChapIqn)), Is.EqualTo(0));
                Assert.That(after, Does.Contain("process_cpu_seconds_total"));
                Assert.That(after, Does.Contain("process_start_time_seconds"));
                Assert.That(Sample(after, "integritytarget_build_info"), Is.EqualTo(1));
            });

            // A CHAP login with the wrong secret: counted as a failed login and a CHAP failure.
            Assert.Throws<LoginFailedException>(() => TestInitiator.Connect(srv, new LoginOptions { TargetName = ChapIqn, ChapUser = "client", ChapSecret = "wrong-secret-2" }).Dispose());
            var denied = Scrape(mport);
            Assert.That(Sample(denied, "integritytarget_iscsi_chap_failures_total") - Sample(before, "integritytarget_iscsi_chap_failures_total"), Is.EqualTo(1));
            Assert.That(Sample(denied, "integritytarget_iscsi_logins_total", ("result", "failed")) - Sample(before, "integritytarget_iscsi_logins_total", ("result", "failed")), Is.EqualTo(1));

            // Damage one block in the backing file: two reads of it are two mismatches but one distinct bad LBA.
            ulong badLba = 2048 + 37;
            var hits = BackingFile.FindAll(srv.LunPath, chunk.AsSpan(37 * Bs, Bs).ToArray(), Bs);
            Assert.That(hits, Is.Not.Empty, "the chunk's block is stored in plain form");
            BackingFile.FlipByte(srv.LunPath, hits.Max() + 100);
            for (int i = 0; i < 2; i++)
            {
                var r = ini.Read16(0, badLba, 1, Bs);
                Assert.That(r.Sense?.Information, Is.EqualTo(badLba), r.ToString);
            }
            var bad = Scrape(mport);
            Assert.That(Sample(bad, "integritytarget_lun_integrity_mismatches_total", lun) - Sample(before, "integritytarget_lun_integrity_mismatches_total", lun), Is.EqualTo(2));
            Assert.That(Sample(bad, "integritytarget_lun_bad_lbas", lun), Is.EqualTo(1));

            // The same facts through LOG SENSE's integrity page (30h): parameter 2 = distinct bad LBAs, 3 = lowest bad LBA.
            var page = ini.Execute(0, [0x4D, 0, 0x70, 0, 0, 0, 0, 0x04, 0, 0], readLength: 1024);
            Assert.That(page.Good, Is.True, page.ToString);
            var p = LogParameters(page.Data.AsSpan(0, page.DataInBytes));
            Assert.That(p[2], Is.EqualTo(1UL));
            Assert.That(p[3], Is.EqualTo(badLba));
            srv.Stop();
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    internal static Dictionary<ushort, ulong> LogParameters(ReadOnlySpan<byte> page)
    {
        var result = new Dictionary<ushort, ulong>();
        int end = Math.Min(page.Length, 4 + BinaryPrimitives.ReadUInt16BigEndian(page[2..]));
        for (int pos = 4; pos + 4 <= end;)
        {
            int len = page[pos + 3];
            ulong v = 0;
            for (int i = 0; i < Math.Min(len, 8); i++) v = (v << 8) | page[pos + 4 + i];
            result[BinaryPrimitives.ReadUInt16BigEndian(page[pos..])] = v;
            pos += 4 + len;
        }
        return result;
    }

    [Test]
    public void Metrics_stay_off_unless_asked_and_a_bad_address_is_a_configuration_error()
    {
        var check = ServerProcess.Cli(TimeSpan.FromSeconds(60), "serve", "--no-config", "--check", "--data-dir", Path.GetTempPath(),
            "--lun", "x.img", "--size", "16MiB", "--metrics", "localhost:94x0");
        Assert.That(check.ExitCode, Is.EqualTo(2), () => check.Describe());
        Assert.That(check.Combined, Does.Contain("Metrics:Listen"), () => check.Describe());
        Assert.That(check.Combined, Does.Contain("is not ADDRESS:PORT"), () => check.Describe());

        using var srv = new ServerProcess(new ServerOptions()).Start();
        try
        {
            Assert.That(srv.HasLog("Metrics on"), Is.False, "no endpoint without Metrics:Listen");
            srv.Stop();
        }
        finally { try { Directory.Delete(srv.DataDir, true); } catch (IOException) { } }
    }
}
