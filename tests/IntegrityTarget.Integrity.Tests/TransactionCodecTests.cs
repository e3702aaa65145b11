using System.Buffers.Binary;
using CsCheck;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>Journal transactions (4 KiB-aligned as in journal version 2, and compact as in version 3) survive encode → decode
/// unchanged, and any damage is seen.</summary>
public class TransactionCodecTests
{
    private static readonly Tagger Crc = new(TagAlgorithm.Crc32c, new byte[16], default);
    private static readonly Tagger Hmac = new(TagAlgorithm.HmacSha256, new byte[16], T.Key);
    private static readonly Geometry G = Geometry.Compute(512, TagAlgorithm.Crc32c, 1 << 16, 4L << 20);

    /// <summary>Builds a sealed transaction: records in order, the data records' blocks as their payload.</summary>
    private static byte[] Build(Tagger tagger, ulong seq, uint epoch, uint flags, IReadOnlyList<TxnRecord> records, Func<int, byte> fill, int align = Txn.Aligned)
    {
        long blocks = records.Where(r => r.IsData).Sum(r => (long)r.Count);
        int total = (int)Txn.TotalBytes(records.Count, blocks, 512, align), hb = Txn.HeaderBytes(records.Count, blocks * 512, align);
        var buf = new byte[total];
        TransactionCodec.WriteHeader(buf, new TxnHeader(seq, epoch, flags, total, records.Count, hb));
        int p = hb;
        for (int i = 0; i < records.Count; i++)
        {
            TransactionCodec.WriteRecord(buf, i, records[i]);
            if (records[i].IsData) for (int k = 0; k < records[i].Count * 512; k++) buf[p++] = fill(p);
        }
        TransactionCodec.Seal(buf, tagger);
        return buf;
    }

    private static readonly Gen<TxnRecord> GenRecord = Gen.OneOf(
        Gen.Select(Gen.ULong[0, (1UL << 16) - 300], Gen.Int[1, 200], Gen.Long[0, 290], (lba, n, slot) =>
            TxnRecord.Data(lba / 256 * 256 + (ulong)Math.Min((long)(lba % 256), 256 - n), n, slot)),
        Gen.Select(Gen.Long[0, 255], Gen.Long[0, 296], Gen.UInt128, (c, e, d) => TxnRecord.Remap(c, e, d)));

    [Test]
    public void Every_transaction_decodes_to_what_was_encoded()
    {
        Gen.Select(GenRecord.List[0, 60], Gen.ULong, Gen.UInt, Gen.UInt[0, 1], Gen.Bool, Gen.Bool).Sample((records, seq, epoch, flags, keyed, compact) =>
        {
            var tagger = keyed ? Hmac : Crc;
            int align = compact ? Txn.Compact : Txn.Aligned;
            var buf = Build(tagger, seq, epoch, flags, records, i => (byte)(i * 31 + 7), align);
            long payload = records.Where(r => r.IsData).Sum(r => (long)r.Count) * 512;
            Assert.That(buf.Length % align, Is.Zero);
            var h = TransactionCodec.ReadHeader(buf, G.JournalAreaBytes, out var why);
            Assert.That(h, Is.Not.Null, why);
            Assert.That(h!.Value, Is.EqualTo(new TxnHeader(seq, epoch, flags, buf.Length, records.Count, Txn.HeaderBytes(records.Count, payload, align))));
            Assert.That(h.Value.PriorDurable, Is.EqualTo(flags == 1));
            Assert.That(TransactionCodec.CheckSeal(buf, tagger), Is.True);
            Assert.That(Enumerable.Range(0, records.Count).Select(i => TransactionCodec.ReadRecord(buf, i)), Is.EqualTo(records));
            Assert.That(TransactionCodec.CheckRecords(buf, h.Value, G), Is.Null);
            var at = TransactionCodec.PayloadOffsets(buf, h.Value, 512);
            int expect = h.Value.HeaderBytes;
            for (int i = 0; i < records.Count; i++)
            {
                Assert.That(at[i], Is.EqualTo(records[i].IsData ? expect : -1));
                if (records[i].IsData) expect += records[i].Count * 512;
            }
        }, iter: 200);
    }

    [Test]
    public void A_flipped_bit_anywhere_fails_the_checksum_and_one_in_the_header_fails_the_header_too()
    {
        var records = new[] { TxnRecord.Data(40, 3, 7), TxnRecord.Remap(2, 9, (UInt128)12345), TxnRecord.Data(300, 1, 8) };
        foreach (var tagger in new[] { Crc, Hmac })
        {
            var clean = Build(tagger, 77, 3, Txn.FlagPriorDurable, records, i => (byte)i);
            foreach (int at in new[] { 0, 9, 20, 36, 60, Txn.FixedHeader + 5, Txn.FixedHeader + Txn.RecordBytes + 30, 4096 + 100, clean.Length - 1 })
            {
                var b = (byte[])clean.Clone();
                b[at] ^= 0x10;
                bool headerOk = TransactionCodec.ReadHeader(b, G.JournalAreaBytes, out _) is not null;
                Assert.That(headerOk && TransactionCodec.CheckSeal(b, tagger), Is.False, $"{tagger.Algorithm}: bit at byte {at}");
                if (at < Txn.HeaderCrcAt + 4) Assert.That(headerOk, Is.False, $"header byte {at} is covered by the header's own CRC");
            }
        }
    }

    [Test]
    public void Impossible_sizes_and_out_of_range_records_are_refused_with_a_reason()
    {
        var buf = Build(Crc, 1, 1, 0, [TxnRecord.Data(10, 2, 3)], i => 1);
        BinaryPrimitives.WriteInt32LittleEndian(buf.AsSpan(24), 4095); // total not a whole number of sectors
        BinaryPrimitives.WriteUInt32LittleEndian(buf.AsSpan(Txn.HeaderCrcAt), Tagger.Crc(buf.AsSpan(0, Txn.HeaderCrcAt)));
        Assert.That(TransactionCodec.ReadHeader(buf, G.JournalAreaBytes, out var why), Is.Null);
        Assert.That(why, Does.Contain("impossible sizes"));

        var cross = Build(Crc, 1, 1, 0, [TxnRecord.Data(250, 10, 3)], i => 1); // runs over a chunk boundary (256 blocks)
        var h = TransactionCodec.ReadHeader(cross, G.JournalAreaBytes, out _)!.Value;
        Assert.That(TransactionCodec.CheckRecords(cross, h, G), Does.Contain("record 0 out of range"));
        var far = Build(Crc, 1, 1, 0, [TxnRecord.Remap(G.LogicalChunks, 1, 0)], i => 1);
        Assert.That(TransactionCodec.CheckRecords(far, TransactionCodec.ReadHeader(far, G.JournalAreaBytes, out _)!.Value, G), Does.Contain("out of range"));
    }

    /// <summary>A compact transaction torn at any 512 B sector (that sector from another transaction, or zeros) is never taken
    /// for a whole one: its header or its checksum fails.</summary>
    [Test]
    public void A_compact_transaction_with_any_sector_from_elsewhere_fails_its_header_or_its_checksum()
    {
        var records = new[] { TxnRecord.Data(40, 8, 7), TxnRecord.Remap(2, 9, (UInt128)12345), TxnRecord.Data(300, 3, 8) };
        foreach (var tagger in new[] { Crc, Hmac })
        {
            var clean = Build(tagger, 77, 3, 0, records, i => (byte)i, Txn.Compact);
            var other = Build(tagger, 78, 3, 0, records, i => (byte)(i + 1), Txn.Compact); // same shape, the next sequence
            Assert.That(clean.Length, Is.EqualTo(512 + 11 * 512));
            for (int s = 0; s < clean.Length / 512; s++)
                foreach (var from in new[] { other, new byte[other.Length] })
                {
                    var b = (byte[])clean.Clone();
                    from.AsSpan(s * 512, 512).CopyTo(b.AsSpan(s * 512));
                    bool headerOk = TransactionCodec.ReadHeader(b, G.JournalAreaBytes, out _) is { Seq: 77 };
                    Assert.That(headerOk && TransactionCodec.CheckSeal(b, tagger), Is.False, $"{tagger.Algorithm}: sector {s}");
                }
        }
    }

    [Test]
    public void Sizes_of_both_forms_are_plausible_and_others_are_not()
    {
        Assert.That(Txn.PlausibleSizes(1, 4096, 8192), Is.True, "version 2");
        Assert.That(Txn.PlausibleSizes(1, 512, 4608), Is.True, "compact");
        Assert.That(Txn.PlausibleSizes(20, 1024, 1024), Is.True);
        Assert.That(Txn.PlausibleSizes(20, 512, 1024), Is.False, "records past the header bytes");
        Assert.That(Txn.PlausibleSizes(1, 8192, 8192), Is.False, "header larger than its records rounded to 4 KiB");
        Assert.That(Txn.PlausibleSizes(1, 512, 4600), Is.False, "not whole sectors");
        Assert.That(Txn.PlausibleSizes(-1, 512, 512), Is.False);
    }
}
