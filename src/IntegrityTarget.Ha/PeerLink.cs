using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Serilog;

namespace IntegrityTarget.Ha;

/// <summary>
/// One authenticated TCP connection between two gateways: frames in both directions, one sender at a
/// time, a read loop, and a heartbeat that declares the link dead when the other side stays silent for
/// <see cref="HaOptions.PeerTimeout"/>. Nothing on it is trusted before the handshake proved that the
/// other side knows the shared secret.
/// </summary>
internal sealed class PeerLink : IAsyncDisposable
{
    public const ushort Version = 1;
    private const int MaxFrame = 128 << 20;

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly HaOptions _options;
    private readonly CancellationTokenSource _closed = new();
    private readonly TaskCompletionSource<string> _closeReason = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _lastReceived = Stopwatch.GetTimestamp();

    private PeerLink(Socket socket, HaOptions options, string peer)
    {
        _socket = socket; _options = options; Peer = peer;
        _socket.NoDelay = true;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    /// <summary>The gateway at the other end.</summary>
    public string Peer { get; private set; }
    public CancellationToken ClosedToken => _closed.Token;
    /// <summary>Completes with the reason once the link is closed (either side, error, or silence).</summary>
    public Task<string> Closed => _closeReason.Task;

    // ---- handshake ---------------------------------------------------------------------------

    private static byte[] Proof(byte[] secret, string role, byte[] first, byte[] second, byte[] fingerprint)
    {
        using var h = new HMACSHA256(secret);
        var role8 = Encoding.ASCII.GetBytes(role);
        h.TransformBlock(role8, 0, role8.Length, null, 0);
        h.TransformBlock(first, 0, first.Length, null, 0);
        h.TransformBlock(second, 0, second.Length, null, 0);
        h.TransformFinalBlock(fingerprint, 0, fingerprint.Length);
        return h.Hash!;
    }

    /// <summary>Connects to <paramref name="peer"/> and proves both sides know the secret; throws <see cref="PeerProtocolException"/> when refused.</summary>
    public static async Task<PeerLink> ConnectAsync(GatewayInfo peer, HaOptions options, byte[] fingerprint, CancellationToken ct)
    {
        var socket = new Socket(peer.Peer.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(options.PeerTimeout);
        try { await socket.ConnectAsync(peer.Peer, timeout.Token).ConfigureAwait(false); }
        catch { socket.Dispose(); throw; }
        var link = new PeerLink(socket, options, peer.Name);
        try
        {
            var nonceC = RandomNumberGenerator.GetBytes(16);
            await link.SendAsync(new FrameWriter(PeerFrame.Hello).U16(Version).Str(options.Self).Blob(fingerprint).Blob(nonceC).Build(), timeout.Token).ConfigureAwait(false);
            var (type, body) = await link.ReadFrameAsync(timeout.Token).ConfigureAwait(false);
            if (type == PeerFrame.Refused) throw new PeerProtocolException($"{peer.Name} refused the peer link: {Reader(body).Str()}");
            if (type != PeerFrame.Welcome) throw new PeerProtocolException($"{peer.Name} answered the handshake with {type}");
            var r = Reader(body);
            string name = r.Str();
            var nonceS = r.Blob();
            var proofS = r.Blob();
            if (name != peer.Name) throw new PeerProtocolException($"the gateway at {peer.Peer} says it is '{name}', not '{peer.Name}' (check Ha:Gateways)");
            if (!CryptographicOperations.FixedTimeEquals(proofS, Proof(options.Secret, "server", nonceC, nonceS, fingerprint)))
                throw new PeerProtocolException($"{peer.Name} does not know the peer secret or serves a different configuration (Ha:PeerSecret and every setting but Ha:Self must match)");
            await link.SendAsync(new FrameWriter(PeerFrame.Proof).Blob(Proof(options.Secret, "client", nonceS, nonceC, fingerprint)).Build(), timeout.Token).ConfigureAwait(false);
            return link;
        }
        catch
        {
            await link.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The server side of the handshake on an accepted socket; null (socket closed) when the peer is not one of ours.</summary>
    public static async Task<PeerLink?> AcceptAsync(Socket socket, HaOptions options, byte[] fingerprint, ILogger log, CancellationToken ct)
    {
        var remote = socket.RemoteEndPoint?.ToString() ?? "?";
        var link = new PeerLink(socket, options, "?");
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(options.PeerTimeout);
            var (type, body) = await link.ReadFrameAsync(timeout.Token).ConfigureAwait(false);
            if (type != PeerFrame.Hello) throw new PeerProtocolException($"expected Hello, got {type}");
            var r = Reader(body);
            ushort version = r.U16();
            string name = r.Str();
            var theirFingerprint = r.Blob();
            var nonceC = r.Blob();
            string? refusal = version != Version ? $"peer protocol version {version}, this gateway speaks {Version}"
                : options.Gateways.All(g => g.Name != name) || name == options.Self ? $"'{name}' is not another gateway of Ha:Gateways"
                : !theirFingerprint.AsSpan().SequenceEqual(fingerprint) ? "the two gateways' configurations differ (gateways, targets, LUNs or serials); they must be identical except Ha:Self"
                : null;
            if (refusal != null)
            {
                log.Error("Peer link from {Remote} ({Gateway}) refused: {Reason}", remote, name, refusal);
                await link.SendAsync(new FrameWriter(PeerFrame.Refused).Str(refusal).Build(), timeout.Token).ConfigureAwait(false);
                await link.DisposeAsync().ConfigureAwait(false);
                return null;
            }
            var nonceS = RandomNumberGenerator.GetBytes(16);
            await link.SendAsync(new FrameWriter(PeerFrame.Welcome).Str(options.Self).Blob(nonceS).Blob(Proof(options.Secret, "server", nonceC, nonceS, fingerprint)).Build(), timeout.Token).ConfigureAwait(false);
            (type, body) = await link.ReadFrameAsync(timeout.Token).ConfigureAwait(false);
            if (type != PeerFrame.Proof || !CryptographicOperations.FixedTimeEquals(Reader(body).Blob(), Proof(options.Secret, "client", nonceS, nonceC, fingerprint)))
            {
                log.Error("Peer link from {Remote} claiming to be {Gateway} refused: it does not know the peer secret", remote, name);
                await link.DisposeAsync().ConfigureAwait(false);
                return null;
            }
            link.Peer = name;
            return link;
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or PeerProtocolException)
        {
            log.Warning("Peer link from {Remote} failed during the handshake: {Error}", remote, e.Message);
            await link.DisposeAsync().ConfigureAwait(false);
            return null;
        }
    }

    private static FrameReader Reader(byte[] body) => new(body);

    // ---- frames ------------------------------------------------------------------------------

    public async ValueTask SendAsync(ReadOnlyMemory<byte> frame, CancellationToken ct = default)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct, _closed.Token);
        timeout.CancelAfter(_options.PeerTimeout); // a peer that stops reading must not block us forever
        await _sendLock.WaitAsync(timeout.Token).ConfigureAwait(false);
        try
        {
            await _stream.WriteAsync(frame, timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            Close($"send failed: {e.Message}");
            throw new IOException($"peer link to {Peer} is closed", e);
        }
        finally { _sendLock.Release(); }
    }

    /// <summary>Sends without waiting and without throwing (heartbeats, notices); a failure closes the link.</summary>
    public void Post(ReadOnlyMemory<byte> frame) => _ = PostAsync(frame);

    private async Task PostAsync(ReadOnlyMemory<byte> frame)
    {
        try { await SendAsync(frame).ConfigureAwait(false); }
        catch (IOException) { }
        catch (OperationCanceledException) { }
    }

    private async ValueTask<(PeerFrame Type, byte[] Body)> ReadFrameAsync(CancellationToken ct)
    {
        var head = new byte[5];
        await _stream.ReadExactlyAsync(head, ct).ConfigureAwait(false);
        uint len = BinaryPrimitives.ReadUInt32BigEndian(head);
        if (len < 1 || len > MaxFrame) throw new PeerProtocolException($"frame length {len} out of range");
        var body = new byte[len - 1];
        await _stream.ReadExactlyAsync(body, ct).ConfigureAwait(false);
        Volatile.Write(ref _lastReceived, Stopwatch.GetTimestamp());
        return ((PeerFrame)head[4], body);
    }

    /// <summary>Reads frames until the link closes, handing each to <paramref name="onFrame"/>; answers pings; runs the heartbeat.</summary>
    public async Task RunAsync(Func<PeerFrame, byte[], ValueTask> onFrame)
    {
        var heartbeat = HeartbeatAsync();
        try
        {
            while (!_closed.IsCancellationRequested)
            {
                var (type, body) = await ReadFrameAsync(_closed.Token).ConfigureAwait(false);
                if (type == PeerFrame.Ping) { Post(new FrameWriter(PeerFrame.Pong).Build()); continue; }
                if (type == PeerFrame.Pong) continue;
                await onFrame(type, body).ConfigureAwait(false);
            }
        }
        catch (EndOfStreamException) { Close("the peer closed the link"); }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException or PeerProtocolException)
        {
            Close(e is OperationCanceledException ? "closed" : e.Message);
        }
        await heartbeat.ConfigureAwait(false);
    }

    private async Task HeartbeatAsync()
    {
        var silentFor = _options.PeerTimeout;
        try
        {
            while (!_closed.IsCancellationRequested)
            {
                await Task.Delay(_options.HeartbeatInterval, _closed.Token).ConfigureAwait(false);
                if (Stopwatch.GetElapsedTime(Volatile.Read(ref _lastReceived)) > silentFor)
                {
                    Close($"no word from {Peer} for {silentFor.TotalSeconds:0.#} s");
                    return;
                }
                Post(new FrameWriter(PeerFrame.Ping).Build());
            }
        }
        catch (OperationCanceledException) { }
    }

    public void Close(string reason)
    {
        if (!_closeReason.TrySetResult(reason)) return;
        _closed.Cancel();
        try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        _stream.Dispose();
    }

    public ValueTask DisposeAsync()
    {
        Close("disposed");
        return ValueTask.CompletedTask;
    }

    public override string ToString() => $"peer link to {Peer}";
}
