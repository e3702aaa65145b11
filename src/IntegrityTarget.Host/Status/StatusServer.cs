using System.Net.Sockets;
using System.Text;
using IntegrityTarget.Host.Cli;
using Serilog;

namespace IntegrityTarget.Host.Status;

/// <summary>
/// The serving process's control socket (unix domain, newline-delimited JSON; see <see cref="StatusJson"/>).
/// Only local users with access to the socket file can use it; it never shows secrets.
/// </summary>
public sealed class StatusServer : IAsyncDisposable
{
    private readonly string _path;
    private readonly IStatusProvider _provider;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();
    private Socket? _listener;
    private Task? _acceptLoop;
    private readonly List<Task> _clients = [];
    private readonly Lock _gate = new();

    public StatusServer(string path, IStatusProvider provider, ILogger log)
    {
        _path = path; _provider = provider; _log = log.ForContext<StatusServer>();
    }

    public string Path => _path;

    /// <exception cref="CliException">Another live process owns the socket, or it cannot be created.</exception>
    public void Start()
    {
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(_path)!);
        if (File.Exists(_path))
        {
            // A socket file left by a killed process is stale; one that answers belongs to a live server.
            if (IsAlive(_path))
                throw new CliException($"status socket {_path} is in use: another integrity-target serves from this data directory");
            File.Delete(_path);
        }
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Bind(new UnixDomainSocketEndPoint(_path));
            s.Listen(16);
        }
        catch (SocketException e)
        {
            s.Dispose();
            throw new CliException($"cannot create status socket {_path}: {e.Message}");
        }
        _listener = s;
        _acceptLoop = AcceptLoopAsync(s);
    }

    private static bool IsAlive(string path)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try { probe.Connect(new UnixDomainSocketEndPoint(path)); return true; }
        catch (SocketException) { return false; }
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try { client = await listener.AcceptAsync(_stop.Token); }
            catch (OperationCanceledException) { break; }
            catch (SocketException) when (_stop.IsCancellationRequested) { break; }
            catch (ObjectDisposedException) { break; }
            var task = ServeClientAsync(client);
            lock (_gate)
            {
                _clients.RemoveAll(t => t.IsCompleted);
                _clients.Add(task);
            }
        }
    }

    private async Task ServeClientAsync(Socket client)
    {
        await using var stream = new NetworkStream(client, ownsSocket: true);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        await using var writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                var line = await reader.ReadLineAsync(_stop.Token);
                if (line == null) break;
                if (string.IsNullOrWhiteSpace(line)) continue;
                await HandleAsync(line, writer);
            }
        }
        catch (OperationCanceledException) { }
        catch (IOException) { } // client went away
        catch (Exception e)
        {
            _log.Warning(e, "Status socket client failed");
        }
    }

    private async Task HandleAsync(string line, StreamWriter writer)
    {
        var request = StatusJson.ParseRequest(line, out var error);
        if (request == null) { await writer.WriteLineAsync(StatusJson.Error(error!)); return; }
        switch (request.Command.ToLowerInvariant())
        {
            case "status":
                await writer.WriteLineAsync(StatusJson.Line("status", true, "status", _provider.GetStatus()));
                break;
            case "scrub":
                await ScrubAsync(request, writer);
                break;
            default:
                await writer.WriteLineAsync(StatusJson.Error($"unknown command '{request.Command}' (status, scrub)"));
                break;
        }
    }

    private async Task ScrubAsync(StatusRequest request, StreamWriter writer)
    {
        if (string.IsNullOrEmpty(request.Iqn) || request.Lun == null)
        {
            await writer.WriteLineAsync(StatusJson.Error("scrub needs \"iqn\" and \"lun\""));
            return;
        }
        // Progress lines are written from the scrub's callbacks; a channel keeps them in order on one writer.
        var lines = System.Threading.Channels.Channel.CreateUnbounded<string>(new() { SingleReader = true });
        double lastReported = -1;
        var progress = new InlineProgress(f =>
        {
            if (f - lastReported < 0.01 && f < 1) return; // at most ~100 progress lines per scrub
            lastReported = f;
            lines.Writer.TryWrite(StatusJson.Line("progress", true, "fraction", Math.Round(f, 4)));
        });
        var pump = Task.Run(async () =>
        {
            await foreach (var l in lines.Reader.ReadAllAsync()) await writer.WriteLineAsync(l);
        });
        try
        {
            _log.Information("Online scrub of {Iqn} LUN {Lun} requested over the status socket", request.Iqn, request.Lun);
            var outcome = await _provider.ScrubAsync(request.Iqn, request.Lun.Value, request.RateMBps, progress, _stop.Token);
            lines.Writer.TryWrite(StatusJson.Line("scrub-result", true, "result", outcome));
        }
        catch (CliException e) { lines.Writer.TryWrite(StatusJson.Error(e.Message)); }
        catch (OperationCanceledException) { lines.Writer.TryWrite(StatusJson.Error("scrub cancelled: the server is shutting down")); }
        finally
        {
            lines.Writer.TryComplete();
            await pump;
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _listener?.Dispose();
        if (_acceptLoop != null) await _acceptLoop;
        Task[] clients;
        lock (_gate) clients = [.. _clients];
        await Task.WhenAll(clients);
        try { File.Delete(_path); } catch (IOException) { }
        _stop.Dispose();
    }
}

/// <summary>IProgress that reports on the caller's thread (Progress&lt;T&gt; would post to the thread pool out of order).</summary>
public sealed class InlineProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}

public sealed class InlineProgress(Action<double> report) : IProgress<double>
{
    public void Report(double value) => report(value);
}
