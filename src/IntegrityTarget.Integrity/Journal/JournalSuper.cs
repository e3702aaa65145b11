using System.Buffers.Binary;

namespace IntegrityTarget.Integrity;

/// <summary>
/// Journal superblock (one 512 B sector at the journal start, rewritten in place with FUA at each
/// checkpoint: a sector write is atomic, so it is the old or the new one). It says at which sequence
/// number the transactions starting at the journal area's first byte begin.
/// </summary>
internal readonly record struct JournalSuper(ulong StartSequence, ulong Checkpoints)
{
    public static ReadOnlySpan<byte> Magic => "ITJOURNL"u8;

    public byte[] Serialize()
    {
        var b = new byte[512];
        Magic.CopyTo(b);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), 1);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(16), StartSequence);
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(24), Checkpoints);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(508), Tagger.Crc(b.AsSpan(0, 508)));
        return b;
    }

    public static JournalSuper? Parse(ReadOnlySpan<byte> s, out string? problem)
    {
        problem = null;
        if (!s[..8].SequenceEqual(Magic)) { problem = "journal superblock magic missing"; return null; }
        if (BinaryPrimitives.ReadUInt32LittleEndian(s[508..]) != Tagger.Crc(s[..508])) { problem = "journal superblock checksum mismatch"; return null; }
        return new JournalSuper(BinaryPrimitives.ReadUInt64LittleEndian(s[16..]), BinaryPrimitives.ReadUInt64LittleEndian(s[24..]));
    }
}
