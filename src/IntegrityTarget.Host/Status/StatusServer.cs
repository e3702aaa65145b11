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
    private UnixFile.Identity? _created;
    private Task? _acceptLoop;
    private readonly List<Task> _clients = [];
    private readonly Lock _gate = new();

    public StatusServer(string path, IStatusProvider provider, ILogger log)
    {
        _path = path; _provider = provider; _log = log.ForContext<StatusServer>();
    }

    public string Path => _path;

    /// <summary>
    /// Claims the socket path: refuses one that a live server answers on (or that is not a socket at all),
    /// replaces a stale socket file left by a killed process, binds and listens. Connections wait in the
    /// backlog until <see cref="Start"/>. Call it before anything else is opened, so a second server in the
    /// same data directory stops before it touches anything.
    /// </summary>
    /// <exception cref="CliException">Another live process owns the socket, or it cannot be created here.</exception>
    public void Bind()
    {
        if (_listener != null) return;
        string dir = System.IO.Path.GetDirectoryName(_path)!;
        try { Directory.CreateDirectory(dir); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"cannot create the directory of the status socket {_path}: {e.Message}{MoveHint}");
        }
        if (UnixFile.Stat(_path) is { } existing)
        {
            if (!existing.IsSocket)
                throw new CliException($"status socket path {_path} exists and is not a socket; remove it or choose another path with --status-socket PATH (Status:Socket)");
            // A socket file left by a killed process is stale; one that answers belongs to a live server.
            switch (Probe(_path))
            {
                case SocketError.Success: throw InUse();
                case SocketError.ConnectionRefused: File.Delete(_path); break;
                case var other: throw new CliException($"status socket {_path} exists and cannot be checked ({other}); remove it if no server uses it, or choose another path with --status-socket PATH");
            }
        }
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            s.Bind(new UnixDomainSocketEndPoint(_path));
            _created = UnixFile.Stat(_path);
            s.Listen(16);
        }
        catch (SocketException e)
        {
            s.Dispose();
            if (e.SocketErrorCode == SocketError.AddressAlreadyInUse && Probe(_path) == SocketError.Success) throw InUse(); // lost a race with another server
            throw new CliException($"cannot create status socket {_path}: {DescribeBindError(e, dir)}");
        }
        _listener = s;
    }

    private const string MoveHint = "; put the socket elsewhere with --status-socket PATH (Status:Socket), e.g. --status-socket /run/integrity-target.sock";

    private CliException InUse() => new(
        $"status socket {_path} is in use: another integrity-target is serving from this data directory " +
        $"(see: integrity-target status --socket {_path}); stop it first, or give this one its own --data-dir or --status-socket");

    private static string DescribeBindError(SocketException e, string dir) => e.SocketErrorCode switch
    {
        SocketError.AccessDenied => $"permission denied: this user cannot create files in {dir}{MoveHint}",
        SocketError.AddressAlreadyInUse => "the path is taken by a file that appeared while binding; remove it or choose another --status-socket",
        // FUSE filesystems (e.g. sshfs, powercutfs) and some network filesystems cannot hold unix sockets:
        // bind's mknod fails with ENOSYS, EPERM or EOPNOTSUPP, which .NET reports as an unknown error.
        _ => $"the filesystem of {dir} does not support unix domain sockets (FUSE and network filesystems often cannot hold them" +
             (e.SocketErrorCode == SocketError.SocketError ? "" : $"; {e.Message}") + $"){MoveHint}",
    };

    /// <summary>Binds if <see cref="Bind"/> was not called yet, then starts answering requests.</summary>
    public void Start()
    {
        Bind();
        _acceptLoop ??= AcceptLoopAsync(_listener!);
    }

    private static SocketError Probe(string path)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try { probe.Connect(new UnixDomainSocketEndPoint(path)); return SocketError.Success; }
        catch (SocketException e) { return e.SocketErrorCode; }
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
            case "resize":
                await ResizeAsync(request, writer);
                break;
            case "reload":
                try
                {
                    _log.Information("Reload requested over the status socket");
                    var outcome = await _provider.ReloadAsync(_stop.Token);
                    await writer.WriteLineAsync(StatusJson.Line("reload-result", true, "result", outcome));
                }
                catch (CliException e) { await writer.WriteLineAsync(StatusJson.Error(e.Message)); }
                catch (OperationCanceledException) { await writer.WriteLineAsync(StatusJson.Error("reload cancelled: the server is shutting down")); }
                catch (Exception e) { await writer.WriteLineAsync(Unexpected("reload", e)); }
                break;
            default:
                await writer.WriteLineAsync(StatusJson.Error($"unknown command '{request.Command}' (status, scrub, resize, reload)"));
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
        catch (Exception e) { lines.Writer.TryWrite(Unexpected("scrub", e)); }
        finally
        {
            lines.Writer.TryComplete();
            await pump;
        }
    }

    private async Task ResizeAsync(StatusRequest request, StreamWriter writer)
    {
        if (string.IsNullOrEmpty(request.Iqn) || request.Lun == null || string.IsNullOrEmpty(request.Size))
        {
            await writer.WriteLineAsync(StatusJson.Error("resize needs \"iqn\", \"lun\" and \"size\""));
            return;
        }
        if (!Config.SizeParser.TryParse(request.Size, out long bytes, out var why))
        {
            await writer.WriteLineAsync(StatusJson.Error($"resize: size {why}"));
            return;
        }
        try
        {
            var outcome = await _provider.ResizeAsync(request.Iqn, request.Lun.Value, bytes, _stop.Token);
            await writer.WriteLineAsync(StatusJson.Line("resize-result", true, "result", outcome));
        }
        catch (CliException e) { await writer.WriteLineAsync(StatusJson.Error(e.Message)); }
        catch (OperationCanceledException) { await writer.WriteLineAsync(StatusJson.Error("resize cancelled: the server is shutting down")); }
        catch (Exception e) { await writer.WriteLineAsync(Unexpected("resize", e)); }
    }

    /// <summary>
    /// A request that failed in a way nobody planned for: logged with its stack, and answered, so the client
    /// says what went wrong instead of "closed without answering" (an IOException was even taken for the
    /// client going away and not logged at all).
    /// </summary>
    private string Unexpected(string request, Exception e)
    {
        _log.Error(e, "{Request} over the status socket failed unexpectedly", request);
        return StatusJson.Error($"{request} failed: {e.Message} (the server log has the details)");
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _listener?.Dispose();
        if (_acceptLoop != null) await _acceptLoop;
        Task[] clients;
        lock (_gate) clients = [.. _clients];
        await Task.WhenAll(clients);
        // Only the socket this process bound is removed: never one a failed start found in use, nor one
        // that replaced ours (same path, another file).
        if (_created is { } mine && UnixFile.Stat(_path) is { } now && now.Device == mine.Device && now.Inode == mine.Inode)
        {
            try { File.Delete(_path); } catch (IOException) { }
        }
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
