using System.Net;
using System.Net.Sockets;
using IntegrityTarget.Iscsi.Pdus;

namespace IntegrityTarget.Iscsi.Tests.Transport;

/// <summary>
/// A tiny iSCSI initiator over a real TCP socket: it sends PDUs built by <see cref="TestPdu"/> and parses
/// what the target sends with <see cref="TestPdu.TryParse"/>, exactly like <see cref="MemoryInitiator"/>
/// but through a transport.
/// </summary>
public sealed class TcpInitiator : IDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(15);
    private readonly Socket _socket;
    private readonly List<byte> _rx = [];
    private readonly byte[] _buffer = new byte[64 * 1024];
    private bool _eof;

    private TcpInitiator(Socket socket) => _socket = socket;

    /// <param name="receiveBufferSize">A small kernel receive buffer makes the target's sends block sooner.</param>
    public static async Task<TcpInitiator> ConnectAsync(IPEndPoint target, int? receiveBufferSize = null)
    {
        var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        if (receiveBufferSize is { } size) s.ReceiveBufferSize = size;
        await s.ConnectAsync(target);
        return new TcpInitiator(s);
    }

    public IPEndPoint LocalEndPoint => (IPEndPoint)_socket.LocalEndPoint!;
    public bool HeaderDigest, DataDigest;
    public uint CmdSN = 1;
    public uint Itt = 0x100;
    /// <summary>The target's declared MaxRecvDataSegmentLength: our Data-Out PDUs must not exceed it.</summary>
    public int TargetMaxRecvDataSegmentLength = 8192;

    public uint NextItt() => Itt++;

    public async Task SendAsync(byte[] bytes)
    {
        int sent = 0;
        while (sent < bytes.Length) sent += await _socket.SendAsync(bytes.AsMemory(sent), SocketFlags.None);
    }

    /// <summary>Next PDU from the target; null when the target closed the connection or nothing came in time.</summary>
    public async Task<TestPdu?> NextAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? Timeout);
        while (true)
        {
            var p = TestPdu.TryParse(_rx, HeaderDigest, DataDigest);
            if (p is not null) return p;
            if (_eof || !await FillAsync(cts.Token)) return null;
        }
    }

    private async Task<bool> FillAsync(CancellationToken ct)
    {
        try
        {
            int n = await _socket.ReceiveAsync(_buffer, SocketFlags.None, ct);
            if (n == 0) { _eof = true; return false; }
            _rx.AddRange(new ArraySegment<byte>(_buffer, 0, n));
            return true;
        }
        catch (OperationCanceledException) { return false; }
        catch (SocketException) { _eof = true; return false; }
    }

    public async Task<TestPdu> ExpectAsync(Opcode op)
    {
        var p = await NextAsync() ?? throw new AssertionException($"expected {op}, got nothing (connection closed: {_eof})");
        Assert.That(p.Opcode, Is.EqualTo(op), $"unexpected PDU {p}");
        return p;
    }

    /// <summary>The connection ended (EOF or reset) while reading.</summary>
    public bool EndOfStream => _eof;

    /// <summary>True once the target closed the connection (EOF or reset) with no further PDU in between.</summary>
    public async Task<bool> ClosedByTargetAsync()
    {
        using var cts = new CancellationTokenSource(Timeout);
        while (!_eof)
        {
            if (TestPdu.TryParse(_rx, HeaderDigest, DataDigest) is { } extra)
                throw new AssertionException($"expected the connection to close, got {extra}");
            if (!await FillAsync(cts.Token) && !_eof) return false;
        }
        return _rx.Count == 0;
    }

    /// <summary>Logs in with no authentication straight to the full feature phase.</summary>
    public async Task<TestPdu> LoginAsync(string sessionType = "Normal", ulong isid = 0x00023d000001, params string[] extra)
    {
        string[] keys = sessionType == "Discovery"
            ? [$"InitiatorName={TestTargets.Initiator}", "SessionType=Discovery", .. extra]
            : [$"InitiatorName={TestTargets.Initiator}", $"TargetName={TestTargets.Iqn}", "SessionType=Normal", .. extra];
        await SendAsync(TestPdu.Login(keys, csg: 1, nsg: 3, transit: true, isid: isid, cmdSN: CmdSN));
        var r = await ExpectAsync(Opcode.LoginResponse);
        Assert.That(r.LoginStatus, Is.EqualTo(0), "login failed");
        var k = r.Keys();
        HeaderDigest = k.GetValueOrDefault("HeaderDigest") == "CRC32C";
        DataDigest = k.GetValueOrDefault("DataDigest") == "CRC32C";
        if (k.TryGetValue("MaxRecvDataSegmentLength", out var mrdsl)) TargetMaxRecvDataSegmentLength = int.Parse(mrdsl);
        return r;
    }

    /// <summary>
    /// WRITE(10) of <paramref name="payload"/>: immediate data (when given) and then Data-Out PDUs for every
    /// R2T, split at the target's MaxRecvDataSegmentLength. Returns the SCSI Response and the R2Ts seen.
    /// </summary>
    public async Task<(TestPdu Response, List<TestPdu> R2Ts)> WriteAsync(uint lba, byte[] payload, int immediateBytes = 0)
    {
        uint itt = NextItt();
        var blocks = (ushort)(payload.Length / FakeScsiTarget.BlockSize);
        await SendAsync(TestPdu.ScsiCommand(itt, CmdSN++, TestTargets.Write10(lba, blocks), (uint)payload.Length, write: true,
            immediateData: immediateBytes > 0 ? payload[..immediateBytes] : null));
        var r2ts = new List<TestPdu>();
        while (true)
        {
            var p = await NextAsync() ?? throw new AssertionException($"no answer to the WRITE (R2Ts so far: {r2ts.Count})");
            if (p.Opcode == Opcode.ScsiResponse) return (p, r2ts);
            Assert.That(p.Opcode, Is.EqualTo(Opcode.R2T), $"unexpected {p}");
            r2ts.Add(p);
            int offset = (int)p.U32(40), length = (int)p.U32(44);
            uint dataSN = 0;
            for (int done = 0; done < length; dataSN++)
            {
                int n = Math.Min(TargetMaxRecvDataSegmentLength, length - done);
                await SendAsync(TestPdu.DataOut(itt, p.Ttt, dataSN, (uint)(offset + done), payload[(offset + done)..(offset + done + n)],
                    final: done + n == length, HeaderDigest, DataDigest));
                done += n;
            }
        }
    }

    /// <summary>READ(10): gathers Data-In until the status; returns the data, the Data-In PDUs and the status PDU.</summary>
    public async Task<(byte[] Data, List<TestPdu> DataIns, TestPdu Status)> ReadAsync(uint lba, int length)
    {
        await SendAsync(TestPdu.ScsiCommand(NextItt(), CmdSN++, TestTargets.Read10(lba, (ushort)(length / FakeScsiTarget.BlockSize)),
            (uint)length, read: true));
        return await ReadResultAsync();
    }

    public async Task<(byte[] Data, List<TestPdu> DataIns, TestPdu Status)> ReadResultAsync()
    {
        var data = new List<byte>();
        var pdus = new List<TestPdu>();
        while (true)
        {
            var p = await NextAsync() ?? throw new AssertionException($"READ answer ended after {data.Count} bytes");
            if (p.Opcode == Opcode.DataIn)
            {
                Assert.That(p.U32(40), Is.EqualTo((uint)data.Count), "BufferOffset continues the data");
                data.AddRange(p.Data);
                pdus.Add(p);
                if ((p.Flags & 0x01) != 0) return (data.ToArray(), pdus, p);
                continue;
            }
            Assert.That(p.Opcode, Is.EqualTo(Opcode.ScsiResponse), $"unexpected {p}");
            return (data.ToArray(), pdus, p);
        }
    }

    /// <summary>Drops the connection with a TCP reset (no orderly close): what the target sees when an initiator dies.</summary>
    public void ResetConnection()
    {
        _socket.LingerState = new LingerOption(true, 0);
        _socket.Close();
    }

    public void Dispose() => _socket.Dispose();
}
