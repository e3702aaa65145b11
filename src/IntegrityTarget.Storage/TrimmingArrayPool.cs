using System.Buffers;
using System.Numerics;

namespace IntegrityTarget.Storage;

/// <summary>
/// A byte-array pool for the data path that gives back what it has not needed for a while.
/// <see cref="ArrayPool{T}.Shared"/> keeps up to 32 arrays per size per core plus one per thread, and lets
/// them go only a few at a time during full GCs, which an idle process never has: after a burst of large
/// I/O it kept hundreds of MiB. Here each power-of-two size keeps at most <c>maxPerSize</c> arrays, and on
/// every trim tick the arrays that sat unused through the whole previous interval (the size's low-water
/// mark) are dropped. A busy pool keeps what it cycles; an idle one is empty after two ticks.
/// </summary>
public sealed class TrimmingArrayPool : ArrayPool<byte>, IDisposable
{
    private const int MinShift = 9; // 512-byte arrays are the smallest pooled size

    private sealed class Bucket(int length, int capacity)
    {
        public readonly int Length = length;
        public readonly Stack<byte[]> Free = new(capacity);
        public int LowWater;
    }

    private readonly Bucket[] _buckets;
    private readonly int _maxPerSize;
    private readonly Timer? _timer;
    private long _retainedBytes;

    /// <param name="maxArrayLength">Larger requests get a fresh array that is not kept.</param>
    /// <param name="maxPerSize">Arrays kept per size.</param>
    /// <param name="trimInterval">How often unused arrays are dropped; <see cref="Timeout.InfiniteTimeSpan"/> only on <see cref="Trim"/>.</param>
    public TrimmingArrayPool(int maxArrayLength, int maxPerSize, TimeSpan trimInterval)
    {
        int top = BitOperations.Log2(BitOperations.RoundUpToPowerOf2((uint)Math.Max(maxArrayLength, 1 << MinShift)));
        _buckets = new Bucket[top - MinShift + 1];
        for (int i = 0; i < _buckets.Length; i++) _buckets[i] = new Bucket(1 << (i + MinShift), maxPerSize);
        _maxPerSize = maxPerSize;
        // The timer holds the pool weakly: a pool nobody uses any more is collected, and its timer with it.
        if (trimInterval != Timeout.InfiniteTimeSpan)
            _timer = new Timer(static s => { if (((WeakReference<TrimmingArrayPool>)s!).TryGetTarget(out var p)) p.Trim(); },
                new WeakReference<TrimmingArrayPool>(this), trimInterval, trimInterval);
    }

    /// <summary>Bytes held in free arrays right now.</summary>
    public long RetainedBytes => Interlocked.Read(ref _retainedBytes);

    private int Index(int length)
    {
        int shift = BitOperations.Log2(BitOperations.RoundUpToPowerOf2((uint)Math.Max(length, 1 << MinShift)));
        return shift - MinShift;
    }

    public override byte[] Rent(int minimumLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(minimumLength);
        int i = Index(minimumLength);
        if (i >= _buckets.Length) return GC.AllocateUninitializedArray<byte>(minimumLength);
        var b = _buckets[i];
        lock (b)
        {
            if (b.Free.TryPop(out var a))
            {
                if (b.Free.Count < b.LowWater) b.LowWater = b.Free.Count;
                Interlocked.Add(ref _retainedBytes, -a.Length);
                return a;
            }
            b.LowWater = 0;
        }
        return GC.AllocateUninitializedArray<byte>(b.Length);
    }

    public override void Return(byte[] array, bool clearArray = false)
    {
        ArgumentNullException.ThrowIfNull(array);
        if (array.Length < 1 << MinShift || !BitOperations.IsPow2(array.Length)) return; // not one of ours: the GC takes it
        int i = Index(array.Length);
        if (i >= _buckets.Length) return;
        if (clearArray) Array.Clear(array);
        var b = _buckets[i];
        lock (b)
        {
            if (b.Free.Count >= _maxPerSize) return;
            b.Free.Push(array);
        }
        Interlocked.Add(ref _retainedBytes, array.Length);
    }

    /// <summary>Drops, per size, the arrays that were not needed since the last trim.</summary>
    public void Trim()
    {
        foreach (var b in _buckets)
        {
            lock (b)
            {
                for (int n = b.LowWater; n > 0 && b.Free.TryPop(out var a); n--) Interlocked.Add(ref _retainedBytes, -a.Length);
                b.LowWater = b.Free.Count;
            }
        }
    }

    public void Dispose()
    {
        _timer?.Dispose();
        foreach (var b in _buckets) lock (b) b.Free.Clear();
        Interlocked.Exchange(ref _retainedBytes, 0);
    }
}
