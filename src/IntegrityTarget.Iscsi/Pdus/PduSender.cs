using System.Buffers;
using System.Buffers.Binary;
using IntegrityTarget.Iscsi.Session;

namespace IntegrityTarget.Iscsi.Pdus;

/// <summary>
/// The one send path of a connection. Headers come from <see cref="TargetPdus"/>; this fills in what only
/// the connection knows at the moment of sending: StatSN (advanced for PDUs that carry status),
/// ExpCmdSN/MaxCmdSN from the session's window, the data segment length, padding and the negotiated
/// digests. Sends are serialized by one lock, so StatSN follows the wire order.
/// </summary>
internal sealed class PduSender(IPduSink sink, CmdSnWindow window, Serilog.ILogger log)
{
    /// <summary>How long a close waits for a send in progress before cutting it off (a peer that reads nothing).</summary>
    public static readonly TimeSpan CloseGrace = TimeSpan.FromSeconds(2);

    private readonly SemaphoreSlim _lock = new(1, 1);
    private readonly IBorrowingPduSink? _borrowing = sink as IBorrowingPduSink;
    private readonly CancellationTokenSource _abort = new();
    private long _lastFlushCompleted = System.Diagnostics.Stopwatch.GetTimestamp();
    private uint _statSN;
    private int _unflushed;
    private bool _borrowed;
    private bool _closed;

    /// <summary>Digests apply from the first PDU after the final login response.</summary>
    public bool HeaderDigest { get; set; }
    public bool DataDigest { get; set; }

    /// <summary>When a flush that had to wait (output full) last completed: the peer is taking what we send, which keep-alive counts as life.</summary>
    public long LastFlushCompleted => Interlocked.Read(ref _lastFlushCompleted);

    /// <summary>The first login request's ExpStatSN is the StatSN of our first response.</summary>
    public void StartStatSN(uint statSN) => _statSN = statSN;

    /// <summary>Sends one PDU (flushed unless <paramref name="flush"/> is false). Returns false once the connection is gone.</summary>
    public async ValueTask<bool> SendAsync(BhsBuffer header, ReadOnlyMemory<byte> data = default, bool flush = true)
    {
        await _lock.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_closed) return false;
            Emit(ref header, data, borrow: false);
            return !flush || await FlushLockedAsync().ConfigureAwait(false);
        }
        finally { _lock.Release(); }
    }

    /// <summary>Holds the send lock for a run of PDUs (the Data-In of one command); dispose to release.</summary>
    public async ValueTask<Batch> BeginAsync()
    {
        await _lock.WaitAsync().ConfigureAwait(false);
        return new Batch(this);
    }

    /// <summary>Several PDUs under one hold of the send lock.</summary>
    public readonly struct Batch(PduSender sender) : IDisposable
    {
        public bool IsClosed => sender._closed;
        /// <summary>Bytes written since the last flush.</summary>
        public int Unflushed => sender._unflushed;
        /// <summary>
        /// Writes one PDU. With <paramref name="borrow"/> the data segment goes out from <paramref name="data"/>
        /// itself when the sink can do that: the caller must keep it unchanged until the task from
        /// <see cref="TakeBorrowedRelease"/> has completed, then wait for it with <see cref="WaitReleasedAsync"/>.
        /// </summary>
        public void Emit(BhsBuffer header, ReadOnlyMemory<byte> data, bool borrow = false) { if (!sender._closed) sender.Emit(ref header, data, borrow); }
        public ValueTask<bool> FlushAsync() => sender._closed ? ValueTask.FromResult(false) : sender.FlushLockedAsync();
        /// <summary>What to wait for before the data emitted with borrow=true in this batch may be reused (completed when none was borrowed).</summary>
        public ValueTask TakeBorrowedRelease() => sender.TakeBorrowedRelease();
        public void Dispose() => sender._lock.Release();
    }

    private ValueTask TakeBorrowedRelease()
    {
        if (!_borrowed) return ValueTask.CompletedTask;
        _borrowed = false;
        return _borrowing!.WhenBorrowedReleasedAsync();
    }

    /// <summary>
    /// Waits until the transport no longer reads the borrowed buffers of <paramref name="released"/> (from
    /// <see cref="Batch.TakeBorrowedRelease"/>; awaited without the send lock, so other PDUs queue meanwhile).
    /// A wait that was needed counts like a flush that had to wait: the peer is taking what we send.
    /// </summary>
    public async ValueTask WaitReleasedAsync(ValueTask released)
    {
        if (released.IsCompleted) { await released.ConfigureAwait(false); return; }
        await released.ConfigureAwait(false);
        Interlocked.Exchange(ref _lastFlushCompleted, System.Diagnostics.Stopwatch.GetTimestamp());
    }

    /// <summary>Flushes PDUs emitted without a flush (R2Ts), once the received batch is handled.</summary>
    public async ValueTask FlushPendingAsync()
    {
        if (Volatile.Read(ref _unflushed) == 0) return;
        await _lock.WaitAsync().ConfigureAwait(false);
        try { if (_unflushed > 0 && !_closed) await FlushLockedAsync().ConfigureAwait(false); }
        finally { _lock.Release(); }
    }

    /// <summary>
    /// Lets what is queued go out, then closes the sink; later sends are dropped. A send stuck behind a
    /// peer that reads nothing is cut off after <see cref="CloseGrace"/>, so closing always finishes.
    /// </summary>
    public async ValueTask CloseAsync()
    {
        if (!await _lock.WaitAsync(CloseGrace).ConfigureAwait(false))
        {
            _abort.Cancel();
            await _lock.WaitAsync().ConfigureAwait(false);
        }
        try
        {
            if (_closed) return;
            if (_unflushed > 0)
            {
                _abort.CancelAfter(CloseGrace);
                await FlushLockedAsync().ConfigureAwait(false);
            }
            _closed = true;
            sink.Close(); // under the send lock: no other sender is mid-PDU
        }
        finally { _lock.Release(); }
    }

    private void Emit(ref BhsBuffer header, ReadOnlyMemory<byte> payload, bool borrow)
    {
        var data = payload.Span;
        Span<byte> h = header;
        Bhs.SetU32(h, 24, TargetPdus.AdvancesStatSN(h) ? _statSN++ : _statSN);
        var (exp, max) = window.Advertise();
        Bhs.SetU32(h, 28, exp);
        Bhs.SetU32(h, 32, max);
        Bhs.SetDataSegmentLength(h, data.Length);
        sink.Write(h);
        Span<byte> word = stackalloc byte[4];
        if (HeaderDigest)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(word, Crc32C.Compute(h));
            sink.Write(word);
        }
        bool borrowed = false;
        if (data.Length > 0)
        {
            // A borrowed segment is queued behind the header just written, so the flush that publishes the
            // header also brings the send loop to it; padding and digest follow it in the sink's own buffer.
            if (borrow && _borrowing is { } b && b.TryWriteBorrowed(payload)) borrowed = _borrowed = true;
            else sink.Write(data);
            int pad = Bhs.Padded(data.Length) - data.Length;
            if (pad > 0) { word.Clear(); sink.Write(word[..pad]); }
            if (DataDigest)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(word, Crc32C.ComputePadded(data));
                sink.Write(word);
            }
        }
        // Borrowed bytes do not fill the sink's buffer, so they do not call for an early flush either.
        _unflushed += Bhs.Length + (borrowed ? 0 : data.Length) + 12;
    }

    private async ValueTask<bool> FlushLockedAsync()
    {
        _unflushed = 0;
        try
        {
            var flush = sink.FlushAsync(_abort.Token);
            bool waited = !flush.IsCompleted;
            bool ok = await flush.ConfigureAwait(false);
            // Only a flush that had to wait says something: the peer took bytes so that it could finish.
            if (waited) Interlocked.Exchange(ref _lastFlushCompleted, System.Diagnostics.Stopwatch.GetTimestamp());
            return ok;
        }
        catch (OperationCanceledException) { return false; }
        catch (Exception ex) { log.Debug(ex, "flush failed"); return false; }
    }
}
