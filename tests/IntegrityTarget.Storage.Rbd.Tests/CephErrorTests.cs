using IntegrityTarget.Integrity;
using IntegrityTarget.Storage;
using IntegrityTarget.Storage.Rbd;

namespace IntegrityTarget.Storage.Rbd.Tests;

/// <summary>The errno → message table and how its exceptions reach volume results. No cluster needed.</summary>
public class CephErrorTests
{
    static readonly int[] Known =
    [
        CephError.EPERM, CephError.ENOENT, CephError.EIO, CephError.EAGAIN, CephError.EACCES, CephError.EBUSY, CephError.EEXIST,
        CephError.EINVAL, CephError.EFBIG, CephError.ENOSPC, CephError.EROFS, CephError.ERANGE, CephError.ENOSYS, CephError.EOPNOTSUPP,
        CephError.ENOTCONN, CephError.EBLOCKLISTED, CephError.ETIMEDOUT, CephError.ECONNREFUSED, CephError.EDQUOT, CephError.ECANCELED,
    ];

    [Test]
    public void Every_known_code_for_every_operation_names_the_subject_the_operation_and_the_symbol()
    {
        foreach (var op in Enum.GetValues<CephOperation>())
        foreach (var errno in Known)
        {
            var m = CephError.Describe(op, -errno, "rbd/vm1");
            Assert.That(m, Does.Contain("rbd/vm1").Or.Contain("client"), $"{op} {errno}: {m}");
            Assert.That(m, Does.Contain($": {CephError.Symbol(errno)}]"), $"{op} {errno}: {m}");
            Assert.That(m, Does.Not.Contain("Unknown error").IgnoreCase, $"{op} {errno}: {m}");
        }
    }

    [Test]
    public void An_unknown_code_still_gets_a_message_without_unknown_error()
    {
        var m = CephError.Describe(CephOperation.Write, -4095, "rbd:rbd/vm1: write of 4096 bytes at offset 0");
        Assert.That(m, Does.Contain("4095").And.Contain("rbd/vm1").And.Not.Contain("Unknown error"));
    }

    [Test]
    public void Enoent_means_a_missing_keyring_pool_or_image_depending_on_the_call()
    {
        Assert.That(CephError.Describe(CephOperation.Connect, -2, "client.iscsi"), Does.Contain("no keyring for client.iscsi"));
        Assert.That(CephError.Describe(CephOperation.OpenPool, -2, "fastpool"), Does.Contain("pool 'fastpool' does not exist"));
        Assert.That(CephError.Describe(CephOperation.OpenImage, -2, "rbd/vm1"), Does.Contain("image rbd/vm1 does not exist").And.Contain("--size"));
    }

    [Test]
    public void Timeouts_name_the_limit_and_the_setting()
    {
        var io = CephError.Describe(CephOperation.Write, -CephError.ETIMEDOUT, "rbd:rbd/vm1", 17);
        Assert.That(io, Does.Contain("17 s").And.Contain("rados_osd_op_timeout"));
        var mon = CephError.Describe(CephOperation.Connect, -CephError.ETIMEDOUT, "client.admin", 5);
        Assert.That(mon, Does.Contain("5 s").And.Contain("mon_host"));
    }

    [Test]
    public void Blocklisting_and_auth_failures_say_what_happened()
    {
        Assert.That(CephError.Describe(CephOperation.Write, -108, "rbd:rbd/vm1"), Does.Contain("blocklisted").And.Contain("EBLOCKLISTED"));
        Assert.That(CephError.Describe(CephOperation.Connect, -CephError.EACCES, "client.iscsi"), Does.Contain("authentication of client.iscsi failed"));
        Assert.That(CephError.Describe(CephOperation.Write, -CephError.EPERM, "rbd:rbd/vm1"), Does.Contain("profile rbd"));
    }

    [Test]
    public void The_exception_carries_the_errno_as_its_hresult()
    {
        var e = CephError.Fail(CephOperation.Write, -CephError.ENOSPC, "rbd:rbd/vm1");
        Assert.That((e.Errno, e.HResult, e.Operation), Is.EqualTo((CephError.ENOSPC, CephError.ENOSPC, CephOperation.Write)));
        Assert.That(e, Is.InstanceOf<IOException>());
        Assert.Throws<RbdException>(() => CephError.Check(-CephError.EIO, CephOperation.Read, "x"));
        Assert.That(CephError.Check(4096, CephOperation.Read, "x"), Is.EqualTo(4096));
    }

    [TestCase(CephError.ENOSPC, VolumeStatus.NoSpace)]
    [TestCase(CephError.ETIMEDOUT, VolumeStatus.IoError)]
    [TestCase(CephError.EBLOCKLISTED, VolumeStatus.IoError)]
    [TestCase(CephError.EIO, VolumeStatus.IoError)]
    public async Task A_failed_rbd_write_becomes_the_right_volume_result_in_both_volumes(int errno, VolumeStatus expected)
    {
        var plainDevice = new FailingDevice(new MemoryBlockDevice(1 << 20, "plain"));
        await using var plain = new PlainVolume(plainDevice, 512);
        plainDevice.FailWith = errno;
        var r = await plain.WriteAsync(8, new byte[512], fua: false);
        Assert.That(r.Status, Is.EqualTo(expected), r.Detail);
        Assert.That(r.Detail, Does.Contain(CephError.Symbol(errno)));

        var intDevice = new FailingDevice(new MemoryBlockDevice(IntegrityVolume.DeviceBytesFor(2048, 512, TagAlgorithm.Crc32c), "integrity"));
        await using var volume = await IntegrityVolume.FormatAsync(intDevice, new FormatOptions { BlockSize = 512 }, Serilog.Core.Logger.None);
        intDevice.FailWith = errno;
        // A whole-chunk write goes to a fresh slot: its device write fails and only that command fails.
        var w = await volume.WriteAsync(0, new byte[128 * 1024], fua: false);
        Assert.That(w.Status, Is.EqualTo(expected), w.Detail);
        Assert.That(w.Detail, Does.Contain(CephError.Symbol(errno)));
    }

    /// <summary>Passes through until told to fail writes with an RBD error, as an RBD device would report it.</summary>
    sealed class FailingDevice(IBlockDevice inner) : IBlockDevice
    {
        public int FailWith;
        public string Name => inner.Name;
        public long Length => inner.Length;
        public int SectorSize => inner.SectorSize;
        public int PreferredWriteUnit => inner.PreferredWriteUnit;
        public bool CanDeallocate => inner.CanDeallocate;
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken ct = default) => inner.ReadAsync(offset, buffer, ct);
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) =>
            FailWith != 0 ? ValueTask.FromException(CephError.Fail(CephOperation.Write, -FailWith, $"rbd:rbd/test: write at {offset}")) : inner.WriteAsync(offset, data, fua, ct);
        public ValueTask FlushAsync(CancellationToken ct = default) => inner.FlushAsync(ct);
        public ValueTask DiscardAsync(long offset, long length, CancellationToken ct = default) => inner.DiscardAsync(offset, length, ct);
        public (bool Allocated, long Length) GetAllocation(long offset) => inner.GetAllocation(offset);
        public void Dispose() => inner.Dispose();
    }
}
