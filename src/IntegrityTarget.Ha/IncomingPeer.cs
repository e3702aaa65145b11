using System.Collections.Concurrent;
using IntegrityTarget.Scsi;
using Serilog;

namespace IntegrityTarget.Ha;

/// <summary>
/// A peer gateway connected to this one: its nexuses (registered with the logical units this gateway owns)
/// and the commands it forwards, executed here and answered over the same link.
/// </summary>
internal sealed class IncomingPeer(HaCoordinator coordinator, PeerLink link, ILogger log)
{
    private readonly ConcurrentDictionary<uint, (string Target, ItNexus Nexus)> _nexuses = new();
    private readonly ConcurrentDictionary<ulong, CancellationTokenSource> _running = new();

    public IEnumerable<ItNexus> NexusesOf(string target) => _nexuses.Values.Where(v => v.Target == target).Select(v => v.Nexus);

    public void SendOwned(IReadOnlyList<(string Target, ulong Lun)> owned)
    {
        var w = new FrameWriter(PeerFrame.Owned).U16((ushort)owned.Count);
        foreach (var (t, l) in owned) w.Str(t).U64(l);
        link.Post(w.Build());
    }

    public void SendAbortTasks(string target, ulong lun, IReadOnlyCollection<string> ports)
    {
        var w = new FrameWriter(PeerFrame.AbortTasks).Str(target).U64(lun).U16((ushort)ports.Count);
        foreach (var p in ports) w.Str(p);
        link.Post(w.Build());
    }

    private IEnumerable<HaLogicalUnit> LunsOf(string target) => coordinator.Luns.Where(l => l.Spec.TargetIqn == target);

    public ValueTask OnFrameAsync(PeerFrame type, byte[] body)
    {
        var r = new FrameReader(body);
        switch (type)
        {
            case PeerFrame.NexusUp:
            {
                string target = r.Str();
                uint id = r.U32();
                var n = r.Nexus();
                _nexuses[id] = (target, n);
                foreach (var lu in LunsOf(target)) lu.OwnerUnit?.NexusCreated(n);
                break;
            }
            case PeerFrame.NexusDown:
            {
                string target = r.Str();
                if (_nexuses.TryRemove(r.U32(), out var gone))
                    foreach (var lu in LunsOf(target)) lu.OwnerUnit?.NexusLost(gone.Nexus);
                break;
            }
            case PeerFrame.Execute:
            {
                ulong id = r.U64();
                string target = r.Str();
                ulong lun = r.U64();
                uint nexusId = r.U32();
                var direction = (DataDirection)r.U8();
                var attribute = (TaskAttribute)r.U8();
                uint edtl = r.U32();
                ulong tag = r.U64();
                var cdb = r.Blob();
                var dataOut = r.Blob();
                var unit = coordinator.Find(target, lun)?.OwnerUnit;
                if (unit == null || !_nexuses.TryGetValue(nexusId, out var nx))
                {
                    // Not ours (any more), or a nexus we were never told about: the sender re-decides and retries.
                    link.Post(new FrameWriter(PeerFrame.Response).U64(id).U8(1).U8(0).Blob([]).Blob([]).S64(0).Build());
                    break;
                }
                var cmd = new ScsiCommand
                {
                    Nexus = nx.Nexus, Lun = lun, Cdb = cdb, ExpectedTransferLength = edtl, Direction = direction,
                    DataOut = dataOut, Attribute = attribute, TaskTag = tag,
                };
                var cts = new CancellationTokenSource();
                _running[id] = cts;
                _ = ExecuteAsync(unit, id, cmd, cts);
                break;
            }
            case PeerFrame.Abort:
                if (_running.TryGetValue(r.U64(), out var abort)) abort.Cancel();
                break;
            case PeerFrame.Reset:
            {
                string target = r.Str();
                ulong lun = r.U64();
                var ua = (SenseReason)r.U8();
                coordinator.Find(target, lun)?.OwnerUnit?.Reset(ua);
                break;
            }
            default:
                throw new PeerProtocolException($"{link.Peer} sent {type}, which only a server sends");
        }
        return ValueTask.CompletedTask;
    }

    private async Task ExecuteAsync(ScsiLogicalUnit unit, ulong id, ScsiCommand cmd, CancellationTokenSource cts)
    {
        try
        {
            using var rsp = await unit.ExecuteAsync(cmd, cts.Token).ConfigureAwait(false);
            await link.SendAsync(new FrameWriter(PeerFrame.Response).U64(id).U8(0).U8(rsp.Status)
                .Blob(rsp.Sense.Span).Blob(rsp.DataIn.Span).S64(rsp.TransferLength).Build()).ConfigureAwait(false);
        }
        catch (IOException) { } // the link closed; the sender answers its initiator itself
        catch (Exception e)
        {
            log.Error(e, "Executing a command forwarded by {Gateway} failed", link.Peer);
        }
        finally
        {
            _running.TryRemove(id, out _);
            cts.Dispose();
        }
    }

    /// <summary>The link is gone: its nexuses are lost and what it forwarded is aborted.</summary>
    public void Closed()
    {
        foreach (var (_, cts) in _running) { try { cts.Cancel(); } catch (ObjectDisposedException) { } }
        foreach (var (target, n) in _nexuses.Values)
            foreach (var lu in LunsOf(target)) lu.OwnerUnit?.NexusLost(n);
        _nexuses.Clear();
    }
}
