namespace IntegrityTarget.Integrity.Tests.Crash;

/// <summary>The checker's rules on hand-built histories (seq = harness event order, ops = device operation count).</summary>
public class CrashModelTests
{
    private static Command Cmd(int id, CommandKind kind, ulong lba, uint blocks, long startSeq, long completeSeq, long startOps, long completeOps, bool fua = false) =>
        new(id, kind, lba, blocks, fua) { StartSeq = startSeq, CompleteSeq = completeSeq, StartOps = startOps, CompleteOps = completeOps };

    [Test]
    public void An_unmap_that_completed_without_device_operations_may_show_as_zeros_over_older_data()
    {
        // #1 write made durable by FUA, #2 unmap completes with no device op (nothing to do yet), #3 flush, crash at op 5.
        var w = Cmd(1, CommandKind.Write, 0, 2, 1, 2, 0, 5, fua: true);
        var u = Cmd(2, CommandKind.Unmap, 0, 2, 3, 4, 5, 5);
        var f = Cmd(3, CommandKind.Flush, 0, 0, 5, 6, 5, 5);
        var model = new CrashModel([w, u, f], 4, writeThrough: false, atomicWriteBlocks: 256);
        Assert.That(model.CheckCrash(5, [BlockStamp.Zero, BlockStamp.Zero, BlockStamp.Zero, BlockStamp.Zero], new string?[4]), Is.Empty);
        var lost = model.CheckCrash(5, [1, 1, BlockStamp.Zero, BlockStamp.Zero], new string?[4]);
        Assert.That(lost, Has.Some.Contains("(b) LBA 0 lost durable #2 UNMAP"), "the flushed unmap must not be undone");
    }

    [Test]
    public void A_write_in_flight_at_the_crash_may_be_absent_but_not_torn()
    {
        var old = Cmd(1, CommandKind.Write, 0, 4, 1, 2, 0, 1, fua: true);
        var inFlight = Cmd(2, CommandKind.Write, 0, 4, 3, 4, 1, 9);
        var model = new CrashModel([old, inFlight], 4, writeThrough: false, atomicWriteBlocks: 4);
        Assert.That(model.CheckCrash(3, [1, 1, 1, 1], new string?[4]), Is.Empty, "all old");
        Assert.That(model.CheckCrash(3, [2, 2, 2, 2], new string?[4]), Is.Empty, "all new");
        Assert.That(model.CheckCrash(3, [2, 2, 1, 1], new string?[4]), Has.Some.Contains("(c) write #2 WRITE lba 0+4 is not atomic"));
        Assert.That(model.CheckCrash(3, [BlockStamp.Zero, 1, 1, 1], new string?[4]), Has.Some.Contains("(b) LBA 0 lost durable #1"));
    }

    [Test]
    public void A_version_from_a_command_issued_after_the_crash_is_reported()
    {
        var late = Cmd(1, CommandKind.Write, 0, 1, 1, 2, 7, 8);
        var model = new CrashModel([late], 1, writeThrough: false, atomicWriteBlocks: 1);
        Assert.That(model.CheckCrash(3, [1], new string?[1]), Has.Some.Contains("(e) LBA 0 holds the version of #1 WRITE lba 0+1, which was not issued yet"));
    }
}
