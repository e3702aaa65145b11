using System.Net;
using System.Net.Sockets;
using DotNetty.Buffers;
using DotNetty.Common;
using DotNetty.Transport.Bootstrapping;
using DotNetty.Transport.Channels;
using DotNetty.Transport.Channels.Sockets;
using IntegrityTarget.Iscsi;
using Serilog;

namespace IntegrityTarget.Transport;

/// <summary>
/// Alternative transport on DotNetty 0.7.6 (selected with <c>Transport: "dotnetty"</c>). One boss event loop
/// accepts, <see cref="Environment.ProcessorCount"/> worker loops do socket I/O; the iSCSI core runs off the
/// event loops (see <see cref="DotNettyConnection"/>), so a slow backend never stalls other connections'
/// I/O. Received buffers are handed to the core as a <see cref="System.Buffers.ReadOnlySequence{T}"/> over
/// DotNetty's own pooled arrays (no merge-copy); auto-read stops while the core is behind, and the core's
/// flush waits for channel writability.
/// </summary>
public sealed class DotNettyTransport : IIscsiTransport
{
    // Outgoing chunk size: a 256 KiB Data-In becomes four pooled buffers, never one big copy.
    internal const int WriteChunkSize = 64 * 1024;

    private readonly IscsiServer _server;
    private readonly ILogger _log;
    private readonly object _sync = new();
    private readonly List<IChannel> _listeners = [];
    private readonly List<IPEndPoint> _bound = [];
    private readonly HashSet<DotNettyConnection> _connections = [];
    // Per-transport allocator (not PooledByteBufferAllocator.Default): its arenas live and die with us.
    private readonly PooledByteBufferAllocator _allocator = new(preferDirect: false);
    private MultithreadEventLoopGroup? _boss;
    private MultithreadEventLoopGroup? _workers;
    private volatile bool _stopping;

    public DotNettyTransport(IscsiServer server, ILogger log)
    {
        _server = server ?? throw new ArgumentNullException(nameof(server));
        _log = (log ?? throw new ArgumentNullException(nameof(log))).ForContext<DotNettyTransport>();
        // DotNetty keeps this switch in a static of its own; we only ever store the same constant, so no
        // per-instance state leaks through it and two transports cannot disagree. Leak tracking is a
        // debugging aid that costs ~40 % of the request rate here (docs/limits.md), so production runs off.
        ResourceLeakDetector.Level = ResourceLeakDetector.DetectionLevel.Disabled;
        // Same bounds as the socket transport: the pause threshold must exceed the largest frame, or a
        // single PDU could never be completed while reading is paused.
        long maxFrame = 48 + 1020 + 4 + Math.Max(server.Options.MaxRecvDataSegmentLength, 8192) + 8;
        PauseReadingBytes = Math.Max(1 << 20, 2 * maxFrame);
        WriteHighWaterMark = (int)Math.Min(int.MaxValue, PauseReadingBytes);
    }

    internal IscsiServer Server => _server;
    internal ILogger Log => _log;
    internal IByteBufferAllocator Allocator => _allocator;
    /// <summary>Unconsumed received bytes at which auto-read stops (it resumes below half).</summary>
    internal long PauseReadingBytes { get; }
    /// <summary>Bytes queued for sending at which the channel turns unwritable and the core's flush waits.</summary>
    internal int WriteHighWaterMark { get; }

    public IReadOnlyList<IPEndPoint> BoundEndpoints { get { lock (_sync) return _bound.ToList(); } }

    public async Task StartAsync(IReadOnlyList<IPEndPoint> portals, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(portals);
        if (portals.Count == 0) throw new ArgumentException("at least one portal is needed", nameof(portals));
        lock (_sync)
        {
            if (_workers is not null) throw new InvalidOperationException("the transport is already started");
            _boss = new MultithreadEventLoopGroup(1);
            _workers = new MultithreadEventLoopGroup(Math.Max(1, Environment.ProcessorCount));
        }
        foreach (var portal in portals)
        {
            ct.ThrowIfCancellationRequested();
            var bootstrap = new ServerBootstrap()
                .Group(_boss, _workers)
                .ChannelFactory(() => CreateListener(portal))
                .Option(ChannelOption.SoBacklog, 512)
                .Option(ChannelOption.Allocator, _allocator)
                .ChildOption(ChannelOption.TcpNodelay, true)
                .ChildOption(ChannelOption.SoKeepalive, true)
                .ChildOption(ChannelOption.Allocator, _allocator)
                .ChildOption(ChannelOption.AutoRead, true)
                .ChildOption(ChannelOption.WriteBufferHighWaterMark, WriteHighWaterMark)
                .ChildOption(ChannelOption.WriteBufferLowWaterMark, WriteHighWaterMark / 2)
                .ChildHandler(new ActionChannelInitializer<IChannel>(ch => ch.Pipeline.AddLast("iscsi", new DotNettyConnection(this, ch))));
            IChannel listener;
            try
            {
                listener = await bootstrap.BindAsync(portal).ConfigureAwait(false);
            }
            catch (Exception ex) when (FindSocketError(ex) is { } se)
            {
                var reason = se.SocketErrorCode switch
                {
                    SocketError.AddressAlreadyInUse => "the address is already in use (another target running?)",
                    SocketError.AddressNotAvailable => "the address is not assigned to this machine",
                    SocketError.AccessDenied => "permission denied (ports below 1024 need privileges)",
                    _ => se.Message,
                };
                await StopAsync(CancellationToken.None).ConfigureAwait(false);
                throw new TransportBindException(portal, reason, se);
            }
            var ep = Normalize(listener.LocalAddress as IPEndPoint) ?? portal;
            lock (_sync)
            {
                _listeners.Add(listener);
                _bound.Add(ep);
            }
            _log.Debug("Listening for iSCSI on {Endpoint} (DotNetty, {Workers} event loops)", ep, Math.Max(1, Environment.ProcessorCount));
        }
    }

    /// <summary>A listener of the portal's own address family ([::] also accepts IPv4, as the socket transport does).</summary>
    private static TcpServerSocketChannel CreateListener(IPEndPoint portal)
    {
        if (portal.AddressFamily == AddressFamily.InterNetworkV6 && portal.Address.Equals(IPAddress.IPv6Any))
            return new TcpServerSocketChannel(new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp) { DualMode = true });
        return new TcpServerSocketChannel(portal.AddressFamily);
    }

    private static SocketException? FindSocketError(Exception? ex)
    {
        for (; ex is not null; ex = ex.InnerException)
        {
            if (ex is SocketException se) return se;
            if (ex is AggregateException ae && ae.InnerExceptions.Count > 0) return FindSocketError(ae.InnerExceptions[0]);
        }
        return null;
    }

    /// <summary>IPv4 peers on a dual-mode socket show up as ::ffff:a.b.c.d; SendTargets must advertise a.b.c.d.</summary>
    internal static IPEndPoint? Normalize(IPEndPoint? ep) =>
        ep is not null && ep.Address.IsIPv4MappedToIPv6 ? new IPEndPoint(ep.Address.MapToIPv4(), ep.Port) : ep;

    /// <summary>Called from the channel initializer; false when stopping (the channel is then closed at once).</summary>
    internal bool Track(DotNettyConnection c)
    {
        lock (_sync)
        {
            if (_stopping) return false;
            _connections.Add(c);
            return true;
        }
    }

    internal void Untrack(DotNettyConnection c)
    {
        lock (_sync) _connections.Remove(c);
    }

    public async Task StopAsync(CancellationToken ct)
    {
        List<IChannel> listeners;
        List<DotNettyConnection> conns;
        MultithreadEventLoopGroup? boss, workers;
        lock (_sync)
        {
            _stopping = true;
            listeners = _listeners.ToList();
            _listeners.Clear();
            conns = _connections.ToList();
            boss = _boss;
            workers = _workers;
            _boss = _workers = null;
        }
        try
        {
            await Task.WhenAll(listeners.Select(l => l.CloseAsync())).WaitAsync(ct).ConfigureAwait(false);
            foreach (var c in conns) c.Abort();
            await Task.WhenAll(conns.Select(c => c.Completion)).WaitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException) { }
        catch (Exception ex)
        {
            _log.Warning(ex, "DotNetty transport stop: closing channels failed");
        }
        // Event loop threads end only when their group is shut down; a stopped transport leaves none behind.
        // No quiet period: every channel is closed already, and with any non-zero quiet period DotNetty 0.7.6
        // waits out the whole timeout (measured: 10 ms quiet / 2 s timeout takes 2 s; zero takes ~2 ms).
        var quiet = TimeSpan.Zero;
        var timeout = TimeSpan.FromSeconds(2);
        var shutdowns = new List<Task>();
        if (boss is not null) shutdowns.Add(boss.ShutdownGracefullyAsync(quiet, timeout));
        if (workers is not null) shutdowns.Add(workers.ShutdownGracefullyAsync(quiet, timeout));
        // Bounded: DotNetty 0.7.6 occasionally never completes a graceful shutdown (an event loop was seen
        // spinning in ConfirmShutdown for minutes in CI, hanging the caller). Its loop threads are background
        // threads, so giving up on them cannot keep the process alive.
        try { await Task.WhenAll(shutdowns).WaitAsync(timeout + TimeSpan.FromSeconds(3)).ConfigureAwait(false); }
        catch (TimeoutException) { _log.Warning("DotNetty event loops did not terminate within {Timeout}; continuing without them", timeout + TimeSpan.FromSeconds(3)); }
        catch (Exception ex) { _log.Warning(ex, "DotNetty event loops did not shut down cleanly"); }
    }

    public async ValueTask DisposeAsync() => await StopAsync(CancellationToken.None).ConfigureAwait(false);
}
