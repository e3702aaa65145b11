namespace IntegrityTarget.Integrity;

/// <summary>
/// A bounded cache of slots' tags (the meaningful part of each tag region: blocks per chunk × tag size), so a
/// small read costs one device read instead of two and a home copy need not read the region it rewrites
/// (docs/integrity-volume.md, "Reads"). For an RBD image each saved read is a network round trip.
/// <para>An entry always equals what the volume last wrote to the slot's tags or read from them: it is put by
/// a redirect-on-write of the whole slot (before the remap that lets any read see the slot), by a home copy
/// that just wrote the region, or by a small read that fetched the whole region while no home copy ran (the
/// caller's <c>stillCurrent</c>, checked under this cache's lock). Whole-chunk reads and scrub never add:
/// they read the tags with the data anyway, and their sweep over slot after slot would evict the small
/// reads' working set. A freed slot's entry is dropped, and so is
/// one whose read failed verification (the retry reads the device). Data is still read from the device and
/// checked against these tags on every read; what an entry hides is damage to the tags on the device after
/// they were cached, which scrub (always from the device) finds, and a restart empties the cache.</para>
/// <para>A probe (every small read makes one) takes no lock and touches few cache lines: the slot's entry
/// number comes from a slot index (4 bytes per slot, in pages of <see cref="PageSlots"/> allocated as slots
/// are first cached), the entry's slot and version sit together, its tags in one array per segment of
/// entries. The tags are copied under the entry's version, which every change of the entry (put, eviction,
/// drop; all under one lock) makes odd while it lasts: a probe that overlapped a change sees the version moved
/// and counts as a miss, so it never returns a mix of two versions or another slot's tags. Eviction is
/// CLOCK (second chance): a hit marks its entry, the hand passes over marked entries once.</para>
/// Entries are allocated as they are first used (memory grows with the working set, up to the budget). Per
/// volume; thread-safe.
/// </summary>
internal sealed class TagCache
{
    private const int PageShift = 12, PageSlots = 1 << PageShift;
    private const int SegShift = 10, SegEntries = 1 << SegShift;

    private struct Meta
    {
        public long Slot; // -1 while free
        public int Version; // odd while the entry changes
        public int Referenced; // set by a hit, cleared by the clock hand
    }

    private readonly int _entryBytes;
    private readonly int _capacity;
    private int[]?[] _index = []; // slot -> entry number + 1 (0: not cached), per page of slots
    private readonly Meta[][] _meta; // per segment of entries
    private readonly byte[][] _tags; // per segment: SegEntries (or fewer) × entry bytes
    private readonly Stack<int> _free = new(); // dropped entries, reused before evicting
    private readonly Lock _gate = new();
    private int _allocated, _hand;
    private long _hits, _misses;

    /// <param name="entryBytes">Tag bytes per slot (blocks per chunk × tag size).</param>
    /// <param name="budgetBytes">Memory for tags; 0 disables the cache.</param>
    public TagCache(int entryBytes, long budgetBytes)
    {
        _entryBytes = entryBytes;
        _capacity = (int)Math.Clamp(budgetBytes / Math.Max(1, entryBytes), 0, int.MaxValue / 2);
        int segs = (int)(((long)_capacity + SegEntries - 1) >> SegShift);
        _meta = new Meta[segs][];
        _tags = new byte[segs][];
    }

    public bool Enabled => _capacity > 0;
    /// <summary>Bytes per cached slot.</summary>
    public int EntryBytes => _entryBytes;
    public long Hits => Interlocked.Read(ref _hits);
    public long Misses => Interlocked.Read(ref _misses);
    public int Count { get { lock (_gate) return _allocated - _free.Count; } }

    /// <summary>Copies the cached tags of <paramref name="slot"/> from byte <paramref name="offset"/> into
    /// <paramref name="dest"/>. Takes no lock; false (a miss) when the slot is not cached or its entry changed
    /// while being copied.</summary>
    public bool TryCopy(long slot, int offset, Span<byte> dest)
    {
        if (_capacity == 0) return false;
        int e = EntryOf(slot);
        if (e >= 0)
        {
            ref Meta m = ref MetaOf(e);
            int v = Volatile.Read(ref m.Version);
            if ((v & 1) == 0 && Volatile.Read(ref m.Slot) == slot)
            {
                _tags[e >> SegShift].AsSpan((e & (SegEntries - 1)) * _entryBytes + offset, dest.Length).CopyTo(dest);
                Interlocked.MemoryBarrier(); // the copy is read before the version is read again
                if (Volatile.Read(ref m.Version) == v)
                {
                    if (m.Referenced == 0) m.Referenced = 1;
                    Interlocked.Increment(ref _hits);
                    return true;
                }
            }
        }
        Interlocked.Increment(ref _misses);
        return false;
    }

    /// <summary>Whether the slot has an entry, and if so starts loading the lines a probe of its tags at byte
    /// <paramref name="offset"/> reads (the entry's version and slot, those tags) without waiting for them, so
    /// they arrive while the caller reads the data. A hint: what a later probe returns does not depend on it.</summary>
    public unsafe bool Prefetch(long slot, int offset)
    {
        if (_capacity == 0) return false;
        int e = EntryOf(slot);
        if (e < 0) return false;
        if (System.Runtime.Intrinsics.X86.Sse.IsSupported && _meta[e >> SegShift] is { } meta && _tags[e >> SegShift] is { } tags)
        {
            System.Runtime.Intrinsics.X86.Sse.Prefetch0(System.Runtime.CompilerServices.Unsafe.AsPointer(ref meta[e & (SegEntries - 1)]));
            System.Runtime.Intrinsics.X86.Sse.Prefetch0(System.Runtime.CompilerServices.Unsafe.AsPointer(ref tags[(e & (SegEntries - 1)) * _entryBytes + offset]));
        }
        return true;
    }

    /// <summary>The volume wrote these tags to the slot (a redirect-on-write or a home copy): they are what the
    /// device holds, or will hold once the write is durable, and nothing reads the slot's old tags any more.</summary>
    public void Put(long slot, ReadOnlySpan<byte> tags) => Set(slot, tags, null);

    /// <summary>Caches tags just read from the device, unless <paramref name="stillCurrent"/> (checked under the
    /// cache's lock, so no home copy can put newer tags between the check and the insert) says a home copy
    /// may have rewritten them since they were read.</summary>
    public void AddFromDevice(long slot, ReadOnlySpan<byte> tags, Func<bool> stillCurrent) => Set(slot, tags, stillCurrent);

    private void Set(long slot, ReadOnlySpan<byte> tags, Func<bool>? stillCurrent)
    {
        if (_capacity == 0) return;
        if (tags.Length != _entryBytes) throw new ArgumentException($"a slot's tags are {_entryBytes} bytes, got {tags.Length}", nameof(tags));
        ArgumentOutOfRangeException.ThrowIfNegative(slot);
        lock (_gate)
        {
            if (stillCurrent != null && !stillCurrent()) return;
            int e = EntryOf(slot);
            bool isNew = e < 0;
            if (isNew) e = _free.TryPop(out int f) ? f : _allocated < _capacity ? NewEntry() : Evict();
            ref Meta m = ref MetaOf(e);
            Interlocked.Increment(ref m.Version);
            Volatile.Write(ref m.Slot, slot);
            tags.CopyTo(_tags[e >> SegShift].AsSpan((e & (SegEntries - 1)) * _entryBytes, _entryBytes));
            m.Referenced = 1; // a new or renewed entry survives the hand's next pass
            Interlocked.Increment(ref m.Version);
            if (isNew) SetIndex(slot, e + 1);
        }
    }

    /// <summary>Forgets a slot (freed, or its cached tags failed a read's verification).</summary>
    public void Invalidate(long slot)
    {
        if (_capacity == 0) return;
        lock (_gate)
        {
            int e = EntryOf(slot);
            if (e < 0) return;
            SetIndex(slot, 0);
            ref Meta m = ref MetaOf(e);
            Interlocked.Increment(ref m.Version);
            Volatile.Write(ref m.Slot, -1L);
            m.Referenced = 0;
            Interlocked.Increment(ref m.Version);
            _free.Push(e);
        }
    }

    private ref Meta MetaOf(int e) => ref _meta[e >> SegShift][e & (SegEntries - 1)];

    /// <summary>The slot's entry number, or -1. Safe without the lock (the index and its pages are published with
    /// volatile writes); a caller without it checks the entry's slot and version before trusting it.</summary>
    private int EntryOf(long slot)
    {
        var index = Volatile.Read(ref _index);
        long page = slot >> PageShift;
        return slot >= 0 && (ulong)page < (ulong)index.Length && Volatile.Read(ref index[page]) is { } slots
            ? Volatile.Read(ref slots[slot & (PageSlots - 1)]) - 1 : -1;
    }

    /// <summary>Under the lock: a never-used entry (its segment allocated with its first entry).</summary>
    private int NewEntry()
    {
        int e = _allocated, seg = e >> SegShift;
        if (_meta[seg] == null)
        {
            int n = Math.Min(SegEntries, _capacity - (seg << SegShift));
            _tags[seg] = new byte[(long)n * _entryBytes];
            var meta = new Meta[n];
            for (int i = 0; i < n; i++) meta[i].Slot = -1;
            Volatile.Write(ref _meta[seg], meta);
        }
        _allocated++;
        return e;
    }

    /// <summary>Under the lock, the cache full: the first entry the clock hand finds unmarked (marks cleared on
    /// the way), taken out of the index.</summary>
    private int Evict()
    {
        while (true)
        {
            int e = _hand;
            _hand = (_hand + 1) % _allocated;
            ref Meta m = ref MetaOf(e);
            if (m.Referenced != 0) { m.Referenced = 0; continue; }
            SetIndex(m.Slot, 0);
            return e;
        }
    }

    /// <summary>Under the lock: points the slot's index cell at entry number <paramref name="value"/> - 1 (0: none),
    /// growing the index as needed.</summary>
    private void SetIndex(long slot, int value)
    {
        long page = slot >> PageShift;
        if (page >= _index.Length)
        {
            if (value == 0) return;
            var grown = new int[]?[Math.Max(page + 1, 2L * _index.Length)];
            _index.CopyTo(grown, 0);
            Volatile.Write(ref _index, grown);
        }
        var slots = _index[page];
        if (slots == null)
        {
            if (value == 0) return;
            slots = new int[PageSlots];
            Volatile.Write(ref _index[page], slots);
        }
        Volatile.Write(ref slots[slot & (PageSlots - 1)], value);
    }
}
