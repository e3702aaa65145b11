namespace IntegrityTarget.Storage;

/// <summary>What survives of the not-yet-durable writes when <see cref="CrashSimulatingDevice.Crash"/> cuts power.</summary>
public enum CrashMode
{
    /// <summary>Every pending write and discard is lost.</summary>
    Drop,
    /// <summary>Every pending write and discard reached the medium (in issue order).</summary>
    KeepAll,
    /// <summary>Each pending sector keeps its newest version with probability p, decided from (seed, sector).</summary>
    KeepRandom,
    /// <summary>Each pending write/discard keeps a random prefix or a random subset of its sectors, applied in issue order
    /// (so an older version of a sector may survive where the newer one did not).</summary>
    TearWrites,
}

public enum DeviceOperationKind { Write, Flush, Discard, Grow }

/// <summary>One mutating device call, as recorded by a <see cref="CrashSimulatingDevice"/> created with <c>record: true</c>.
/// Replaying a prefix of the record into a fresh device reproduces the device state at that crash point.
/// A grow is recorded as a <see cref="DeviceOperationKind.Grow"/> (new length in <see cref="Length"/>) followed by the flush that makes it durable.</summary>
public sealed record DeviceOperation(DeviceOperationKind Kind, long Offset, long Length, bool Fua, ReadOnlyMemory<byte> Data);

/// <summary>
/// A test/benchmark device that models a volatile write cache in front of a durable medium, at 512-byte
/// sector granularity. Writes and discards since the last flush are pending (reads see them); FUA writes
/// and <see cref="FlushAsync"/> make data durable. <see cref="Crash"/> returns a new image of what a power
/// cut would leave, reproducibly from a seed. <see cref="CrashAfterOperations"/> makes the power go away
/// after a number of further mutating calls, so a crash can land in the middle of a volume's own sequence.
/// A grow is modelled as a file's is (ftruncate, then fsync): the new length is pending, visible to I/O
/// at once, and becomes durable at the next flush or FUA write (<see cref="GrowAsync"/> issues that flush
/// itself, as a separate crash point); a crash before then may leave the old length, losing anything
/// written past it.
/// Meant for test-sized devices: pending state costs memory per sector. Thread-safe (one lock).
/// </summary>
public sealed class CrashSimulatingDevice : IBlockDevice
{
    private const int Sector = 512;

    private sealed class Pending(long firstSector, int sectors, byte[]? data)
    {
        public readonly long FirstSector = firstSector;
        public readonly int Sectors = sectors;
        /// <summary>Null for a discard (the sectors read as zeros).</summary>
        public readonly byte[]? Data = data;
        /// <summary>False once a later FUA write made a newer version durable: this one may no longer resurface.</summary>
        public readonly bool[] Live = Enumerable.Repeat(true, sectors).ToArray();
    }

    private readonly object _lock = new();
    private readonly MemoryBlockDevice _durable;
    private readonly List<Pending> _pending = new();
    private readonly Dictionary<long, (Pending Op, int Index)> _newest = new();
    private readonly List<DeviceOperation>? _record;
    private long _length; // visible length; the medium's length is the durable one
    private long _powerBudget = -1; // mutating calls left before the power goes; -1 = no crash armed
    private bool _powerLost;
    private long _ops, _writes, _fuaWrites, _flushes, _discards;

    /// <param name="durable">The medium; flushes and FUA writes modify it in place.</param>
    /// <param name="record">Keep a copy of every mutating call in <see cref="RecordedOperations"/>.</param>
    public CrashSimulatingDevice(MemoryBlockDevice durable, bool record = false, string? name = null)
    {
        _durable = durable;
        _record = record ? new List<DeviceOperation>() : null;
        _length = durable.Length;
        Name = name ?? $"crash-sim({durable.Name})";
    }

    public string Name { get; }
    /// <summary>The length I/O sees, a grow not yet durable included.</summary>
    public long Length { get { lock (_lock) return _length; } }
    public int SectorSize => Sector;
    /// <summary>512 (a write costs its sectors) unless a test sets 4096 to make a volume write version-2, 4 KiB-aligned transactions.</summary>
    public int PreferredWriteUnit { get; set; } = Sector;
    public bool CanDeallocate => true;
    public bool CanGrow => true;
    /// <summary>The length a power cut now is sure to leave (the medium's).</summary>
    public long DurableLength => _durable.Length;

    /// <summary>Mutating calls (writes, flushes, discards) that completed; the index space of crash points.</summary>
    public long OperationCount { get { lock (_lock) return _ops; } }
    public long WriteCount { get { lock (_lock) return _writes; } }
    public long FuaWriteCount { get { lock (_lock) return _fuaWrites; } }
    public long FlushCount { get { lock (_lock) return _flushes; } }
    public long DiscardCount { get { lock (_lock) return _discards; } }
    /// <summary>Sectors whose newest version is not yet durable.</summary>
    public int PendingSectors { get { lock (_lock) return _newest.Count; } }
    /// <summary>True once an armed <see cref="CrashAfterOperations"/> fired: every further call throws <see cref="IOException"/>.</summary>
    public bool PowerLost { get { lock (_lock) return _powerLost; } }

    /// <summary>Every mutating call so far, when created with <c>record: true</c> (else empty). Index i = crash point i.</summary>
    public IReadOnlyList<DeviceOperation> RecordedOperations
    {
        get { lock (_lock) return _record is null ? Array.Empty<DeviceOperation>() : _record.ToArray(); }
    }

    /// <summary>
    /// After <paramref name="operations"/> more mutating calls succeed, the power is gone: that call and every
    /// later one (reads too) throws <see cref="IOException"/> without touching state. 0 = power off now.
    /// </summary>
    public void CrashAfterOperations(long operations)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(operations);
        lock (_lock)
        {
            _powerBudget = operations;
            if (operations == 0) _powerLost = true;
        }
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
    {
        CheckAligned(offset, buffer.Length);
        lock (_lock)
        {
            if (_powerLost) throw PowerGone("read", offset);
            var span = buffer.Span;
            // Past the durable end (a pending grow) the medium has nothing yet: zeros plus pending writes.
            int onMedium = (int)Math.Clamp(_durable.Length - offset, 0, span.Length);
            if (onMedium > 0) _durable.Read(offset, span[..onMedium]);
            span[onMedium..].Clear();
            if (_newest.Count == 0) return ValueTask.CompletedTask;
            long first = offset / Sector;
            for (int i = 0; i < span.Length / Sector; i++)
            {
                if (!_newest.TryGetValue(first + i, out var v)) continue;
                var dst = span.Slice(i * Sector, Sector);
                if (v.Op.Data is null) dst.Clear();
                else v.Op.Data.AsSpan(v.Index * Sector, Sector).CopyTo(dst);
            }
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
    {
        CheckAligned(offset, data.Length);
        lock (_lock)
        {
            Consume("write", offset);
            _record?.Add(new DeviceOperation(DeviceOperationKind.Write, offset, data.Length, fua, data.ToArray()));
            _writes++;
            long first = offset / Sector;
            int sectors = data.Length / Sector;
            if (fua)
            {
                _fuaWrites++;
                // O_DSYNC makes the metadata needed to read the data back durable, the file size included.
                if (offset + data.Length > _durable.Length) _durable.Grow(_length);
                // The new version is durable, so no older cached version of these sectors may resurface.
                for (int i = 0; i < sectors; i++) _newest.Remove(first + i);
                foreach (var p in _pending)
                {
                    long lo = Math.Max(first, p.FirstSector), hi = Math.Min(first + sectors, p.FirstSector + p.Sectors);
                    for (long s = lo; s < hi; s++) p.Live[s - p.FirstSector] = false;
                }
                _durable.Write(offset, data.Span);
            }
            else
            {
                var p = new Pending(first, sectors, data.ToArray());
                _pending.Add(p);
                for (int i = 0; i < sectors; i++) _newest[first + i] = (p, i);
            }
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken ct = default)
    {
        lock (_lock)
        {
            Consume("flush", 0);
            _record?.Add(new DeviceOperation(DeviceOperationKind.Flush, 0, 0, false, ReadOnlyMemory<byte>.Empty));
            _flushes++;
            if (_length > _durable.Length) _durable.Grow(_length);
            foreach (var p in _pending) Apply(_durable, p, _ => true);
            _pending.Clear();
            _newest.Clear();
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>Two crash points, as ftruncate + fsync: the new length (pending), then a flush that makes it durable.</summary>
    public async ValueTask GrowAsync(long newLength, CancellationToken ct = default)
    {
        lock (_lock)
        {
            if (newLength % Sector != 0)
                throw new ArgumentOutOfRangeException(nameof(newLength), $"{Name}: new length {newLength} is not a multiple of {Sector} bytes");
            if (newLength < _length)
                throw new ArgumentOutOfRangeException(nameof(newLength), $"{Name}: cannot shrink from {_length} to {newLength} bytes");
            if (newLength == _length) return;
            Consume("grow", newLength);
            _record?.Add(new DeviceOperation(DeviceOperationKind.Grow, 0, newLength, false, ReadOnlyMemory<byte>.Empty));
            _length = newLength;
        }
        await FlushAsync(ct).ConfigureAwait(false);
    }

    /// <summary>The first step of <see cref="GrowAsync"/> alone (ftruncate without fsync): the new length stays pending until a flush or FUA write.</summary>
    public void GrowWithoutFlush(long newLength)
    {
        lock (_lock)
        {
            if (newLength < _length || newLength % Sector != 0)
                throw new ArgumentOutOfRangeException(nameof(newLength), $"{Name}: cannot grow from {_length} to {newLength} bytes");
            Consume("grow", newLength);
            _record?.Add(new DeviceOperation(DeviceOperationKind.Grow, 0, newLength, false, ReadOnlyMemory<byte>.Empty));
            _length = newLength;
        }
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        CheckAligned(offset, length);
        if (length > int.MaxValue / 2) throw new ArgumentOutOfRangeException(nameof(length), $"{Name}: discard of {length} bytes is too large for the crash simulator");
        lock (_lock)
        {
            Consume("discard", offset);
            _record?.Add(new DeviceOperation(DeviceOperationKind.Discard, offset, length, false, ReadOnlyMemory<byte>.Empty));
            _discards++;
            var p = new Pending(offset / Sector, (int)(length / Sector), null);
            _pending.Add(p);
            for (int i = 0; i < p.Sectors; i++) _newest[p.FirstSector + i] = (p, i);
        }
        return ValueTask.CompletedTask;
    }

    public (bool Allocated, long Length) GetAllocation(long offset)
    {
        lock (_lock)
        {
            if (offset >= _length) return (false, 0);
            long sector = offset / Sector;
            if (_newest.TryGetValue(sector, out var v)) return (v.Op.Data is not null, Sector - offset % Sector);
            var (alloc, len) = offset < _durable.Length ? _durable.GetAllocation(offset) : (false, _length - offset);
            // Stop the extent at the next pending sector, whose state differs from the medium.
            long end = offset + len;
            foreach (var s in _newest.Keys)
                if (s * Sector > offset && s * Sector < end) end = s * Sector;
            return (alloc, end - offset);
        }
    }

    /// <summary>
    /// A new image of what a power cut now would leave on the medium; this device is not changed (use
    /// <see cref="CrashAfterOperations"/>(0) to stop a live volume). The same (state, mode, seed, p) always gives the same image.
    /// </summary>
    /// <param name="keepProbability">For <see cref="CrashMode.KeepRandom"/>: chance that a pending sector survives.</param>
    public MemoryBlockDevice Crash(CrashMode mode, ulong seed, double keepProbability = 0.5)
    {
        lock (_lock)
        {
            // A pending grow survives as a whole or not at all (the size is one inode field).
            bool keepGrow = _length > _durable.Length && mode switch
            {
                CrashMode.Drop => false,
                CrashMode.KeepAll => true,
                CrashMode.KeepRandom => SplitMix64.ToUnit(SplitMix64.Hash(seed, ulong.MaxValue)) < keepProbability,
                _ => (SplitMix64.Hash(seed, ulong.MaxValue - 1) & 1) == 0,
            };
            var image = CopyImage(_durable, $"{_durable.Name}@crash({mode},seed={seed})", keepGrow ? _length : _durable.Length);
            switch (mode)
            {
                case CrashMode.Drop:
                    break;
                case CrashMode.KeepAll:
                    foreach (var p in _pending) Apply(image, p, _ => true);
                    break;
                case CrashMode.KeepRandom:
                    foreach (var (sector, v) in _newest)
                        if (SplitMix64.ToUnit(SplitMix64.Hash(seed, (ulong)sector)) < keepProbability)
                            Apply(image, v.Op, i => i == v.Index);
                    break;
                case CrashMode.TearWrites:
                    for (int n = 0; n < _pending.Count; n++)
                    {
                        var p = _pending[n];
                        ulong h = SplitMix64.Hash(seed, (ulong)n);
                        if ((h & 1) == 0)
                        {
                            // A prefix: the device wrote the first k sectors in order, then lost power.
                            int keep = (int)((h >> 1) % (ulong)(p.Sectors + 1));
                            Apply(image, p, i => i < keep);
                        }
                        else
                        {
                            // Any subset: the cache destaged sectors in its own order.
                            ulong opSeed = SplitMix64.Mix(h);
                            Apply(image, p, i => (SplitMix64.Hash(opSeed, (ulong)i) & 1) == 0);
                        }
                    }
                    break;
                default:
                    throw new ArgumentOutOfRangeException(nameof(mode), mode, "unknown crash mode");
            }
            return image;
        }
    }

    /// <summary>Re-issues a recorded call against this device (crash-point replay).</summary>
    public void Replay(DeviceOperation op)
    {
        ValueTask t = op.Kind switch
        {
            DeviceOperationKind.Write => WriteAsync(op.Offset, op.Data, op.Fua),
            DeviceOperationKind.Flush => FlushAsync(),
            DeviceOperationKind.Discard => DiscardAsync(op.Offset, op.Length),
            DeviceOperationKind.Grow => ReplayGrow(op.Length),
            _ => throw new ArgumentOutOfRangeException(nameof(op), op.Kind, "unknown operation kind"),
        };
        t.GetAwaiter().GetResult(); // every call of this device completes synchronously
    }

    private ValueTask ReplayGrow(long newLength)
    {
        GrowWithoutFlush(newLength); // the recorded flush that follows makes it durable
        return ValueTask.CompletedTask;
    }

    /// <summary>A byte-for-byte copy of a memory device (only its allocated chunks are copied), optionally longer (zeros) or cut short.</summary>
    public static MemoryBlockDevice CopyImage(MemoryBlockDevice source, string? name = null, long? length = null)
    {
        var copy = new MemoryBlockDevice(length ?? source.Length, name ?? source.Name);
        long end = Math.Min(source.Length, copy.Length);
        byte[]? buf = null;
        long pos = 0;
        while (pos < end)
        {
            var (alloc, len) = source.GetAllocation(pos);
            if (len <= 0) break;
            len = Math.Min(len, end - pos);
            if (alloc)
            {
                buf ??= new byte[1 << 16];
                for (long done = 0; done < len;)
                {
                    int n = (int)Math.Min(buf.Length, len - done);
                    source.Read(pos + done, buf.AsSpan(0, n));
                    copy.Write(pos + done, buf.AsSpan(0, n));
                    done += n;
                }
            }
            pos += len;
        }
        return copy;
    }

    private static void Apply(MemoryBlockDevice target, Pending p, Func<int, bool> keep)
    {
        Span<byte> zeros = stackalloc byte[Sector];
        zeros.Clear();
        for (int i = 0; i < p.Sectors; i++)
        {
            if (!p.Live[i] || !keep(i)) continue;
            long off = (p.FirstSector + i) * Sector;
            if (off >= target.Length) break; // written past a grow that did not survive
            if (p.Data is null) target.Write(off, zeros);
            else target.Write(off, p.Data.AsSpan(i * Sector, Sector));
        }
    }

    private void Consume(string what, long offset)
    {
        if (_powerLost) throw PowerGone(what, offset);
        if (_powerBudget == 0) { _powerLost = true; throw PowerGone(what, offset); }
        if (_powerBudget > 0) _powerBudget--;
        _ops++;
    }

    private IOException PowerGone(string what, long offset) =>
        new($"{Name}: {what} at byte {offset} failed: simulated power loss after {_ops} operations");

    private void CheckAligned(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Volatile.Read(ref _length))
            throw new ArgumentOutOfRangeException(nameof(offset), $"{Name}: range [{offset}, {offset + length}) outside device of {Length} bytes");
        if (offset % Sector != 0 || length % Sector != 0)
            throw new ArgumentException($"{Name}: range [{offset}, {offset + length}) is not aligned to {Sector}-byte sectors", nameof(offset));
    }

    public void Dispose() { }
}
