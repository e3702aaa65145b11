
namespace IntegrityTarget.Integrity;

// What the write path hands the committer: units of journal records, and pooled block images.
public sealed partial class IntegrityVolume
{
    /// <summary>
    /// A journaled block. Until its transaction is written it holds its image (<see cref="Buf"/>, a private copy of
    /// the command's data); from then on only the index of it: where its image lies in the ring
    /// (<see cref="RingPos"/>) and its tag (<see cref="Tag"/>, computed from the private copy at write time), which
    /// reads and home copies check the image read back from the ring against (docs: write path 3, "Reads").
    /// </summary>
    private sealed class DataRec
    {
        public ulong Lba;
        public long Phys;
        /// <summary>Sequence of the transaction that holds it (set when committed).</summary>
        public ulong Seq;
        /// <summary>The image while the transaction is not written yet; null from then on (changed under _q).</summary>
        public byte[]? Buf;
        /// <summary>Bytes into the transaction area where its image lies once its transaction is written (-1 before).</summary>
        public long RingPos = -1;
        /// <summary>Its tag over (LBA, image), computed from the private copy when the command was queued.</summary>
        public readonly byte[] Tag;
        public DataRec(int tagSize) => Tag = new byte[tagSize];
    }

    /// <summary>
    /// Journaled block records of this volume, and the block images of those not yet written to the ring, kept for
    /// reuse. Records live from the write until their home copy (up to a journal lap, seconds), so renting them
    /// from the shared pools made every one a fresh allocation that the GC then promoted and collected late.
    /// Retains at most one journal's worth of records (~100 bytes each) and what the queue holds of images.
    /// </summary>
    private sealed class RecPool(int blockSize, int tagSize, int capacity, int imageCapacity)
    {
        private readonly Stack<DataRec> _free = new();
        private readonly Stack<byte[]> _images = new();

        public DataRec Rent(ulong lba, long phys)
        {
            DataRec? r = null;
            byte[]? img = null;
            lock (_free) { _free.TryPop(out r); _images.TryPop(out img); }
            r ??= new DataRec(tagSize);
            r.Lba = lba; r.Phys = phys; r.Seq = 0; r.RingPos = -1;
            r.Buf = img ?? new byte[blockSize];
            return r;
        }

        /// <summary>The record's image is in the ring now: its buffer goes back to the pool (caller holds _q).</summary>
        public void DropImage(DataRec r)
        {
            if (r.Buf is not { } b) return;
            r.Buf = null;
            lock (_free) if (_images.Count < imageCapacity) _images.Push(b);
        }

        public void Return(DataRec r)
        {
            lock (_free) Push(r);
        }

        public void Return(IEnumerable<DataRec> recs)
        {
            lock (_free) foreach (var r in recs) Push(r);
        }

        private void Push(DataRec r)
        {
            if (r.Buf is { } b) { r.Buf = null; if (_images.Count < imageCapacity) _images.Push(b); }
            if (_free.Count < capacity) _free.Push(r);
        }

        public int Count { get { lock (_free) return _free.Count; } }

        /// <summary>Drops every pooled record and image (the GC takes them back).</summary>
        public void Trim() { lock (_free) { _free.Clear(); _images.Clear(); } }
    }

    /// <summary>One command's worth of journal records: committed together or not at all. Data records are
    /// per block in memory and become one extent record per run of consecutive blocks of one chunk.</summary>
    private sealed class Unit
    {
        public List<DataRec>? Data;
        /// <summary>Remaps: chunk → map entry (slot + 1, or 0 = unmapped), with the new slot's tag-region digest.</summary>
        public List<(long Chunk, long Entry, UInt128 Digest)>? Maps;
        public List<long>? FreeAfter;
        public long Bytes;
        public bool Durable;
        public bool Unmap;
        /// <summary>A grow waiting for the committer to switch the geometry (no records).</summary>
        public Func<ValueTask>? Exclusive;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        /// <summary>Journal records this unit needs (extents, not blocks).</summary>
        public int Records
        {
            get
            {
                int n = Maps?.Count ?? 0;
                if (Data is { Count: > 0 } d)
                {
                    n++;
                    for (int i = 1; i < d.Count; i++) if (!Extends(d[i - 1], d[i])) n++;
                }
                return n;
            }
        }

        /// <summary>Whether <paramref name="next"/> continues <paramref name="prev"/>'s extent record.</summary>
        public static bool Extends(DataRec prev, DataRec next) => next.Lba == prev.Lba + 1 && next.Phys == prev.Phys;
    }
}
