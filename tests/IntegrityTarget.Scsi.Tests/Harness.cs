using System.Buffers.Binary;
using IntegrityTarget.Scsi;
using IntegrityTarget.Storage;

namespace IntegrityTarget.Scsi.Tests;

/// <summary>A volume that fails verification at one LBA (like a corrupted block under the integrity volume) and counts calls.</summary>
internal sealed class FlakyVolume : IBlockVolume
{
    private readonly PlainVolume _inner;
    public ulong? FailingLba { get; set; }
    public int Reads, Writes, Flushes, Unmaps;
    public bool LastWriteFua;

    public FlakyVolume(ulong blocks, int blockSize = 512, uint atomicBlocks = 8)
    { _inner = new PlainVolume(new MemoryBlockDevice((long)blocks * blockSize), blockSize); MaxAtomicWriteBlocks = atomicBlocks; }
    public string Name => "flaky";
    public int BlockSize => _inner.BlockSize;
    public ulong BlockCount => _inner.BlockCount;
    public uint MaxAtomicWriteBlocks { get; }
    public bool WriteBack { get => _inner.WriteBack; set => _inner.WriteBack = value; }
    public bool SupportsUnmap => true;
    public string TagAlgorithm => "test";
    public VolumeCounters Counters => _inner.Counters;

    public async ValueTask<VolumeResult> ReadAsync(ulong lba, Memory<byte> buffer, IoContext? context = null, CancellationToken ct = default)
    {
        Interlocked.Increment(ref Reads);
        var r = await _inner.ReadAsync(lba, buffer, context, ct);
        ulong blocks = (ulong)(buffer.Length / BlockSize);
        if (r.IsOk && FailingLba is { } bad && bad >= lba && bad < lba + blocks)
        {
            buffer.Span[(int)((bad - lba) * (ulong)BlockSize)..].Fill(0xEE); // what follows the failure is garbage
            return VolumeResult.Integrity(bad, bad - lba);
        }
        return r;
    }

    public ValueTask<VolumeResult> WriteAsync(ulong lba, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
    { Interlocked.Increment(ref Writes); LastWriteFua = fua; return _inner.WriteAsync(lba, data, fua, ct); }
    public ValueTask<VolumeResult> FlushAsync(CancellationToken ct = default) { Interlocked.Increment(ref Flushes); return _inner.FlushAsync(ct); }
    public ValueTask<VolumeResult> UnmapAsync(ulong lba, ulong blocks, CancellationToken ct = default) { Interlocked.Increment(ref Unmaps); return _inner.UnmapAsync(lba, blocks, ct); }
    public ValueTask<VolumeResult> WriteZeroesAsync(ulong lba, ulong blocks, bool deallocate, CancellationToken ct = default) => _inner.WriteZeroesAsync(lba, blocks, deallocate, ct);
    public ValueTask<LbaExtent> GetLbaStatusAsync(ulong lba, CancellationToken ct = default) => _inner.GetLbaStatusAsync(lba, ct);
    public bool CanGrow => true;
    public ValueTask<VolumeResult> GrowAsync(ulong newBlockCount, CancellationToken ct = default) => _inner.GrowAsync(newBlockCount, ct);
    public ValueTask DisposeAsync() => _inner.DisposeAsync();
}

/// <summary>One target with one LUN and two initiator nexuses, driven with raw CDB bytes.</summary>
internal sealed class Harness
{
    public const string TargetName = "iqn.2026-11.test:target";
    public readonly ScsiTarget Target;
    public readonly ScsiLogicalUnit Unit;
    public readonly FlakyVolume Volume;
    public readonly ItNexus A = MakeNexus("iqn.2026-11.test:a", 0x23D000000001);
    public readonly ItNexus B = MakeNexus("iqn.2026-11.test:b", 0x23D000000002);

    public Harness(ulong blocks = 4096, int blockSize = 512, string? prFile = null, bool readOnly = false, string seed = "seed", uint atomicBlocks = 8,
        IReadOnlyList<TargetPortGroup>? portGroups = null, IDurableRecord? prStore = null, bool prSurvivesFailover = false)
    {
        Volume = new FlakyVolume(blocks, blockSize, atomicBlocks);
        Unit = new ScsiLogicalUnit(0, Volume, new LogicalUnitOptions
        {
            Serial = "SER0001", IdentitySeed = seed, PersistentReservationFile = prFile, ReadOnly = readOnly, PortGroups = portGroups,
            ReservationStore = prStore, ReservationsSurviveFailover = prSurvivesFailover,
        }, Serilog.Core.Logger.None);
        Target = new ScsiTarget(TargetName, [Unit], Serilog.Core.Logger.None);
    }

    public static ItNexus MakeNexus(string iqn, ulong isid, ushort relativePort = 1)
    {
        var port = $"{iqn},i,0x{isid:x12}";
        var tid = new byte[(4 + port.Length + 1 + 3) & ~3];
        tid[0] = 0x45; // iSCSI, format 01b
        BinaryPrimitives.WriteUInt16BigEndian(tid.AsSpan(2), (ushort)(tid.Length - 4));
        System.Text.Encoding.ASCII.GetBytes(port, tid.AsSpan(4));
        return new ItNexus(iqn, port, $"{TargetName},t,0x{relativePort:x4}", relativePort, tid);
    }

    public ScsiResponse Exec(byte[] cdb, byte[]? dataOut = null, ItNexus? nexus = null, ulong lun = 0, CancellationToken ct = default)
    {
        var cmd = new ScsiCommand
        {
            Nexus = nexus ?? A, Lun = lun, Cdb = cdb, DataOut = dataOut ?? ReadOnlyMemory<byte>.Empty,
            ExpectedTransferLength = (uint)(dataOut?.Length ?? 0),
            Direction = dataOut != null ? DataDirection.Write : DataDirection.Read,
        };
        return Target.ExecuteAsync(cmd, ct).AsTask().GetAwaiter().GetResult();
    }

    public static byte[] Read16(ulong lba, uint blocks, byte flags = 0) => Rw16(0x88, lba, blocks, flags);
    public static byte[] Write16(ulong lba, uint blocks, byte flags = 0) => Rw16(0x8A, lba, blocks, flags);
    public static byte[] Rw16(byte op, ulong lba, uint blocks, byte flags = 0)
    {
        var c = new byte[16]; c[0] = op; c[1] = flags;
        BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), blocks);
        return c;
    }
    public static byte[] Rw10(byte op, uint lba, ushort blocks, byte flags = 0)
    {
        var c = new byte[10]; c[0] = op; c[1] = flags;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), blocks);
        return c;
    }
    public static byte[] Pattern(int length, byte seed) { var b = new byte[length]; for (int i = 0; i < b.Length; i++) b[i] = (byte)(seed + i * 7); return b; }

    public void Write(ulong lba, byte[] data, ItNexus? n = null)
    {
        using var r = Exec(Write16(lba, (uint)(data.Length / Volume.BlockSize)), data, n);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), "setup write failed");
    }

    public byte[] Read(ulong lba, uint blocks, ItNexus? n = null)
    {
        using var r = Exec(Read16(lba, blocks), null, n);
        Assert.That(r.Status, Is.EqualTo(ScsiStatus.Good), "setup read failed");
        return r.DataIn.ToArray();
    }

    /// <summary>Clears the power-on unit attentions so tests start from a quiet nexus.</summary>
    public void Quiet(params ItNexus[] nexuses)
    {
        foreach (var n in nexuses) for (int i = 0; i < 8; i++) { using var r = Exec(new byte[6], null, n); if (r.Status == ScsiStatus.Good) break; }
    }
}

internal static class SenseAssert
{
    /// <summary>Key/ASC/ASCQ of fixed or descriptor sense.</summary>
    public static (byte Key, byte Asc, byte Ascq) Parse(ReadOnlyMemory<byte> sense)
    {
        var s = sense.Span;
        return (s[0] & 0x7F) == 0x72 ? ((byte)(s[1] & 0xF), s[2], s[3]) : ((byte)(s[2] & 0xF), s[12], s[13]);
    }

    public static void Is(ScsiResponse r, byte key, byte asc, byte ascq)
    {
        Assert.That(r.Status, NUnit.Framework.Is.EqualTo(ScsiStatus.CheckCondition), "status");
        Assert.That(Parse(r.Sense), NUnit.Framework.Is.EqualTo((key, asc, ascq)));
    }
}
