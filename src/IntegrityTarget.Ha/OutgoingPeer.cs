using System.Collections.Concurrent;
using System.Net.Sockets;
using IntegrityTarget.Scsi;
using Serilog;

namespace IntegrityTarget.Ha;

/// <summary>
/// This gateway's connection to one other gateway, kept up by reconnecting: it learns which LUNs the other
/// gateway owns, tells it about this gateway's I_T nexuses, and forwards commands for the LUNs it owns.
/// </summary>
internal sealed class OutgoingPeer
{
    private readonly HaCoordinator _coordinator;
    private readonly ILogger _log;
    private readonly ConcurrentDictionary<ulong, TaskCompletionSource<ScsiResponse?>> _pending = new();
    private volatile PeerLink? _link;
    private volatile HashSet<(string, ulong)> _owned = [];
    private long _nextRequest;

    public OutgoingPeer(HaCoordinator coordinator, GatewayInfo gateway, ILogger log)
    {
        _coordinator = coordinator; Gateway = gateway; _log = log;
    }

    public GatewayInfo Gateway { get; }
    public bool Connected => _link != null;

    /// <summary>
    /// The other gateway's host refused the last connection (nothing listens on its peer port, so its gateway
    /// process is gone), and no link has come up since. A gateway listens before it takes any lock, so a
    /// refusing gateway holds none: proof that it died, where a silent link is only a timeout.
    /// </summary>
    public bool Refusing => _refusing;
    private volatile bool _refusing;

    /// <summary>Whether the other gateway, connected now, says it owns this LUN.</summary>
    public bool Owns(string target, ulong lun) => _link != null && _owned.Contains((target, lun));

    /// <summary>Connects, serves the link until it closes, and connects again, until <paramref name="stop"/>.</summary>
    public async Task RunAsync(CancellationToken stop)
    {
        string? lastError = null;
        while (!stop.IsCancellationRequested)
        {
            PeerLink link;
            try
            {
                link = await PeerLink.ConnectAsync(Gateway, _coordinator.Options, _coordinator.Fingerprint, stop).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or PeerProtocolException)
            {
                if (stop.IsCancellationRequested) break;
                bool refused = (e as SocketException ?? e.InnerException as SocketException)?.SocketErrorCode == SocketError.ConnectionRefused;
                if (refused != _refusing)
                {
                    _refusing = refused;
                    _coordinator.PeersChanged();
                }
                // A refused handshake is a configuration error worth saying every time it changes; a peer that is down is not.
                string msg = e is PeerProtocolException ? e.Message : $"{Gateway.Name} at {Gateway.Peer} is not reachable ({e.Message})";
                if (msg != lastError)
                {
                    if (e is PeerProtocolException) _log.Error("Peer link to {Gateway}: {Error}", Gateway.Name, msg);
                    else _log.Information("Peer link to {Gateway}: {Error}", Gateway.Name, msg);
                    lastError = msg;
                }
                try { await Task.Delay(_coordinator.Options.ReconnectInterval, stop).ConfigureAwait(false); } catch (OperationCanceledException) { }
                continue;
            }
            lastError = null;
            _refusing = false;
            _log.Information("Peer link to {Gateway} at {Address} is up", Gateway.Name, Gateway.Peer);
            // Every nexus of ours first, so the owner knows it before any of its commands (frames leave in the
            // order they were posted, and the registry lock keeps new nexuses from slipping in between).
            _coordinator.WithLocalNexuses(nexuses =>
            {
                _link = link;
                foreach (var (target, id, nexus) in nexuses)
                    link.Post(new FrameWriter(PeerFrame.NexusUp).Str(target).U32(id).Nexus(nexus).Build());
            });
            long upSince = System.Diagnostics.Stopwatch.GetTimestamp();
            using (stop.Register(() => link.Close("this gateway is stopping")))
                await link.RunAsync(OnFrameAsync).ConfigureAwait(false);
            string reason = await link.Closed.ConfigureAwait(false);
            _link = null;
            _owned = [];
            foreach (var key in _pending.Keys)
                if (_pending.TryRemove(key, out var tcs)) tcs.TrySetResult(null);
            _log.Warning("Peer link to {Gateway} is down: {Reason}", Gateway.Name, reason);
            _coordinator.PeersChanged();
            // The first reconnect at once after a link that had been up a while: a gateway that died is then known
            // dead (refused) in a round trip, not an interval. A link that keeps closing at once is retried calmly.
            if (!stop.IsCancellationRequested && System.Diagnostics.Stopwatch.GetElapsedTime(upSince) < _coordinator.Options.ReconnectInterval)
                try { await Task.Delay(_coordinator.Options.ReconnectInterval, stop).ConfigureAwait(false); } catch (OperationCanceledException) { }
        }
    }

    private ValueTask OnFrameAsync(PeerFrame type, byte[] body)
    {
        var r = new FrameReader(body);
        switch (type)
        {
            case PeerFrame.Owned:
            {
                int n = r.U16();
                var set = new HashSet<(string, ulong)>();
                for (int i = 0; i < n; i++) set.Add((r.Str(), r.U64()));
                _owned = set;
                _coordinator.PeersChanged();
                break;
            }
            case PeerFrame.Response:
            {
                ulong id = r.U64();
                byte flags = r.U8();
                byte status = r.U8();
                var sense = r.Blob();
                var data = r.Blob();
                long transfer = r.S64();
                if (_pending.TryRemove(id, out var tcs))
                    tcs.TrySetResult((flags & 1) != 0 ? null : new ScsiResponse { Status = status, Sense = sense, DataIn = data, TransferLength = transfer });
                break;
            }
            case PeerFrame.AbortTasks:
            {
                string target = r.Str();
                ulong lun = r.U64();
                int n = r.U16();
                var ports = new List<string>(n);
                for (int i = 0; i < n; i++) ports.Add(r.Str());
                _coordinator.Find(target, lun)?.RaiseAbortTasks(ports);
                break;
            }
            default:
                throw new PeerProtocolException($"{Gateway.Name} sent {type}, which only a client sends");
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// Executes a command on the owning gateway. Null when the outcome is unknown: the link closed first, or the
    /// other gateway no longer owns the LUN. An abort of the task is passed on, and the owner's answer awaited,
    /// so the command is over on both gateways when this returns.
    /// </summary>
    public async ValueTask<ScsiResponse?> ForwardAsync(string target, ulong lun, ScsiCommand cmd, CancellationToken ct)
    {
        var link = _link;
        if (link == null) return null;
        uint nexusId = _coordinator.LocalNexusId(target, cmd.Nexus);
        ulong id = (ulong)Interlocked.Increment(ref _nextRequest);
        var tcs = new TaskCompletionSource<ScsiResponse?>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[id] = tcs;
        if (link.ClosedToken.IsCancellationRequested && _pending.TryRemove(id, out _)) return null;
        try
        {
            await link.SendAsync(new FrameWriter(PeerFrame.Execute).U64(id).Str(target).U64(lun).U32(nexusId)
                .U8((byte)cmd.Direction).U8((byte)cmd.Attribute).U32(cmd.ExpectedTransferLength).U64(cmd.TaskTag)
                .Blob(cmd.Cdb.Span).Blob(cmd.DataOut.Span).Build()).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException)
        {
            // The link closed before the frame was sent (a close cancels a send waiting for the link's lock):
            // the owner never saw the command, and the caller answers "transitioning" so the initiator retries.
            _pending.TryRemove(id, out _);
            return null;
        }
        using (ct.Register(() => link.Post(new FrameWriter(PeerFrame.Abort).U64(id).Build())))
            return await tcs.Task.ConfigureAwait(false);
    }

    public void SendReset(string target, ulong lun, SenseReason ua) =>
        _link?.Post(new FrameWriter(PeerFrame.Reset).Str(target).U64(lun).U8((byte)ua).Build());

    public void SendNexus(string target, uint id, ItNexus? nexus)
    {
        var link = _link;
        if (link == null) return;
        link.Post(nexus != null
            ? new FrameWriter(PeerFrame.NexusUp).Str(target).U32(id).Nexus(nexus).Build()
            : new FrameWriter(PeerFrame.NexusDown).Str(target).U32(id).Build());
    }
}
