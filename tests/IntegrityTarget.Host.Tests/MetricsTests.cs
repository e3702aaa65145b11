using IntegrityTarget.Host.Config;
using IntegrityTarget.Host.Metrics;
using IntegrityTarget.Host.Serving;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Host.Tests;

public class MetricsTests
{
    const string Iqn = "iqn.2026-11.org.example:metrics";

    static ServedLun Lun(ulong n, out PlainVolume volume)
    {
        var dev = new MemoryBlockDevice(1 << 20);
        volume = new PlainVolume(dev, 512, $"{Iqn}/{n}", ownsDevice: false);
        return new ServedLun(new LunSettings { Lun = n, Path = $"/nowhere/{n}.img", Serial = $"S{n}", KeyPath = $"Targets:0:Luns:{n}" }, volume, dev);
    }

    [Test]
    public async Task Each_lun_has_its_own_series_and_a_removed_lun_stops_being_exported()
    {
        var l0 = Lun(0, out var v0);
        var l1 = Lun(1, out _);
        var target = new ServedTarget(new TargetSettings { Iqn = Iqn, AllowedInitiators = ["*"], Luns = [l0.Settings, l1.Settings] }, [l0, l1]);
        var targets = new List<ServedTarget> { target };
        using var m = HostMetrics.Detached(() => targets, () => [], () => null);
        Assert.That((await v0.WriteAsync(0, new byte[4096], fua: false)).IsOk, Is.True);

        var text = await m.ExportAsync();
        Assert.That(text, Does.Contain($"integritytarget_lun_writes_total{{target=\"{Iqn}\",lun=\"0\"}} 1"));
        Assert.That(text, Does.Contain($"integritytarget_lun_written_bytes_total{{target=\"{Iqn}\",lun=\"0\"}} 4096"));
        Assert.That(text, Does.Contain($"integritytarget_lun_capacity_bytes{{target=\"{Iqn}\",lun=\"1\"}} 1048576"));
        Assert.That(text, Does.Not.Contain("lun_slots{"), "plain LUNs have no slots");

        target.Luns = [l0]; // as a reload that removed LUN 1 leaves it
        text = await m.ExportAsync();
        Assert.That(text, Does.Not.Contain("lun=\"1\""));
        Assert.That(text, Does.Contain("lun=\"0\""));
    }

    static readonly IntegrityTarget.Scsi.ItNexus Nexus = new("iqn.2026-11.test:i", "iqn.2026-11.test:i,i,0x000000000001", $"{Iqn},t,0x0001", 1, new byte[4]);

    static IntegrityTarget.Scsi.ScsiLogicalUnit Unit(ServedLun l) =>
        new(l.Lun, l.Volume!, new IntegrityTarget.Scsi.LogicalUnitOptions { Serial = l.Settings.Serial, IdentitySeed = $"{Iqn}/{l.Lun}" }, Serilog.Core.Logger.None);

    static void Tur(IntegrityTarget.Scsi.IScsiTarget target, ulong lun)
    {
        using var r = target.ExecuteAsync(new IntegrityTarget.Scsi.ScsiCommand { Nexus = Nexus, Lun = lun, Cdb = new byte[6] }, CancellationToken.None).AsTask().GetAwaiter().GetResult();
    }

    static string Latency(ulong lun) => $"integritytarget_scsi_command_duration_seconds_count{{target=\"{Iqn}\",lun=\"{lun}\",class=\"other\"}}";

    [Test]
    public async Task Commands_to_luns_the_target_does_not_serve_add_no_latency_series()
    {
        // Any logged-in initiator can address LUNs 0..16383: a series per LUN number it tries would be unbounded.
        var l0 = Lun(0, out _);
        var target = new ServedTarget(new TargetSettings { Iqn = Iqn, AllowedInitiators = ["*"], Luns = [l0.Settings] }, [l0]);
        using var m = HostMetrics.Detached(() => [target], () => [], () => null);
        var timed = m.Time(Iqn, new IntegrityTarget.Scsi.ScsiTarget(Iqn, [Unit(l0)], Serilog.Core.Logger.None));
        Tur(timed, 0);
        for (ulong lun = 1; lun < 200; lun++) Tur(timed, lun);

        var text = await m.ExportAsync();
        Assert.That(text, Does.Contain(Latency(0) + " 1"));
        Assert.That(text.Split('\n').Count(l => l.StartsWith("integritytarget_scsi_command_duration_seconds_count", StringComparison.Ordinal)), Is.EqualTo(1),
            "only the served LUN has a latency series");
    }

    [Test]
    public async Task A_lun_removed_and_added_back_by_reloads_gets_its_latency_series_back()
    {
        var l0 = Lun(0, out _);
        var l1 = Lun(1, out _);
        var target = new ServedTarget(new TargetSettings { Iqn = Iqn, AllowedInitiators = ["*"], Luns = [l0.Settings, l1.Settings] }, [l0, l1]);
        using var m = HostMetrics.Detached(() => [target], () => [], () => null);
        var scsi = new IntegrityTarget.Scsi.ScsiTarget(Iqn, [Unit(l0), Unit(l1)], Serilog.Core.Logger.None);
        var timed = m.Time(Iqn, scsi);
        Tur(timed, 1);
        Assert.That(await m.ExportAsync(), Does.Contain(Latency(1) + " 1"));

        scsi.RemoveUnit(1);                 // one reload removes LUN 1 ...
        target.Luns = [l0];
        Assert.That(await m.ExportAsync(), Does.Not.Contain("lun=\"1\""));

        scsi.AddUnit(Unit(l1));             // ... the next adds it back
        target.Luns = [l0, l1];
        Tur(timed, 1);
        Tur(timed, 1);
        Assert.That(await m.ExportAsync(), Does.Contain(Latency(1) + " 2"), "the new LUN 1's commands are counted from zero");
    }

    [Test]
    public async Task Every_exported_metric_is_in_the_README_table()
    {
        var l0 = Lun(0, out _);
        var target = new ServedTarget(new TargetSettings { Iqn = Iqn, AllowedInitiators = ["*"], Luns = [l0.Settings] }, [l0]);
        using var m = HostMetrics.Detached(() => [target], () => [], () => null);
        var exported = System.Text.RegularExpressions.Regex.Matches(await m.ExportAsync(), @"^# TYPE (integritytarget_\w+) ", System.Text.RegularExpressions.RegexOptions.Multiline)
            .Select(x => x.Groups[1].Value).ToList();
        Assert.That(exported, Has.Count.GreaterThan(10));

        // Table rows name metrics in full or, after the first, by suffix: `integritytarget_lun_reads_total`, `_writes_total`.
        string readme = File.ReadAllText(Path.Combine(RepositoryFilesTests.RepoRoot(), "README.md"));
        var documented = new HashSet<string>();
        foreach (var row in readme.Split('\n').Where(l => l.StartsWith("| `integritytarget_", StringComparison.Ordinal)))
        {
            var names = System.Text.RegularExpressions.Regex.Matches(row.Split('|')[1], @"`([a-z_]+)").Select(x => x.Groups[1].Value).ToList();
            string family = string.Join('_', names[0].Split('_').Take(2));
            foreach (var n in names) documented.Add(n.StartsWith('_') ? family + n : n);
        }
        Assert.That(exported.Where(e => !documented.Contains(e)), Is.Empty, "exported but not in README's metrics table");
    }

    [TestCase((byte)0x28, 0)]
    [TestCase((byte)0x88, 0)]
    [TestCase((byte)0x2A, 1)]
    [TestCase((byte)0x93, 1)]
    [TestCase((byte)0x83, 1)]
    [TestCase((byte)0x12, 2)]
    [TestCase((byte)0x35, 2)]
    public void Commands_are_classed_as_read_write_or_other_by_opcode(byte opcode, int expected) =>
        Assert.That(TimedScsiTarget.ClassOf(opcode), Is.EqualTo(expected));
}
