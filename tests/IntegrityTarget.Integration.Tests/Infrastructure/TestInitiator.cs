using System.Buffers.Binary;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace IntegrityTarget.Integration.Tests.Infrastructure;

/// <summary>Decoded sense data (fixed 0x70/0x71 or descriptor 0x72/0x73 format).</summary>
public sealed record Sense(byte ResponseCode, byte Key, byte Asc, byte Ascq, bool InfoValid, ulong Information, byte[] Raw)
{
    public static Sense? Parse(ReadOnlySpan<byte> s)
    {
        if (s.Length < 2) return null;
        var code = (byte)(s[0] & 0x7f);
        if (code is 0x70 or 0x71)
        {
            if (s.Length < 14) return new Sense(code, (byte)(s[2] & 0x0f), 0, 0, false, 0, s.ToArray());
            return new Sense(code, (byte)(s[2] & 0x0f), s[12], s[13], (s[0] & 0x80) != 0,
                BinaryPrimitives.ReadUInt32BigEndian(s[3..7]), s.ToArray());
        }
        if (code is 0x72 or 0x73)
        {
            bool valid = false; ulong info = 0;
            var end = Math.Min(s.Length, 8 + (s.Length > 7 ? s[7] : 0));
            for (var i = 8; i + 2 <= end;)
            {
                var type = s[i]; var len = s[i + 1];
                if (type == 0x00 && len >= 0x0a && i + 12 <= end) { valid = (s[i + 2] & 0x80) != 0; info = BinaryPrimitives.ReadUInt64BigEndian(s[(i + 4)..(i + 12)]); }
                i += 2 + len;
            }
            return new Sense(code, (byte)(s[1] & 0x0f), s[2], s[3], valid, info, s.ToArray());
        }
        return new Sense(code, 0, 0, 0, false, 0, s.ToArray());
    }

    public override string ToString() => $"sense {Key:X2}/{Asc:X2}/{Ascq:X2} info={(InfoValid ? Information.ToString() : "-")} ({Convert.ToHexString(Raw)})";
}

/// <summary>Outcome of one SCSI command.</summary>
public sealed record ScsiResult(byte Status, byte[] Data, int DataInBytes, uint Residual, bool Underflow, bool Overflow, Sense? Sense)
{
    public bool Good => Status == 0;
    public override string ToString() => $"status 0x{Status:X2} datain={DataInBytes} residual={Residual}{(Underflow ? " U" : "")}{(Overflow ? " O" : "")} {Sense}";
}

public sealed class LoginOptions
{
    public string InitiatorName { get; set; } = "iqn.2026-11.org.example:test-initiator";
    public string? TargetName { get; set; }
    public bool Discovery { get; set; }
    public string? ChapUser { get; set; }
    public string? ChapSecret { get; set; }
    /// <summary>Set both for mutual CHAP: what the target must prove it knows.</summary>
    public string? MutualUser { get; set; }
    public string? MutualSecret { get; set; }
    public bool ImmediateData { get; set; } = true;
    public int MaxRecvDataSegmentLength { get; set; } = 65536;
    public ulong Isid { get; set; } = 0x80_0000_0000UL | (uint)Random.Shared.Next(1, 0xffff);
}

public sealed class LoginFailedException(byte cls, byte detail, string msg) : Exception(msg)
{
    public byte StatusClass { get; } = cls;
    public byte StatusDetail { get; } = detail;
}

/// <summary>
/// A small blocking iSCSI initiator (RFC 7143): one connection, one command at a time, ERL 0.
/// Enough to log in (None/CHAP, mutual), read/write with FUA, flush, unmap, parse sense, and send
/// raw bytes for fuzzing. It checks what it receives strictly, so protocol slips show up as exceptions.
/// </summary>
public sealed class TestInitiator : IDisposable
{
    const byte OpNopOut = 0x00, OpScsiCmd = 0x01, OpTextReq = 0x04, OpDataOut = 0x05, OpLogoutReq = 0x06, OpLoginReq = 0x03;
    const byte OpNopIn = 0x20, OpScsiRsp = 0x21, OpTextRsp = 0x24, OpDataIn = 0x25, OpLogoutRsp = 0x26, OpLoginRsp = 0x23,
        OpR2T = 0x31, OpAsync = 0x32, OpReject = 0x3f;

    readonly TcpClient _tcp;
    readonly NetworkStream _s;
    uint _itt = 1, _cmdSn = 1, _expStatSn;
    public int TargetMaxRecvDsl { get; private set; } = 8192;
    public int FirstBurst { get; private set; } = 65536;
    public int MaxBurst { get; private set; } = 262144;
    public bool ImmediateData { get; private set; }
    public bool InitialR2T { get; private set; } = true;
    public Dictionary<string, string> NegotiatedKeys { get; } = new();
    public ushort Tsih { get; private set; }

    public TestInitiator(string host, int port, TimeSpan? ioTimeout = null)
    {
        _tcp = new TcpClient { NoDelay = true };
        _tcp.Connect(host, port);
        _s = _tcp.GetStream();
        _tcp.ReceiveTimeout = _tcp.SendTimeout = (int)(ioTimeout ?? TimeSpan.FromSeconds(30)).TotalMilliseconds;
    }

    public static TestInitiator Connect(ServerProcess srv, LoginOptions? o = null, TimeSpan? ioTimeout = null)
    {
        o ??= new LoginOptions();
        o.TargetName ??= o.Discovery ? null : srv.Iqn;
        var i = new TestInitiator(srv.Host, srv.Port, ioTimeout);
        try { i.Login(o); } catch { i.Dispose(); throw; }
        return i;
    }

    // ------------------------------------------------------------------ PDU I/O

    public sealed record Pdu(byte[] Bhs, byte[] Data)
    {
        public byte Opcode => (byte)(Bhs[0] & 0x3f);
        public byte Flags => Bhs[1];
        public uint Itt => BinaryPrimitives.ReadUInt32BigEndian(Bhs.AsSpan(16));
        public uint U32(int off) => BinaryPrimitives.ReadUInt32BigEndian(Bhs.AsSpan(off));
    }

    /// <summary>Sends bytes exactly as given (fuzzing).</summary>
    public void SendRaw(ReadOnlySpan<byte> bytes) { _s.Write(bytes); _s.Flush(); }

    /// <summary>Half-closes the connection: the target sees end of stream after what was sent.</summary>
    public void ShutdownSend() => _tcp.Client.Shutdown(SocketShutdown.Send);

    /// <summary>Sends a PDU built by a test (its DataSegmentLength is set from <paramref name="data"/>).</summary>
    public void SendPdu(byte[] bhs, ReadOnlySpan<byte> data) => Send(bhs, data);

    public uint NextItt() => _itt++;
    public uint CmdSn => _cmdSn;
    public uint ExpStatSn => _expStatSn;
    /// <summary>Advances CmdSN for a non-immediate command a test sent by hand.</summary>
    public uint TakeCmdSn() => _cmdSn++;

    void Send(byte[] bhs, ReadOnlySpan<byte> data)
    {
        BinaryPrimitives.WriteUInt32BigEndian(bhs.AsSpan(4), (uint)data.Length & 0xffffff); // byte 4 (AHS) stays 0
        var pad = (4 - data.Length % 4) % 4;
        var buf = new byte[48 + data.Length + pad];
        bhs.CopyTo(buf, 0);
        data.CopyTo(buf.AsSpan(48));
        _s.Write(buf);
    }

    /// <summary>Reads one PDU; throws IOException when the target closes the connection.</summary>
    public Pdu Receive()
    {
        var bhs = new byte[48];
        ReadExact(bhs);
        var ahs = bhs[4] * 4;
        var dlen = (int)(BinaryPrimitives.ReadUInt32BigEndian(bhs.AsSpan(4)) & 0xffffff);
        if (ahs > 0) ReadExact(new byte[ahs]);
        var data = new byte[dlen];
        ReadExact(data);
        var pad = (4 - dlen % 4) % 4;
        if (pad > 0) ReadExact(new byte[pad]);
        return new Pdu(bhs, data);
    }

    void ReadExact(Span<byte> b)
    {
        var got = 0;
        while (got < b.Length)
        {
            var n = _s.Read(b[got..]);
            if (n == 0) throw new IOException("target closed the connection");
            got += n;
        }
    }

    /// <summary>True when the target closed the connection (EOF or reset) within the timeout.</summary>
    public bool WaitClosed(TimeSpan timeout)
    {
        var old = _tcp.ReceiveTimeout;
        _tcp.ReceiveTimeout = (int)timeout.TotalMilliseconds;
        try
        {
            var b = new byte[65536];
            while (true) { if (_s.Read(b) == 0) return true; }
        }
        catch (IOException e) when (e.InnerException is SocketException { SocketErrorCode: SocketError.TimedOut or SocketError.WouldBlock }) { return false; }
        catch (IOException) { return true; }
        finally { try { _tcp.ReceiveTimeout = old; } catch (ObjectDisposedException) { } }
    }

    // ------------------------------------------------------------------ login

    static byte[] Keys(IEnumerable<(string k, string v)> kv)
    {
        var sb = new StringBuilder();
        foreach (var (k, v) in kv) sb.Append(k).Append('=').Append(v).Append('\0');
        return Encoding.ASCII.GetBytes(sb.ToString());
    }

    public static Dictionary<string, string> ParseKeys(byte[] data)
    {
        var d = new Dictionary<string, string>();
        foreach (var kv in Encoding.ASCII.GetString(data).Split('\0', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = kv.IndexOf('=');
            if (eq > 0) d[kv[..eq]] = kv[(eq + 1)..];
        }
        return d;
    }

    byte[] LoginBhs(bool transit, int csg, int nsg, ulong isid, ushort cid = 0)
    {
        var b = new byte[48];
        b[0] = 0x40 | OpLoginReq;
        b[1] = (byte)((transit ? 0x80 : 0) | (csg << 2) | (transit ? nsg : 0));
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), (isid << 16) | Tsih);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), _itt);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(20), cid);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), _cmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(28), _expStatSn);
        return b;
    }

    Dictionary<string, string> LoginStep(bool transit, int csg, int nsg, ulong isid, IEnumerable<(string, string)> keys, out Pdu rsp)
    {
        Send(LoginBhs(transit, csg, nsg, isid), Keys(keys));
        rsp = Receive();
        if (rsp.Opcode != OpLoginRsp) throw new IOException($"expected a Login Response, got opcode 0x{rsp.Opcode:X2}");
        var cls = rsp.Bhs[36]; var det = rsp.Bhs[37];
        if (cls != 0) throw new LoginFailedException(cls, det, $"login refused: status class {cls} detail {det}");
        _expStatSn = rsp.U32(24) + 1;
        Tsih = BinaryPrimitives.ReadUInt16BigEndian(rsp.Bhs.AsSpan(14));
        return ParseKeys(rsp.Data);
    }

    /// <summary>Logs in: security stage (None or CHAP/MD5, optionally mutual), then operational negotiation.</summary>
    public void Login(LoginOptions o)
    {
        var first = new List<(string, string)> { ("InitiatorName", o.InitiatorName), ("SessionType", o.Discovery ? "Discovery" : "Normal") };
        if (!o.Discovery) first.Add(("TargetName", o.TargetName ?? throw new ArgumentException("TargetName")));
        Pdu rsp;
        if (o.ChapUser is null)
        {
            first.Add(("AuthMethod", "None"));
            LoginStep(true, 0, 1, o.Isid, first, out rsp);
        }
        else
        {
            first.Add(("AuthMethod", "CHAP"));
            var k = LoginStep(false, 0, 1, o.Isid, first, out rsp);
            if (!k.TryGetValue("AuthMethod", out var am) || am != "CHAP") throw new IOException("target did not select CHAP: " + string.Join(",", k));
            k = LoginStep(false, 0, 1, o.Isid, [("CHAP_A", "5")], out rsp);
            var id = byte.Parse(k["CHAP_I"]);
            var challenge = FromHex(k["CHAP_C"]);
            var resp = new List<(string, string)> { ("CHAP_N", o.ChapUser), ("CHAP_R", "0x" + Convert.ToHexString(ChapResponse(id, o.ChapSecret!, challenge))) };
            byte mutualId = 0; byte[] mutualChallenge = [];
            if (o.MutualSecret != null)
            {
                mutualId = (byte)Random.Shared.Next(256);
                mutualChallenge = RandomNumberGenerator.GetBytes(16);
                resp.Add(("CHAP_I", mutualId.ToString()));
                resp.Add(("CHAP_C", "0x" + Convert.ToHexString(mutualChallenge)));
            }
            k = LoginStep(true, 0, 1, o.Isid, resp, out rsp);
            if (o.MutualSecret != null)
            {
                if (!k.TryGetValue("CHAP_R", out var tr)) throw new IOException("target did not answer the mutual CHAP challenge");
                if (o.MutualUser != null && k.GetValueOrDefault("CHAP_N") != o.MutualUser) throw new IOException("target CHAP_N mismatch: " + k.GetValueOrDefault("CHAP_N"));
                if (!FromHex(tr).AsSpan().SequenceEqual(ChapResponse(mutualId, o.MutualSecret, mutualChallenge)))
                    throw new IOException("target failed mutual CHAP authentication");
            }
        }
        // The target may stay in the security stage for one more exchange before transiting.
        var guard = 0;
        while (!((rsp.Flags & 0x80) != 0 && (rsp.Flags & 3) == 1))
        {
            if (++guard > 4) throw new IOException("security stage does not end");
            LoginStep(true, 0, 1, o.Isid, [], out rsp);
        }

        var op = new List<(string, string)>
        {
            ("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", o.MaxRecvDataSegmentLength.ToString()),
            ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"), ("ErrorRecoveryLevel", "0"),
        };
        if (!o.Discovery)
            op.AddRange([("InitialR2T", "Yes"), ("ImmediateData", o.ImmediateData ? "Yes" : "No"), ("MaxBurstLength", "262144"),
                ("FirstBurstLength", "65536"), ("MaxOutstandingR2T", "1"), ("MaxConnections", "1"),
                ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes")]);
        var keys = LoginStep(true, 1, 3, o.Isid, op, out rsp);
        foreach (var (kk, vv) in keys) NegotiatedKeys[kk] = vv;
        guard = 0;
        while ((rsp.Flags & 0x80) == 0 || (rsp.Flags & 3) != 3)
        {
            if (++guard > 4) throw new IOException("operational stage does not end: " + string.Join(",", NegotiatedKeys));
            keys = LoginStep(true, 1, 3, o.Isid, [], out rsp);
            foreach (var (kk, vv) in keys) NegotiatedKeys[kk] = vv;
        }
        if (NegotiatedKeys.TryGetValue("MaxRecvDataSegmentLength", out var mrdsl)) TargetMaxRecvDsl = int.Parse(mrdsl);
        if (NegotiatedKeys.TryGetValue("FirstBurstLength", out var fb)) FirstBurst = Math.Min(65536, int.Parse(fb));
        if (NegotiatedKeys.TryGetValue("MaxBurstLength", out var mb)) MaxBurst = Math.Min(262144, int.Parse(mb));
        ImmediateData = o.ImmediateData && NegotiatedKeys.GetValueOrDefault("ImmediateData", "Yes") == "Yes";
        InitialR2T = true;
        _itt++;
    }

    static byte[] ChapResponse(byte id, string secret, byte[] challenge)
    {
        var input = new byte[1 + Encoding.UTF8.GetByteCount(secret) + challenge.Length];
        input[0] = id;
        Encoding.UTF8.GetBytes(secret, input.AsSpan(1));
        challenge.CopyTo(input, input.Length - challenge.Length);
        return MD5.HashData(input);
    }

    static byte[] FromHex(string v) =>
        v.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? Convert.FromHexString(v[2..])
        : v.StartsWith("0b", StringComparison.OrdinalIgnoreCase) ? Convert.FromBase64String(v[2..])
        : throw new FormatException("not a hex/base64 CHAP value: " + v);

    // ------------------------------------------------------------------ full feature phase

    /// <summary>SendTargets=All on a discovery (or normal) session; returns the response text pairs.</summary>
    public List<(string Key, string Value)> SendTargets()
    {
        var b = new byte[48];
        b[0] = OpTextReq | 0x40; b[1] = 0x80;
        var itt = _itt++;
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), 0xffffffff);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), _cmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(28), _expStatSn);
        Send(b, Encoding.ASCII.GetBytes("SendTargets=All\0"));
        var all = new List<byte>();
        while (true)
        {
            var p = NextFor(itt);
            if (p.Opcode != OpTextRsp) throw new IOException($"expected Text Response, got 0x{p.Opcode:X2}");
            all.AddRange(p.Data);
            if ((p.Flags & 0x80) != 0) break;
            throw new IOException("multi-PDU text responses are not supported by the test initiator");
        }
        return Encoding.ASCII.GetString(all.ToArray()).Split('\0', StringSplitOptions.RemoveEmptyEntries)
            .Select(kv => (kv[..kv.IndexOf('=')], kv[(kv.IndexOf('=') + 1)..])).ToList();
    }

    /// <summary>Reads the next PDU for this task, answering target NOP-In pings and skipping async events.</summary>
    Pdu NextFor(uint itt)
    {
        while (true)
        {
            var p = Receive();
            switch (p.Opcode)
            {
                case OpNopIn:
                    if (p.U32(20) != 0xffffffff) NopOut(p.U32(20), p.Bhs.AsSpan(8, 8).ToArray(), 0xffffffff, p.Data, immediate: true);
                    continue;
                case OpAsync: continue;
                case OpReject:
                    throw new IOException($"target sent Reject reason 0x{p.Bhs[2]:X2}");
            }
            if (p.Opcode != OpR2T && p.Opcode != OpDataIn && p.Opcode != OpScsiRsp && p.Opcode != OpTextRsp && p.Opcode != OpLogoutRsp)
                throw new IOException($"unexpected opcode 0x{p.Opcode:X2}");
            if (p.Itt != itt) throw new IOException($"PDU 0x{p.Opcode:X2} for ITT {p.Itt}, expected {itt}");
            var statSnField = p.Opcode == OpDataIn && (p.Flags & 0x01) == 0 ? (uint?)null : p.U32(24);
            if (statSnField is { } sn && p.Opcode != OpR2T) _expStatSn = sn + 1;
            return p;
        }
    }

    void NopOut(uint ttt, byte[] lun, uint itt, byte[] data, bool immediate)
    {
        var b = new byte[48];
        b[0] = (byte)(OpNopOut | (immediate ? 0x40 : 0)); b[1] = 0x80;
        lun.CopyTo(b, 8);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), ttt);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), _cmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(28), _expStatSn);
        Send(b, data);
    }

    /// <summary>A NOP-Out ping the target must answer with a NOP-In carrying the same data.</summary>
    public void Ping()
    {
        var itt = _itt++;
        var payload = Encoding.ASCII.GetBytes("ping");
        NopOut(0xffffffff, new byte[8], itt, payload, immediate: true);
        while (true)
        {
            var p = Receive();
            if (p.Opcode == OpNopIn && p.Itt == itt)
            {
                if (!p.Data.AsSpan().SequenceEqual(payload)) throw new IOException("NOP-In did not echo the ping data");
                return;
            }
            if (p.Opcode == OpNopIn && p.U32(20) != 0xffffffff) { NopOut(p.U32(20), p.Bhs.AsSpan(8, 8).ToArray(), 0xffffffff, p.Data, true); continue; }
            if (p.Opcode == OpAsync) continue;
            throw new IOException($"unexpected opcode 0x{p.Opcode:X2} while waiting for NOP-In");
        }
    }

    static byte[] LunField(int lun)
    {
        var l = new byte[8];
        if (lun < 256) l[1] = (byte)lun; else { l[0] = (byte)(0x40 | (lun >> 8)); l[1] = (byte)lun; }
        return l;
    }

    /// <summary>
    /// Executes one CDB. <paramref name="write"/> goes out as immediate data (up to FirstBurstLength) and then
    /// Data-Out answering each R2T; <paramref name="readLength"/> bytes are expected as Data-In.
    /// </summary>
    public ScsiResult Execute(int lun, ReadOnlySpan<byte> cdb, ReadOnlySpan<byte> write = default, int readLength = 0)
    {
        if (cdb.Length > 16) throw new ArgumentException("CDBs longer than 16 bytes need an AHS");
        var itt = _itt++;
        var b = new byte[48];
        b[0] = OpScsiCmd;
        b[1] = (byte)(0x80 | (readLength > 0 ? 0x40 : 0) | (write.Length > 0 ? 0x20 : 0) | 1 /* SIMPLE */);
        LunField(lun).CopyTo(b, 8);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), (uint)(write.Length > 0 ? write.Length : readLength));
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), _cmdSn++);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(28), _expStatSn);
        cdb.CopyTo(b.AsSpan(32));
        var immediate = ImmediateData ? Math.Min(write.Length, Math.Min(FirstBurst, TargetMaxRecvDsl)) : 0;
        if (immediate < write.Length && write.Length > 0 && immediate == 0 && !InitialR2T) throw new NotSupportedException();
        Send(b, write[..immediate]);

        var data = new byte[readLength];
        var dataIn = 0;
        var expDataSn = 0u;
        while (true)
        {
            var p = NextFor(itt);
            if (p.Opcode == OpR2T)
            {
                var ttt = p.U32(20); var off = (int)p.U32(40); var len = (int)p.U32(44);
                if (off < 0 || len <= 0 || off + len > write.Length) throw new IOException($"R2T outside the write: offset {off} length {len} of {write.Length}");
                uint dataSn = 0;
                for (var pos = off; pos < off + len;)
                {
                    var n = Math.Min(TargetMaxRecvDsl, off + len - pos);
                    var d = new byte[48];
                    d[0] = OpDataOut;
                    d[1] = (byte)(pos + n == off + len ? 0x80 : 0);
                    LunField(lun).CopyTo(d, 8);
                    BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(16), itt);
                    BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(20), ttt);
                    BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(28), _expStatSn);
                    BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(36), dataSn++);
                    BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(40), (uint)pos);
                    Send(d, write.Slice(pos, n));
                    pos += n;
                }
                continue;
            }
            if (p.Opcode == OpDataIn)
            {
                var off = (int)p.U32(40);
                if (p.U32(36) != expDataSn++) throw new IOException($"Data-In DataSN {p.U32(36)}, expected {expDataSn - 1}");
                if (off + p.Data.Length > readLength) throw new IOException($"Data-In past the buffer: offset {off} + {p.Data.Length} > {readLength}");
                p.Data.CopyTo(data, off);
                dataIn = Math.Max(dataIn, off + p.Data.Length);
                if ((p.Flags & 0x01) != 0)
                    return new ScsiResult(p.Bhs[3], data, dataIn, p.U32(44), (p.Flags & 0x02) != 0, (p.Flags & 0x04) != 0, null);
                continue;
            }
            if (p.Opcode == OpScsiRsp)
            {
                if (p.Bhs[2] != 0) throw new IOException($"SCSI Response with iSCSI response code 0x{p.Bhs[2]:X2}");
                Sense? sense = null;
                if (p.Data.Length >= 2)
                {
                    var sl = BinaryPrimitives.ReadUInt16BigEndian(p.Data);
                    sense = Sense.Parse(p.Data.AsSpan(2, Math.Min(sl, p.Data.Length - 2)));
                }
                return new ScsiResult(p.Bhs[3], data, dataIn, p.U32(44), (p.Flags & 0x02) != 0, (p.Flags & 0x04) != 0, sense);
            }
            throw new IOException($"unexpected opcode 0x{p.Opcode:X2}");
        }
    }

    // ------------------------------------------------------------------ SCSI helpers

    public static byte[] Cdb16(byte op, ulong lba, uint blocks, byte flags = 0)
    {
        var c = new byte[16];
        c[0] = op; c[1] = flags;
        BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), blocks);
        return c;
    }

    public static byte[] Cdb10(byte op, uint lba, ushort blocks, byte flags = 0)
    {
        var c = new byte[10];
        c[0] = op; c[1] = flags;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), blocks);
        return c;
    }

    public ScsiResult Read16(int lun, ulong lba, uint blocks, int blockSize) => Execute(lun, Cdb16(0x88, lba, blocks), readLength: (int)blocks * blockSize);
    public ScsiResult Read10(int lun, uint lba, ushort blocks, int blockSize) => Execute(lun, Cdb10(0x28, lba, blocks), readLength: blocks * blockSize);
    public ScsiResult Write16(int lun, ulong lba, ReadOnlySpan<byte> data, int blockSize, bool fua = false) =>
        Execute(lun, Cdb16(0x8a, lba, (uint)(data.Length / blockSize), (byte)(fua ? 0x08 : 0)), data);
    public ScsiResult Write10(int lun, uint lba, ReadOnlySpan<byte> data, int blockSize, bool fua = false) =>
        Execute(lun, Cdb10(0x2a, lba, (ushort)(data.Length / blockSize), (byte)(fua ? 0x08 : 0)), data);
    public ScsiResult SynchronizeCache(int lun) => Execute(lun, Cdb10(0x35, 0, 0));
    public ScsiResult TestUnitReady(int lun) => Execute(lun, new byte[6]);

    /// <summary>UNMAP one range (SBC-3 parameter list: 8-byte header + 16-byte descriptor).</summary>
    public ScsiResult Unmap(int lun, ulong lba, uint blocks)
    {
        var p = new byte[24];
        BinaryPrimitives.WriteUInt16BigEndian(p, 22);
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(2), 16);
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), lba);
        BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(16), blocks);
        var c = new byte[10];
        c[0] = 0x42;
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), 24);
        return Execute(lun, c, p);
    }

    /// <summary>READ CAPACITY(16): (last LBA + 1, block size).</summary>
    public (ulong Blocks, int BlockSize) ReadCapacity(int lun)
    {
        var c = new byte[16];
        c[0] = 0x9e; c[1] = 0x10;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), 32);
        var r = Execute(lun, c, readLength: 32);
        if (!r.Good) throw new IOException("READ CAPACITY(16) failed: " + r);
        return (BinaryPrimitives.ReadUInt64BigEndian(r.Data) + 1, (int)BinaryPrimitives.ReadUInt32BigEndian(r.Data.AsSpan(8)));
    }

    /// <summary>Clears the power-on/reset unit attention a new nexus may see first.</summary>
    public void ClearUnitAttention(int lun)
    {
        for (var i = 0; i < 5; i++)
            if (TestUnitReady(lun).Good) return;
        throw new IOException("TEST UNIT READY keeps failing");
    }

    public void Logout()
    {
        var b = new byte[48];
        b[0] = OpLogoutReq | 0x40; b[1] = 0x80;
        var itt = _itt++;
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), itt);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), _cmdSn);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(28), _expStatSn);
        Send(b, default);
        var p = NextFor(itt);
        if (p.Opcode != OpLogoutRsp || p.Bhs[2] != 0) throw new IOException($"logout failed: opcode 0x{p.Opcode:X2} response {p.Bhs[2]}");
    }

    public void Dispose()
    {
        _s.Dispose();
        _tcp.Dispose();
    }
}
