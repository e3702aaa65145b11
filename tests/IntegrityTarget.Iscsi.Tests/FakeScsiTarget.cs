using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using IntegrityTarget.Scsi;

namespace IntegrityTarget.Iscsi.Tests;

/// <summary>
/// A minimal in-memory SCSI target for driving the iSCSI layer: INQUIRY, REPORT LUNS, TEST UNIT READY,
/// READ CAPACITY 10/16, READ/WRITE 6/10/12/16, REQUEST SENSE, MODE SENSE, SYNCHRONIZE CACHE.
/// Tests can hold commands at a gate to observe aborts.
/// </summary>
public sealed class FakeScsiTarget : IScsiTarget
{
    public const int BlockSize = 512;
    private readonly Dictionary<ulong, byte[]> _disks = [];

    public FakeScsiTarget(int luns = 1, int blocks = 2048)
    {
        for (ulong i = 0; i < (ulong)luns; i++) _disks[i] = new byte[blocks * BlockSize];
        Luns = _disks.Keys.ToList();
    }

    public IReadOnlyList<ulong> Luns { get; }
    public ConcurrentQueue<ScsiCommand> Executed { get; } = new();
    public ConcurrentQueue<string> Events { get; } = new();
    /// <summary>When set, commands wait here (honouring cancellation) before touching the disk.</summary>
    public TaskCompletionSource? Gate { get; set; }
    public int Running;
    /// <summary>Set when a command touched the disk after it had been cancelled (must never happen).</summary>
    public bool TouchedAfterCancel;
    public event Action<ulong, IReadOnlyCollection<string>>? AbortTasksRequested;

    /// <summary>
    /// When set, read data is handed out in buffers that are overwritten with <see cref="Poison"/> as soon as
    /// the response is disposed and then reused for the next read, as the real logical unit reuses its pooled
    /// buffers (without it, read data points into the disk array and nothing is ever reused): a byte sent after
    /// its response was disposed arrives as the poison or as another read's data.
    /// </summary>
    public bool ReuseReadBuffers { get; set; }
    public const byte Poison = 0xEE;
    private readonly ConcurrentStack<byte[]> _readBuffers = new();
    /// <summary>Read buffers handed out and not disposed yet.</summary>
    public int ReadBuffersOut;

    public byte[] Disk(ulong lun) => _disks[lun];

    public void RaiseAbort(ulong lun, IReadOnlyCollection<string> ports) => AbortTasksRequested?.Invoke(lun, ports);

    public void NexusCreated(ItNexus nexus) => Events.Enqueue("created " + nexus.InitiatorPortName);
    public void NexusLost(ItNexus nexus) => Events.Enqueue("lost " + nexus.InitiatorPortName);
    public void LogicalUnitReset(ulong lun, ItNexus nexus) => Events.Enqueue($"lunreset {lun}");
    public void TargetReset(ItNexus nexus) => Events.Enqueue("targetreset");

    public async ValueTask<ScsiResponse> ExecuteAsync(ScsiCommand command, CancellationToken ct)
    {
        Executed.Enqueue(command);
        Interlocked.Increment(ref Running);
        try
        {
            if (Gate is { } gate)
            {
                try { await gate.Task.WaitAsync(ct); }
                catch (OperationCanceledException) { return new ScsiResponse { Status = ScsiStatus.TaskAborted }; }
            }
            var r = Execute(command);
            if (ct.IsCancellationRequested && command.Direction == DataDirection.Write) TouchedAfterCancel = true;
            return r;
        }
        finally { Interlocked.Decrement(ref Running); }
    }

    private static ScsiResponse Check(byte key, byte asc, byte ascq = 0)
    {
        var sense = new byte[18];
        sense[0] = 0x70; sense[2] = key; sense[7] = 10; sense[12] = asc; sense[13] = ascq;
        return new ScsiResponse { Status = ScsiStatus.CheckCondition, Sense = sense };
    }

    private static ScsiResponse Data(byte[] data, uint alloc)
    {
        int n = (int)Math.Min((uint)data.Length, alloc);
        return new ScsiResponse { DataIn = data.AsMemory(0, n), TransferLength = n };
    }

    private ScsiResponse Execute(ScsiCommand c)
    {
        var cdb = c.Cdb.Span;
        if (!_disks.TryGetValue(c.Lun, out var disk))
        {
            if (cdb[0] == 0x12) { var inq = new byte[36]; inq[0] = 0x7f; return Data(inq, BinaryPrimitives.ReadUInt16BigEndian(cdb[3..])); }
            if (cdb[0] != 0xa0) return Check(0x05, 0x25);
        }
        ulong blocks = disk is null ? 0 : (ulong)(disk.Length / BlockSize);
        switch (cdb[0])
        {
            case 0x00: return new ScsiResponse();
            case 0x03: { var s = new byte[18]; s[0] = 0x70; s[7] = 10; return Data(s, cdb[4]); }
            case 0x12:
            {
                uint alloc = BinaryPrimitives.ReadUInt16BigEndian(cdb[3..]);
                if ((cdb[1] & 1) != 0)
                {
                    return cdb[2] switch
                    {
                        0x00 => Data([0, 0, 0, 3, 0x00, 0x80, 0x83], alloc),
                        0x80 => Data([0, 0x80, 0, 4, (byte)'S', (byte)'N', (byte)'0', (byte)('0' + (int)c.Lun)], alloc),
                        0x83 => Data([0, 0x83, 0, 12, 0x01, 0x03, 0, 8, 0x60, 0x01, 0x40, 0x50, 0, 0, 0, (byte)c.Lun], alloc),
                        _ => Check(0x05, 0x24),
                    };
                }
                var d = new byte[36];
                d[2] = 0x06; d[3] = 0x02; d[4] = 31; d[7] = 0x02;
                "FAKE    "u8.CopyTo(d.AsSpan(8));
                "IN-MEMORY DISK  "u8.CopyTo(d.AsSpan(16));
                "0001"u8.CopyTo(d.AsSpan(32));
                return Data(d, alloc);
            }
            case 0x25:
            {
                var d = new byte[8];
                BinaryPrimitives.WriteUInt32BigEndian(d, (uint)(blocks - 1));
                BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(4), BlockSize);
                return Data(d, 8);
            }
            case 0x9e when (cdb[1] & 0x1f) == 0x10:
            {
                var d = new byte[32];
                BinaryPrimitives.WriteUInt64BigEndian(d, blocks - 1);
                BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(8), BlockSize);
                return Data(d, BinaryPrimitives.ReadUInt32BigEndian(cdb[10..]));
            }
            case 0xa0:
            {
                var d = new byte[8 + 8 * Luns.Count];
                BinaryPrimitives.WriteUInt32BigEndian(d, (uint)(8 * Luns.Count));
                for (int i = 0; i < Luns.Count; i++) BinaryPrimitives.WriteUInt64BigEndian(d.AsSpan(8 + 8 * i), Luns[i] << 48);
                return Data(d, BinaryPrimitives.ReadUInt32BigEndian(cdb[6..]));
            }
            case 0x1a:
            {
                var d = new byte[4]; d[0] = 3;
                return Data(d, cdb[4]);
            }
            case 0x5a:
            {
                var d = new byte[8]; d[1] = 6;
                return Data(d, BinaryPrimitives.ReadUInt16BigEndian(cdb[7..]));
            }
            case 0x35: case 0x91: return new ScsiResponse();
            case 0x08: case 0x28: case 0xa8: case 0x88:
            case 0x0a: case 0x2a: case 0xaa: case 0x8a:
            {
                var (lba, count) = DecodeRw(cdb);
                if (lba >= blocks || count > blocks - lba) return Check(0x05, 0x21);
                long bytes = (long)count * BlockSize;
                bool isWrite = cdb[0] is 0x0a or 0x2a or 0xaa or 0x8a;
                if (isWrite)
                {
                    int have = (int)Math.Min(bytes, c.DataOut.Length);
                    c.DataOut.Span[..have].CopyTo(disk.AsSpan((int)(lba * BlockSize)));
                    return new ScsiResponse { TransferLength = bytes };
                }
                if (ReuseReadBuffers)
                {
                    var owner = new PoisonedOnReturn(this, (int)bytes);
                    disk.AsSpan((int)(lba * BlockSize), (int)bytes).CopyTo(owner.Memory.Span);
                    return new ScsiResponse(owner) { DataIn = owner.Memory, TransferLength = bytes };
                }
                return new ScsiResponse { DataIn = disk.AsMemory((int)(lba * BlockSize), (int)bytes), TransferLength = bytes };
            }
            default:
                return Check(0x05, 0x20);
        }
    }

    private static (ulong Lba, uint Count) DecodeRw(ReadOnlySpan<byte> cdb) => cdb[0] switch
    {
        0x08 or 0x0a => ((ulong)(((cdb[1] & 0x1f) << 16) | (cdb[2] << 8) | cdb[3]), cdb[4] == 0 ? 256u : cdb[4]),
        0x28 or 0x2a => (BinaryPrimitives.ReadUInt32BigEndian(cdb[2..]), BinaryPrimitives.ReadUInt16BigEndian(cdb[7..])),
        0xa8 or 0xaa => (BinaryPrimitives.ReadUInt32BigEndian(cdb[2..]), BinaryPrimitives.ReadUInt32BigEndian(cdb[6..])),
        _ => (BinaryPrimitives.ReadUInt64BigEndian(cdb[2..]), BinaryPrimitives.ReadUInt32BigEndian(cdb[10..])),
    };

    private sealed class PoisonedOnReturn : IMemoryOwner<byte>
    {
        private readonly FakeScsiTarget _owner;
        private byte[]? _array;
        private readonly int _length;

        public PoisonedOnReturn(FakeScsiTarget owner, int length)
        {
            _owner = owner;
            _length = length;
            if (!owner._readBuffers.TryPop(out _array) || _array.Length < length) _array = new byte[Math.Max(length, 1 << 20)];
            Interlocked.Increment(ref owner.ReadBuffersOut);
        }

        public Memory<byte> Memory => _array is { } a ? a.AsMemory(0, _length) : throw new ObjectDisposedException(nameof(PoisonedOnReturn));

        public void Dispose()
        {
            var a = Interlocked.Exchange(ref _array, null);
            if (a is null) return;
            a.AsSpan().Fill(Poison);
            Interlocked.Decrement(ref _owner.ReadBuffersOut);
            _owner._readBuffers.Push(a);
        }
    }
}
