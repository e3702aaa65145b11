using System.Net;

namespace IntegrityTarget.Transport;

/// <summary>
/// A way of accepting iSCSI connections and feeding them to an <see cref="IntegrityTarget.Iscsi.IscsiServer"/>.
/// Implementations follow the seam described on <see cref="IntegrityTarget.Iscsi.IPduSink"/>.
/// </summary>
public interface IIscsiTransport : IAsyncDisposable
{
    /// <summary>Binds and listens on every portal; throws <see cref="TransportBindException"/> naming the portal when one cannot be bound.</summary>
    Task StartAsync(IReadOnlyList<IPEndPoint> portals, CancellationToken ct);

    /// <summary>The endpoints actually bound (port 0 replaced by the assigned port).</summary>
    IReadOnlyList<IPEndPoint> BoundEndpoints { get; }

    /// <summary>Stops accepting; connections still open are closed (call after IscsiServer.ShutdownAsync drained them).</summary>
    Task StopAsync(CancellationToken ct);
}

/// <summary>A portal could not be bound (address in use, not local, no permission).</summary>
public sealed class TransportBindException(IPEndPoint portal, string reason, Exception inner)
    : Exception($"Cannot listen on {portal}: {reason}", inner)
{
    public IPEndPoint Portal { get; } = portal;
}
