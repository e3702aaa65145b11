using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using IntegrityTarget.Scsi;
using Serilog;

namespace IntegrityTarget.Ha;

/// <summary>
/// The HA side of one gateway process: its LUNs (<see cref="HaLogicalUnit"/>), a listener for the other
/// gateways' peer links (it executes what they forward for the LUNs it owns), and one outgoing link to
/// each other gateway (over which it learns what they own and forwards to them).
/// </summary>
public sealed class HaCoordinator : IAsyncDisposable
{
    private readonly ILogger _log;
    private readonly List<HaLogicalUnit> _luns = [];
    private readonly Dictionary<(string, ulong), HaLogicalUnit> _byKey = new();
    private readonly List<OutgoingPeer> _outgoing = [];
    private readonly ConcurrentDictionary<IncomingPeer, bool> _incoming = new();
    private readonly object _nexusLock = new();
    private readonly Dictionary<(string Target, string I, string T), (uint Id, ItNexus Nexus)> _localNexuses = new();
    private uint _nextNexusId;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _tasks = [];
    private TcpListener? _listener;

    /// <param name="fingerprint">A digest of every setting both gateways must agree on; links between differing gateways are refused.</param>
    public HaCoordinator(HaOptions options, byte[] fingerprint, ILogger log)
    {
        if (options.Validate() is { Count: > 0 } errors) throw new ArgumentException("invalid HA options: " + string.Join("; ", errors), nameof(options));
        Options = options; Fingerprint = fingerprint; _log = log.ForContext("Gateway", options.Self);
        foreach (var g in options.Gateways.Where(g => g.Name != options.Self)) _outgoing.Add(new OutgoingPeer(this, g, _log));
    }

    public HaOptions Options { get; }
    internal byte[] Fingerprint { get; }
    public IReadOnlyList<HaLogicalUnit> Luns => _luns;

    /// <summary>A digest of text that both gateways derive from their configuration the same way.</summary>
    public static byte[] FingerprintOf(string canonicalConfig) => SHA256.HashData(Encoding.UTF8.GetBytes(canonicalConfig));

    /// <summary>Adds a LUN (before <see cref="StartAsync"/>).</summary>
    public HaLogicalUnit AddLun(HaLunSpec spec)
    {
        var lu = new HaLogicalUnit(this, spec, _log);
        if (!_byKey.TryAdd((spec.TargetIqn, spec.Lun), lu)) throw new ArgumentException($"{spec.Name} is added twice", nameof(spec));
        _luns.Add(lu);
        return lu;
    }

    internal HaLogicalUnit? Find(string target, ulong lun) => _byKey.GetValueOrDefault((target, lun));

    /// <summary>Listens for peers, connects to them, and starts deciding who owns each LUN. Throws when the peer address cannot be bound.</summary>
    public Task StartAsync(CancellationToken ct)
    {
        var self = Options.SelfGateway;
        _listener = new TcpListener(self.Peer);
        try { _listener.Start(); }
        catch (SocketException e)
        {
            throw new IOException($"Ha: cannot listen for peer gateways on {self.Peer}: {e.Message}", e);
        }
        _log.Information("Gateway {Self} (port group {Group}) listens for peer gateways on {Address}", self.Name, self.PortGroup, self.Peer);
        foreach (var lu in _luns) lu.ProbeGeometry();
        _tasks.Add(AcceptLoopAsync(_stop.Token));
        foreach (var p in _outgoing) _tasks.Add(p.RunAsync(_stop.Token));
        foreach (var lu in _luns) _tasks.Add(lu.RunAsync(_stop.Token));
        return Task.CompletedTask;
    }

    private async Task AcceptLoopAsync(CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            Socket socket;
            try { socket = await _listener!.AcceptSocketAsync(stop).ConfigureAwait(false); }
            catch (OperationCanceledException) { break; }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                if (stop.IsCancellationRequested) break;
                _log.Warning("Accepting a peer link failed: {Error}", e.Message);
                await Task.Delay(100, CancellationToken.None).ConfigureAwait(false);
                continue;
            }
            _ = ServeAsync(socket, stop);
        }
    }

    private async Task ServeAsync(Socket socket, CancellationToken stop)
    {
        var link = await PeerLink.AcceptAsync(socket, Options, Fingerprint, _log, stop).ConfigureAwait(false);
        if (link == null) return;
        var peer = new IncomingPeer(this, link, _log);
        _incoming[peer] = true;
        _log.Information("Peer gateway {Gateway} connected from {Remote}", link.Peer, socket.RemoteEndPoint);
        try
        {
            peer.SendOwned(OwnedNow());
            using (stop.Register(() => link.Close("this gateway is stopping")))
                await link.RunAsync(peer.OnFrameAsync).ConfigureAwait(false);
        }
        finally
        {
            _incoming.TryRemove(peer, out _);
            peer.Closed();
            _log.Information("Peer gateway {Gateway} disconnected: {Reason}", link.Peer, await link.Closed.ConfigureAwait(false));
        }
    }

    // ---- ownership -------------------------------------------------------------------------------

    private List<(string, ulong)> OwnedNow() => _luns.Where(l => l.Role == HaRole.Owner).Select(l => (l.Spec.TargetIqn, l.Lun)).ToList();

    /// <summary>A LUN of ours changed hands: tell every connected peer what we own now.</summary>
    internal void OwnershipChanged()
    {
        var owned = OwnedNow();
        foreach (var p in _incoming.Keys) p.SendOwned(owned);
    }

    /// <summary>A peer's claims changed or a link came or went: every LUN re-decides.</summary>
    internal void PeersChanged()
    {
        foreach (var lu in _luns) lu.Wake();
    }

    /// <summary>Every other gateway's host refuses connections: no gateway of the group but this one is alive.</summary>
    internal bool EveryPeerRefuses => _outgoing.Count > 0 && _outgoing.All(p => p.Refusing);

    /// <summary>The connected peer that owns the LUN, if any.</summary>
    internal OutgoingPeer? PeerOwning(string target, ulong lun) => _outgoing.FirstOrDefault(p => p.Owns(target, lun));

    /// <summary>Nexuses that other gateways told us about, for a LUN this gateway just took over.</summary>
    internal IEnumerable<ItNexus> RemoteNexuses(string target) => _incoming.Keys.SelectMany(p => p.NexusesOf(target)).ToList();

    internal void BroadcastAbortTasks(string target, ulong lun, IReadOnlyCollection<string> ports)
    {
        foreach (var p in _incoming.Keys) p.SendAbortTasks(target, lun, ports);
    }

    // ---- this gateway's own nexuses (told to every peer) ---------------------------------------------

    internal void LocalNexusUp(string target, ItNexus n)
    {
        lock (_nexusLock)
        {
            var key = (target, n.InitiatorPortName, n.TargetPortName);
            if (_localNexuses.TryGetValue(key, out var known) && known.Nexus.Equals(n)) return; // one call per LUN of the target
            uint id = ++_nextNexusId;
            _localNexuses[key] = (id, n);
            foreach (var p in _outgoing) p.SendNexus(target, id, n);
        }
    }

    internal void LocalNexusDown(string target, ItNexus n)
    {
        lock (_nexusLock)
        {
            if (!_localNexuses.Remove((target, n.InitiatorPortName, n.TargetPortName), out var known)) return;
            foreach (var p in _outgoing) p.SendNexus(target, known.Id, null);
        }
    }

    internal uint LocalNexusId(string target, ItNexus n)
    {
        lock (_nexusLock) return _localNexuses.TryGetValue((target, n.InitiatorPortName, n.TargetPortName), out var k) ? k.Id : 0;
    }

    /// <summary>Runs <paramref name="action"/> with every local nexus, with no nexus coming or going meanwhile.</summary>
    internal void WithLocalNexuses(Action<IEnumerable<(string Target, uint Id, ItNexus Nexus)>> action)
    {
        lock (_nexusLock) action(_localNexuses.Select(kv => (kv.Key.Target, kv.Value.Id, kv.Value.Nexus)).ToList());
    }

    // ---- shutdown -----------------------------------------------------------------------------------

    /// <summary>
    /// Gives every owned LUN up (flush, close, release the lock) and then closes the peer links, so another
    /// gateway can take the LUNs over as soon as it notices. Call after the iSCSI front end has drained.
    /// </summary>
    public async Task StopAsync()
    {
        if (_stop.IsCancellationRequested) return;
        foreach (var lu in _luns) await lu.ReleaseAsync().ConfigureAwait(false);
        _stop.Cancel();
        _listener?.Stop();
        try { await Task.WhenAll(_tasks).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);
}
