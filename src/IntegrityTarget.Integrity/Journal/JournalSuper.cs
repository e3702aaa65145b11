using System.Buffers.Binary;

namespace IntegrityTarget.Integrity;

/// <summary>
/// Journal superblock (one 512 B sector at the journal start, rewritten in place with FUA: a sector write
/// is atomic, so it is the old or the new one). Transactions of the current <see cref="Epoch"/> start at
/// <see cref="StartSequence"/>, at <see cref="StartOffset"/> in the ring. A recovery that has decided which
/// prefix of the log to keep records its end in <see cref="EndSequence"/> before it changes anything, so a
/// crash during replay recovers the same prefix again without validating it a second time.
/// <para><see cref="Version"/> 3 (<see cref="CompactVersion"/>) says the ring may hold compact transactions (512 B
/// granularity); binaries that know only version 2 refuse it rather than read a compact transaction as the end of the log.
/// It is set only in the superblock write that empties the ring (docs "On-disk format", "Journal version 3").</para>
/// </summary>
internal readonly record struct JournalSuper(uint Epoch, ulong StartSequence, long StartOffset, ulong Checkpoints, ulong EndSequence, uint Version = JournalSuper.AlignedVersion)
{
    public static ReadOnlySpan<byte> Magic => "ITJOURNL"u8;
    /// <summary>Every transaction in the ring is 4 KiB-aligned (what binaries up to 1838a70 write and read).</summary>
    public const uint AlignedVersion = 2;
    /// <summary>The ring may hold transactions of 512 B granularity.</summary>
    public const uint CompactVersion = 3;

    /// <summary>The version a writer whose transactions are aligned to <paramref name="align"/> bytes names.</summary>
    public static uint VersionFor(int align) => align < Txn.Aligned ? CompactVersion : AlignedVersion;

    /// <summary>True when a recovery decided to keep only the transactions before <see cref="EndSequence"/>
    /// (exclusive; 0 = no end recorded: scan to the end of the log).</summary>
    public bool HasEnd => EndSequence != 0;

    public byte[] Serialize()
    {
        var b = new byte[512];
        Magic.CopyTo(b);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), Version);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(12), Epoch);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), StartSequence);
        BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(24), StartOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(32), Checkpoints);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(40), EndSequence);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(508), Tagger.Crc(b.AsSpan(0, 508)));
        return b;
    }

    public static JournalSuper? Parse(ReadOnlySpan<byte> s, long areaBytes, out string? problem)
    {
        problem = null;
        if (!s[..8].SequenceEqual(Magic)) { problem = "journal superblock magic missing"; return null; }
        if (BinaryPrimitives.ReadUInt32LittleEndian(s[508..]) != Tagger.Crc(s[..508])) { problem = "journal superblock checksum mismatch"; return null; }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(s[8..]);
        if (version > CompactVersion)
        {
            problem = $"journal superblock version {version} is newer than this build understands ({AlignedVersion} or {CompactVersion}); open it with a newer integrity-target";
            return null;
        }
        if (version < AlignedVersion) { problem = $"journal superblock version {version} (expected {AlignedVersion} or {CompactVersion})"; return null; }
        var j = new JournalSuper(BinaryPrimitives.ReadUInt32LittleEndian(s[12..]), BinaryPrimitives.ReadUInt64LittleEndian(s[16..]),
            BinaryPrimitives.ReadInt64LittleEndian(s[24..]), BinaryPrimitives.ReadUInt64LittleEndian(s[32..]), BinaryPrimitives.ReadUInt64LittleEndian(s[40..]), version);
        if (j.StartOffset < 0 || j.StartOffset >= areaBytes || j.StartOffset % (version == AlignedVersion ? Txn.Aligned : Txn.Compact) != 0) { problem = $"journal superblock start offset {j.StartOffset} outside the ring of {areaBytes} bytes"; return null; }
        if (j.HasEnd && j.EndSequence < j.StartSequence) { problem = $"journal superblock end {j.EndSequence} before its start {j.StartSequence}"; return null; }
        return j;
    }
}
