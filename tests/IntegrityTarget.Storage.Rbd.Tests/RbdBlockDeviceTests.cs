using System.Diagnostics;
using IntegrityTarget.Integrity;
using IntegrityTarget.Storage.Rbd;

namespace IntegrityTarget.Storage.Rbd.Tests;

/// <summary>The RBD device against a real (ceph-mini) cluster: data path, durability calls, grow, watch, errors.</summary>
[TestFixture, Category("Ceph")]
public class RbdBlockDeviceTests
{
    const long Size = 64L << 20;
    RbdImageSpec _spec = null!;

    [SetUp] public void Create() => _spec = Cluster.NewImage("dev", Size);
    [TearDown] public void Remove() { if (_spec != null) Cluster.Remove(_spec); }

    static RbdBlockDevice Open(RbdImageSpec spec, bool readOnly = false) =>
        RbdClient.Connect(Cluster.Options).OpenImage(spec, readOnly, ownsClient: true);

    static byte[] Random(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Test]
    public async Task Writes_read_back_across_object_boundaries_and_a_new_image_reads_zeros()
    {
        using var dev = Open(_spec);
        Assert.That((dev.Length, dev.Name, dev.CanGrow, dev.CanDeallocate), Is.EqualTo((Size, _spec.ToString(), true, true)));
        var zeros = new byte[8192];
        await dev.ReadAsync(Size - 8192, zeros);
        Assert.That(zeros, Is.All.EqualTo((byte)0));

        // 4 MiB objects: this write spans the boundary between the first two.
        var data = Random(3 << 20, 1);
        long at = (4L << 20) - (1 << 20) - 512;
        await dev.WriteAsync(at, data, fua: true);
        var back = new byte[data.Length];
        await dev.ReadAsync(at, back);
        Assert.That(back, Is.EqualTo(data));
        await dev.ReadAsync(at, Memory<byte>.Empty); // zero-length: no request (librbd would assert)
    }

    [Test]
    public async Task Hundreds_of_concurrent_requests_complete_with_their_own_data()
    {
        using var dev = Open(_spec);
        const int N = 512, Bs = 4096;
        var blocks = Enumerable.Range(0, N).Select(i => Random(Bs, 100 + i)).ToArray();
        await Task.WhenAll(Enumerable.Range(0, N).Select(i => dev.WriteAsync((long)i * 3 * Bs, blocks[i], fua: false).AsTask()));
        await dev.FlushAsync();
        var reads = Enumerable.Range(0, N).Select(_ => new byte[Bs]).ToArray();
        await Task.WhenAll(Enumerable.Range(0, N).Select(i => dev.ReadAsync((long)i * 3 * Bs, reads[i]).AsTask()));
        for (int i = 0; i < N; i++) Assert.That(reads[i], Is.EqualTo(blocks[i]), $"block {i}");
    }

    [Test]
    public async Task Gather_writes_and_scatter_reads_put_their_parts_back_to_back_across_an_object_boundary()
    {
        using var dev = Open(_spec);
        // Data and a small trailer (as a slot's piece and its tags), spanning the first two 4 MiB objects.
        var piece = Random(128 << 10, 3);
        var tags = Random(1024, 4);
        var third = Random(512, 5);
        long at = (4L << 20) - (64 << 10);
        await dev.WriteGatherAsync(at, [piece, tags, third], fua: false);
        await dev.FlushAsync();
        var whole = new byte[piece.Length + tags.Length + third.Length];
        await dev.ReadAsync(at, whole);
        Assert.That(whole, Is.EqualTo(piece.Concat(tags).Concat(third).ToArray()), "the parts are written back to back");

        var p1 = new byte[piece.Length];
        var p2 = new byte[tags.Length + third.Length];
        await dev.ReadScatterAsync(at, [p1, p2.AsMemory(0, 700), p2.AsMemory(700)]);
        Assert.That((p1, p2), Is.EqualTo((piece, tags.Concat(third).ToArray())), "a scatter read fills the parts in order");

        // FUA (passed through as a flag, which rbd_aio_writev cannot carry) and a single part take the other paths.
        var fua = Random(8192, 6);
        await dev.WriteGatherAsync(4096, [fua.AsMemory(0, 4096), fua.AsMemory(4096)], fua: true);
        await dev.WriteGatherAsync(0, [fua.AsMemory(0, 4096)], fua: false);
        var back = new byte[12288];
        await dev.ReadScatterAsync(0, [back]);
        Assert.That(back, Is.EqualTo(fua.AsSpan(0, 4096).ToArray().Concat(fua).ToArray()));
    }

    [Test]
    public async Task Concurrent_vectored_requests_and_ones_of_more_parts_than_librbd_takes_at_once_complete_with_their_own_data()
    {
        using var dev = Open(_spec);
        const int N = 64, Bs = 4096;
        var blocks = Enumerable.Range(0, N).Select(i => Random(2 * Bs, 200 + i)).ToArray();
        await Task.WhenAll(Enumerable.Range(0, N).Select(i =>
            dev.WriteGatherAsync((long)i * 4 * Bs, [blocks[i].AsMemory(0, Bs), blocks[i].AsMemory(Bs, 512), blocks[i].AsMemory(Bs + 512)], fua: false).AsTask()));
        var reads = Enumerable.Range(0, N).Select(_ => new byte[2 * Bs]).ToArray();
        await Task.WhenAll(Enumerable.Range(0, N).Select(i =>
            dev.ReadScatterAsync((long)i * 4 * Bs, [reads[i].AsMemory(0, 512), reads[i].AsMemory(512)]).AsTask()));
        for (int i = 0; i < N; i++) Assert.That(reads[i], Is.EqualTo(blocks[i]), $"request {i}");

        // 3000 sectors as 3000 parts: more than IOV_MAX (1024), so sent in groups, still back to back.
        var many = Random(3000 * 512, 7);
        long at = 8L << 20;
        await dev.WriteGatherAsync(at, Enumerable.Range(0, 3000).Select(i => (ReadOnlyMemory<byte>)many.AsMemory(i * 512, 512)).ToArray(), fua: false);
        var scattered = new byte[many.Length];
        await dev.ReadScatterAsync(at, Enumerable.Range(0, 3000).Select(i => scattered.AsMemory(i * 512, 512)).ToList());
        Assert.That(scattered, Is.EqualTo(many));
    }

    [Test]
    public async Task Discard_makes_partial_and_whole_object_ranges_read_as_zeros()
    {
        using var dev = Open(_spec);
        await dev.WriteAsync(0, Random(12 << 20, 2), fua: false);
        // Partial ranges (librbd's discard could skip these) and a whole 4 MiB object.
        await dev.DiscardAsync(512, 1536);
        await dev.DiscardAsync((4L << 20) - 4096, (4L << 20) + 8192);
        var b = new byte[12 << 20];
        await dev.ReadAsync(0, b);
        Assert.That(b.AsSpan(512, 1536).ContainsAnyExcept((byte)0), Is.False, "partial discard reads zeros");
        Assert.That(b.AsSpan((4 << 20) - 4096, (4 << 20) + 8192).ContainsAnyExcept((byte)0), Is.False, "object-spanning discard reads zeros");
        Assert.That(b.AsSpan(0, 512).ContainsAnyExcept((byte)0), Is.True, "bytes before it are kept");
        Assert.That(b.AsSpan(2048, 512).ContainsAnyExcept((byte)0), Is.True, "bytes after it are kept");
    }

    [Test]
    public async Task Grow_resizes_the_image_and_the_new_range_reads_zeros()
    {
        using var dev = Open(_spec);
        await dev.GrowAsync(Size + (8 << 20));
        Assert.That(dev.Length, Is.EqualTo(Size + (8 << 20)));
        Assert.That(Cluster.Rbd("info", _spec.Display), Does.Contain("72 MiB"));
        var tail = new byte[1 << 20];
        await dev.ReadAsync(Size + (7 << 20), tail);
        Assert.That(tail, Is.All.EqualTo((byte)0));
        Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await dev.GrowAsync(Size));
    }

    [Test]
    public void A_resize_by_someone_else_is_noticed_through_the_header_watch()
    {
        using var dev = Open(_spec);
        var seen = new TaskCompletionSource<(long, long)>(TaskCreationOptions.RunContinuationsAsynchronously);
        dev.ResizedExternally += (o, n) => seen.TrySetResult((o, n));
        // The rbd command asks the lock owner (this gateway) to do the resize; the header update comes back here.
        Cluster.Rbd("resize", "--size", "80M", _spec.Display);
        Assert.That(seen.Task.Wait(TimeSpan.FromSeconds(30)), Is.True, "the watch callback reported the resize");
        Assert.That(seen.Task.Result, Is.EqualTo((Size, 80L << 20)));
        Assert.That(dev.ImageSize, Is.EqualTo(80L << 20));
        Assert.That(dev.Length, Is.EqualTo(Size), "the served size changes only through GrowAsync");
    }

    [Test]
    public void A_second_writer_is_refused_and_told_who_holds_the_lock()
    {
        using var first = RbdClient.Connect(Cluster.Options);
        using var dev = first.OpenImage(_spec, readOnly: false);
        Assert.That(dev.Ownership!.IsOwner, Is.True);
        var holders = dev.Ownership.Holders();
        TestContext.Out.WriteLine($"holders: {string.Join("; ", holders)}; me: {first.EntityName} {first.Address}");
        Assert.That(holders, Has.Count.EqualTo(1));
        Assert.That(holders[0].Client, Is.EqualTo(first.EntityName));

        var sw = Stopwatch.StartNew();
        var e = Assert.Throws<RbdException>(() => Open(_spec))!;
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(30)));
        Assert.That(e.Operation, Is.EqualTo(CephOperation.LockImage));
        Assert.That(e.Message, Does.Contain(first.EntityName).And.Contain(first.Address.Split(',')[0].Replace("v2:", "")).And.Contain("one gateway writes an image at a time"));
        Assert.That(dev.Ownership.IsOwner, Is.True, "the holder keeps the lock");

        // A reader needs no lock.
        using var reader = Open(_spec, readOnly: true);
        Assert.That(reader.Ownership, Is.Null);
    }

    [Test]
    public void Closing_the_writer_releases_the_lock_for_the_next_one()
    {
        Open(_spec).Dispose();
        using var next = Open(_spec);
        Assert.That(next.Ownership!.IsOwner, Is.True);
    }

    [Test]
    public void An_image_without_the_exclusive_lock_feature_is_refused_for_writing_with_the_fix()
    {
        var spec = Cluster.NewImage("nolock", 16 << 20, features: "layering");
        try
        {
            var e = Assert.Throws<RbdException>(() => Open(spec))!;
            Assert.That(e.Message, Does.Contain("exclusive-lock").And.Contain($"rbd feature enable {spec.Display} exclusive-lock"));
            using var reader = Open(spec, readOnly: true);
            Assert.That(reader.Length, Is.EqualTo(16L << 20));
        }
        finally { Cluster.Remove(spec); }
    }

    [Test]
    public void Missing_pool_and_image_are_named()
    {
        using var c = RbdClient.Connect(Cluster.Options);
        var noImage = Assert.Throws<RbdException>(() => c.OpenImage(new RbdImageSpec("rbd", null, "no-such-image-" + Guid.NewGuid().ToString("N")[..8]), false))!;
        Assert.That(noImage.Message, Does.Contain("does not exist").And.Contain("rbd/no-such-image"));
        var noPool = Assert.Throws<RbdException>(() => c.ImageExists(new RbdImageSpec("nopool", null, "x")))!;
        Assert.That(noPool.Message, Does.Contain("pool 'nopool' does not exist"));
    }

    [Test]
    public async Task A_read_only_open_refuses_writes()
    {
        using var reader = Open(_spec, readOnly: true);
        var e = Assert.ThrowsAsync<RbdException>(async () => await reader.WriteAsync(0, new byte[512], false))!;
        Assert.That(e.Errno, Is.EqualTo(CephError.EROFS));
        await reader.ReadAsync(0, new byte[512]);
    }

    [Test]
    public async Task An_integrity_volume_formatted_on_an_image_recovers_its_journal_in_the_next_gateway()
    {
        var log = Serilog.Core.Logger.None;
        ulong blocks = (ulong)(Size / 512 / 2);
        var data = Random(64 * 512, 3);
        using (var dev = Open(_spec))
        {
            var volume = await IntegrityVolume.FormatAsync(dev, new FormatOptions { BlockSize = 512, LogicalBlocks = blocks }, log);
            Assert.That((await volume.WriteAsync(1000, data, fua: true)).IsOk, Is.True);
            // No DisposeAsync: the journal holds the write and its home copy may be pending, as after a crash.
        }
        using var next = Open(_spec);
        await using var reopened = await IntegrityVolume.OpenAsync(next, new OpenOptions(), log);
        var back = new byte[data.Length];
        var r = await reopened.ReadAsync(1000, back);
        Assert.That(r.IsOk, Is.True, r.Detail);
        Assert.That(back, Is.EqualTo(data));
    }
}
