using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using IntegrityTarget.Scsi;
using IntegrityTarget.Storage;

using Serilog;

namespace IntegrityTarget.Ha.Tests;

/// <summary>One gateway in the test process: its coordinator, its HA logical unit for LUN 0, and the target that routes to it.</summary>
internal sealed class Gateway : IAsyncDisposable
{
    public const string Iqn = "iqn.2026-11.test:ha";
    public HaCoordinator Coordinator = null!;
    public HaLogicalUnit Lun = null!;
    public ScsiTarget Target = null!;
    public ushort Group;
    public string Name = "";
    public int VolumeOpens;

    public ItNexus Nexus(string initiator, ulong isid = 1)
    {
        var port = $"{initiator},i,0x{isid:x12}";
        var tid = new byte[(4 + port.Length + 1 + 3) & ~3];
        tid[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(tid.AsSpan(2), (ushort)(tid.Length - 4));
        Encoding.ASCII.GetBytes(port, tid.AsSpan(4));
        return new ItNexus(initiator, port, $"{Iqn},t,0x{Group:x4}", Group, tid);
    }

    public ScsiResponse Exec(ItNexus n, byte[] cdb, byte[]? dataOut = null) =>
        Target.ExecuteAsync(new ScsiCommand
        {
            Nexus = n, Lun = 0, Cdb = cdb, DataOut = dataOut ?? ReadOnlyMemory<byte>.Empty,
            ExpectedTransferLength = (uint)(dataOut?.Length ?? 0), Direction = dataOut != null ? DataDirection.Write : DataDirection.Read,
        }, CancellationToken.None).AsTask().GetAwaiter().GetResult();

    /// <summary>Runs a command until no unit attention is left in the way; returns the first real answer.</summary>
    public ScsiResponse ExecPastUnitAttentions(ItNexus n, byte[] cdb, byte[]? dataOut = null)
    {
        for (int i = 0; ; i++)
        {
            var r = Exec(n, cdb, dataOut);
            if (i < 8 && r.Status == ScsiStatus.CheckCondition && Sense(r).Key == 6) { r.Dispose(); continue; }
            return r;
        }
    }

    public static (byte Key, byte Asc, byte Ascq) Sense(ScsiResponse r)
    {
        var s = r.Sense.Span;
        if (s.Length == 0) return (0, 0, 0);
        return (s[0] & 0x7F) == 0x72 ? ((byte)(s[1] & 0xF), s[2], s[3]) : ((byte)(s[2] & 0xF), s[12], s[13]);
    }

    public async Task WaitForRoleAsync(HaRole role, TimeSpan? timeout = null)
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnChange(HaLogicalUnit lu) { if (lu.Role == role) tcs.TrySetResult(); }
        Lun.RoleChanged += OnChange;
        try
        {
            if (Lun.Role == role) return;
            var done = await Task.WhenAny(tcs.Task, Task.Delay(timeout ?? TimeSpan.FromSeconds(15)));
            Assert.That(done, Is.SameAs(tcs.Task), $"{Name} did not become {role} (it is {Lun.Role})");
        }
        finally { Lun.RoleChanged -= OnChange; }
    }

    public ValueTask DisposeAsync() => Coordinator.DisposeAsync();
}

/// <summary>Two (or more) gateways on loopback over one shared store, with short timeouts.</summary>
internal static class Gateways
{
    public const int BlockSize = 512;
    public static readonly byte[] Secret = Encoding.UTF8.GetBytes("sixteen+ chars secret");

    /// <summary>HA_TEST_LOG=1 shows the gateways' log on the console (for a failing test).</summary>
    public static readonly Serilog.ILogger Log = Environment.GetEnvironmentVariable("HA_TEST_LOG") == "1"
        ? new Serilog.LoggerConfiguration().MinimumLevel.Debug().WriteTo.Console().CreateLogger()
        : Serilog.Core.Logger.None;

    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int p = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return p;
    }

    public static List<GatewayInfo> Layout(int count) =>
        Enumerable.Range(1, count).Select(i => new GatewayInfo($"gw{i}", (ushort)i, new IPEndPoint(IPAddress.Loopback, FreePort()))).ToList();

    public static HaOptions Options(IReadOnlyList<GatewayInfo> gws, string self, AluaState nonOwner, byte[]? secret = null, TimeSpan? peerTimeout = null) => new()
    {
        Self = self, Gateways = gws, NonOwnerState = nonOwner, Secret = secret ?? Secret,
        LockRetryInterval = TimeSpan.FromMilliseconds(50), HeartbeatInterval = TimeSpan.FromMilliseconds(100),
        PeerTimeout = peerTimeout ?? TimeSpan.FromSeconds(1), ReconnectInterval = TimeSpan.FromMilliseconds(100),
    };

    public static async Task<Gateway> StartAsync(SharedStore store, IReadOnlyList<GatewayInfo> gws, string self,
        AluaState nonOwner = AluaState.Standby, byte[]? secret = null, byte[]? fingerprint = null, IDurableRecord? reservations = null,
        bool targetAfterStart = false, TimeSpan? peerTimeout = null)
    {
        var g = new Gateway { Name = self, Group = gws.First(x => x.Name == self).PortGroup };
        var options = Options(gws, self, nonOwner, secret, peerTimeout);
        g.Coordinator = new HaCoordinator(options, fingerprint ?? HaCoordinator.FingerprintOf("same config"), Log);
        g.Lun = g.Coordinator.AddLun(new HaLunSpec
        {
            TargetIqn = Gateway.Iqn,
            Lun = 0,
            Lock = store.LockFor(self),
            OpenVolume = (device, ct) => { Interlocked.Increment(ref g.VolumeOpens); return ValueTask.FromResult<IBlockVolume>(new PlainVolume(device, BlockSize, "lun0", ownsDevice: false)); },
            ProbeGeometry = d => (BlockSize, (ulong)(d.Length / BlockSize), false),
            CreateUnit = (volume, device, states) => new ScsiLogicalUnit(0, volume, new LogicalUnitOptions
            {
                Serial = "HA0001", IdentitySeed = $"{Gateway.Iqn}/0", PortGroups = options.PortGroups, InitialAccessStates = states,
                ReservationStore = device != null ? reservations : null, ReservationsSurviveFailover = true,
            }, Serilog.Core.Logger.None),
        });
        // The host starts the coordinator (which may take the LUN at once) before it builds the targets.
        if (!targetAfterStart) g.Target = new ScsiTarget(Gateway.Iqn, [g.Lun], Serilog.Core.Logger.None);
        await g.Coordinator.StartAsync(CancellationToken.None);
        if (targetAfterStart)
        {
            await g.WaitForRoleAsync(HaRole.Owner);
            g.Target = new ScsiTarget(Gateway.Iqn, [g.Lun], Serilog.Core.Logger.None);
        }
        return g;
    }

    public static byte[] Write10(uint lba, ushort blocks) { var c = new byte[10]; c[0] = 0x2A; BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(2), lba); BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), blocks); return c; }
    public static byte[] Read10(uint lba, ushort blocks) { var c = new byte[10]; c[0] = 0x28; BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(2), lba); BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), blocks); return c; }
    public static byte[] Rtpg() => [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
    public static byte[] Pattern(byte seed) { var b = new byte[BlockSize]; for (int i = 0; i < b.Length; i++) b[i] = (byte)(seed + i); return b; }

    /// <summary>(group id, state) pairs of an RTPG answer.</summary>
    public static List<(ushort, AluaState)> ParseRtpg(ReadOnlySpan<byte> d)
    {
        var r = new List<(ushort, AluaState)>();
        int len = (int)BinaryPrimitives.ReadUInt32BigEndian(d) + 4;
        for (int pos = 4; pos < len; pos += 8 + 4 * d[pos + 7]) r.Add((BinaryPrimitives.ReadUInt16BigEndian(d[(pos + 2)..]), (AluaState)(d[pos] & 0xF)));
        return r;
    }
}
