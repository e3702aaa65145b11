namespace IntegrityTarget.Storage;

/// <summary>
/// Byte-addressed storage underneath a volume: a file, a block device, memory, or a crash-simulating
/// wrapper in tests. Offsets and lengths are bytes (<c>long</c>); callers keep them aligned to
/// <see cref="SectorSize"/>. Writes are only durable after <see cref="FlushAsync"/> returns, or when
/// written with <c>fua: true</c>. A power cut may tear a non-durable write at <see cref="SectorSize"/>
/// granularity, so anything that must be atomic has to be made so by the layer above.
/// </summary>
public interface IBlockDevice : IDisposable
{
    /// <summary>Human-readable identity (path or test name), used in messages.</summary>
    string Name { get; }

    /// <summary>Size in bytes. Changes only through <see cref="GrowAsync"/>.</summary>
    long Length { get; }

    /// <summary>Whether <see cref="GrowAsync"/> can enlarge the device (a file or an RBD image can; a block device cannot).</summary>
    bool CanGrow => false;

    /// <summary>
    /// Enlarges the device to <paramref name="newLength"/> bytes; the new bytes read as zeros. The new
    /// length is durable when the call returns. Never shrinks.
    /// </summary>
    ValueTask GrowAsync(long newLength, CancellationToken ct = default) =>
        throw new NotSupportedException($"{Name}: this device cannot grow");

    /// <summary>Unit a power cut can tear at (512 for every implementation here).</summary>
    int SectorSize { get; }

    /// <summary>True when <see cref="DiscardAsync"/> deallocates (punches holes) rather than writing zeros.</summary>
    bool CanDeallocate { get; }

    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default);

    /// <param name="fua">Force unit access: the bytes are durable when the call returns.</param>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default);

    /// <summary>Makes every completed write durable.</summary>
    ValueTask FlushAsync(CancellationToken ct = default);

    /// <summary>Makes a range read as zeros, deallocating it when the device can. Not durable until a flush.</summary>
    ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default);

    /// <summary>
    /// Whether the byte range starting at <paramref name="offset"/> is allocated, and how far that state
    /// extends (at least one byte, at most to the end of the device). Devices that cannot tell report
    /// everything as allocated.
    /// </summary>
    (bool Allocated, long Length) GetAllocation(long offset);
}
