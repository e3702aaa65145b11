using System.Buffers.Binary;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Scsi.Tests;

public class BlockCommandTests
{
    private Harness _h = null!;

    [SetUp]
    public void SetUp() { _h = new Harness(); _h.Quiet(_h.A, _h.B); }

    [Test]
    public void WrittenBlocksReadBackUnchangedThroughEveryReadCdbSize()
    {
        var data = Harness.Pattern(4 * 512, 3);
        _h.Write(10, data);
        using var r10 = _h.Exec(Harness.Rw10(0x28, 10, 4));
        var r12c = new byte[12]; r12c[0] = 0xA8; BinaryPrimitives.WriteUInt32BigEndian(r12c.AsSpan(2), 10); BinaryPrimitives.WriteUInt32BigEndian(r12c.AsSpan(6), 4);
        using var r12 = _h.Exec(r12c);
        using var r6 = _h.Exec([0x08, 0, 0, 10, 4, 0]);
        Assert.That(r10.DataIn.ToArray(), Is.EqualTo(data));
        Assert.That(r12.DataIn.ToArray(), Is.EqualTo(data));
        Assert.That(r6.DataIn.ToArray(), Is.EqualTo(data));
        Assert.That(r10.TransferLength, Is.EqualTo(data.Length));
    }

    [Test]
    public void Read6WithZeroLengthTransfers256Blocks()
    {
        using var r = _h.Exec([0x08, 0, 0, 0, 0, 0]);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(r.DataIn.Length, Is.EqualTo(256 * 512));
    }

    [Test]
    public void Read10WithZeroLengthMovesNoData()
    {
        using var r = _h.Exec(Harness.Rw10(0x28, 0, 0));
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(r.DataIn.Length, Is.Zero);
    }

    [TestCase(4095ul, 2u)]
    [TestCase(4096ul, 1u)]
    [TestCase(ulong.MaxValue, 1u)]
    [TestCase(0x8000000000000000ul, 1u)]
    public void ReadBeyondCapacityIsLbaOutOfRangeWithoutTouchingTheVolume(ulong lba, uint blocks)
    {
        using var r = _h.Exec(Harness.Read16(lba, blocks));
        SenseAssert.Is(r, 0x05, 0x21, 0x00);
        Assert.That(_h.Volume.Reads, Is.Zero);
    }

    [Test]
    public void WriteBeyondCapacityIsLbaOutOfRangeAndWritesNothing()
    {
        using var r = _h.Exec(Harness.Write16(4095, 2), new byte[1024]);
        SenseAssert.Is(r, 0x05, 0x21, 0x00);
        Assert.That(_h.Volume.Writes, Is.Zero);
    }

    [Test]
    public void FuaWriteReachesTheVolumeAsFua()
    {
        using var r = _h.Exec(Harness.Write16(0, 1, flags: 0x08), new byte[512]);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(_h.Volume.LastWriteFua, Is.True);
        using var r2 = _h.Exec(Harness.Write16(0, 1), new byte[512]);
        Assert.That(_h.Volume.LastWriteFua, Is.False);
    }

    [Test]
    public void ReadProtectFieldIsRejectedWithPointerToByteOneBitSeven()
    {
        using var r = _h.Exec(Harness.Rw10(0x28, 0, 1, flags: 0x80));
        SenseAssert.Is(r, 0x05, 0x24, 0x00);
        var s = r.Sense.Span;
        Assert.That(s[15], Is.EqualTo(0x80 | 0x40 | 0x08 | 7), "SKSV, C/D, BPV, bit 7");
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(s[16..]), Is.EqualTo(1));
    }

    [Test]
    public void ShortDataOutWritesOnlyTheWholeBlocksThatArrived()
    {
        _h.Write(0, Harness.Pattern(1024, 1));
        var b = Enumerable.Repeat((byte)'b', 512).ToArray();
        using var r = _h.Exec(Harness.Rw10(0x2A, 0, 2), b);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(r.TransferLength, Is.EqualTo(1024), "the CDB asked for two blocks; the transport reports the residual");
        var back = _h.Read(0, 2);
        Assert.That(back[..512], Is.EqualTo(b));
        Assert.That(back[512..], Is.EqualTo(Harness.Pattern(1024, 1)[512..]));
    }

    [Test]
    public void IntegrityFailureReturnsGoodBlocksThenMediumErrorWithFailingLba()
    {
        var data = Harness.Pattern(8 * 512, 9);
        _h.Write(100, data);
        _h.Volume.FailingLba = 103;
        using var r = _h.Exec(Harness.Read16(100, 8));
        SenseAssert.Is(r, 0x03, 0x11, 0x00);
        var s = r.Sense.Span;
        Assert.That(s[0], Is.EqualTo(0xF0), "fixed format, VALID");
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(s[3..]), Is.EqualTo(103));
        Assert.That(r.DataIn.ToArray(), Is.EqualTo(data[..(3 * 512)]));
        Assert.That(r.TransferLength, Is.EqualTo(3 * 512));
    }

    [Test]
    public void IntegrityFailureAboveFourGigaBlocksUsesDescriptorSense()
    {
        var h = new Harness(blocks: 0x1_0000_0010);
        h.Quiet(h.A);
        h.Volume.FailingLba = 0x1_0000_0001;
        using var r = h.Exec(Harness.Read16(0x1_0000_0000, 4));
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.CheckCondition));
        var s = r.Sense.Span;
        Assert.That(s[0], Is.EqualTo(0x72));
        Assert.That((s[1], s[2], s[3]), Is.EqualTo(((byte)3, (byte)0x11, (byte)0)));
        Assert.That(s[8], Is.EqualTo(0x00), "information descriptor");
        Assert.That(s[10] & 0x80, Is.EqualTo(0x80), "VALID");
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(s[12..]), Is.EqualTo(0x1_0000_0001ul));
        Assert.That(r.DataIn.Length, Is.EqualTo(512));
    }

    [Test]
    public void VerifyWithoutByteCheckReportsTheFailingBlockAsMediumError()
    {
        _h.Volume.FailingLba = 7;
        using var r = _h.Exec(Harness.Rw16(0x8F, 0, 16));
        SenseAssert.Is(r, 0x03, 0x11, 0x00);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(r.Sense.Span[3..]), Is.EqualTo(7));
    }

    [Test]
    public void VerifyByteCheckMismatchIsMiscompareWithOffsetOfFirstDifference()
    {
        var data = Harness.Pattern(4 * 512, 5);
        _h.Write(20, data);
        var other = (byte[])data.Clone();
        other[1500] ^= 0x58;
        using var ok = _h.Exec(Harness.Rw16(0x8F, 20, 4, flags: 0x02), data);
        Assert.That(ok.Status, Is.EqualTo(ScsiStatus.Good));
        using var bad = _h.Exec(Harness.Rw16(0x8F, 20, 4, flags: 0x02), other);
        SenseAssert.Is(bad, 0x0E, 0x1D, 0x00);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(bad.Sense.Span[3..]), Is.EqualTo(1500));
    }

    [Test]
    public void CompareAndWriteWritesWhenTheVerifyHalfMatches()
    {
        var old = Harness.Pattern(512, 1); var @new = Harness.Pattern(512, 2);
        _h.Write(5, old);
        using var r = _h.Exec(Caw(5, 1), [.. old, .. @new]);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(_h.Read(5, 1), Is.EqualTo(@new));
    }

    [Test]
    public void CompareAndWriteMiscompareReportsOffsetAndWritesNothing()
    {
        var old = Harness.Pattern(1024, 1);
        _h.Write(5, old);
        var verify = (byte[])old.Clone(); verify[700] ^= 1;
        int writes = _h.Volume.Writes;
        using var r = _h.Exec(Caw(5, 2), [.. verify, .. new byte[1024]]);
        SenseAssert.Is(r, 0x0E, 0x1D, 0x00);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(r.Sense.Span[3..]), Is.EqualTo(700));
        Assert.That(_h.Volume.Writes, Is.EqualTo(writes));
        Assert.That(_h.Read(5, 2), Is.EqualTo(old));
    }

    [Test]
    public void CompareAndWriteOnAFailingBlockIsMediumErrorAndWritesNothing()
    {
        var old = Harness.Pattern(1024, 1);
        _h.Write(5, old);
        _h.Volume.FailingLba = 6;
        int writes = _h.Volume.Writes;
        using var r = _h.Exec(Caw(5, 2), [.. old, .. new byte[1024]]);
        SenseAssert.Is(r, 0x03, 0x11, 0x00);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(r.Sense.Span[3..]), Is.EqualTo(6));
        Assert.That(_h.Volume.Writes, Is.EqualTo(writes));
    }

    [Test]
    public void CompareAndWriteWithWrongDataOutSizeIsIllegalRequest()
    {
        using var r = _h.Exec(Caw(0, 1), new byte[4 * 512]);
        SenseAssert.Is(r, 0x05, 0x24, 0x00);
    }

    [Test]
    public void ConcurrentCompareAndWritesOnOneBlockLetExactlyOneWin()
    {
        var old = Harness.Pattern(512, 1);
        _h.Write(9, old);
        var results = Enumerable.Range(0, 8).AsParallel().Select(i =>
        {
            using var r = _h.Exec(Caw(9, 1), [.. old, .. Harness.Pattern(512, (byte)(10 + i))]);
            return r.Status;
        }).ToList();
        Assert.That(results.Count(s => s == ScsiStatus.Good), Is.EqualTo(1));
    }

    private static byte[] Caw(ulong lba, byte blocks)
    {
        var c = new byte[16]; c[0] = 0x89;
        BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), lba);
        c[13] = blocks;
        return c;
    }

    [Test]
    public void UnmappedBlocksReadAsZerosAndReportDeallocated()
    {
        _h.Write(0, Harness.Pattern(256 * 512, 4));
        var p = new byte[24];
        BinaryPrimitives.WriteUInt16BigEndian(p, 22); BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(2), 16);
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), 128); BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(16), 128);
        using var r = _h.Exec([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], p);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(_h.Read(128, 128).All(b => b == 0), Is.True);
        Assert.That(_h.Read(0, 1), Is.EqualTo(Harness.Pattern(512, 4)));
        using var s = _h.Exec(GetLbaStatus(128, 64));
        Assert.That(s.Status, Is.EqualTo(ScsiStatus.Good));
        var d = s.DataIn.Span;
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(d[8..]), Is.EqualTo(128));
        Assert.That(d[20], Is.EqualTo(1), "deallocated");
    }

    [Test]
    public void UnmapDescriptorBeyondCapacityIsLbaOutOfRangeAndUnmapsNothing()
    {
        var p = new byte[40];
        BinaryPrimitives.WriteUInt16BigEndian(p, 38); BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(2), 32);
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), 0); BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(16), 1);
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(24), 4096); BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(32), 1);
        using var r = _h.Exec([0x42, 0, 0, 0, 0, 0, 0, 0, 40, 0], p);
        SenseAssert.Is(r, 0x05, 0x21, 0x00);
        Assert.That(_h.Volume.Unmaps, Is.Zero);
    }

    [Test]
    public void UnmapWithParameterListShorterThanHeaderIsParameterListLengthError()
    {
        using var r = _h.Exec([0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0], new byte[4]);
        SenseAssert.Is(r, 0x05, 0x1A, 0x00);
    }

    [Test]
    public void GetLbaStatusAtOrBeyondCapacityIsLbaOutOfRange()
    {
        using var r = _h.Exec(GetLbaStatus(4096, 24));
        SenseAssert.Is(r, 0x05, 0x21, 0x00);
        using var r2 = _h.Exec(GetLbaStatus(ulong.MaxValue, 24));
        SenseAssert.Is(r2, 0x05, 0x21, 0x00);
    }

    private static byte[] GetLbaStatus(ulong lba, uint alloc)
    {
        var c = new byte[16]; c[0] = 0x9E; c[1] = 0x12;
        BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), alloc);
        return c;
    }

    [Test]
    public void WriteSameRepeatsTheBlockAndUnmapBitWithZerosDeallocates()
    {
        var block = Harness.Pattern(512, 77);
        using var r = _h.Exec(Harness.Rw10(0x41, 50, 10), block);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        var back = _h.Read(50, 10);
        for (int i = 0; i < 10; i++) Assert.That(back.AsSpan(i * 512, 512).ToArray(), Is.EqualTo(block));
        using var u = _h.Exec(Harness.Rw10(0x41, 50, 10, flags: 0x08), new byte[512]);
        Assert.That(u.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(_h.Volume.Unmaps, Is.EqualTo(1));
        Assert.That(_h.Read(50, 10).All(b => b == 0), Is.True);
    }

    [Test]
    public void WriteSameWithUnmapBitDeallocatesEvenWhenTheBlockIsNotZero()
    {
        _h.Write(60, Harness.Pattern(4 * 512, 3));
        using var r = _h.Exec(Harness.Rw10(0x41, 60, 4, flags: 0x08), Enumerable.Repeat((byte)0xFF, 512).ToArray());
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(_h.Read(60, 4).All(b => b == 0), Is.True, "LBPRZ: unmapped blocks read as zeros");
    }

    [Test]
    public void WriteSameWithZeroBlocksRunsToTheEndOfTheMedium()
    {
        var block = Harness.Pattern(512, 5);
        using var r = _h.Exec(Harness.Rw10(0x41, 4090, 0), block);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        var back = _h.Read(4090, 6);
        Assert.That(back.AsSpan(5 * 512).ToArray(), Is.EqualTo(block));
    }

    [Test]
    public void CompareAndWriteWithABlockCountThatWrappedToZeroIsRejected()
    {
        var c = Caw(0, 0);
        using var r = _h.Exec(c, new byte[2 * 256 * 512]);
        SenseAssert.Is(r, 0x05, 0x24, 0x00);
        Assert.That(_h.Volume.Writes, Is.Zero);
    }

    [Test]
    public void OrWriteStoresTheOrOfMediumAndData()
    {
        _h.Write(30, Enumerable.Repeat((byte)0xA0, 1024).ToArray());
        using var r = _h.Exec(Harness.Rw16(0x8B, 30, 2), Enumerable.Repeat((byte)0x05, 1024).ToArray());
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(_h.Read(30, 2).All(b => b == 0xA5), Is.True);
    }

    [Test]
    public void WriteSameWithAnchorOrWrongDataSizeIsRejected()
    {
        using var anchor = _h.Exec(Harness.Rw16(0x93, 0, 1, flags: 0x10), new byte[512]);
        SenseAssert.Is(anchor, 0x05, 0x24, 0x00);
        using var size = _h.Exec(Harness.Rw10(0x41, 0, 1), new byte[1024]);
        SenseAssert.Is(size, 0x05, 0x24, 0x00);
    }

    [Test]
    public void SynchronizeCacheFlushesTheVolume()
    {
        using var r = _h.Exec(new byte[] { 0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0 });
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(_h.Volume.Flushes, Is.EqualTo(1));
    }

    [Test]
    public void ReadCapacityReportsLastLbaBlockSizeAndProvisioning()
    {
        using var r10 = _h.Exec(new byte[10] { 0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0 });
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(r10.DataIn.Span), Is.EqualTo(4095));
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(r10.DataIn.Span[4..]), Is.EqualTo(512));
        var c = new byte[16]; c[0] = 0x9E; c[1] = 0x10; c[13] = 32;
        using var r16 = _h.Exec(c);
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(r16.DataIn.Span), Is.EqualTo(4095));
        Assert.That(r16.DataIn.Span[14] & 0xC0, Is.EqualTo(0xC0), "LBPME and LBPRZ");
    }

    [Test]
    public void ReadCapacity10SaturatesAboveFourGigaBlocks()
    {
        var h = new Harness(blocks: 0x1_0000_0010);
        h.Quiet(h.A);
        using var r = h.Exec(new byte[10] { 0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0 });
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(r.DataIn.Span), Is.EqualTo(0xFFFFFFFF));
    }

    [Test]
    public void CancelledCommandDoesNotTouchTheVolume()
    {
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        using var r = _h.Exec(Harness.Write16(0, 1), new byte[512], ct: cts.Token);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.TaskAborted));
        Assert.That(_h.Volume.Writes, Is.Zero);
    }

    [Test]
    public void ReadOnlyUnitRejectsWritesAsWriteProtected()
    {
        var h = new Harness(readOnly: true);
        h.Quiet(h.A);
        using var r = h.Exec(Harness.Write16(0, 1), new byte[512]);
        SenseAssert.Is(r, 0x07, 0x27, 0x00);
        Assert.That(h.Volume.Writes, Is.Zero);
    }
}
