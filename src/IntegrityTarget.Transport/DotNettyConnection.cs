using System.Buffers;
using System.Net;
using DotNetty.Buffers;
using DotNetty.Common.Utilities;
using DotNetty.Transport.Channels;
using IntegrityTarget.Iscsi;

namespace IntegrityTarget.Transport;

/// <summary>
/// One accepted DotNetty channel: the pipeline handler for its inbound side and the <see cref="IPduSink"/>
/// for its outbound side.
/// <para>Inbound: the event loop only queues the received <see cref="IByteBuffer"/>s and schedules a pump on
/// the thread pool; the pump presents the queued buffers to <see cref="IscsiConnection.ReceiveAsync"/> as one
/// <see cref="ReadOnlySequence{T}"/> over their own arrays (no cumulation copy, unlike ByteToMessageDecoder's
/// MergeCumulator), then releases what was consumed. At most one pump runs per connection, so ReceiveAsync
/// is awaited one call at a time, and the event loop never waits for the core. Auto-read stops while more
/// than <see cref="DotNettyTransport.PauseReadingBytes"/> are unconsumed.</para>
/// <para>Outbound: the core writes into pooled chunks; a flush hands them to the channel and, when the
/// channel is above its high-water mark, waits until it is writable again.</para>
/// </summary>
internal sealed class DotNettyConnection : ChannelHandlerAdapter, IPduSink, IThreadPoolWorkItem
{
    private readonly DotNettyTransport _owner;
    private readonly IChannel _channel;
    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Action _resumeReading;

    // ---- inbound state, guarded by _lock (event loop appends, pump consumes)
    private readonly object _lock = new();
    private readonly Queue<IByteBuffer> _received = new();
    private readonly List<BufferSegment> _segments = [];
    private long _receivedBytes;
    private bool _newData, _pumping, _inactive, _finished, _readPaused;
    private IscsiConnection? _connection;

    // ---- outbound state: the core writes from one writer at a time (see IPduSink)
    private IByteBuffer? _out;
    private byte[] _scratch = [];
    private int _closeRequested;
    private TaskCompletionSource<bool>? _writable;

    public DotNettyConnection(DotNettyTransport owner, IChannel channel)
    {
        _owner = owner;
        _channel = channel;
        _resumeReading = () => _channel.Configuration.AutoRead = true;
    }

    /// <summary>Completes once the core has been told the transport closed and every buffer is released.</summary>
    public Task Completion => _done.Task;

    /// <summary>Hard close (transport stop).</summary>
    public void Abort() => _ = _channel.CloseAsync();

    // ------------------------------------------------------------------ pipeline events (event loop thread)

    public override void ChannelActive(IChannelHandlerContext ctx)
    {
        var local = DotNettyTransport.Normalize(_channel.LocalAddress as IPEndPoint);
        var remote = DotNettyTransport.Normalize(_channel.RemoteAddress as IPEndPoint);
        IscsiConnection? connection = null;
        if (_owner.Track(this))
            connection = _owner.Server.CreateConnection(this, local, remote);
        if (connection is null)
        {
            _ = ctx.CloseAsync(); // stopping or shutting down; ChannelInactive finishes the bookkeeping
        }
        else
        {
            lock (_lock) _connection = connection;
            _owner.Log.Debug("Connection from {Remote} to {Local}", remote, local);
        }
        ctx.FireChannelActive();
    }

    public override void ChannelRead(IChannelHandlerContext ctx, object message)
    {
        if (message is not IByteBuffer buffer)
        {
            ReferenceCountUtil.Release(message);
            return;
        }
        bool pause = false;
        lock (_lock)
        {
            if (!_finished && _connection is not null && buffer.IsReadable())
            {
                _received.Enqueue(buffer);
                _receivedBytes += buffer.ReadableBytes;
                _newData = true;
                if (!_readPaused && _receivedBytes >= _owner.PauseReadingBytes) pause = _readPaused = true;
                buffer = null!;
            }
        }
        buffer?.Release();
        // The core is behind: stop reading until the pump has consumed half of the backlog.
        if (pause) _channel.Configuration.AutoRead = false;
    }

    public override void ChannelReadComplete(IChannelHandlerContext ctx)
    {
        // One pump run per read burst: everything read so far goes to the core in one ReceiveAsync call.
        bool schedule;
        lock (_lock)
        {
            schedule = _newData && !_pumping;
            if (schedule) _pumping = true;
        }
        if (schedule) ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        ctx.FireChannelReadComplete();
    }

    public override void ChannelInactive(IChannelHandlerContext ctx)
    {
        bool schedule;
        lock (_lock)
        {
            _inactive = true;
            schedule = !_pumping;
            _pumping = true;
        }
        Interlocked.Exchange(ref _writable, null)?.TrySetResult(false);
        if (schedule) ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);
        ctx.FireChannelInactive();
    }

    public override void ChannelWritabilityChanged(IChannelHandlerContext ctx)
    {
        if (_channel.IsWritable) Interlocked.Exchange(ref _writable, null)?.TrySetResult(true);
        ctx.FireChannelWritabilityChanged();
    }

    public override void ExceptionCaught(IChannelHandlerContext ctx, Exception exception)
    {
        // Resets and broken pipes are how peers leave; the close path tells the core.
        _owner.Log.Debug(exception, "DotNetty channel {Remote} failed", _channel.RemoteAddress);
        _ = ctx.CloseAsync();
    }

    // ------------------------------------------------------------------ pump (thread pool)

    void IThreadPoolWorkItem.Execute() => _ = PumpAsync();

    private async Task PumpAsync()
    {
        IscsiConnection? connection;
        lock (_lock) connection = _connection;
        try
        {
            while (connection is not null && !connection.IsClosed)
            {
                ReadOnlySequence<byte> bytes;
                lock (_lock)
                {
                    if (!_newData)
                    {
                        // Bytes still queued after a close by the peer were already offered to the core
                        // (a trailing partial PDU): nothing more can arrive, so finish.
                        if (_inactive) break;
                        _pumping = false;
                        return;
                    }
                    _newData = false;
                    bytes = BuildSequence();
                }
                var consumed = await connection.ReceiveAsync(bytes).ConfigureAwait(false);
                long n = bytes.Slice(bytes.Start, consumed).Length;
                bool resume = false;
                lock (_lock)
                {
                    Consume(n);
                    if (_readPaused && !_inactive && _receivedBytes < _owner.PauseReadingBytes / 2)
                    {
                        _readPaused = false;
                        resume = true;
                    }
                }
                // AutoRead is flipped on the event loop only, so a pause and a resume can never reorder.
                if (resume) ResumeReading();
            }
        }
        catch (Exception ex)
        {
            _owner.Log.Error(ex, "connection from {Remote} failed", connection?.Remote);
        }
        await FinishAsync(connection).ConfigureAwait(false);
    }

    private void ResumeReading()
    {
        try { _channel.EventLoop.Execute(_resumeReading); }
        catch (Exception ex) when (ex is DotNetty.Common.Concurrency.RejectedExecutionException or InvalidOperationException)
        {
            // The event loops are shutting down (transport stop): the channel is being closed anyway.
        }
    }

    /// <summary>The one exit of a connection: release the inbound buffers, tell the core once, close the channel.</summary>
    private async Task FinishAsync(IscsiConnection? connection)
    {
        lock (_lock)
        {
            _finished = true; // _pumping stays true: no further pump is ever scheduled
            while (_received.TryDequeue(out var b)) b.Release();
            _receivedBytes = 0;
        }
        try
        {
            if (connection is not null) await connection.OnTransportClosedAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            _owner.Log.Error(ex, "closing connection from {Remote} failed", connection?.Remote);
        }
        Close(); // the core closes its sink itself; this covers a refused connection and makes sure the socket goes
        _owner.Untrack(this);
        _done.TrySetResult();
    }

    /// <summary>The queued buffers as one sequence over their own memory. Caller holds _lock.</summary>
    private ReadOnlySequence<byte> BuildSequence()
    {
        BufferSegment? first = null, last = null;
        int used = 0;
        foreach (var b in _received)
        {
            if (b.IoBufferCount == 1)
            {
                Append(b.GetIoBuffer(b.ReaderIndex, b.ReadableBytes), ref first, ref last, ref used);
            }
            else
            {
                foreach (var part in b.GetIoBuffers(b.ReaderIndex, b.ReadableBytes))
                    Append(part, ref first, ref last, ref used);
            }
        }
        return first is null ? ReadOnlySequence<byte>.Empty : new ReadOnlySequence<byte>(first, 0, last!, last!.Memory.Length);
    }

    private void Append(ArraySegment<byte> part, ref BufferSegment? first, ref BufferSegment? last, ref int used)
    {
        if (part.Count == 0) return;
        if (used == _segments.Count) _segments.Add(new BufferSegment());
        var s = _segments[used++];
        s.Reset(part, last is null ? 0 : last.RunningIndex + last.Memory.Length);
        if (last is null) first = s;
        else last.Link(s);
        last = s;
    }

    /// <summary>Releases the first <paramref name="n"/> queued bytes. Caller holds _lock.</summary>
    private void Consume(long n)
    {
        _receivedBytes -= n;
        while (n > 0)
        {
            var b = _received.Peek();
            int readable = b.ReadableBytes;
            if (readable <= n)
            {
                _received.Dequeue();
                b.Release();
                n -= readable;
            }
            else
            {
                b.SkipBytes((int)n);
                n = 0;
            }
        }
    }

    /// <summary>A reusable segment: the sequence handed to the core is rebuilt from these on every call.</summary>
    private sealed class BufferSegment : ReadOnlySequenceSegment<byte>
    {
        public void Reset(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
            Next = null;
        }

        public void Link(BufferSegment next) => Next = next;
    }

    // ------------------------------------------------------------------ IPduSink (core's sending side)

    public Memory<byte> GetMemory(int sizeHint = 0)
    {
        if (Volatile.Read(ref _closeRequested) != 0) return Scratch(sizeHint);
        int need = Math.Max(sizeHint, 1);
        var b = _out;
        if (b is null || b.WritableBytes < need)
        {
            if (b is not null) Send(b, flush: false);
            // Heap buffers from our pool: always array-backed, so the core writes straight into them.
            b = _out = _owner.Allocator.HeapBuffer(Math.Max(need, DotNettyTransport.WriteChunkSize));
        }
        return new Memory<byte>(b.Array, b.ArrayOffset + b.WriterIndex, b.WritableBytes);
    }

    public Span<byte> GetSpan(int sizeHint = 0) => GetMemory(sizeHint).Span;

    public void Advance(int count)
    {
        if (Volatile.Read(ref _closeRequested) != 0 || _out is null) return;
        _out.SetWriterIndex(_out.WriterIndex + count);
    }

    private Memory<byte> Scratch(int sizeHint)
    {
        if (_scratch.Length < Math.Max(sizeHint, 256)) _scratch = new byte[Math.Max(sizeHint, 256)];
        return _scratch;
    }

    private void Send(IByteBuffer b, bool flush)
    {
        if (ReferenceEquals(b, _out)) _out = null;
        if (!b.IsReadable())
        {
            b.Release();
            if (flush) _channel.Flush();
            return;
        }
        // A failed write (peer gone) releases the buffer and surfaces as an inactive channel.
        _ = flush ? _channel.WriteAndFlushAsync(b) : _channel.WriteAsync(b);
    }

    private const int ReuseThreshold = 8 * 1024 + 64;

    public ValueTask<bool> FlushAsync(CancellationToken ct = default)
    {
        if (Volatile.Read(ref _closeRequested) != 0) return new ValueTask<bool>(false);
        var b = _out;
        if (b is not null && b.IsReadable() && b.WritableBytes >= ReuseThreshold)
        {
            // Small PDUs (a 4 KiB read's answer) share one pooled chunk: send a retained slice of what was
            // written and keep writing behind it, instead of taking a fresh chunk from the pool per flush.
            var slice = b.RetainedSlice(b.ReaderIndex, b.ReadableBytes);
            b.SetReaderIndex(b.WriterIndex);
            _ = _channel.WriteAndFlushAsync(slice);
        }
        else if (b is not null) Send(b, flush: true);
        else _channel.Flush();
        if (!_channel.Active) return new ValueTask<bool>(false);
        return _channel.IsWritable ? new ValueTask<bool>(true) : WaitWritableAsync(ct);
    }

    /// <summary>Back-pressure: the core's next PDU waits until the outbound queue drained below the low-water mark.</summary>
    private async ValueTask<bool> WaitWritableAsync(CancellationToken ct)
    {
        while (true)
        {
            if (!_channel.Active) return false;
            if (_channel.IsWritable) return true;
            var waiter = Volatile.Read(ref _writable);
            if (waiter is null)
            {
                var fresh = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                waiter = Interlocked.CompareExchange(ref _writable, fresh, null) ?? fresh;
            }
            // Re-check after publishing the waiter: a change just before it would otherwise be missed.
            if (_channel.IsWritable || !_channel.Active) continue;
            await waiter.Task.WaitAsync(ct).ConfigureAwait(false);
        }
    }

    public void Close()
    {
        if (Interlocked.Exchange(ref _closeRequested, 1) != 0) return;
        var b = _out;
        _out = null;
        Task last;
        if (b is not null && b.IsReadable()) last = _channel.WriteAndFlushAsync(b);
        else
        {
            b?.Release();
            last = _channel.WriteAndFlushAsync(Unpooled.Empty);
        }
        // Writes complete in order: once this one is done, every PDU flushed before the close is on the wire.
        // A peer that reads nothing would hold the channel (and what is queued for it) forever: 5 s at most.
        Task.WhenAny(last, Task.Delay(TimeSpan.FromSeconds(5))).ContinueWith(static (_, ch) => ((IChannel)ch!).CloseAsync(), _channel,
            CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }
}
