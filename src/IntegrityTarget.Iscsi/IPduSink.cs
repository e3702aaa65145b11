using System.Buffers;

namespace IntegrityTarget.Iscsi;

/// <summary>
/// The seam between the transport-agnostic iSCSI core and a byte transport (sockets + Pipelines by
/// default; DotNetty or an in-memory pipe in tests). How a transport drives one connection:
/// <list type="number">
/// <item>On accept, call <see cref="IscsiServer.CreateConnection"/> with an <see cref="IPduSink"/> for the
///   outgoing side and the local/remote endpoints (the local one is advertised in SendTargets).
///   A null result means the server is shutting down: close the socket.</item>
/// <item>For every batch of received bytes call <see cref="IscsiConnection.ReceiveAsync"/> with everything
///   not yet consumed, awaited, one call at a time; it frames PDUs (its own <c>PduFramer</c>), handles them and
///   returns how far the bytes were consumed. Keep the rest and append new bytes after it. Stop reading when
///   <see cref="IscsiConnection.IsClosed"/> is true.</item>
/// <item>When the peer closes or the socket fails, call <see cref="IscsiConnection.OnTransportClosedAsync"/>
///   once (it aborts the connection's tasks and ends its session).</item>
/// </list>
/// The core writes outgoing PDUs through this sink from one writer at a time (it serializes sends
/// itself), so the sink needs no locking of its own.
/// </summary>
public interface IPduSink : IBufferWriter<byte>
{
    /// <summary>Pushes written bytes towards the peer. Awaiting this is the back-pressure: a slow reader
    /// slows the writer. Returns false when the connection is gone.</summary>
    ValueTask<bool> FlushAsync(CancellationToken ct = default);

    /// <summary>Closes the connection after the bytes already flushed are sent. Idempotent.</summary>
    void Close();
}

/// <summary>
/// A sink that can send a caller's buffer as it is, without copying it into its own (the sockets
/// transport). The core uses it for large read data: the read buffer goes to the socket directly, and the
/// command keeps the buffer until <see cref="WhenBorrowedReleasedAsync"/> says the transport is done with it.
/// Sinks without it get a copy (DotNetty, the in-memory pipe of the tests).
/// </summary>
public interface IBorrowingPduSink : IPduSink
{
    /// <summary>
    /// Queues <paramref name="data"/> to go out right after the bytes written so far, without copying it.
    /// The caller must leave it unchanged and must not reuse it until <see cref="WhenBorrowedReleasedAsync"/>
    /// completes. Returns false when the sink cannot take it (closed, or not an array): write a copy instead.
    /// </summary>
    bool TryWriteBorrowed(ReadOnlyMemory<byte> data);

    /// <summary>
    /// Completes when no buffer passed to <see cref="TryWriteBorrowed"/> so far can be read by the transport
    /// any more: handed to the kernel, or dropped because the connection ended (after the last send on the
    /// socket finished, so never while a send may still read it).
    /// </summary>
    ValueTask WhenBorrowedReleasedAsync();
}
