
namespace IntegrityTarget.Integrity;

// What the write path hands the committer: units of journal records, and pooled block images.
public sealed partial class IntegrityVolume
{
    private sealed class DataRec
    {
        public ulong Lba;
        public long Phys;
        public readonly byte[] Buf;
        public DataRec(int blockSize) => Buf = new byte[blockSize];
    }

    /// <summary>
    /// Journaled block images of this volume, kept for reuse. They live from the write until their home
    /// copy (up to a journal lap, seconds), so renting them from the shared array pool, which holds only a
    /// few dozen per size, made every one a fresh allocation that the GC then promoted and collected late.
    /// Retains at most one journal's worth of blocks.
    /// </summary>
    private sealed class RecPool(int blockSize, int capacity)
    {
        private readonly Stack<DataRec> _free = new();

        public DataRec Rent(ulong lba, long phys)
        {
            DataRec? r = null;
            lock (_free) _free.TryPop(out r);
            r ??= new DataRec(blockSize);
            r.Lba = lba; r.Phys = phys;
            return r;
        }

        public void Return(DataRec r)
        {
            lock (_free) if (_free.Count < capacity) _free.Push(r);
        }

        public void Return(IEnumerable<DataRec> recs)
        {
            lock (_free) foreach (var r in recs) if (_free.Count < capacity) _free.Push(r); else break;
        }

        public int Count { get { lock (_free) return _free.Count; } }

        /// <summary>Drops every pooled record (the GC takes them back).</summary>
        public void Trim() { lock (_free) _free.Clear(); }
    }

    /// <summary>One command's worth of journal records: committed together or not at all.</summary>
    private sealed class Unit
    {
        public List<DataRec>? Data;
        public List<(long Chunk, long Entry)>? Maps;
        public List<long>? FreeAfter;
        public long Bytes;
        public bool Durable;
        public bool Unmap;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public int Records => (Data?.Count ?? 0) + (Maps?.Count ?? 0);
    }
}
