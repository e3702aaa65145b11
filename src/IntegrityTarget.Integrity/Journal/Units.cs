
namespace IntegrityTarget.Integrity;

// What the write path hands the committer: units of journal records, and pooled block images.
public sealed partial class IntegrityVolume
{
    private sealed class DataRec
    {
        public ulong Lba;
        public long Phys;
        /// <summary>Sequence of the transaction that holds it (set when committed).</summary>
        public ulong Seq;
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
            r.Lba = lba; r.Phys = phys; r.Seq = 0;
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
