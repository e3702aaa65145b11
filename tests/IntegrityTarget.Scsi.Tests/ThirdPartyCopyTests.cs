using System.Buffers.Binary;
using IntegrityTarget.Scsi;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Scsi.Tests;

/// <summary>EXTENDED COPY(LID1), RECEIVE COPY RESULTS and VPD 8Fh against one or two targets.</summary>
public class ThirdPartyCopyTests
{
    private Harness _h = null!;

    [SetUp]
    public void SetUp() { _h = new Harness(blocks: 8192); _h.Quiet(_h.A, _h.B); }

    /// <summary>The NAA designation descriptor (header + 16 bytes) a copy names a unit by.</summary>
    internal static byte[] NaaDesignator(ScsiLogicalUnit u)
    {
        var d = new byte[20];
        d[0] = 0x01; d[1] = 0x03; d[3] = 16;
        u.NaaIdentifier.Span.CopyTo(d.AsSpan(4));
        return d;
    }

    internal sealed record Seg(ushort Src, ushort Dst, ushort Blocks, ulong SrcLba, ulong DstLba, byte Type = 0x02);

    /// <summary>An EXTENDED COPY(LID1) parameter list with identification CSCD descriptors and segment descriptors.</summary>
    internal static byte[] Params(byte listId, int usage, IReadOnlyList<byte[]> designators, IReadOnlyList<Seg> segs, int blockSize = 512, byte cscdType = 0xE4)
    {
        int tdl = 32 * designators.Count, sdl = 28 * segs.Count;
        var p = new byte[16 + tdl + sdl];
        p[0] = listId; p[1] = (byte)(usage << 3);
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(2), (ushort)tdl);
        BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(8), (uint)sdl);
        for (int i = 0; i < designators.Count; i++)
        {
            var t = p.AsSpan(16 + 32 * i, 32);
            t[0] = cscdType;
            designators[i].CopyTo(t[4..]);
            t[29] = (byte)(blockSize >> 16); t[30] = (byte)(blockSize >> 8); t[31] = (byte)blockSize;
        }
        for (int i = 0; i < segs.Count; i++)
        {
            var s = p.AsSpan(16 + tdl + 28 * i, 28);
            s[0] = segs[i].Type;
            BinaryPrimitives.WriteUInt16BigEndian(s[2..], 0x18);
            BinaryPrimitives.WriteUInt16BigEndian(s[4..], segs[i].Src);
            BinaryPrimitives.WriteUInt16BigEndian(s[6..], segs[i].Dst);
            BinaryPrimitives.WriteUInt16BigEndian(s[10..], segs[i].Blocks);
            BinaryPrimitives.WriteUInt64BigEndian(s[12..], segs[i].SrcLba);
            BinaryPrimitives.WriteUInt64BigEndian(s[20..], segs[i].DstLba);
        }
        return p;
    }

    internal static byte[] XcopyCdb(int paramLen)
    {
        var c = new byte[16]; c[0] = 0x83;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), (uint)paramLen);
        return c;
    }

    internal static byte[] RcrCdb(byte sa, byte listId)
    {
        var c = new byte[16]; c[0] = 0x84; c[1] = sa; c[2] = listId;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), 1024);
        return c;
    }

    private ScsiResponse Xcopy(byte[] p, ItNexus? n = null, Harness? h = null) => (h ?? _h).Exec(XcopyCdb(p.Length), p, n);

    [Test]
    public void CopyWithinOneUnitMovesTheBlocksAndReportsItsStatusOnce()
    {
        var data = Harness.Pattern(64 * 512, 3);
        _h.Write(100, data);
        var p = Params(7, 0, [NaaDesignator(_h.Unit)], [new Seg(0, 0, 64, 100, 5000)]);
        using (var r = Xcopy(p)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(_h.Read(5000, 64), Is.EqualTo(data));

        using (var s = _h.Exec(RcrCdb(0, 7)))
        {
            Assert.That(s.Status, Is.EqualTo(ScsiStatus.Good));
            var d = s.DataIn.Span;
            Assert.That(d[4] & 0x7F, Is.EqualTo(1), "completed without errors");
            Assert.That(BinaryPrimitives.ReadUInt16BigEndian(d[5..]), Is.EqualTo(1), "segments processed");
            Assert.That(d[7], Is.EqualTo(0), "transfer count in bytes");
            Assert.That(BinaryPrimitives.ReadUInt32BigEndian(d[8..]), Is.EqualTo(64 * 512));
        }
        using var again = _h.Exec(RcrCdb(0, 7));
        SenseAssert.Is(again, 0x05, 0x24, 0x00); // a finished copy's status is reported once
    }

    [Test]
    public void SegmentOfZeroBlocksCopiesNothingAndCountsAsProcessed()
    {
        // SPC-4: a block→block segment whose NUMBER OF BLOCKS is zero transfers no data; it is not an error.
        _h.Write(0, Harness.Pattern(8 * 512, 4));
        _h.Write(100, Harness.Pattern(8 * 512, 6));
        var p = Params(4, 0, [NaaDesignator(_h.Unit)], [new Seg(0, 0, 0, 0, 100), new Seg(0, 0, 8, 0, 200)]);
        using (var r = Xcopy(p)) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), () => $"sense {Convert.ToHexString(r.Sense.Span)}");
        Assert.That(_h.Read(100, 8), Is.EqualTo(Harness.Pattern(8 * 512, 6)), "nothing written by the empty segment");
        Assert.That(_h.Read(200, 8), Is.EqualTo(Harness.Pattern(8 * 512, 4)), "the segment after it ran");
        using var s = _h.Exec(RcrCdb(0, 4));
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(s.DataIn.Span[5..]), Is.EqualTo(2), "segments processed");
    }

    [Test]
    public void OverlappingCopyUpwardsWithinOneUnitIsNotSmearedByItsOwnWrites()
    {
        var data = Harness.Pattern(4096 * 512, 9); // 2 MiB: more than one copy chunk
        _h.Write(0, data[..(2048 * 512)]);
        _h.Write(2048, data[(2048 * 512)..]);
        using (var r = Xcopy(Params(1, 3, [NaaDesignator(_h.Unit)], [new Seg(0, 0, 4096, 0, 1000)])))
            Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        var back = _h.Read(1000, 2048).Concat(_h.Read(3048, 2048)).ToArray();
        Assert.That(back, Is.EqualTo(data));
    }

    [Test]
    public void FailingSourceBlockStopsTheCopyWithCopyAbortedNamingTheBlockAndTheSegment()
    {
        _h.Write(10, Harness.Pattern(32 * 512, 1));
        _h.Write(200, Harness.Pattern(8 * 512, 2));
        _h.Volume.FailingLba = 215;
        var p = Params(3, 0, [NaaDesignator(_h.Unit)], [new Seg(0, 0, 32, 10, 1000), new Seg(0, 0, 8, 210, 2000)]);
        using var r = Xcopy(p);
        SenseAssert.Is(r, SenseKey.CopyAborted, 0x11, 0x00);
        var s = r.Sense.Span;
        Assert.That(s[0] & 0x80, Is.EqualTo(0x80), "INFORMATION valid");
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(s[3..]), Is.EqualTo(215), "INFORMATION = failing LBA");
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(s[8..]), Is.EqualTo(1), "COMMAND-SPECIFIC INFORMATION = segment number");
        Assert.That(_h.Unit.Health.DistinctBadLbas, Is.EqualTo(1));
        Assert.That(_h.Unit.Health.LowestBadLba, Is.EqualTo(215));
        Assert.That(_h.Read(1000, 32), Is.EqualTo(Harness.Pattern(32 * 512, 1)), "the first segment was copied");

        using var st = _h.Exec(RcrCdb(0, 3));
        Assert.That(st.DataIn.Span[4] & 0x7F, Is.EqualTo(2), "completed with errors");
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(st.DataIn.Span[5..]), Is.EqualTo(1));
    }

    [Test]
    public void UnknownDesignatorAndMissingDescriptorIndexAreCopyTargetNotReachable()
    {
        var stranger = NaaDesignator(_h.Unit); stranger[10] ^= 0xFF;
        using (var r = Xcopy(Params(1, 0, [stranger], [new Seg(0, 0, 8, 0, 100)])))
            SenseAssert.Is(r, SenseKey.CopyAborted, 0x0D, 0x02);
        using (var r = Xcopy(Params(1, 0, [NaaDesignator(_h.Unit)], [new Seg(0, 1, 8, 0, 100)])))
            SenseAssert.Is(r, SenseKey.CopyAborted, 0x0D, 0x02);
        using (var r = Xcopy(Params(1, 0, [NaaDesignator(_h.Unit)], [new Seg(0, 0, 2048, 0, 8191)])))
            SenseAssert.Is(r, SenseKey.CopyAborted, 0x0D, 0x02); // beyond the end of the destination
    }

    [Test]
    public void ParameterListIsCheckedBeforeAnythingIsCopied()
    {
        var me = NaaDesignator(_h.Unit);
        using (var r = _h.Exec(XcopyCdb(0))) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), "zero length: nothing to do");
        var nine = Enumerable.Repeat(me, ScsiLogicalUnit.MaxCscdDescriptors + 1).ToList();
        using (var r = Xcopy(Params(1, 0, nine, [new Seg(0, 0, 8, 0, 100)]))) SenseAssert.Is(r, 0x05, 0x26, 0x06);
        var segs = Enumerable.Repeat(new Seg(0, 0, 1, 0, 100), ScsiLogicalUnit.MaxSegmentDescriptors + 1).ToList();
        using (var r = Xcopy(Params(1, 0, [me], segs))) SenseAssert.Is(r, 0x05, 0x26, 0x08);
        using (var r = Xcopy(Params(1, 0, [me], [new Seg(0, 0, 8, 0, 100)], cscdType: 0xE0))) SenseAssert.Is(r, 0x05, 0x26, 0x07);
        using (var r = Xcopy(Params(1, 0, [me], [new Seg(0, 0, 8, 0, 100, Type: 0x03)]))) SenseAssert.Is(r, 0x05, 0x26, 0x09);
        var full = Params(1, 0, [me], [new Seg(0, 0, 8, 0, 100)]);
        using (var r = _h.Exec(XcopyCdb(full.Length - 1), full[..^1])) SenseAssert.Is(r, 0x05, 0x1A, 0x00);
        var big = Params(1, 0, Enumerable.Repeat(me, 8).ToList(), Enumerable.Repeat(new Seg(0, 0, 1, 0, 100), 32).ToList());
        using (var r = Xcopy(big)) SenseAssert.Is(r, 0x05, 0x1A, 0x00); // descriptor lists longer than 1024 bytes
        Assert.That(_h.Volume.Writes, Is.EqualTo(0));
    }

    [Test]
    public void ReadOnlyDestinationIsCopyAbortedWriteProtected()
    {
        var h = new Harness(blocks: 1024, readOnly: true);
        h.Quiet(h.A);
        // EXTENDED COPY is a write command for reservations, but a read-only unit can still be the copy manager.
        using var r = Xcopy(Params(1, 0, [NaaDesignator(h.Unit)], [new Seg(0, 0, 8, 0, 100)]), h: h);
        SenseAssert.Is(r, SenseKey.CopyAborted, 0x27, 0x00);
    }

    /// <summary>A host-side resolver that lets one initiator (and no other) reach the units of a second target.</summary>
    private sealed class AclResolver(ScsiTarget other, string allowed) : ICopyTargetResolver
    {
        public ScsiLogicalUnit? Resolve(ItNexus nexus, ReadOnlySpan<byte> designator)
        {
            if (nexus.InitiatorName != allowed) return null;
            foreach (var u in other.Units) if (u.Local is { } l && l.MatchesDesignator(designator)) return l;
            return null;
        }
    }

    [Test]
    public void CopyAcrossTargetsReachesOnlyUnitsTheSameInitiatorMayAccess()
    {
        var other = new Harness(blocks: 4096, seed: "other");
        other.Quiet(other.A);
        var data = Harness.Pattern(16 * 512, 5);
        other.Write(40, data);
        _h.Target.CopyTargets = new AclResolver(other.Target, _h.A.InitiatorName);
        var p = Params(2, 3, [NaaDesignator(other.Unit), NaaDesignator(_h.Unit)], [new Seg(0, 1, 16, 40, 700)]);

        using (var denied = Xcopy(p, _h.B)) SenseAssert.Is(denied, SenseKey.CopyAborted, 0x0D, 0x02);
        using (var ok = Xcopy(p, _h.A)) Assert.That(ok.Status, Is.EqualTo(ScsiStatus.Good));
        Assert.That(_h.Read(700, 16), Is.EqualTo(data));

        _h.Target.CopyTargets = null; // without the host's resolver only this target's own units are reachable
        using var alone = Xcopy(p, _h.A);
        SenseAssert.Is(alone, SenseKey.CopyAborted, 0x0D, 0x02);
    }

    [Test]
    public void CopyStatusIsPerNexusAndGoneWhenTheNexusIsLost()
    {
        using (var r = Xcopy(Params(9, 0, [NaaDesignator(_h.Unit)], [new Seg(0, 0, 1, 0, 1)]))) Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        using (var other = _h.Exec(RcrCdb(0, 9), nexus: _h.B)) SenseAssert.Is(other, 0x05, 0x24, 0x00);
        _h.Target.NexusLost(_h.A);
        _h.Target.NexusCreated(_h.A);
        _h.Quiet(_h.A);
        using var gone = _h.Exec(RcrCdb(0, 9));
        SenseAssert.Is(gone, 0x05, 0x24, 0x00);
    }

    [Test]
    public void OperatingParametersDescribeTheCopyManager()
    {
        using var r = _h.Exec(RcrCdb(3, 0));
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        var d = r.DataIn.Span;
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(d) + 4, Is.EqualTo(d.Length));
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(d[8..]), Is.EqualTo(ScsiLogicalUnit.MaxCscdDescriptors));
        Assert.That(BinaryPrimitives.ReadUInt16BigEndian(d[10..]), Is.EqualTo(ScsiLogicalUnit.MaxSegmentDescriptors));
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(d[12..]), Is.EqualTo(ScsiLogicalUnit.MaxDescriptorListLength));
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(d[16..]), Is.EqualTo(0xFFFF * 512));
        Assert.That(d[43], Is.EqualTo(2));
        Assert.That(d[44..46].ToArray(), Is.EqualTo(new byte[] { 0x02, 0xE4 }));
        using var bad = _h.Exec(RcrCdb(1, 0));
        SenseAssert.Is(bad, 0x05, 0x24, 0x00); // RECEIVE DATA: no held data
    }

    [Test]
    public void ThirdPartyCopyVpdPageAndThe3pcBitAdvertiseTheCopyManager()
    {
        using (var inq = _h.Exec([0x12, 0, 0, 0, 96, 0])) Assert.That(inq.DataIn.Span[5] & 0x08, Is.EqualTo(0x08), "3PC");
        using var r = _h.Exec([0x12, 1, 0x8F, 0x04, 0, 0]);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good));
        var d = r.DataIn.Span;
        var types = new List<ushort>();
        for (int pos = 4; pos < d.Length;)
        {
            types.Add(BinaryPrimitives.ReadUInt16BigEndian(d[pos..]));
            int len = BinaryPrimitives.ReadUInt16BigEndian(d[(pos + 2)..]);
            Assert.That(len % 4, Is.EqualTo(0), "descriptor lengths are multiples of 4");
            if (types[^1] == 0x0001) Assert.That(d.Slice(pos + 4, 8).ToArray(), Is.EqualTo(new byte[] { 7, 0x83, 1, 0x00, 0x84, 2, 0x00, 0x03 }));
            // SPC-4 7.8.17: Parameter Data is 32 bytes (length 001Ch), General Copy Operations 36 (length 0020h).
            if (types[^1] == 0x0004) Assert.That(len, Is.EqualTo(0x1C), "Parameter Data descriptor length");
            if (types[^1] == 0x8001) Assert.That(len, Is.EqualTo(0x20), "General Copy Operations descriptor length");
            pos += 4 + len;
        }
        Assert.That(types, Is.EqualTo(new ushort[] { 0x0001, 0x0004, 0x0008, 0x000C, 0x8001 }));
    }
}
