using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests;

/// <summary>
/// A minimal volatile-cache device for this suite's own power-loss checks (the full crash simulator and
/// its thousands of states live in the Crash tests): writes since the last flush are pending; a power
/// cut keeps each pending write whole, drops it, or keeps a random subset of its 512 B sectors, in issue
/// order. After <see cref="FailAfter"/> more mutating calls every call throws, like a dead disk.
/// </summary>
internal sealed class TornCacheDevice(MemoryBlockDevice durable) : IBlockDevice
{
    private readonly object _lock = new();
    private readonly List<(long Offset, byte[]? Data, int Length)> _pending = new();
    private long _budget = long.MaxValue;

    public void FailAfter(long calls) { lock (_lock) _budget = calls; }
    public string Name => "torn";
    public long Length => durable.Length;
    public int SectorSize => 512;
    public int PreferredWriteUnit => durable.PreferredWriteUnit;
    public bool CanDeallocate => true;

    private void Spend()
    {
        if (_budget <= 0) throw new IOException("torn: power lost");
        _budget--;
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
    {
        lock (_lock)
        {
            if (_budget <= 0) throw new IOException("torn: power lost");
            durable.Read(offset, buffer.Span);
            foreach (var (o, d, len) in _pending)
            {
                long s = Math.Max(o, offset), e = Math.Min(o + len, offset + buffer.Length);
                if (s >= e) continue;
                var dst = buffer.Span.Slice((int)(s - offset), (int)(e - s));
                if (d == null) dst.Clear(); else d.AsSpan((int)(s - o), (int)(e - s)).CopyTo(dst);
            }
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
    {
        lock (_lock)
        {
            Spend();
            if (fua)
            {
                // Durable now; pending older versions of these sectors must not resurface over it.
                durable.Write(offset, data.Span);
                for (int i = 0; i < _pending.Count; i++)
                {
                    var (o, d, len) = _pending[i];
                    long s = Math.Max(o, offset), e = Math.Min(o + len, offset + data.Length);
                    if (s >= e) continue;
                    var copy = d?.ToArray() ?? new byte[len];
                    data.Span.Slice((int)(s - offset), (int)(e - s)).CopyTo(copy.AsSpan((int)(s - o)));
                    _pending[i] = (o, copy, len);
                }
            }
            else _pending.Add((offset, data.ToArray(), data.Length));
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken ct = default)
    {
        lock (_lock)
        {
            Spend();
            foreach (var p in _pending) Apply(durable, p, _ => true);
            _pending.Clear();
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        lock (_lock) { Spend(); _pending.Add((offset, null, (int)length)); }
        return ValueTask.CompletedTask;
    }

    public (bool Allocated, long Length) GetAllocation(long offset) => (true, Length - offset);

    /// <summary>What a power cut now leaves: each pending write whole, dropped, or torn at sectors.</summary>
    public MemoryBlockDevice Crash(int seed)
    {
        lock (_lock)
        {
            var img = new MemoryBlockDevice(durable.Length, "torn-image");
            var buf = new byte[1 << 20];
            for (long o = 0; o < durable.Length; o += buf.Length)
            {
                int n = (int)Math.Min(buf.Length, durable.Length - o);
                durable.Read(o, buf.AsSpan(0, n));
                if (buf.AsSpan(0, n).IndexOfAnyExcept((byte)0) >= 0) img.Write(o, buf.AsSpan(0, n));
            }
            var rnd = new Random(seed);
            foreach (var p in _pending)
            {
                int mode = rnd.Next(3);
                if (mode == 0) Apply(img, p, _ => true);
                else if (mode == 2) { int salt = rnd.Next(); Apply(img, p, i => ((i * 7919) ^ salt) % 2 == 0); }
            }
            return img;
        }
    }

    private static void Apply(MemoryBlockDevice dst, (long Offset, byte[]? Data, int Length) p, Func<int, bool> keep)
    {
        for (int i = 0; i < p.Length / 512; i++)
            if (keep(i))
            {
                if (p.Data == null) dst.Write(p.Offset + i * 512L, new byte[512]);
                else dst.Write(p.Offset + i * 512L, p.Data.AsSpan(i * 512, 512));
            }
    }

    public void Dispose() { }
}

public class PowerLossTests
{
    /// <summary>
    /// Random single-stream workloads (small, whole-chunk and mixed writes, FUA, flushes, unmaps) with the
    /// power cut after a random number of device calls, sometimes again during recovery; afterwards every
    /// block reads and verifies, holds its last durable version or a later one, and no command is torn.
    /// </summary>
    [TestCase(4096, TagAlgorithm.Crc32c)]
    [TestCase(512, TagAlgorithm.HmacSha256)]
    public async Task EveryBlockIsReadableDurableAndUntornAfterPowerLoss(int bs, TagAlgorithm alg)
    {
        var problems = new List<string>();
        ulong blocks = (ulong)(2 << 20) / (ulong)bs;
        int bpc = 128 * 1024 / bs;
        for (int iter = 0; iter < 40; iter++)
        {
            var rnd = new Random(iter);
            var mem = new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor(blocks, bs, alg, 1 << 20));
            var dev = new TornCacheDevice(mem);
            var v = await IntegrityVolume.FormatAsync(dev, new FormatOptions { BlockSize = bs, Algorithm = alg, Key = alg == TagAlgorithm.HmacSha256 ? T.Key : default, JournalBytes = 1 << 20 }, new CapturingSink().Logger());
            var durable = new int[blocks];
            var later = new List<int>[blocks];
            for (ulong i = 0; i < blocks; i++) later[i] = new();
            var cmds = new List<(ulong Lba, int N, int Ver)>();
            dev.FailAfter(rnd.Next(0, 1500));
            for (int ver = 1; ver < 400; ver++)
            {
                int kind = rnd.Next(20);
                if (kind == 0)
                {
                    if (!(await v.FlushAsync()).IsOk) break;
                    for (ulong i = 0; i < blocks; i++) if (later[i].Count > 0) { durable[i] = later[i][^1]; later[i].Clear(); }
                    continue;
                }
                int n = kind < 4 ? rnd.Next(1, 3 * bpc) : rnd.Next(1, 8);
                ulong lba = (ulong)rnd.Next(0, (int)blocks - n);
                bool unmap = kind == 19, fua = !unmap && rnd.Next(6) == 0;
                for (int k = 0; k < n; k++) later[lba + (ulong)k].Add(unmap ? 0 : ver);
                cmds.Add((lba, n, unmap ? 0 : ver));
                var r = unmap ? await v.UnmapAsync(lba, (ulong)n) : await v.WriteAsync(lba, T.Pattern(lba, n, bs, ver), fua);
                if (!r.IsOk) break;
                if (fua) for (int k = 0; k < n; k++) { durable[lba + (ulong)k] = ver; later[lba + (ulong)k].Clear(); }
            }
            await v.AbandonAsync();
            var image = dev.Crash(iter);
            if (iter % 3 == 0)
            {
                // Power fails again in the middle of recovery.
                var again = new TornCacheDevice(image);
                again.FailAfter(rnd.Next(0, 20));
                try { await (await IntegrityVolume.OpenAsync(again, T.Open(alg), new CapturingSink().Logger())).AbandonAsync(); }
                catch (IOException) { }
                image = again.Crash(iter + 1000);
            }
            var sink = new CapturingSink();
            await using var v2 = await IntegrityVolume.OpenAsync(image, T.Open(alg), sink.Logger());
            var all = new byte[(int)blocks * bs];
            var rr = await v2.ReadAsync(0, all);
            if (!rr.IsOk) { problems.Add($"iter {iter}: read failed {rr}"); continue; }
            var seen = new int[blocks];
            for (ulong l = 0; l < blocks; l++)
            {
                var b = all.AsSpan((int)l * bs, bs);
                int got = b.IndexOfAnyExcept((byte)0) < 0 ? 0 : BitConverter.ToInt32(b[8..]);
                seen[l] = got;
                if (got != 0 && !b.SequenceEqual(T.Pattern(l, 1, bs, got))) { problems.Add($"iter {iter}: LBA {l} holds garbage"); break; }
                if (got != durable[l] && !later[l].Contains(got)) { problems.Add($"iter {iter}: LBA {l} has v{got}, durable v{durable[l]}, later [{string.Join(",", later[l])}]"); break; }
            }
            for (int ci = 0; ci < cmds.Count; ci++)
            {
                var (lba, n, ver) = cmds[ci];
                if (ver == 0 || cmds.Skip(ci + 1).Any(o => o.Lba < lba + (ulong)n && lba < o.Lba + (ulong)o.N)) continue;
                int has = Enumerable.Range(0, n).Count(k => seen[lba + (ulong)k] == ver);
                if (has != 0 && has != n) { problems.Add($"iter {iter}: command v{ver} at {lba}+{n} torn ({has}/{n} new)"); break; }
            }
            if (sink.Failures.Count > 0) problems.Add($"iter {iter}: {sink.Failures.Count} verification failures");
        }
        Assert.That(problems, Is.Empty);
    }
}
