using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using Serilog;
using Serilog.Core;
using Serilog.Events;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>Collects Serilog events in memory so tests can count the one event per failure.</summary>
public sealed class CapturingSink : ILogEventSink
{
    private readonly List<LogEvent> _events = new();
    public void Emit(LogEvent e) { lock (_events) _events.Add(e); }
    public IReadOnlyList<LogEvent> Events { get { lock (_events) return _events.ToList(); } }

    /// <summary>Verification-failure events (the ones carrying an Lba property at Warning or above).</summary>
    public IReadOnlyList<LogEvent> Failures => Events.Where(e => e.Level >= LogEventLevel.Warning && e.Properties.ContainsKey("Lba")).ToList();

    public static ulong LbaOf(LogEvent e) => (ulong)((ScalarValue)e.Properties["Lba"]).Value!;
    public static string? Prop(LogEvent e, string name) =>
        e.Properties.TryGetValue(name, out var v) && v is ScalarValue s ? s.Value?.ToString() : null;

    public ILogger Logger() => new LoggerConfiguration().MinimumLevel.Verbose().WriteTo.Sink(this).CreateLogger();
}

internal static class T
{
    public static readonly byte[] Key = Enumerable.Range(1, 32).Select(i => (byte)i).ToArray();

    public static MemoryBlockDevice Memory(ulong blocks, int blockSize = 4096, TagAlgorithm alg = TagAlgorithm.Crc32c, string name = "mem") =>
        new(IntegrityVolume.DeviceBytesFor(blocks, blockSize, alg), name);

    public static FormatOptions Format(int blockSize = 4096, TagAlgorithm alg = TagAlgorithm.Crc32c, bool force = false, long? tagCacheBytes = null) =>
        new() { BlockSize = blockSize, Algorithm = alg, Key = alg == TagAlgorithm.HmacSha256 ? Key : default, Force = force, TagCacheBytes = tagCacheBytes };

    public static OpenOptions Open(TagAlgorithm alg = TagAlgorithm.Crc32c, bool writeBack = true) =>
        new() { Key = alg == TagAlgorithm.HmacSha256 ? Key : default, WriteBack = writeBack };

    /// <summary>A block whose bytes encode (lba, version) so any misplaced or stale block is recognisable.</summary>
    public static byte[] Pattern(ulong lba, int blocks, int blockSize, int version)
    {
        var b = new byte[blocks * blockSize];
        for (int i = 0; i < blocks; i++)
        {
            var s = b.AsSpan(i * blockSize, blockSize);
            var rnd = new Random(HashCode.Combine(lba + (ulong)i, version));
            rnd.NextBytes(s);
            BitConverter.TryWriteBytes(s, lba + (ulong)i);
            BitConverter.TryWriteBytes(s[8..], version);
        }
        return b;
    }

    public static async Task<byte[]> ReadOk(IntegrityVolume v, ulong lba, int blocks)
    {
        var buf = new byte[blocks * v.BlockSize];
        var r = await v.ReadAsync(lba, buf);
        Assert.That(r.Status, Is.EqualTo(VolumeStatus.Ok), $"read of {blocks} blocks at LBA {lba}: {r}");
        return buf;
    }

    public static async Task WriteOk(IntegrityVolume v, ulong lba, byte[] data, bool fua = false)
    {
        var r = await v.WriteAsync(lba, data, fua);
        Assert.That(r.Status, Is.EqualTo(VolumeStatus.Ok), $"write at LBA {lba}: {r}");
    }

    /// <summary>A volume filled with pattern 1 and closed (its journal applied), then opened again through the device
    /// <paramref name="wrap"/> makes of its memory, with an empty tag cache of <paramref name="tagCacheBytes"/>.</summary>
    public static async Task<(D Dev, MemoryBlockDevice Mem, IntegrityVolume V, CapturingSink Sink)> FilledThrough<D>(ulong blocks, int bs, long tagCacheBytes, Func<MemoryBlockDevice, D> wrap)
        where D : IBlockDevice
    {
        var sink = new CapturingSink();
        var mem = Memory(blocks, bs);
        await using (var f = await IntegrityVolume.FormatAsync(mem, Format(bs), sink.Logger()))
            await WriteOk(f, 0, Pattern(0, (int)blocks, bs, 1), fua: true);
        var dev = wrap(mem);
        return (dev, mem, await IntegrityVolume.OpenAsync(dev, new OpenOptions { TagCacheBytes = tagCacheBytes }, sink.Logger()), sink);
    }

    public static void Flip(MemoryBlockDevice d, long offset, int bit = 0)
    {
        var b = new byte[1];
        d.Read(offset, b);
        b[0] ^= (byte)(1 << bit);
        d.Write(offset, b);
    }
}

/// <summary>Passes every call to a memory device; tests override the calls they disturb.</summary>
internal class ForwardingDevice(MemoryBlockDevice inner) : IBlockDevice
{
    protected MemoryBlockDevice Inner => inner;
    public virtual string Name => inner.Name;
    public long Length => inner.Length;
    public int SectorSize => inner.SectorSize;
    /// <summary>Forwarded like every other property: a default interface member left out here falls back silently (4 KiB,
    /// the journal's old form) in every test device built on this class.</summary>
    public int PreferredWriteUnit => inner.PreferredWriteUnit;
    public bool CanDeallocate => inner.CanDeallocate;
    public virtual ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) => inner.ReadAsync(offset, buffer, ct);
    public virtual ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) => inner.WriteAsync(offset, data, fua, ct);
    public virtual ValueTask FlushAsync(CancellationToken ct = default) => inner.FlushAsync(ct);
    public virtual ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => inner.DiscardAsync(offset, length, ct);
    public (bool Allocated, long Length) GetAllocation(long offset) => inner.GetAllocation(offset);
    public void Dispose() { }
}
