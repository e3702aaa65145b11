using System.Net;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Transport;

namespace IntegrityTarget.Iscsi.Tests.Transport;

/// <summary>
/// How the sockets transport's send loop ends when something in it throws that is not a socket error (a bug):
/// the connection must end all the same (pipe reader completed, socket closed, every borrowed read buffer
/// given back), or the core's writers wait on a pipe nobody reads and the session stays until the NOP timeout.
/// </summary>
public class SocketSendLoopTests
{
    private sealed class CapturingSink : Serilog.Core.ILogEventSink
    {
        public readonly List<string> Lines = [];
        public void Emit(Serilog.Events.LogEvent e) { lock (Lines) Lines.Add(e.Level + " " + e.RenderMessage()); }
        public int Count(string text) { lock (Lines) return Lines.Count(l => l.Contains(text)); }
    }

    [TestCase(false, TestName = "A send loop that throws before its first borrowed buffer goes out still ends the connection and gives every read buffer back")]
    [TestCase(true, TestName = "A send loop that throws after two reads went out still ends the connection and gives every read buffer back")]
    public async Task Send_loop_failure(bool afterTwoAnswers)
    {
        var scsi = new FakeScsiTarget(1, 8192) { ReuseReadBuffers = true }; // 4 MiB
        // Keep-alive far away: within the test only the transport's own end may close this connection.
        await using var server = TestTargets.Server(scsi, new IscsiServerOptions
        {
            MaxRecvDataSegmentLength = 8192, MaxBurstLength = 262144, FirstBurstLength = 65536,
            NopInterval = TimeSpan.FromMinutes(5), NopTimeout = TimeSpan.FromMinutes(5),
        });
        var sink = new CapturingSink();
        var log = new Serilog.LoggerConfiguration().MinimumLevel.Debug().WriteTo.Sink(sink).CreateLogger();
        await using var transport = new SocketTransport(server, log);
        int armed = afterTwoAnswers ? 0 : 1, thrown = 0;
        transport.BeforeBorrowedSendForTests = () =>
        {
            if (Volatile.Read(ref armed) == 1 && Interlocked.Exchange(ref thrown, 1) == 0)
                throw new InvalidOperationException("injected send loop failure");
        };
        await transport.StartAsync([new IPEndPoint(IPAddress.Loopback, 0)], CancellationToken.None);

        // A 64 KiB receive buffer: answers the test does not read make the target's sends wait.
        using var i = await TcpInitiator.ConnectAsync(transport.BoundEndpoints.Single(), 64 * 1024);
        await i.LoginAsync("Normal", 0x00023d000001, "MaxRecvDataSegmentLength=65536");
        for (int n = 0; n < 8; n++)
            await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10((uint)(n % 4 * 2048), 2048), 1 << 20, read: true));
        if (afterTwoAnswers)
        {
            // Two reads arrive whole (their buffers went out and came back), then the next borrowed ones fail.
            for (int statuses = 0; statuses < 2;)
            {
                var p = await i.NextAsync() ?? throw new AssertionException($"answers stopped after {statuses} statuses");
                Assert.That(p.Opcode, Is.EqualTo(Opcode.DataIn), $"unexpected {p}");
                if ((p.Flags & 0x01) != 0) statuses++;
            }
            Volatile.Write(ref armed, 1);
            while (Volatile.Read(ref thrown) == 0 && await i.NextAsync(TimeSpan.FromSeconds(5)) is not null) { }
        }

        Assert.That(() => Volatile.Read(ref thrown), Is.EqualTo(1).After(10000, 10), "the send loop reached the injected failure");
        Assert.That(() => scsi.ReadBuffersOut, Is.Zero.After(10000, 20), "every read buffer given back");
        Assert.That(() => server.Sessions, Is.Empty.After(10000, 20), "the session ended with the send loop");
        while (await i.NextAsync(TimeSpan.FromSeconds(10)) is not null) { }
        Assert.That(i.EndOfStream, Is.True, "the target closed the socket");
        Assert.That(sink.Count("Send loop failed"), Is.EqualTo(1), string.Join("\n", sink.Lines));
        Assert.That(scsi.Executed.Count(c => c.Cdb.Span[0] == 0x28), Is.EqualTo(8), "every read ran: none was left waiting to be taken");
    }

    [Test]
    public async Task A_target_side_close_while_borrowed_buffers_wait_behind_a_peer_that_reads_nothing_ends_the_connection()
    {
        // The close path with borrowed buffers queued and the socket full: the keep-alive closes the connection
        // (the initiator answers nothing), the close completes the output pipe before it waits for the commands,
        // and the socket is cut after the transport's close grace (5 s) under the send the peer does not take. No
        // command may wait for a buffer that only a later step of the close would give back.
        var scsi = new FakeScsiTarget(1, 8192) { ReuseReadBuffers = true };
        await using var server = TestTargets.Server(scsi, new IscsiServerOptions
        {
            MaxRecvDataSegmentLength = 8192, MaxBurstLength = 262144, FirstBurstLength = 65536,
            NopInterval = TimeSpan.FromSeconds(1), NopTimeout = TimeSpan.FromSeconds(1),
        });
        await using var transport = new SocketTransport(server, TestTargets.Log);
        await transport.StartAsync([new IPEndPoint(IPAddress.Loopback, 0)], CancellationToken.None);
        using var i = await TcpInitiator.ConnectAsync(transport.BoundEndpoints.Single(), 16 * 1024);
        await i.LoginAsync("Normal", 0x00023d000001, "MaxRecvDataSegmentLength=65536");
        for (int n = 0; n < 8; n++)
            await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10((uint)(n % 4 * 2048), 2048), 1 << 20, read: true));
        Assert.That(() => scsi.Executed.Count(c => c.Cdb.Span[0] == 0x28), Is.EqualTo(8).After(5000, 10), "every read ran");
        Assert.That(scsi.ReadBuffersOut, Is.GreaterThan(0), "answers wait to be sent");

        var closed = System.Diagnostics.Stopwatch.StartNew();
        Assert.That(() => server.Sessions, Is.Empty.After(15000, 20), "the keep-alive's close ended the session");
        Assert.That(scsi.ReadBuffersOut, Is.Zero, "every read buffer given back by then");
        TestContext.Out.WriteLine($"session gone {closed.Elapsed.TotalSeconds:F1} s after the reads ran");
    }
}
