using System.Net;
using System.Net.Sockets;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Scsi;
using IntegrityTarget.Transport;

namespace IntegrityTarget.Iscsi.Tests;

/// <summary>A tiny initiator over a real TCP socket.</summary>
internal sealed class TcpInitiator : IAsyncDisposable
{
    private readonly TcpClient _client = new() { NoDelay = true };
    private NetworkStream _stream = null!;
    private readonly List<byte> _buffer = [];
    private readonly byte[] _chunk = new byte[65536];
    public uint CmdSN = 1, Itt = 1;

    public async Task ConnectAsync(IPEndPoint ep)
    {
        await _client.ConnectAsync(ep.Address, ep.Port);
        _stream = _client.GetStream();
    }

    public Task SendAsync(byte[] pdu) => _stream.WriteAsync(pdu).AsTask();

    public async Task<TestPdu?> ReceiveAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(10));
        while (true)
        {
            var p = TestPdu.TryParse(_buffer, false, false);
            if (p is not null) return p;
            int n;
            try { n = await _stream.ReadAsync(_chunk, cts.Token); }
            catch (OperationCanceledException) { return null; }
            catch (IOException) { return null; }
            if (n == 0) return null;
            _buffer.AddRange(_chunk.AsSpan(0, n).ToArray());
        }
    }

    public async Task<TestPdu> ExpectAsync(Opcode op)
    {
        var p = await ReceiveAsync() ?? throw new AssertionException($"expected {op}, connection closed or timed out");
        Assert.That(p.Opcode, Is.EqualTo(op), p.ToString());
        return p;
    }

    public async Task LoginAsync(string target, ulong isid = 0x00023d000001)
    {
        await SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={target}", "MaxRecvDataSegmentLength=8192",
            "InitialR2T=Yes", "ImmediateData=No", "MaxBurstLength=16384"], 1, 3, true, isid: isid));
        var r = await ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.LoginStatus, Is.EqualTo(0));
    }

    public ValueTask DisposeAsync()
    {
        _client.Dispose();
        return ValueTask.CompletedTask;
    }
}

public class SocketTransportTests
{
    private sealed class CapturingSink : Serilog.Core.ILogEventSink
    {
        public readonly List<string> Lines = [];
        public void Emit(Serilog.Events.LogEvent e) { lock (Lines) Lines.Add(e.RenderMessage()); }
    }

    [Test]
    public async Task Failing_accepts_back_off_log_once_free_descriptors_of_half_done_logins_and_recover()
    {
        var sink = new CapturingSink();
        var log = new Serilog.LoggerConfiguration().MinimumLevel.Debug().WriteTo.Sink(sink).CreateLogger();
        await using var server = TestTargets.Server(new FakeScsiTarget());
        var established = new MemoryInitiator(server);
        await established.LoginAsync();
        var halfDone = Enumerable.Range(0, 3).Select(_ => new MemoryInitiator(server)).ToList();
        await using var transport = new SocketTransport(server, log);
        int calls = 0;
        var started = System.Diagnostics.Stopwatch.StartNew();
        var recovered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var loop = transport.AcceptLoopAsync(async ct =>
        {
            if (++calls <= 8) throw new SocketException((int)SocketError.TooManyOpenSockets); // EMFILE
            recovered.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct);
            throw new OperationCanceledException(ct);
        }, new IPEndPoint(IPAddress.Loopback, 3260));
        await recovered.Task.WaitAsync(TimeSpan.FromSeconds(30));
        var elapsed = started.Elapsed;
        await transport.StopAsync(CancellationToken.None);
        await loop.WaitAsync(TimeSpan.FromSeconds(10));

        // 10 + 20 + 40 + ... ms: eight failures cannot all be retried at once.
        Assert.That(elapsed, Is.GreaterThan(TimeSpan.FromSeconds(1)), "accept retried with growing waits, not in a spin");
        Assert.That(server.Counters.Snapshot().AcceptErrors, Is.EqualTo(8));
        Assert.That(sink.Lines.Count(l => l.Contains("failed: TooManyOpenSockets")), Is.EqualTo(1), "eight failures, one log line");
        foreach (var h in halfDone) await h.Connection.Closed.WaitAsync(MemoryInitiator.Timeout);
        Assert.That(established.Connection.IsClosed, Is.False, "the logged-in session keeps its connection");
    }

    [Test]
    public async Task Login_write_and_read_back_over_TCP()
    {
        var scsi = new FakeScsiTarget(1, 1024);
        await using var server = TestTargets.Server(scsi);
        await using var transport = new SocketTransport(server, TestTargets.Log);
        await transport.StartAsync([new IPEndPoint(IPAddress.Loopback, 0)], CancellationToken.None);
        var ep = transport.BoundEndpoints.Single();
        Assert.That(ep.Port, Is.Not.Zero);

        await using var i = new TcpInitiator();
        await i.ConnectAsync(ep);
        await i.LoginAsync(TestTargets.Iqn);
        const int length = 64 * 1024;
        var payload = TestTargets.Pattern(length, 11);
        uint itt = i.Itt++;
        await i.SendAsync(TestPdu.ScsiCommand(itt, i.CmdSN++, TestTargets.Write10(8, length / 512), length, write: true));
        int received = 0;
        while (received < length)
        {
            var r2t = await i.ExpectAsync(Opcode.R2T);
            int off = (int)r2t.U32(40), len = (int)r2t.U32(44);
            for (int o = 0, sn = 0; o < len; o += 8192, sn++)
            {
                int n = Math.Min(8192, len - o);
                await i.SendAsync(TestPdu.DataOut(itt, r2t.Ttt, (uint)sn, (uint)(off + o), payload[(off + o)..(off + o + n)], o + n == len));
            }
            received += len;
        }
        Assert.That((await i.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.EqualTo(ScsiStatus.Good));

        await i.SendAsync(TestPdu.ScsiCommand(i.Itt++, i.CmdSN++, TestTargets.Read10(8, length / 512), length, read: true));
        var back = new List<byte>();
        while (true)
        {
            var d = await i.ExpectAsync(Opcode.DataIn);
            Assert.That(d.Data.Length, Is.LessThanOrEqualTo(8192));
            back.AddRange(d.Data);
            if ((d.Flags & 0x01) != 0) break;
        }
        Assert.That(back.ToArray(), Is.EqualTo(payload));

        await i.SendAsync(TestPdu.Logout(i.Itt++, i.CmdSN));
        await i.ExpectAsync(Opcode.LogoutResponse);
        Assert.That(await i.ReceiveAsync(TimeSpan.FromSeconds(5)), Is.Null, "target closes after logout");
    }

    [Test]
    public async Task SendTargets_on_a_wildcard_listener_advertises_the_address_the_initiator_used()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        await using var transport = new SocketTransport(server, TestTargets.Log);
        await transport.StartAsync([new IPEndPoint(IPAddress.Any, 0)], CancellationToken.None);
        int port = transport.BoundEndpoints.Single().Port;
        await using var i = new TcpInitiator();
        await i.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port));
        await i.SendAsync(TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery"], 1, 3, true));
        await i.ExpectAsync(Opcode.LoginResponse);
        await i.SendAsync(TestPdu.TextRequest(2, 1, TestPdu.Text("SendTargets=All")));
        var text = System.Text.Encoding.UTF8.GetString((await i.ExpectAsync(Opcode.TextResponse)).Data);
        Assert.That(text, Does.Contain($"TargetAddress=127.0.0.1:{port},1"));
        Assert.That(text, Does.Not.Contain("0.0.0.0"));
    }

    [Test]
    public async Task Binding_a_port_in_use_fails_with_a_clear_message()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        await using var first = new SocketTransport(server, TestTargets.Log);
        await first.StartAsync([new IPEndPoint(IPAddress.Loopback, 0)], CancellationToken.None);
        await using var second = new SocketTransport(server, TestTargets.Log);
        var ex = Assert.ThrowsAsync<TransportBindException>(() => second.StartAsync([first.BoundEndpoints[0]], CancellationToken.None));
        Assert.That(ex!.Message, Does.Contain("already in use").And.Contain(first.BoundEndpoints[0].ToString()));
    }

    [Test]
    public async Task Oversized_PDU_over_TCP_is_refused_without_reading_its_data_and_other_sessions_continue()
    {
        await using var server = TestTargets.Server(new FakeScsiTarget());
        await using var transport = new SocketTransport(server, TestTargets.Log);
        await transport.StartAsync([new IPEndPoint(IPAddress.Loopback, 0)], CancellationToken.None);
        var ep = transport.BoundEndpoints.Single();
        await using var good = new TcpInitiator();
        await good.ConnectAsync(ep);
        await good.LoginAsync(TestTargets.Iqn, isid: 7);

        await using var bad = new TcpInitiator();
        await bad.ConnectAsync(ep);
        await bad.LoginAsync(TestTargets.Iqn, isid: 8);
        var h = TestPdu.NewHeader(Opcode.NopOut, immediate: true);
        h[5] = 0xff; h[6] = 0xff; h[7] = 0xff;
        await bad.SendAsync(h); // announces 16 MiB, sends none of it
        var reject = await bad.ExpectAsync(Opcode.Reject);
        Assert.That(reject.Header[2], Is.EqualTo((byte)RejectReason.ProtocolError));
        Assert.That(await bad.ReceiveAsync(TimeSpan.FromSeconds(5)), Is.Null, "closed");

        await good.SendAsync(TestPdu.NopOut(9, 0xffffffff, good.CmdSN, "ok"u8.ToArray()));
        Assert.That((await good.ExpectAsync(Opcode.NopIn)).Data, Is.EqualTo("ok"u8.ToArray()));
    }

    [Test]
    public async Task Peer_vanishing_mid_session_ends_the_session_and_the_nexus()
    {
        var scsi = new FakeScsiTarget();
        await using var server = TestTargets.Server(scsi);
        await using var transport = new SocketTransport(server, TestTargets.Log);
        await transport.StartAsync([new IPEndPoint(IPAddress.Loopback, 0)], CancellationToken.None);
        var i = new TcpInitiator();
        await i.ConnectAsync(transport.BoundEndpoints[0]);
        await i.LoginAsync(TestTargets.Iqn);
        Assert.That(server.Sessions, Has.Count.EqualTo(1));
        // Half a PDU, then the socket goes away.
        await i.SendAsync(TestPdu.ScsiCommand(1, 1, [0, 0, 0, 0, 0, 0], 0)[..20]);
        await i.DisposeAsync();
        Assert.That(() => server.Sessions.Count, Is.Zero.After(10000, 20));
        Assert.That(() => scsi.Events.Any(e => e.StartsWith("lost ")), Is.True.After(10000, 20));
    }
}
