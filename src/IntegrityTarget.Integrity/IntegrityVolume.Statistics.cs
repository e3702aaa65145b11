namespace IntegrityTarget.Integrity;

// Read-only figures for metrics and thin-provisioning reports (LOG SENSE page 0Ch). Each is read without
// stopping the data path, so it may be a moment old; none is used for decisions inside the volume.
public sealed partial class IntegrityVolume
{
    /// <summary>Checkpoints since the volume was formatted (kept in the journal superblock).</summary>
    public ulong Checkpoints => Volatile.Read(ref _checkpoints);

    /// <summary>Physical slots: one per logical chunk plus the spare pool that redirect-on-write needs.</summary>
    public long Slots => _g.PhysicalSlots;

    /// <summary>Slots free now (neither mapped nor waiting in limbo for the remap that replaced them to be proven).</summary>
    public long FreeSlots => _slots.FreeCount;

    /// <summary>Logical chunks that hold data (the rest read as zeros without using a slot).</summary>
    public long MappedChunks
    {
        get
        {
            long n = 0;
            foreach (var e in _map) if (e != 0) n++;
            return n;
        }
    }

    /// <summary>Bytes of the journal (its superblock and the transaction ring), fixed at format.</summary>
    public long JournalBytes => _g.JournalBytes;

    /// <summary>Blocks per chunk: the unit in which space is mapped.</summary>
    public int BlocksPerChunk => _g.BlocksPerChunk;
}
