using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using IntegrityTarget.Iscsi;
using Serilog;

namespace IntegrityTarget.Transport;

/// <summary>
/// Default transport: sockets with System.IO.Pipelines. Per connection one receive loop (socket → input
/// pipe), one processing loop (input pipe → <see cref="IscsiConnection.ReceiveAsync"/>) and one send loop
/// (output pipe → socket). Back-pressure: the core awaits the output pipe's flush, which pauses above
/// the writer threshold; the input pipe pauses the receive loop when the core falls behind, so bytes in
/// flight per connection are bounded by the two thresholds. Large read data is not copied into the output
/// pipe: the core hands the read buffer over (<see cref="IBorrowingPduSink"/>) and the send loop puts it on
/// the socket between the pipe's bytes, in one gathering send.
/// </summary>
public sealed class SocketTransport : IIscsiTransport
{
    private readonly IscsiServer _server;
    private readonly ILogger _log;
    private readonly RetainingMemoryPool _pool = new();
    private readonly List<Socket> _listeners = [];
    private readonly List<IPEndPoint> _bound = [];
    private readonly List<Task> _acceptLoops = [];
    private readonly HashSet<SocketConnection> _connections = [];
    private readonly object _sync = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly PipeOptions _inputOptions;
    private readonly PipeOptions _outputOptions;
    private readonly LogLimiter _acceptErrorLog = new(TimeSpan.FromSeconds(10), maxPerInterval: 3);

    public SocketTransport(IscsiServer server, ILogger log)
    {
        _server = server ?? throw new ArgumentNullException(nameof(server));
        _log = (log ?? throw new ArgumentNullException(nameof(log))).ForContext<SocketTransport>();
        // The pause threshold must exceed the largest frame, or a single PDU could never be completed.
        long maxFrame = 48 + 1020 + 4 + Math.Max(server.Options.MaxRecvDataSegmentLength, 8192) + 8;
        long pause = Math.Max(1 << 20, 2 * maxFrame);
        // Received bytes are framed and dispatched on the receiving thread (inline reader scheduler): without
        // the thread-pool hop per received segment, 4k QD1 runs 5-28 % more IOPS here, QD32 the same.
        // Sends keep their own loop: sending inline from whichever task completed a command made 4k QD32
        // reads 7-38 % slower.
        _inputOptions = Options(readerScheduler: PipeScheduler.Inline);
        _outputOptions = Options(readerScheduler: PipeScheduler.ThreadPool);

        PipeOptions Options(PipeScheduler readerScheduler) => new(_pool, readerScheduler, PipeScheduler.ThreadPool,
            pauseWriterThreshold: pause, resumeWriterThreshold: pause / 2, minimumSegmentSize: 64 * 1024, useSynchronizationContext: false);
    }

    /// <summary>
    /// Test seam: called by a connection's send loop before each gathering send that carries borrowed read
    /// buffers; whatever it throws ends that send loop the way a bug there would.
    /// </summary>
    internal Action? BeforeBorrowedSendForTests { get; set; }

    public IReadOnlyList<IPEndPoint> BoundEndpoints { get { lock (_sync) return _bound.ToList(); } }

    public Task StartAsync(IReadOnlyList<IPEndPoint> portals, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(portals);
        if (portals.Count == 0) throw new ArgumentException("at least one portal is needed", nameof(portals));
        foreach (var portal in portals)
        {
            ct.ThrowIfCancellationRequested();
            var listener = new Socket(portal.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                if (portal.AddressFamily == AddressFamily.InterNetworkV6 && portal.Address.Equals(IPAddress.IPv6Any))
                    listener.DualMode = true;
                listener.Bind(portal);
                listener.Listen(512);
            }
            catch (SocketException ex)
            {
                listener.Dispose();
                var reason = ex.SocketErrorCode switch
                {
                    SocketError.AddressAlreadyInUse => "the address is already in use (another target running?)",
                    SocketError.AddressNotAvailable => "the address is not assigned to this machine",
                    SocketError.AccessDenied => "permission denied (ports below 1024 need privileges)",
                    _ => ex.Message,
                };
                _ = StopAsync(CancellationToken.None);
                throw new TransportBindException(portal, reason, ex);
            }
            var ep = (IPEndPoint)listener.LocalEndPoint!;
            lock (_sync)
            {
                _listeners.Add(listener);
                _bound.Add(ep);
                _acceptLoops.Add(AcceptLoopAsync(ct => listener.AcceptAsync(ct), ep));
            }
            _log.Debug("Listening for iSCSI on {Endpoint}", ep);
        }
        return Task.CompletedTask;
    }

    /// <summary>Accepts until stopped; <paramref name="accept"/> is the listener's accept (a seam for tests).</summary>
    internal async Task AcceptLoopAsync(Func<CancellationToken, ValueTask<Socket>> accept, EndPoint endpoint)
    {
        var backoff = AcceptBackoff.Min;
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await accept(_stop.Token).ConfigureAwait(false);
                backoff = AcceptBackoff.Min;
            }
            catch (OperationCanceledException) { return; }
            catch (ObjectDisposedException) { return; }
            catch (SocketException ex)
            {
                // Out of file descriptors (EMFILE/ENFILE) or buffers: retrying at once only spins and floods the
                // log, so wait a little longer each time (established connections are served meanwhile). Without
                // descriptors the runtime itself cannot start threads, so half-done logins give theirs back first.
                _server.Counters.RecordAcceptError();
                int shed = ex.SocketErrorCode == SocketError.TooManyOpenSockets
                    ? _server.ShedPendingLogins(Math.Max(8, _server.Options.PendingLoginLimit / 8)) : 0;
                if (_acceptErrorLog.ShouldLog(ex.SocketErrorCode.ToString(), out var more))
                    _log.Warning("Accepting a connection on {Endpoint} failed: {Error} ({Hint}); closed {Shed} connections still logging in; retrying in {Delay} ms{More}",
                        endpoint, ex.SocketErrorCode, shed, AcceptBackoff.Describe(ex.SocketErrorCode), (int)backoff.TotalMilliseconds,
                        more > 0 ? $"; {more} more such failures since the last line" : "");
                try { await Task.Delay(backoff, _stop.Token).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
                backoff = AcceptBackoff.Next(backoff);
                continue;
            }
            socket.NoDelay = true;
            SocketConnection connection;
            lock (_sync)
            {
                // A socket accepted while StopAsync runs would miss its snapshot of the connections and
                // stay open: StopAsync cancels before it takes the snapshot under this lock, so check here.
                if (_stop.IsCancellationRequested) { socket.Dispose(); return; }
                connection = new SocketConnection(this, socket);
                _connections.Add(connection);
            }
            _ = connection.RunAsync();
        }
    }

    public async Task StopAsync(CancellationToken ct)
    {
        _stop.Cancel();
        List<SocketConnection> conns;
        lock (_sync)
        {
            foreach (var l in _listeners) l.Dispose();
            _listeners.Clear();
            conns = _connections.ToList();
        }
        foreach (var c in conns) c.Abort();
        Task[] loops;
        lock (_sync) loops = [.. _acceptLoops, .. conns.Select(c => c.Completion)];
        try { await Task.WhenAll(loops).WaitAsync(ct).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(CancellationToken.None).ConfigureAwait(false);
        _pool.Dispose();
        _stop.Dispose();
    }

    private void Remove(SocketConnection c)
    {
        lock (_sync) _connections.Remove(c);
    }

    /// <summary>One accepted socket and its three loops.</summary>
    private sealed class SocketConnection : IBorrowingPduSink
    {
        /// <summary>Buffers per gathering send (Linux allows 1024; each costs a pin per call).</summary>
        private const int MaxGather = 64;
        private readonly SocketTransport _owner;
        private readonly Socket _socket;
        private readonly Pipe _input;
        private readonly Pipe _output;
        private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _sendDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly object _closeLock = new();
        private byte[] _scratch = [];
        private bool _closed;

        // Borrowed buffers: each goes out after the pipe's first Position bytes (counted from the start of the
        // connection), in the order written. Only the writer (one at a time) touches _pipeWritten.
        private readonly record struct Borrowed(long Position, ArraySegment<byte> Data, long Seq);
        private readonly object _borrowLock = new();
        private readonly Queue<Borrowed> _borrowed = new(); // guarded by _borrowLock
        private readonly Queue<(long Seq, TaskCompletionSource Done)> _releaseWaiters = new(); // guarded by _borrowLock, Seq ascending
        private long _pipeWritten;
        private long _borrowSeq; // guarded by _borrowLock: borrowed buffers queued so far
        private long _releasedSeq; // guarded by _borrowLock: borrowed buffers the send loop is done with
        private bool _sendLoopEnded; // guarded by _borrowLock

        public SocketConnection(SocketTransport owner, Socket socket)
        {
            _owner = owner;
            _socket = socket;
            _input = new Pipe(owner._inputOptions);
            _output = new Pipe(owner._outputOptions);
        }

        public Task Completion => _done.Task;

        public async Task RunAsync()
        {
            var local = _socket.LocalEndPoint as IPEndPoint;
            var remote = _socket.RemoteEndPoint as IPEndPoint;
            if (local is not null && local.Address.IsIPv4MappedToIPv6) local = new IPEndPoint(local.Address.MapToIPv4(), local.Port);
            IscsiConnection? connection = null;
            try
            {
                connection = _owner._server.CreateConnection(this, local, remote);
                if (connection is null) return; // shutting down
                _owner._log.Debug("Connection from {Remote} to {Local}", remote, local);
                var receive = ReceiveLoopAsync();
                var send = SendLoopAsync();
                await ProcessLoopAsync(connection).ConfigureAwait(false);
                await connection.OnTransportClosedAsync().ConfigureAwait(false);
                Close();
                await Task.WhenAll(receive, send).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                _owner._log.Error(ex, "connection from {Remote} failed", remote);
                if (connection is not null) await connection.OnTransportClosedAsync().ConfigureAwait(false);
            }
            finally
            {
                _socket.Dispose();
                _owner.Remove(this);
                _done.TrySetResult();
            }
        }

        private async Task ReceiveLoopAsync()
        {
            var writer = _input.Writer;
            try
            {
                while (true)
                {
                    var memory = writer.GetMemory(8192);
                    int n = await _socket.ReceiveAsync(memory, SocketFlags.None).ConfigureAwait(false);
                    if (n == 0) break;
                    writer.Advance(n);
                    var flush = await writer.FlushAsync().ConfigureAwait(false);
                    if (flush.IsCompleted || flush.IsCanceled) break;
                }
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException or OperationCanceledException)
            {
                // Peer reset or we closed the socket: both simply end the connection.
            }
            catch (Exception ex)
            {
                // A bug: the processing loop still learns that nothing more comes, so the connection ends.
                _owner._log.Error(ex, "Receive loop failed; closing the connection");
            }
            await writer.CompleteAsync().ConfigureAwait(false);
        }

        private async Task ProcessLoopAsync(IscsiConnection connection)
        {
            var reader = _input.Reader;
            try
            {
                while (!connection.IsClosed)
                {
                    var result = await reader.ReadAsync().ConfigureAwait(false);
                    var buffer = result.Buffer;
                    var consumed = await connection.ReceiveAsync(buffer).ConfigureAwait(false);
                    reader.AdvanceTo(consumed, buffer.End);
                    if (result.IsCompleted || result.IsCanceled) break;
                }
            }
            finally
            {
                await reader.CompleteAsync().ConfigureAwait(false);
            }
        }

        /// <summary>
        /// Output pipe → socket until the pipe is completed or the socket fails. Whichever way it ends (a reset,
        /// our close, or a bug that throws anything else), the end is the same and happens once: every borrowed
        /// buffer not sent yet is given back (no send is in progress any more), the pipe's reader is completed
        /// (the core's flushes return instead of waiting for room nobody makes), and the socket is closed (which
        /// ends the receive loop, so the connection closes even when the peer never closes its side).
        /// </summary>
        private async Task SendLoopAsync()
        {
            var reader = _output.Reader;
            try
            {
                await SendPipeAsync(reader).ConfigureAwait(false);
                try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { }
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException or OperationCanceledException)
            {
                // Peer reset, or we closed the socket: both simply end the connection.
            }
            catch (Exception ex)
            {
                _owner._log.Error(ex, "Send loop failed; closing the connection");
            }
            finally
            {
                EndSending(reader);
            }
        }

        private void EndSending(PipeReader reader)
        {
            EndBorrowing();
            try { reader.Complete(); }
            catch (Exception ex) { _owner._log.Error(ex, "Completing the output pipe failed"); }
            _sendDone.TrySetResult();
            try { _socket.Close(); } catch (ObjectDisposedException) { }
        }

        private async Task SendPipeAsync(PipeReader reader)
        {
            var gather = new List<ArraySegment<byte>>(MaxGather);
            var due = new List<Borrowed>();
            long consumed = 0; // pipe bytes sent so far
            while (true)
            {
                var result = await reader.ReadAsync().ConfigureAwait(false);
                var buffer = result.Buffer;
                long end = consumed + buffer.Length;
                due.Clear();
                lock (_borrowLock)
                    while (_borrowed.TryPeek(out var b) && b.Position <= end) due.Add(_borrowed.Dequeue());
                if (due.Count == 0)
                {
                    foreach (var segment in buffer)
                    {
                        var mem = segment;
                        while (!mem.IsEmpty)
                        {
                            int n = await _socket.SendAsync(mem, SocketFlags.None).ConfigureAwait(false);
                            mem = mem[n..];
                        }
                    }
                }
                else
                {
                    // The pipe's bytes up to each borrowed buffer, the buffer, ... and the rest of the pipe's bytes.
                    var rest = buffer;
                    long at = consumed, releasable = -1;
                    foreach (var b in due)
                    {
                        if (b.Position < at) throw new InvalidOperationException($"borrowed buffer at pipe byte {b.Position}, behind the {at} already sent");
                        releasable = await GatherAsync(gather, rest.Slice(0, b.Position - at), releasable).ConfigureAwait(false);
                        rest = rest.Slice(b.Position - at);
                        at = b.Position;
                        if (gather.Count == MaxGather) releasable = await SendGatheredAsync(gather, releasable).ConfigureAwait(false);
                        gather.Add(b.Data);
                        releasable = b.Seq;
                    }
                    releasable = await GatherAsync(gather, rest, releasable).ConfigureAwait(false);
                    await SendGatheredAsync(gather, releasable).ConfigureAwait(false);
                }
                consumed = end;
                reader.AdvanceTo(buffer.End);
                if (result.IsCompleted || result.IsCanceled) break;
            }
        }

        /// <summary>Adds the pipe's <paramref name="bytes"/> to <paramref name="gather"/>, sending whenever it is full.</summary>
        private async ValueTask<long> GatherAsync(List<ArraySegment<byte>> gather, ReadOnlySequence<byte> bytes, long releasable)
        {
            foreach (var segment in bytes)
            {
                if (segment.IsEmpty) continue;
                if (!MemoryMarshal.TryGetArray(segment, out var array)) throw new InvalidOperationException("pipe memory is not an array");
                if (gather.Count == MaxGather) releasable = await SendGatheredAsync(gather, releasable).ConfigureAwait(false);
                gather.Add(array);
            }
            return releasable;
        }

        /// <summary>
        /// Sends everything in <paramref name="gather"/> (one sendmsg as far as the socket takes it), then
        /// releases the borrowed buffers up to <paramref name="releasable"/>, which were all in it. Returns -1.
        /// </summary>
        private async ValueTask<long> SendGatheredAsync(List<ArraySegment<byte>> gather, long releasable)
        {
            if (releasable >= 0) _owner.BeforeBorrowedSendForTests?.Invoke();
            if (gather.Count == 1)
            {
                var mem = gather[0].AsMemory();
                while (!mem.IsEmpty) mem = mem[await _socket.SendAsync(mem, SocketFlags.None).ConfigureAwait(false)..];
            }
            else if (gather.Count > 1)
            {
                long total = 0;
                foreach (var g in gather) total += g.Count;
                while (true)
                {
                    int n = await _socket.SendAsync(gather, SocketFlags.None).ConfigureAwait(false);
                    total -= n;
                    if (total <= 0) break;
                    // A short send (not seen on Linux, where it goes on until all is sent): drop what went out.
                    while (n >= gather[0].Count) { n -= gather[0].Count; gather.RemoveAt(0); }
                    if (n > 0) gather[0] = gather[0][n..];
                }
            }
            gather.Clear();
            if (releasable >= 0) Release(releasable);
            return -1;
        }

        private void Release(long seq)
        {
            List<TaskCompletionSource>? done = null;
            lock (_borrowLock)
            {
                _releasedSeq = seq;
                while (_releaseWaiters.TryPeek(out var w) && w.Seq <= seq) (done ??= []).Add(_releaseWaiters.Dequeue().Done);
            }
            if (done is not null) foreach (var d in done) d.TrySetResult();
        }

        private void EndBorrowing()
        {
            List<TaskCompletionSource> done = [];
            lock (_borrowLock)
            {
                _sendLoopEnded = true;
                _borrowed.Clear();
                _releasedSeq = _borrowSeq;
                while (_releaseWaiters.TryDequeue(out var w)) done.Add(w.Done);
            }
            foreach (var d in done) d.TrySetResult();
        }

        public bool TryWriteBorrowed(ReadOnlyMemory<byte> data)
        {
            if (_closed || !MemoryMarshal.TryGetArray(data, out var array)) return false;
            lock (_borrowLock)
            {
                if (_sendLoopEnded) return false;
                _borrowed.Enqueue(new Borrowed(_pipeWritten, array, ++_borrowSeq));
            }
            return true;
        }

        public ValueTask WhenBorrowedReleasedAsync()
        {
            lock (_borrowLock)
            {
                if (_releasedSeq >= _borrowSeq) return ValueTask.CompletedTask;
                // Continuations on the thread pool: the command's end must not run on (and hold up) the send loop.
                var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _releaseWaiters.Enqueue((_borrowSeq, done));
                return new ValueTask(done.Task);
            }
        }

        // ---- IPduSink: the core writes PDUs here, one writer at a time.

        public void Advance(int count)
        {
            if (_closed) return;
            _output.Writer.Advance(count);
            _pipeWritten += count;
        }

        public Memory<byte> GetMemory(int sizeHint = 0) => _closed ? Scratch(sizeHint) : _output.Writer.GetMemory(sizeHint);

        public Span<byte> GetSpan(int sizeHint = 0) => _closed ? Scratch(sizeHint).Span : _output.Writer.GetSpan(sizeHint);

        private Memory<byte> Scratch(int sizeHint)
        {
            if (_scratch.Length < Math.Max(sizeHint, 256)) _scratch = new byte[Math.Max(sizeHint, 256)];
            return _scratch;
        }

        public async ValueTask<bool> FlushAsync(CancellationToken ct = default)
        {
            if (_closed) return false;
            var r = await _output.Writer.FlushAsync(ct).ConfigureAwait(false);
            return !r.IsCompleted && !r.IsCanceled;
        }

        public void Close()
        {
            lock (_closeLock)
            {
                if (_closed) return;
                _closed = true;
            }
            _output.Writer.Complete();
            _ = AbortUnlessDrainedAsync();
        }

        /// <summary>How long what is left to send may take after a close before the socket is cut.</summary>
        private static readonly TimeSpan CloseGrace = TimeSpan.FromSeconds(5);

        /// <summary>
        /// A peer that reads nothing would keep the send loop (and the socket, its descriptor and the unsent
        /// bytes) forever: after a grace period the socket is closed, which ends both loops.
        /// </summary>
        private async Task AbortUnlessDrainedAsync()
        {
            if (await Task.WhenAny(_sendDone.Task, Task.Delay(CloseGrace)).ConfigureAwait(false) == _sendDone.Task) return;
            _owner._log.Debug("Closing the socket: the peer did not take the last {Seconds} s of output", CloseGrace.TotalSeconds);
            try { _socket.Close(); } catch (ObjectDisposedException) { }
            _input.Reader.CancelPendingRead();
        }

        /// <summary>Hard close (transport stop): the socket goes away, the loops end.</summary>
        public void Abort()
        {
            Close();
            try { _socket.Close(); } catch (ObjectDisposedException) { }
        }
    }
}
