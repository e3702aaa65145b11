using Microsoft.Win32.SafeHandles;

namespace IntegrityTarget.Storage;

/// <summary>
/// A regular file or a block device, accessed with pread/pwrite through the page cache. Flush is
/// fdatasync; FUA writes use RWF_DSYNC (falling back to write + fdatasync). The file is locked
/// exclusively (flock) so two processes cannot serve it at once. Every flush and FUA write runs on a descriptor of
/// its own from a small pool opened with the device (see <see cref="FlushDescriptors"/>).
/// </summary>
public sealed class FileBlockDevice : IBlockDevice
{
    private readonly SafeFileHandle _handle;
    private bool _dsyncUnsupported;
    private bool _punchUnsupported;
    private long _length;
    private readonly SemaphoreSlim _growLock = new(1, 1);

    public string Name { get; }
    /// <summary>Size in bytes; grows (never shrinks) through <see cref="GrowAsync"/>, so a value read once stays valid.</summary>
    public long Length => Volatile.Read(ref _length);
    public int SectorSize => 512;
    /// <summary>A write of whole sectors at any sector boundary costs just those sectors.</summary>
    public int PreferredWriteUnit => 512;
    /// <summary>A regular file can grow (ftruncate); a block device's size is not ours to change.</summary>
    public bool CanGrow => !IsBlockDevice;
    public bool CanDeallocate => !_punchUnsupported && !IsBlockDevice;
    public bool IsBlockDevice { get; }
    /// <summary>pread/pwrite/fdatasync block the calling thread.</summary>
    public bool SynchronousCalls => true;

    // Linux records a failed page writeback in the file's error sequence and reports it to fsync/fdatasync (and to the
    // range sync of an RWF_DSYNC write) once per open file description: each call compares the sequence with the cursor
    // of the description it was made on and advances that cursor. Two flushes overlapping on one descriptor can
    // therefore split an error: the first to check gets EIO, the other returns 0 and its command would be acknowledged
    // as durable although a page it covered never reached the disk. So each flush or FUA write borrows a descriptor
    // nobody else is using, from a pool opened at device open (before any write here, so each cursor predates every
    // error this device can cause); a descriptor's cursor then only moves under one flush at a time, and each flush
    // sees every error raised since its descriptor's last check. When all are busy a flush waits for one: a
    // descriptor opened later could start past an error. Plain writes, reads and grow use the main handle.
    public const int FlushDescriptors = 8;
    private readonly SafeFileHandle[] _flushFds;
    private readonly Stack<SafeFileHandle> _freeFlushFds;
    private readonly SemaphoreSlim _flushFdSlots = new(FlushDescriptors, FlushDescriptors);

    private FileBlockDevice(string path, SafeFileHandle handle, long length, bool isBlockDevice, bool writable)
    {
        Name = path; _handle = handle; _length = length; IsBlockDevice = isBlockDevice;
        _flushFds = new SafeFileHandle[FlushDescriptors];
        try
        {
            for (int i = 0; i < _flushFds.Length; i++) _flushFds[i] = Native.Reopen(handle, path, writable);
        }
        catch (IOException e)
        {
            foreach (var f in _flushFds) f?.Dispose();
            handle.Dispose();
            throw new StorageException(e.Message, e);
        }
        _freeFlushFds = new Stack<SafeFileHandle>(_flushFds);
    }

    /// <summary>
    /// Runs a flush or FUA write on a pool descriptor nobody else is using (waiting for one when all are busy): fails
    /// at once after an earlier failure, and records its own failure before the descriptor goes back.
    /// </summary>
    private T OnFlushFd<T>(Func<SafeFileHandle, T> call)
    {
        _flushFdSlots.Wait();
        SafeFileHandle fd;
        lock (_freeFlushFds) fd = _freeFlushFds.Pop();
        try
        {
            ThrowIfSyncFailed();
            try { return call(fd); }
            catch (IOException e) { RememberSyncFailure(e); throw; }
        }
        finally
        {
            lock (_freeFlushFds) _freeFlushFds.Push(fd);
            _flushFdSlots.Release();
        }
    }

    /// <summary>Opens an existing file or block device. Throws <see cref="StorageException"/> with a clear message.</summary>
    public static FileBlockDevice Open(string path, bool readOnly = false)
    {
        if (!File.Exists(path))
            throw new StorageException($"{path}: no such file or block device");
        SafeFileHandle h;
        try
        {
            h = File.OpenHandle(path, FileMode.Open, readOnly ? FileAccess.Read : FileAccess.ReadWrite,
                readOnly ? FileShare.ReadWrite : FileShare.None, FileOptions.None);
        }
        catch (IOException e) when (e.HResult == 11 || e.Message.Contains("lock", StringComparison.OrdinalIgnoreCase))
        {
            throw new StorageException($"{path}: in use by another process (locked)", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new StorageException($"{path}: cannot open: {e.Message}", e);
        }
        // A block device reports length 0 through stat; its size comes from seeking to the end.
        long statLen = RandomAccess.GetLength(h);
        bool isBlock = path.StartsWith("/dev/", StringComparison.Ordinal) || (statLen == 0 && Native.SizeBySeek(h, path) > 0);
        long len = isBlock ? Native.SizeBySeek(h, path) : statLen;
        return new FileBlockDevice(path, h, len, isBlock, writable: !readOnly);
    }

    /// <summary>
    /// Opens an existing file or block device for writing if, and only if, its exclusive lock is free, and
    /// keeps the lock until disposed (the same flock <see cref="Open"/> takes, so the offline verbs still
    /// refuse the file). Returns null while another process holds it. Gateways sharing a LUN use this: the
    /// kernel frees a dead process's lock, so the survivor gets the file as soon as the owner is gone.
    /// </summary>
    public static FileBlockDevice? TryOpenLocked(string path)
    {
        var h = Native.OpenRaw(path, writable: true, out int errno);
        if (h == null)
            throw new StorageException(errno == Native.ENOENT ? $"{path}: no such file or block device" : $"{path}: cannot open: {System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(errno)}");
        try
        {
            if (!Native.TryLockExclusive(h, path)) { h.Dispose(); return null; }
            return FromHandle(path, h, writable: true);
        }
        catch (IOException e)
        {
            h.Dispose();
            throw new StorageException($"{path}: cannot lock: {e.Message}", e);
        }
    }

    /// <summary>
    /// Opens a file read-only without any lock, even while another process holds it: only for reading what
    /// does not change while a volume is served (its header), never its data.
    /// </summary>
    public static FileBlockDevice OpenUnlockedReadOnly(string path)
    {
        var h = Native.OpenRaw(path, writable: false, out int errno)
            ?? throw new StorageException(errno == Native.ENOENT ? $"{path}: no such file or block device" : $"{path}: cannot open: {System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(errno)}");
        return FromHandle(path, h, writable: false);
    }

    private static FileBlockDevice FromHandle(string path, SafeFileHandle h, bool writable)
    {
        long statLen = RandomAccess.GetLength(h);
        bool isBlock = path.StartsWith("/dev/", StringComparison.Ordinal) || (statLen == 0 && Native.SizeBySeek(h, path) > 0);
        return new FileBlockDevice(path, h, isBlock ? Native.SizeBySeek(h, path) : statLen, isBlock, writable);
    }

    /// <summary>Creates (or extends to) a sparse file of <paramref name="length"/> bytes and opens it.</summary>
    public static FileBlockDevice CreateSparse(string path, long length)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir != null) Directory.CreateDirectory(dir);
        using (var fs = new FileStream(path, FileMode.CreateNew, FileAccess.ReadWrite))
            fs.SetLength(length);
        return Open(path);
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default)
    {
        CheckRange(offset, buffer.Length);
        ReadFully(offset, buffer.Span);
        return ValueTask.CompletedTask;
    }

    /// <summary>pread until the span is full; past the end of a short file reads as zeros.</summary>
    private void ReadFully(long offset, Span<byte> buffer)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(_handle, buffer[done..], offset + done);
            if (n == 0) { buffer[done..].Clear(); break; }
            done += n;
        }
    }

    /// <summary>One preadv; a short read (the end of a short file) continues part by part, zeros past the end.</summary>
    public ValueTask ReadScatterAsync(long offset, IReadOnlyList<Memory<byte>> parts, CancellationToken ct = default)
    {
        long total = 0;
        for (int i = 0; i < parts.Count; i++) total += parts[i].Length;
        CheckRange(offset, total);
        long got = RandomAccess.Read(_handle, parts, offset);
        if (got == total) return ValueTask.CompletedTask;
        long at = 0;
        for (int i = 0; i < parts.Count; i++)
        {
            var part = parts[i];
            if (at + part.Length > got)
            {
                int skip = (int)Math.Max(0, got - at);
                ReadFully(offset + at + skip, part.Span[skip..]);
            }
            at += part.Length;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default)
    {
        CheckRange(offset, data.Length);
        if (fua && !_dsyncUnsupported)
        {
            bool done = OnFlushFd(fd => Native.WriteDsync(fd, offset, data.Span, Name));
            if (done) return ValueTask.CompletedTask;
            _dsyncUnsupported = true;
        }
        RandomAccess.Write(_handle, data.Span, offset);
        if (fua) Sync();
        return ValueTask.CompletedTask;
    }

    /// <summary>One pwritev (no copy of the parts into one buffer); with FUA followed by fdatasync.</summary>
    public ValueTask WriteGatherAsync(long offset, IReadOnlyList<ReadOnlyMemory<byte>> parts, bool fua, CancellationToken ct = default)
    {
        long total = 0;
        for (int i = 0; i < parts.Count; i++) total += parts[i].Length;
        CheckRange(offset, total);
        RandomAccess.Write(_handle, parts, offset);
        if (fua) Sync();
        return ValueTask.CompletedTask;
    }

    private bool _writebackUnsupported;

    /// <summary>sync_file_range(SYNC_FILE_RANGE_WRITE) over the range: the kernel starts writing its dirty pages now
    /// instead of inside the next fdatasync (which then waits only for what is left); nothing waits for it.</summary>
    public void StartWriteback(long offset, long length)
    {
        if (_writebackUnsupported || length <= 0) return;
        CheckRange(offset, length);
        if (!Native.StartWriteback(_handle, offset, length)) _writebackUnsupported = true;
    }

    public ValueTask FlushAsync(CancellationToken ct = default)
    {
        Sync();
        return ValueTask.CompletedTask;
    }

    // Linux reports a writeback error to fdatasync once per open file description: after one failed, a later one on
    // that descriptor can return 0 although pages written before it never reached the disk. So a failed flush is
    // sticky: every later flush or FUA write on this device fails too, and nothing written since is ever called
    // durable. A descriptor goes back to the pool only after its failure is recorded, and its next user checks the
    // record after taking it, so an error one descriptor's cursor has moved past is never missed by a later flush.
    private IOException? _syncFailure;

    private void Sync() => OnFlushFd(fd => { Native.FdataSync(fd, Name); return true; });

    private void ThrowIfSyncFailed()
    {
        if (Volatile.Read(ref _syncFailure) is { } f)
            throw new IOException($"{Name}: an earlier flush failed ({f.Message}); data written since may not be on the disk, so no later flush is trusted: check the disk and restart", f);
    }

    private void RememberSyncFailure(IOException e) => Interlocked.CompareExchange(ref _syncFailure, e, null);

    /// <summary>
    /// Extends the file with ftruncate (the new bytes are a hole and read as zeros), then fsyncs so the
    /// new size is durable before <see cref="Length"/> admits I/O beyond the old end. A crash before the
    /// fsync completes may leave either size; nothing was written past the old end yet.
    /// </summary>
    public async ValueTask GrowAsync(long newLength, CancellationToken ct = default)
    {
        if (IsBlockDevice)
            throw new NotSupportedException($"{Name}: a block device cannot be grown by the target; grow it with its own tools (lvextend, ...) and restart");
        if (newLength % SectorSize != 0)
            throw new ArgumentOutOfRangeException(nameof(newLength), $"{Name}: new length {newLength} is not a multiple of {SectorSize} bytes");
        await _growLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            long old = Length;
            if (newLength < old)
                throw new ArgumentOutOfRangeException(nameof(newLength), $"{Name}: cannot shrink from {old} to {newLength} bytes");
            if (newLength == old) return;
            try
            {
                RandomAccess.SetLength(_handle, newLength);
            }
            catch (IOException e)
            {
                throw new IOException($"{Name}: cannot grow from {old} to {newLength} bytes: {e.Message}", e);
            }
            Native.FSync(_handle, Name);
            Volatile.Write(ref _length, newLength);
        }
        finally { _growLock.Release(); }
    }

    public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default)
    {
        CheckRange(offset, length);
        if (!IsBlockDevice && !_punchUnsupported && Native.PunchHole(_handle, offset, length, Name))
            return ValueTask.CompletedTask;
        _punchUnsupported = true;
        WriteZeros(offset, length);
        return ValueTask.CompletedTask;
    }

    private void WriteZeros(long offset, long length)
    {
        var zeros = new byte[(int)Math.Min(length, 1 << 20)];
        while (length > 0)
        {
            int n = (int)Math.Min(length, zeros.Length);
            RandomAccess.Write(_handle, zeros.AsSpan(0, n), offset);
            offset += n; length -= n;
        }
    }

    public (bool Allocated, long Length) GetAllocation(long offset)
    {
        if (offset >= Length) return (false, 0);
        if (IsBlockDevice) return (true, Length - offset);
        long data = Native.SeekData(_handle, offset, hole: false);
        if (data < 0)
        {
            // ENXIO: no data at or after offset: the rest is a hole. Other errors: cannot tell, say allocated.
            return Native.LastError == Native.ENXIO ? (false, Length - offset) : (true, Length - offset);
        }
        if (data > offset) return (false, Math.Min(data, Length) - offset);
        long hole = Native.SeekData(_handle, offset, hole: true);
        if (hole < 0) hole = Length;
        return (true, Math.Min(hole, Length) - offset);
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"{Name}: range [{offset}, {offset + length}) outside device of {Length} bytes");
    }

    public void Dispose()
    {
        _handle.Dispose();
        foreach (var f in _flushFds) f.Dispose();
        _growLock.Dispose();
        _flushFdSlots.Dispose();
    }
}

/// <summary>A storage problem a person has to act on (missing file, locked, bad size); the message says which.</summary>
public sealed class StorageException : Exception
{
    public StorageException(string message, Exception? inner = null) : base(message, inner) { }
}
