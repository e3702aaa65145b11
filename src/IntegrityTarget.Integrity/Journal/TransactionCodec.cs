namespace IntegrityTarget.Integrity;

/// <summary>
/// Journal transaction: [header | record table | block payloads], 4 KiB aligned, one checksum over all
/// of it (CRC-32C, or HMAC-SHA256 under a keyed volume). Header: magic "ITTXN001", seq u64, total
/// bytes u32, record count u32, header bytes u32, flags u32, checksum[32]; then 24 B records:
/// type u32 (1 = data block, 2 = map entry), pad u32, a u64 (LBA | logical chunk), b u64 (physical
/// chunk | map entry). Data records' block images follow the header in record order.
/// </summary>
internal static class Txn
{
    public static ReadOnlySpan<byte> Magic => "ITTXN001"u8;
    public const int FixedHeader = 64;
    public const int RecordBytes = 24;
    public const uint TypeData = 1, TypeMap = 2;
    /// <summary>Header flag: every earlier transaction was durable when this one was written, so a damaged
    /// predecessor followed by this one is corruption, not a lost write-back tail.</summary>
    public const uint FlagPriorDurable = 1;
    public static int HeaderBytes(int records) => (int)Geometry.RoundUp(FixedHeader + (long)records * RecordBytes, 4096);
}
