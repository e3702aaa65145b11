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
/// Entries are allocated as they are first used (memory grows with the working set, up to the budget) and
/// evicted least recently used first. Per volume; thread-safe.
/// </summary>
internal sealed class TagCache
{
    private sealed class Entry(long slot, byte[] tags)
    {
        public long Slot = slot;
        public readonly byte[] Tags = tags;
        public Entry? Prev, Next;
    }

    private readonly int _entryBytes;
    private readonly int _capacity;
    private readonly Dictionary<long, Entry> _entries = new();
    private readonly Stack<Entry> _spare = new(); // dropped entries' buffers, reused before allocating
    private readonly Lock _gate = new();
    private Entry? _head, _tail; // most and least recently used
    private long _hits, _misses;

    /// <param name="entryBytes">Tag bytes per slot (blocks per chunk × tag size).</param>
    /// <param name="budgetBytes">Memory for tags; 0 disables the cache.</param>
    public TagCache(int entryBytes, long budgetBytes)
    {
        _entryBytes = entryBytes;
        _capacity = (int)Math.Clamp(budgetBytes / Math.Max(1, entryBytes), 0, int.MaxValue);
    }

    public bool Enabled => _capacity > 0;
    /// <summary>Bytes per cached slot.</summary>
    public int EntryBytes => _entryBytes;
    public long Hits => Interlocked.Read(ref _hits);
    public long Misses => Interlocked.Read(ref _misses);
    public int Count { get { lock (_gate) return _entries.Count; } }

    /// <summary>Copies the cached tags of <paramref name="slot"/> from byte <paramref name="offset"/> into <paramref name="dest"/>.</summary>
    public bool TryCopy(long slot, int offset, Span<byte> dest)
    {
        if (_capacity == 0) return false;
        lock (_gate)
        {
            if (!_entries.TryGetValue(slot, out var e)) { _misses++; return false; }
            _hits++;
            if (_head != e) { Unlink(e); LinkFront(e); }
            e.Tags.AsSpan(offset, dest.Length).CopyTo(dest);
            return true;
        }
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
        lock (_gate)
        {
            if (stillCurrent != null && !stillCurrent()) return;
            if (_entries.TryGetValue(slot, out var e)) Unlink(e);
            else
            {
                if (_entries.Count >= _capacity)
                {
                    e = _tail!; // the least recently used entry and its buffer
                    Unlink(e);
                    _entries.Remove(e.Slot);
                    e.Slot = slot;
                }
                else if (_spare.TryPop(out var s)) { e = s; e.Slot = slot; }
                else e = new Entry(slot, new byte[_entryBytes]);
                _entries[slot] = e;
            }
            tags.CopyTo(e.Tags);
            LinkFront(e);
        }
    }

    /// <summary>Forgets a slot (freed, or its cached tags failed a read's verification).</summary>
    public void Invalidate(long slot)
    {
        if (_capacity == 0) return;
        lock (_gate)
        {
            if (!_entries.Remove(slot, out var e)) return;
            Unlink(e);
            _spare.Push(e);
        }
    }

    private void Unlink(Entry e)
    {
        if (e.Prev != null) e.Prev.Next = e.Next; else _head = e.Next;
        if (e.Next != null) e.Next.Prev = e.Prev; else _tail = e.Prev;
        e.Prev = e.Next = null;
    }

    private void LinkFront(Entry e)
    {
        e.Next = _head;
        if (_head != null) _head.Prev = e;
        _head = e;
        _tail ??= e;
    }
}
