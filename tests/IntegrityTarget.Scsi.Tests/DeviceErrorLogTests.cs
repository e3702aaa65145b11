using IntegrityTarget.Storage;
using Serilog.Core;
using Serilog.Events;

namespace IntegrityTarget.Scsi.Tests;

/// <summary>
/// A LUN over a plain volume whose device fails (EIO on chosen blocks, on flush) logs each distinct failure once at
/// Error, naming the LBA, and only counts a VM's retries of it; a volume that logs its own failures is not logged again.
/// </summary>
public class DeviceErrorLogTests
{
    const int Bs = 512;

    /// <summary>A memory device whose reads and writes touching a failing block, and (when told) flushes, throw EIO as a file would.</summary>
    sealed class FailingDevice(MemoryBlockDevice inner) : IBlockDevice
    {
        public readonly HashSet<long> FailingBlocks = new();
        public bool FailFlush;
        public string Name => "disk.img";
        public long Length => inner.Length;
        public int SectorSize => inner.SectorSize;
        public int PreferredWriteUnit => inner.PreferredWriteUnit;
        public bool CanDeallocate => inner.CanDeallocate;
        bool Hits(long offset, long length) => FailingBlocks.Any(b => b * Bs < offset + length && offset < (b + 1) * Bs);
        static IOException Eio(string call) => new($"disk.img: {call} failed: Input/output error (errno 5)");
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) =>
            Hits(offset, buffer.Length) ? ValueTask.FromException(Eio("pread")) : inner.ReadAsync(offset, buffer, ct);
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) =>
            Hits(offset, data.Length) ? ValueTask.FromException(Eio("pwrite")) : inner.WriteAsync(offset, data, fua, ct);
        public ValueTask FlushAsync(CancellationToken ct = default) => FailFlush ? ValueTask.FromException(Eio("fdatasync")) : inner.FlushAsync(ct);
        public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => inner.DiscardAsync(offset, length, ct);
        public (bool Allocated, long Length) GetAllocation(long offset) => inner.GetAllocation(offset);
        public void Dispose() => inner.Dispose();
    }

    sealed class Sink : ILogEventSink
    {
        readonly List<LogEvent> _events = new();
        public void Emit(LogEvent e) { lock (_events) _events.Add(e); }
        public List<LogEvent> At(LogEventLevel level) { lock (_events) return _events.Where(e => e.Level == level).ToList(); }
        public int Count { get { lock (_events) return _events.Count; } }
    }

    /// <summary>The event as the server's console shows it ({Message:lj}: strings unquoted).</summary>
    static string Text(LogEvent e)
    {
        var w = new StringWriter();
        new Serilog.Formatting.Display.MessageTemplateTextFormatter("{Message:lj}").Format(e, w);
        return w.ToString();
    }

    static string? Prop(LogEvent e, string name) => e.Properties.TryGetValue(name, out var v) && v is ScalarValue s ? s.Value?.ToString() : null;

    sealed class Lun
    {
        public readonly FailingDevice Device = new(new MemoryBlockDevice(4096L * Bs));
        public readonly Sink Log = new();
        public readonly ScsiLogicalUnit Unit;
        public readonly ScsiTarget Target;
        public readonly ItNexus A = Harness.MakeNexus("iqn.2026-11.test:a", 0x23D000000001);

        public Lun(VolumeOperation volumeLogs = VolumeOperation.None, TimeSpan? window = null)
        {
            var log = new Serilog.LoggerConfiguration().MinimumLevel.Verbose().WriteTo.Sink(Log).CreateLogger();
            Unit = new ScsiLogicalUnit(0, new PlainVolume(Device, Bs, "iqn.2026-11.test:target/0"), new LogicalUnitOptions
            {
                Serial = "S", IdentitySeed = "x", VolumeLogsDeviceErrors = volumeLogs, DeviceErrorLogWindow = window ?? TimeSpan.FromMinutes(1),
            }, log);
            Target = new ScsiTarget(Harness.TargetName, [Unit], Serilog.Core.Logger.None);
        }

        public ScsiResponse Exec(byte[] cdb, byte[]? dataOut = null) =>
            Target.ExecuteAsync(new ScsiCommand
            {
                Nexus = A, Lun = 0, Cdb = cdb, DataOut = dataOut ?? ReadOnlyMemory<byte>.Empty, ExpectedTransferLength = (uint)(dataOut?.Length ?? 0),
                Direction = dataOut != null ? DataDirection.Write : DataDirection.Read,
            }, default).AsTask().GetAwaiter().GetResult();

        public void ReadFails(ulong lba, uint blocks)
        {
            using var r = Exec(Harness.Read16(lba, blocks));
            SenseAssert.Is(r, SenseKey.MediumError, 0x11, 0x00);
        }

        public void WriteFails(ulong lba, uint blocks)
        {
            using var r = Exec(Harness.Write16(lba, blocks), new byte[blocks * Bs]);
            SenseAssert.Is(r, SenseKey.MediumError, 0x0C, 0x00);
        }

        public void FlushFails()
        {
            using var r = Exec(Harness.Rw10(0x35, 0, 0));
            SenseAssert.Is(r, SenseKey.HardwareError, 0x44, 0x00);
        }
    }

    [Test]
    public void A_failing_read_is_one_Error_naming_the_LBA_its_retries_none_and_another_LBA_a_new_one()
    {
        var lun = new Lun();
        lun.Device.FailingBlocks.UnionWith([100, 200]);
        lun.ReadFails(100, 8);
        var errors = lun.Log.At(LogEventLevel.Error);
        Assert.That(errors, Has.Count.EqualTo(1));
        var e = errors[0];
        Assert.That((Prop(e, "Operation"), Prop(e, "Lba"), Prop(e, "First"), Prop(e, "Last")), Is.EqualTo(("read", "100", "100", "107")));
        Assert.That((Prop(e, "Unit"), Prop(e, "Command"), Prop(e, "Initiator")), Is.EqualTo(($"{Harness.TargetName} LUN 0", "READ(16)", "iqn.2026-11.test:a")));
        Assert.That(Prop(e, "Volume"), Is.EqualTo("iqn.2026-11.test:target/0"));
        Assert.That(Prop(e, "Error"), Does.Contain("pread failed: Input/output error (errno 5)"));

        for (int i = 0; i < 100; i++) lun.ReadFails(100, 8);
        Assert.That(lun.Log.At(LogEventLevel.Error), Has.Count.EqualTo(1), "a VM retrying the bad block logs no more Errors");
        Assert.That(lun.Log.Count, Is.EqualTo(1), "nor anything else within the summary window");

        lun.ReadFails(200, 1);
        errors = lun.Log.At(LogEventLevel.Error);
        Assert.That(errors, Has.Count.EqualTo(2), "a different LBA is news");
        Assert.That((Prop(errors[1], "Operation"), Prop(errors[1], "Lba")), Is.EqualTo(("read", "200")));
        Assert.That(lun.Unit.DeviceErrors.Failures, Is.EqualTo(102), "every failure is counted");
    }

    [Test]
    public void A_failing_write_is_logged_apart_from_a_failing_read_of_the_same_LBA()
    {
        var lun = new Lun();
        lun.Device.FailingBlocks.Add(300);
        for (int i = 0; i < 100; i++) lun.WriteFails(300, 4);
        lun.ReadFails(300, 4);
        var errors = lun.Log.At(LogEventLevel.Error);
        Assert.That(errors.Select(e => (Prop(e, "Operation"), Prop(e, "Lba"), Prop(e, "Command"))),
            Is.EqualTo(new[] { ("write", "300", "WRITE(16)"), ("read", "300", "READ(16)") }));
        Assert.That(Prop(errors[0], "Error"), Does.Contain("pwrite failed: Input/output error"));
    }

    [Test]
    public void A_failing_flush_is_one_Error_however_often_the_initiator_flushes_again()
    {
        var lun = new Lun();
        lun.Device.FailFlush = true;
        for (int i = 0; i < 101; i++) lun.FlushFails();
        var errors = lun.Log.At(LogEventLevel.Error);
        Assert.That(errors, Has.Count.EqualTo(1));
        Assert.That(Text(errors[0]), Does.Contain("LUN 0: device flush failed on iqn.2026-11.test:target/0 (SYNCHRONIZE CACHE(10) from iqn.2026-11.test:a)"));
        Assert.That(Prop(errors[0], "Error"), Does.Contain("fdatasync failed: Input/output error (errno 5)"));
        Assert.That(lun.Log.Count, Is.EqualTo(1));
        Assert.That(lun.Unit.DeviceErrors.Failures, Is.EqualTo(101));
    }

    [Test]
    public void Repeats_are_summarised_in_a_Warning_once_the_window_has_passed()
    {
        var lun = new Lun(window: TimeSpan.Zero);
        lun.Device.FailingBlocks.Add(7);
        lun.Device.FailFlush = true;
        lun.ReadFails(7, 1);
        lun.FlushFails();
        lun.ReadFails(7, 1); // a repeat; the window (zero) has passed, so it is summarised now
        var warnings = lun.Log.At(LogEventLevel.Warning);
        Assert.That(warnings, Has.Count.EqualTo(1));
        Assert.That((Prop(warnings[0], "Repeats"), Prop(warnings[0], "Pairs"), Prop(warnings[0], "Top"), Prop(warnings[0], "TopCount")),
            Is.EqualTo(("1", "1", "read at LBA 7", "1")));
        lun.FlushFails();
        warnings = lun.Log.At(LogEventLevel.Warning);
        Assert.That(warnings, Has.Count.EqualTo(2));
        Assert.That(Prop(warnings[1], "Top"), Is.EqualTo("flush"), "the count restarts after each summary");
        Assert.That(lun.Log.At(LogEventLevel.Error), Has.Count.EqualTo(2), "one Error for the read, one for the flush");
    }

    [Test]
    public void A_volume_that_logs_its_own_failures_is_not_logged_again_but_still_counted()
    {
        var lun = new Lun(volumeLogs: VolumeOperation.All);
        lun.Device.FailingBlocks.Add(5);
        lun.Device.FailFlush = true;
        lun.ReadFails(5, 1);
        lun.WriteFails(5, 1);
        lun.FlushFails();
        Assert.That(lun.Log.Count, Is.Zero);
        Assert.That(lun.Unit.DeviceErrors.Failures, Is.EqualTo(3));
    }

    [Test]
    public void A_volume_that_logs_only_its_write_and_flush_failures_gets_its_read_failures_logged_by_the_unit()
    {
        // The integrity volume's case: its journal and flush failures are its own log's, a failed device read is not.
        var lun = new Lun(volumeLogs: VolumeOperation.Write | VolumeOperation.Flush);
        lun.Device.FailingBlocks.Add(5);
        lun.Device.FailFlush = true;
        lun.WriteFails(5, 1);
        lun.FlushFails();
        Assert.That(lun.Log.Count, Is.Zero, "the volume logged those");
        lun.ReadFails(5, 1);
        lun.ReadFails(5, 1);
        var errors = lun.Log.At(LogEventLevel.Error);
        Assert.That(errors, Has.Count.EqualTo(1), "the read failure, once");
        Assert.That(Prop(errors[0], "Operation"), Is.EqualTo("read"));
        Assert.That(Prop(errors[0], "Lba"), Is.EqualTo("5"));
        Assert.That(lun.Unit.DeviceErrors.Failures, Is.EqualTo(4));
    }

    [Test]
    public void Each_unit_keeps_its_own_record()
    {
        var one = new Lun();
        var two = new Lun();
        one.Device.FailingBlocks.Add(9);
        two.Device.FailingBlocks.Add(9);
        one.ReadFails(9, 1);
        two.ReadFails(9, 1);
        Assert.That(one.Log.At(LogEventLevel.Error), Has.Count.EqualTo(1));
        Assert.That(two.Log.At(LogEventLevel.Error), Has.Count.EqualTo(1), "the same LBA failing on another LUN is news there");
    }

    [Test]
    public void An_EXTENDED_COPY_logs_the_failing_source_read_and_destination_write_once_each()
    {
        var lun = new Lun();
        lun.Device.FailingBlocks.UnionWith([40, 1000]);
        var naa = ThirdPartyCopyTests.NaaDesignator(lun.Unit);
        void Copy(ulong src, ulong dst)
        {
            var p = ThirdPartyCopyTests.Params(1, 0, [naa], [new ThirdPartyCopyTests.Seg(0, 0, 8, src, dst)]);
            using var r = lun.Exec(ThirdPartyCopyTests.XcopyCdb(p.Length), p);
            Assert.That(r.Status, Is.EqualTo(ScsiStatus.CheckCondition));
            Assert.That(SenseAssert.Parse(r.Sense).Key, Is.EqualTo(SenseKey.CopyAborted));
        }
        for (int i = 0; i < 3; i++) Copy(40, 2000);   // the source read fails at LBA 40
        for (int i = 0; i < 3; i++) Copy(2000, 996);  // the destination write of LBAs 996..1003 fails
        var errors = lun.Log.At(LogEventLevel.Error);
        Assert.That(errors.Select(e => (Prop(e, "Operation"), Prop(e, "Lba"), Prop(e, "Command"))),
            Is.EqualTo(new[] { ("read", "40", "EXTENDED COPY"), ("write", "996", "EXTENDED COPY") }));
        Assert.That(lun.Unit.DeviceErrors.Failures, Is.EqualTo(6));
    }

    [Test]
    public void A_verification_failure_is_left_to_the_volume_that_reported_it()
    {
        var h = new Harness();
        h.Volume.FailingLba = 12;
        using var r = h.Exec(Harness.Read16(10, 4));
        SenseAssert.Is(r, SenseKey.MediumError, 0x11, 0x00);
        Assert.That(h.Unit.DeviceErrors.Failures, Is.Zero, "a tag mismatch is not a device I/O error");
    }
}
