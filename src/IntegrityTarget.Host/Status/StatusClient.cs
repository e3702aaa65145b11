using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using IntegrityTarget.Host.Cli;

namespace IntegrityTarget.Host.Status;

/// <summary>The CLI side of the status socket.</summary>
public static class StatusClient
{
    /// <summary>Sends one request and yields every reply line until a final one (anything but progress).</summary>
    public static async IAsyncEnumerable<JsonObject> RequestAsync(string socketPath, string requestJson,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct = default)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new CliException(File.Exists(socketPath)
                ? $"cannot reach the serving process on {socketPath} ({e.Message}); is integrity-target serve running?"
                : $"no status socket at {socketPath}: is integrity-target serve running with this data directory? (use --socket PATH or --data-dir DIR)");
        }
        await using var stream = new NetworkStream(socket, ownsSocket: true);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        var bytes = Encoding.UTF8.GetBytes(requestJson + "\n");
        await stream.WriteAsync(bytes, ct);
        while (true)
        {
            var line = await reader.ReadLineAsync(ct);
            if (line == null) throw new CliException("the serving process closed the status socket without answering");
            var node = JsonNode.Parse(line) as JsonObject ?? throw new CliException($"unexpected reply on the status socket: {line}");
            yield return node;
            if ((string?)node["type"] != "progress") yield break;
        }
    }
}
