using System.Net;
using System.Net.Sockets;
using System.Text;
using IntegrityTarget.Iscsi.Pdus;
using IntegrityTarget.Scsi;
using IntegrityTarget.Transport;

namespace IntegrityTarget.Iscsi.Tests.Transport;

/// <summary>
/// The same socket-level checks against every transport: a real TCP connection from <see cref="TcpInitiator"/>
/// to an <see cref="IscsiServer"/> over <see cref="FakeScsiTarget"/>, served by the transport under test.
/// </summary>
[TestFixture(typeof(SocketTransport))]
[TestFixture(typeof(DotNettyTransport))]
public class TransportConformanceTests(Type transportType)
{
    private const int Block = FakeScsiTarget.BlockSize;
    // Small on purpose: every transfer below spans several PDUs and several receive buffers.
    private const int TargetMrdsl = 8192;
    private static readonly IPEndPoint AnyLoopbackPort = new(IPAddress.Loopback, 0);

    private FakeScsiTarget _scsi = null!;
    private IscsiServer _server = null!;
    private IIscsiTransport _transport = null!;
    private readonly List<TcpInitiator> _initiators = [];

    [SetUp]
    public async Task StartAsync()
    {
        _scsi = new FakeScsiTarget(1, 8192); // 4 MiB
        _server = TestTargets.Server(_scsi, new IscsiServerOptions
        {
            MaxRecvDataSegmentLength = TargetMrdsl,
            MaxBurstLength = 262144,
            FirstBurstLength = 65536,
        });
        _transport = NewTransport(_server);
        await _transport.StartAsync([AnyLoopbackPort], CancellationToken.None);
    }

    [TearDown]
    public async Task StopAsync()
    {
        foreach (var i in _initiators) i.Dispose();
        _initiators.Clear();
        await _server.ShutdownAsync(CancellationToken.None);
        await _transport.DisposeAsync();
        await _server.DisposeAsync();
    }

    private IIscsiTransport NewTransport(IscsiServer server) =>
        (IIscsiTransport)Activator.CreateInstance(transportType, server, TestTargets.Log)!;

    /// <summary>Byte-for-byte comparison that reports the first difference (NUnit's collection equality is slow on MiBs).</summary>
    private static void AssertSameBytes(ReadOnlySpan<byte> actual, ReadOnlySpan<byte> expected, string what)
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what}: length");
        int diff = actual.CommonPrefixLength(expected);
        Assert.That(diff, Is.EqualTo(expected.Length), $"{what}: first difference at byte {diff}");
    }

    private static readonly byte[] PoisonRun = [FakeScsiTarget.Poison, FakeScsiTarget.Poison, FakeScsiTarget.Poison, FakeScsiTarget.Poison];

    private IPEndPoint Portal => _transport.BoundEndpoints.Single();

    private async Task<TcpInitiator> ConnectAsync(int? receiveBufferSize = null)
    {
        var i = await TcpInitiator.ConnectAsync(Portal, receiveBufferSize);
        _initiators.Add(i);
        return i;
    }

    private ulong _nextIsid = 0x00023d000001;

    /// <summary>A new connection logged in to a normal session of its own (a fresh ISID: no reinstatement).</summary>
    private Task<TcpInitiator> LoggedInAsync(params string[] keys) => LoggedInAsync(null, keys);

    private async Task<TcpInitiator> LoggedInAsync(int? receiveBufferSize, params string[] keys)
    {
        var i = await ConnectAsync(receiveBufferSize);
        await i.LoginAsync("Normal", _nextIsid++, ["MaxRecvDataSegmentLength=8192", .. keys]);
        return i;
    }

    [Test]
    public void Start_reports_the_port_it_was_given_for_port_zero()
    {
        Assert.That(Portal.Port, Is.Not.Zero);
        Assert.That(Portal.Address, Is.EqualTo(IPAddress.Loopback));
    }

    [Test]
    public async Task Discovery_login_SendTargets_and_logout_over_TCP()
    {
        var i = await ConnectAsync();
        await i.LoginAsync("Discovery");
        await i.SendAsync(TestPdu.TextRequest(i.NextItt(), i.CmdSN, TestPdu.Text("SendTargets=All")));
        var r = await i.ExpectAsync(Opcode.TextResponse);
        var text = Encoding.UTF8.GetString(r.Data);
        // The advertised address is the one this connection came in on, with the real bound port.
        Assert.That(text, Does.Contain($"TargetName={TestTargets.Iqn}\0TargetAddress=127.0.0.1:{Portal.Port},1\0"));
        await i.SendAsync(TestPdu.Logout(i.NextItt(), i.CmdSN));
        var logout = await i.ExpectAsync(Opcode.LogoutResponse);
        Assert.That(logout.Header[2], Is.Zero, "logout response: closed successfully");
        Assert.That(await i.ClosedByTargetAsync(), Is.True, "target closes the connection after the Logout Response");
    }

    [Test]
    public async Task Write_then_read_larger_than_MaxRecvDataSegmentLength_round_trips()
    {
        var i = await LoggedInAsync("InitialR2T=No", "ImmediateData=Yes");
        Assert.That(i.TargetMaxRecvDataSegmentLength, Is.EqualTo(TargetMrdsl));
        var payload = TestTargets.Pattern(128 * 1024, 11);
        // 8 KiB immediate data, then R2Ts for the rest (the target asks for what unsolicited data did not bring).
        var (status, _) = await i.WriteAsync(lba: 16, payload, immediateBytes: TargetMrdsl);
        Assert.That(status.Header[3], Is.EqualTo(ScsiStatus.Good));
        AssertSameBytes(_scsi.Disk(0).AsSpan(16 * Block, payload.Length), payload, "the backend got the bytes");

        var (data, dataIns, last) = await i.ReadAsync(lba: 16, payload.Length);
        AssertSameBytes(data, payload, "read back");
        Assert.That(dataIns.Count, Is.GreaterThanOrEqualTo(payload.Length / 8192));
        Assert.That(dataIns, Has.All.Matches<TestPdu>(p => p.Data.Length <= 8192), "Data-In respects our MaxRecvDataSegmentLength");
        Assert.That(last.Opcode == Opcode.ScsiResponse ? last.Header[3] : last.Header[47], Is.EqualTo(ScsiStatus.Good));
    }

    [Test]
    public async Task One_MiB_write_is_driven_by_R2Ts_and_reads_back_equal()
    {
        var i = await LoggedInAsync("InitialR2T=Yes", "ImmediateData=No", "MaxBurstLength=262144", "MaxOutstandingR2T=4");
        var payload = TestTargets.Pattern(1 << 20, 12);
        var (status, r2ts) = await i.WriteAsync(lba: 100, payload);
        Assert.That(status.Header[3], Is.EqualTo(ScsiStatus.Good));
        Assert.That(r2ts.Select(r => r.U32(44)).Sum(x => (long)x), Is.EqualTo(payload.Length), "R2Ts cover the whole transfer");
        Assert.That(r2ts, Has.All.Matches<TestPdu>(r => r.U32(44) <= 262144), "each R2T within MaxBurstLength");
        AssertSameBytes(_scsi.Disk(0).AsSpan(100 * Block, payload.Length), payload, "the backend got the bytes");

        var (data, _, _) = await i.ReadAsync(lba: 100, payload.Length);
        AssertSameBytes(data, payload, "read back");
    }

    [Test]
    public async Task Nop_out_is_echoed_and_logout_closes_the_connection()
    {
        var i = await LoggedInAsync();
        var ping = "transport ping\0\0"u8.ToArray();
        await i.SendAsync(TestPdu.NopOut(0x77, 0xffffffff, i.CmdSN, ping));
        var nop = await i.ExpectAsync(Opcode.NopIn);
        Assert.That(nop.Itt, Is.EqualTo(0x77u));
        Assert.That(nop.Data, Is.EqualTo(ping));
        await i.SendAsync(TestPdu.Logout(i.NextItt(), i.CmdSN));
        await i.ExpectAsync(Opcode.LogoutResponse);
        Assert.That(await i.ClosedByTargetAsync(), Is.True);
        Assert.That(() => _server.Sessions, Is.Empty.After(5000, 20), "the session ended with the connection");
    }

    [Test]
    public async Task A_PDU_trickled_in_one_byte_per_segment_is_reassembled()
    {
        var i = await ConnectAsync();
        var login = TestPdu.Login([$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", "SessionType=Normal"],
            csg: 1, nsg: 3, transit: true);
        foreach (var b in login) await i.SendAsync([b]);
        var r = await i.ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.LoginStatus, Is.EqualTo(0));
        // Two PDUs in one send, the second one cut in half across two sends.
        var tur = TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, new byte[6], 0);
        var nop = TestPdu.NopOut(0x55, 0xffffffff, i.CmdSN, "abcd"u8.ToArray());
        await i.SendAsync([.. tur, .. nop[..30]]);
        await i.SendAsync(nop[30..]);
        Assert.That((await i.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.EqualTo(ScsiStatus.Good));
        Assert.That((await i.ExpectAsync(Opcode.NopIn)).Data, Is.EqualTo("abcd"u8.ToArray()));
    }

    [Test]
    public async Task Pipelined_reads_and_writes_beyond_the_transport_buffers_all_complete_intact()
    {
        // 32 x 128 KiB reads are issued before a single byte is read back (into a 16 KiB socket buffer): the
        // target's send side fills the socket and must wait (back-pressure) instead of failing or dropping; then 32 x 64 KiB writes with
        // immediate + unsolicited data arrive faster than they are answered (the receive side pauses reading).
        var i = await LoggedInAsync(16 * 1024, "InitialR2T=No", "ImmediateData=Yes", "FirstBurstLength=65536");
        var disk = _scsi.Disk(0);
        TestTargets.Pattern(disk.Length, 13).CopyTo(disk, 0);
        const int reads = 32, readLength = 128 * 1024;
        var expected = new Dictionary<uint, byte[]>();
        for (int n = 0; n < reads; n++)
        {
            uint itt = i.NextItt();
            uint lba = (uint)(n * readLength / Block);
            expected[itt] = disk.AsSpan((int)lba * Block, readLength).ToArray();
            await i.SendAsync(TestPdu.ScsiCommand(itt, i.CmdSN++, TestTargets.Read10(lba, readLength / Block), readLength, read: true));
        }
        var got = expected.Keys.ToDictionary(k => k, _ => new List<byte>());
        int statuses = 0;
        while (statuses < reads)
        {
            var p = await i.NextAsync() ?? throw new AssertionException($"answers stopped after {statuses} statuses");
            if (p.Opcode == Opcode.DataIn)
            {
                Assert.That(p.U32(40), Is.EqualTo((uint)got[p.Itt].Count), "Data-In in order per command");
                got[p.Itt].AddRange(p.Data);
                if ((p.Flags & 0x01) != 0) statuses++;
            }
            else
            {
                Assert.That(p.Opcode, Is.EqualTo(Opcode.ScsiResponse), $"unexpected {p}");
                statuses++;
            }
        }
        foreach (var (itt, data) in expected) AssertSameBytes(got[itt].ToArray(), data, $"read ITT 0x{itt:x}");

        const int writes = 32, writeLength = 64 * 1024;
        var payload = TestTargets.Pattern(writes * writeLength, 14);
        for (int n = 0; n < writes; n++)
        {
            uint itt = i.NextItt();
            int off = n * writeLength;
            uint lba = (uint)(off / Block);
            await i.SendAsync(TestPdu.ScsiCommand(itt, i.CmdSN++, TestTargets.Write10(lba, writeLength / Block), writeLength, write: true, final: false,
                immediateData: payload[off..(off + TargetMrdsl)]));
            uint dataSN = 0;
            for (int done = TargetMrdsl; done < writeLength; done += TargetMrdsl, dataSN++)
                await i.SendAsync(TestPdu.DataOut(itt, 0xffffffff, dataSN, (uint)done, payload[(off + done)..(off + done + TargetMrdsl)],
                    final: done + TargetMrdsl == writeLength));
        }
        for (int n = 0; n < writes; n++)
            Assert.That((await i.ExpectAsync(Opcode.ScsiResponse)).Header[3], Is.EqualTo(ScsiStatus.Good));
        AssertSameBytes(disk.AsSpan(0, payload.Length), payload, "written data");
    }

    [Test]
    public async Task Concurrent_large_reads_with_digests_arrive_intact_although_their_buffers_are_poisoned_and_reused_when_disposed()
    {
        // Read buffers are overwritten with 0xEE the moment their response is disposed and reused for the next
        // read: a transport that sends read data from the read buffer itself must not let the command dispose
        // it while a send may still read it. Small socket receive buffers keep the target's sends waiting on
        // the initiator; three connections (Data-In segments of 8, 64 and 256 KiB, the first ones spanning
        // more buffers than one gathering send takes) read 64 KiB..1 MiB each, several at once, some with an
        // expected length that is not a multiple of 4 (the last segment padded), digests on.
        _scsi.ReuseReadBuffers = true;
        var disk = _scsi.Disk(0);
        TestTargets.Pattern(disk.Length, 21).CopyTo(disk, 0);
        int[] segmentSizes = [8192, 65536, 262144];
        var initiators = new List<TcpInitiator>();
        foreach (var mrdsl in segmentSizes)
        {
            var i = await ConnectAsync(receiveBufferSize: 32 * 1024);
            await i.LoginAsync("Normal", _nextIsid++, $"MaxRecvDataSegmentLength={mrdsl}", "HeaderDigest=CRC32C", "DataDigest=CRC32C");
            Assert.That(i.HeaderDigest && i.DataDigest, Is.True, "digests negotiated");
            initiators.Add(i);
        }
        var results = await Task.WhenAll(initiators.Select((i, n) => ReadManyAsync(i, seed: 100 + n, segmentSizes[n])));
        Assert.That(results.Sum(), Is.GreaterThan(20 << 20), "bytes checked");
        Assert.That(() => _scsi.ReadBuffersOut, Is.Zero.After(5000, 20), "every read buffer given back");

        async Task<long> ReadManyAsync(TcpInitiator i, int seed, int mrdsl)
        {
            var random = new Random(seed);
            long checkedBytes = 0;
            for (int round = 0; round < 6; round++)
            {
                var expected = new Dictionary<uint, byte[]>();
                for (int n = 0; n < 8; n++)
                {
                    uint itt = i.NextItt();
                    int blocks = random.Next(128, 2049); // 64 KiB .. 1 MiB
                    uint lba = (uint)random.Next(0, disk.Length / Block - blocks + 1);
                    int edtl = blocks * Block - (n % 3 == 2 ? random.Next(1, 4) : 0);
                    expected[itt] = disk.AsSpan((int)lba * Block, edtl).ToArray();
                    await i.SendAsync(TestPdu.ScsiCommand(itt, i.CmdSN++, TestTargets.Read10(lba, (ushort)blocks), (uint)edtl, read: true,
                        headerDigest: i.HeaderDigest, dataDigest: i.DataDigest));
                }
                var got = expected.Keys.ToDictionary(k => k, _ => new List<byte>());
                for (int statuses = 0; statuses < expected.Count;)
                {
                    // TryParse checks both digests of every PDU.
                    var p = await i.NextAsync() ?? throw new AssertionException($"answers stopped after {statuses} statuses");
                    Assert.That(p.Opcode, Is.EqualTo(Opcode.DataIn), $"unexpected {p}");
                    Assert.That(p.Data.Length, Is.LessThanOrEqualTo(mrdsl), "Data-In within our MaxRecvDataSegmentLength");
                    Assert.That(p.U32(40), Is.EqualTo((uint)got[p.Itt].Count), "Data-In in order per command");
                    got[p.Itt].AddRange(p.Data);
                    if ((p.Flags & 0x01) == 0) continue;
                    statuses++;
                    Assert.That(p.Header[3], Is.EqualTo(ScsiStatus.Good), "status in the last Data-In");
                }
                foreach (var (itt, data) in expected)
                {
                    var bytes = got[itt].ToArray();
                    int poisoned = bytes.AsSpan().IndexOf(PoisonRun);
                    AssertSameBytes(bytes, data, $"read ITT 0x{itt:x} ({data.Length} bytes; a run of poison at {poisoned})");
                    checkedBytes += data.Length;
                }
            }
            return checkedBytes;
        }
    }

    [TestCase("reset by the initiator")]
    [TestCase("transport stopped")]
    public async Task A_connection_that_ends_while_large_reads_wait_to_be_sent_gives_every_read_buffer_back(string how)
    {
        // The initiator reads nothing (a 16 KiB socket buffer): the answers to eight 1 MiB reads wait in the
        // target's send path, holding their read buffers, until the connection ends.
        _scsi.ReuseReadBuffers = true;
        var i = await LoggedInAsync(16 * 1024);
        for (int n = 0; n < 8; n++)
            await i.SendAsync(TestPdu.ScsiCommand(i.NextItt(), i.CmdSN++, TestTargets.Read10((uint)(n % 4 * 2048), 2048), 1 << 20, read: true));
        // How many run depends on the send path: one that waits for room while holding the send lock (the copy into
        // the output pipe) holds up the receive side too, so only the first ones may have run; either way answers wait.
        Assert.That(() => _scsi.Executed.Count(c => c.Cdb.Span[0] == 0x28), Is.GreaterThanOrEqualTo(1).After(5000, 10), "reads executed");
        await Task.Delay(300);
        if (how == "transport stopped") await _transport.StopAsync(CancellationToken.None);
        else i.ResetConnection();
        Assert.That(() => _scsi.ReadBuffersOut, Is.Zero.After(15000, 20), "every read buffer given back");
        Assert.That(() => _server.Sessions, Is.Empty.After(5000, 20), "the session ended with the connection");
    }

    [Test]
    public async Task Abort_task_while_a_large_read_is_being_sent_leaves_the_data_on_the_wire_intact()
    {
        // Four 1 MiB reads wait to be sent to an initiator that reads nothing yet; it aborts the last one, then
        // reads: every Data-In that arrives carries the right bytes, the TMF is answered, and all buffers go back.
        _scsi.ReuseReadBuffers = true;
        var disk = _scsi.Disk(0);
        TestTargets.Pattern(disk.Length, 22).CopyTo(disk, 0);
        var i = await LoggedInAsync(16 * 1024, "HeaderDigest=CRC32C", "DataDigest=CRC32C");
        var expected = new Dictionary<uint, byte[]>();
        uint lastItt = 0, lastCmdSN = 0;
        for (int n = 0; n < 4; n++)
        {
            lastItt = i.NextItt();
            lastCmdSN = i.CmdSN++;
            expected[lastItt] = disk.AsSpan(n * (1 << 20), 1 << 20).ToArray();
            await i.SendAsync(TestPdu.ScsiCommand(lastItt, lastCmdSN, TestTargets.Read10((uint)(n * 2048), 2048), 1 << 20, read: true,
                headerDigest: i.HeaderDigest, dataDigest: i.DataDigest));
        }
        Assert.That(() => _scsi.Executed.Count(c => c.Cdb.Span[0] == 0x28), Is.GreaterThanOrEqualTo(1).After(5000, 10), "reads executed");
        await Task.Delay(300);
        await i.SendAsync(TestPdu.Tmf(0x900, i.CmdSN, 1 /* ABORT TASK */, lastItt, lastCmdSN,
            headerDigest: i.HeaderDigest, dataDigest: i.DataDigest));

        var got = expected.Keys.ToDictionary(k => k, _ => new List<byte>());
        bool tmfAnswered = false;
        int statuses = 0;
        // The aborted read may end without an answer (aborted before it ran) or with one (it was already sent).
        while (true)
        {
            bool more = !tmfAnswered || statuses < 3;
            var p = await i.NextAsync(more ? null : TimeSpan.FromSeconds(1));
            if (p is null && !more) break;
            if (p is null) throw new AssertionException($"answers stopped (TMF answered: {tmfAnswered}, statuses: {statuses})");
            if (p.Opcode == Opcode.TaskManagementResponse) { tmfAnswered = true; continue; }
            if (p.Opcode == Opcode.ScsiResponse) { statuses++; continue; }
            Assert.That(p.Opcode, Is.EqualTo(Opcode.DataIn), $"unexpected {p}");
            Assert.That(p.U32(40), Is.EqualTo((uint)got[p.Itt].Count), "Data-In in order per command");
            got[p.Itt].AddRange(p.Data);
            if ((p.Flags & 0x01) != 0) statuses++;
        }
        foreach (var (itt, data) in expected)
        {
            var bytes = got[itt].ToArray();
            // The aborted one may stop short.
            AssertSameBytes(bytes, itt == lastItt ? data.AsSpan(0, Math.Min(bytes.Length, data.Length)) : data, $"read ITT 0x{itt:x}");
        }
        Assert.That(() => _scsi.ReadBuffersOut, Is.Zero.After(5000, 20), "every read buffer given back");
    }

    [Test]
    public async Task Oversized_PDU_closes_only_its_own_connection()
    {
        var good = await LoggedInAsync();
        var bad = await LoggedInAsync();
        // Announces a 16 MiB data segment: far above our MaxRecvDataSegmentLength.
        var h = TestPdu.NewHeader(Opcode.NopOut, immediate: true);
        h[5] = 0xff; h[6] = 0xff; h[7] = 0xfc;
        BitConverter.GetBytes(0xffffffffu).CopyTo(h, 20);
        await bad.SendAsync(h);
        var reject = await bad.NextAsync();
        Assert.That(reject?.Opcode, Is.EqualTo(Opcode.Reject).Or.Null);
        Assert.That(await bad.ClosedByTargetAsync(), Is.True, "the offending connection is closed");

        await good.SendAsync(TestPdu.NopOut(0x99, 0xffffffff, good.CmdSN));
        Assert.That((await good.ExpectAsync(Opcode.NopIn)).Itt, Is.EqualTo(0x99u), "the other connection carries on");
    }

    [Test]
    public async Task Port_in_use_gives_a_clear_error_naming_the_portal()
    {
        await using var other = NewTransport(_server);
        var ex = Assert.ThrowsAsync<TransportBindException>(() => other.StartAsync([Portal], CancellationToken.None));
        Assert.That(ex!.Portal, Is.EqualTo(Portal));
        Assert.That(ex.Message, Does.Contain(Portal.ToString()).And.Contain("already in use"));
        // The failed start did not disturb the running transport.
        var i = await LoggedInAsync();
        await i.SendAsync(TestPdu.NopOut(0x10, 0xffffffff, i.CmdSN));
        await i.ExpectAsync(Opcode.NopIn);
    }

    [Test]
    public async Task Stop_closes_open_connections_and_stops_accepting()
    {
        var i = await LoggedInAsync();
        var idle = await ConnectAsync(); // connected, never logged in
        var portal = Portal;
        await _transport.StopAsync(CancellationToken.None);
        Assert.That(await i.ClosedByTargetAsync(), Is.True, "logged-in connection closed");
        Assert.That(await idle.ClosedByTargetAsync(), Is.True, "connection still in login closed");
        Assert.That(() => _server.Sessions, Is.Empty.After(5000, 20));
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var refused = Assert.ThrowsAsync<SocketException>(async () => await probe.ConnectAsync(portal));
        Assert.That(refused!.SocketErrorCode, Is.EqualTo(SocketError.ConnectionRefused));
    }
}
