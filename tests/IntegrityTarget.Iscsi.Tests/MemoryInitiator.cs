using System.Buffers;
using System.Net;
using IntegrityTarget.Iscsi.Pdus;
using Serilog;

namespace IntegrityTarget.Iscsi.Tests;

/// <summary>Captures what the core writes; a flush makes it visible to the test.</summary>
public sealed class MemorySink : IPduSink
{
    private readonly ArrayBufferWriter<byte> _pending = new();
    private readonly List<byte> _flushed = [];
    private readonly object _lock = new();
    private readonly SemaphoreSlim _signal = new(0);
    public volatile bool Closed;

    public void Advance(int count) => _pending.Advance(count);
    public Memory<byte> GetMemory(int sizeHint = 0) => _pending.GetMemory(sizeHint);
    public Span<byte> GetSpan(int sizeHint = 0) => _pending.GetSpan(sizeHint);

    /// <summary>While set, a flush waits for it: a peer that reads nothing (the transport's output stays full).</summary>
    public volatile TaskCompletionSource? FlushGate;

    public ValueTask<bool> FlushAsync(CancellationToken ct = default)
    {
        lock (_lock) { _flushed.AddRange(_pending.WrittenSpan.ToArray()); }
        _pending.Clear();
        _signal.Release();
        if (FlushGate is { } gate && !gate.Task.IsCompleted) return WaitAsync(gate, ct);
        return ValueTask.FromResult(!Closed);
    }

    private async ValueTask<bool> WaitAsync(TaskCompletionSource gate, CancellationToken ct)
    {
        await gate.Task.WaitAsync(ct);
        return !Closed;
    }

    public void Close() { Closed = true; _signal.Release(); }

    public async Task<TestPdu?> NextAsync(bool headerDigest, bool dataDigest, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            lock (_lock)
            {
                var p = TestPdu.TryParse(_flushed, headerDigest, dataDigest);
                if (p is not null) return p;
                if (Closed) return null;
            }
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) return null;
            await _signal.WaitAsync(left < TimeSpan.FromMilliseconds(50) ? left : TimeSpan.FromMilliseconds(50));
        }
    }
}

/// <summary>
/// A test initiator driving one <see cref="IscsiConnection"/> in memory: it feeds PDU bytes to
/// <see cref="IscsiConnection.ReceiveAsync"/> and reads what the core flushed.
/// </summary>
public sealed class MemoryInitiator
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private byte[] _carry = [];

    public MemoryInitiator(IscsiServer server, IPEndPoint? local = null)
    {
        Sink = new MemorySink();
        Connection = server.CreateConnection(Sink, local ?? new IPEndPoint(IPAddress.Parse("10.1.2.3"), 3260),
            new IPEndPoint(IPAddress.Parse("10.9.9.9"), 50000)) ?? throw new InvalidOperationException("server refused the connection");
    }

    public MemorySink Sink { get; }
    public IscsiConnection Connection { get; }
    public bool HeaderDigest, DataDigest;
    public uint CmdSN = 1;
    public uint Itt = 0x100;

    /// <summary>Feeds bytes as the transport would: unconsumed bytes are kept and prefixed to the next call.</summary>
    public async Task SendAsync(byte[] bytes)
    {
        var all = _carry.Length == 0 ? bytes : [.. _carry, .. bytes];
        var seq = new ReadOnlySequence<byte>(all);
        var consumed = await Connection.ReceiveAsync(seq);
        _carry = seq.Slice(consumed).ToArray();
    }

    public Task<TestPdu?> NextAsync(TimeSpan? timeout = null) => Sink.NextAsync(HeaderDigest, DataDigest, timeout ?? Timeout);

    public async Task<TestPdu> ExpectAsync(Opcode op)
    {
        var p = await NextAsync() ?? throw new AssertionException($"expected {op}, got nothing (closed={Sink.Closed})");
        Assert.That(p.Opcode, Is.EqualTo(op), $"unexpected PDU {p}");
        return p;
    }

    /// <summary>Logs in with no authentication straight to the full feature phase.</summary>
    public async Task<TestPdu> LoginAsync(string target = TestTargets.Iqn, string initiator = TestTargets.Initiator, ulong isid = 0x00023d000001, params string[] extra)
    {
        string[] keys = [$"InitiatorName={initiator}", $"TargetName={target}", "SessionType=Normal", .. extra];
        await SendAsync(TestPdu.Login(keys, csg: 1, nsg: 3, transit: true, isid: isid, cmdSN: CmdSN));
        var r = await ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.LoginStatus, Is.EqualTo(0), "login failed");
        var k = r.Keys();
        HeaderDigest = k.GetValueOrDefault("HeaderDigest") == "CRC32C";
        DataDigest = k.GetValueOrDefault("DataDigest") == "CRC32C";
        return r;
    }

    public uint NextItt() => Itt++;
}

public static class TestTargets
{
    public const string Iqn = "iqn.2026-11.test:disk";
    public const string Iqn2 = "iqn.2026-11.test:second";
    public const string Initiator = "iqn.2026-11.test:initiator";

    public static ILogger Log { get; } = new LoggerConfiguration().MinimumLevel.Fatal().CreateLogger();

    public static IscsiServer Server(FakeScsiTarget scsi, IscsiServerOptions? options = null, ChapCredentials? chap = null,
        ChapCredentials? mutual = null, IReadOnlyList<string>? acl = null, FakeScsiTarget? second = null)
    {
        var targets = new List<IscsiTargetConfig>
        {
            new() { Iqn = Iqn, Alias = "disk", Scsi = scsi, Chap = chap, MutualChap = mutual, AllowedInitiators = acl ?? [] },
            new() { Iqn = Iqn2, Scsi = second ?? new FakeScsiTarget(1, 64) },
        };
        return new IscsiServer(targets, options ?? new IscsiServerOptions(), Log);
    }

    public static byte[] Read10(uint lba, ushort blocks) =>
        [0x28, 0, (byte)(lba >> 24), (byte)(lba >> 16), (byte)(lba >> 8), (byte)lba, 0, (byte)(blocks >> 8), (byte)blocks, 0];

    public static byte[] Write10(uint lba, ushort blocks) =>
        [0x2a, 0, (byte)(lba >> 24), (byte)(lba >> 16), (byte)(lba >> 8), (byte)lba, 0, (byte)(blocks >> 8), (byte)blocks, 0];

    public static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }
}
