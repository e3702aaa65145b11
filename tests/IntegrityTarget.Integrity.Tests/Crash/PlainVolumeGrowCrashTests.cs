using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Crash;

/// <summary>
/// Growing a plain (integrity off) volume with a power cut at every point of the grow: the device reopens with
/// the old or the new size, never anything else; every block written before reads back; the new blocks read
/// as zeros; and a grow that reported success is never lost.
/// </summary>
public class PlainVolumeGrowCrashTests
{
    const int Bs = 512;
    const ulong OldBlocks = 2048, NewBlocks = 6144;

    static byte[] Pattern(int length, byte seed) { var b = new byte[length]; for (int i = 0; i < b.Length; i++) b[i] = (byte)(seed + i * 13); return b; }

    [Test]
    public async Task A_crash_at_any_point_of_a_grow_leaves_the_old_or_the_new_size_with_every_block_intact()
    {
        var data = Pattern((int)OldBlocks * Bs, 7);
        int sawOld = 0, sawNew = 0;
        foreach (var mode in new[] { CrashMode.Drop, CrashMode.KeepAll, CrashMode.TearWrites })
        {
            for (long cut = 0; cut <= 3; cut++)
            {
                var durable = new MemoryBlockDevice((long)OldBlocks * Bs);
                var dev = new CrashSimulatingDevice(durable);
                var vol = new PlainVolume(dev, Bs, ownsDevice: false) { WriteBack = false };
                Assert.That((await vol.WriteAsync(0, data, fua: true)).IsOk, Is.True);
                dev.CrashAfterOperations(cut);
                var grown = await vol.GrowAsync(NewBlocks);
                if (grown.IsOk) Assert.That(vol.BlockCount, Is.EqualTo(NewBlocks));
                else Assert.That(vol.BlockCount, Is.EqualTo(OldBlocks), "a failed grow changes nothing");

                var after = dev.Crash(mode, seed: (ulong)cut);
                var reopened = new PlainVolume(after, Bs);
                string at = $"{mode}, power lost after {cut} operations (grow {(grown.IsOk ? "ok" : grown.Status.ToString())})";
                Assert.That(reopened.BlockCount, Is.AnyOf(OldBlocks, NewBlocks), at);
                if (grown.IsOk) Assert.That(reopened.BlockCount, Is.EqualTo(NewBlocks), "a grow that returned success is durable: " + at);
                if (reopened.BlockCount == NewBlocks) sawNew++; else sawOld++;
                var back = new byte[data.Length];
                Assert.That((await reopened.ReadAsync(0, back)).IsOk, Is.True, at);
                Assert.That(back, Is.EqualTo(data), "old blocks intact: " + at);
                if (reopened.BlockCount == NewBlocks)
                {
                    var tail = new byte[(int)(NewBlocks - OldBlocks) * Bs];
                    Assert.That((await reopened.ReadAsync(OldBlocks, tail)).IsOk, Is.True, at);
                    Assert.That(tail.All(b => b == 0), Is.True, "new blocks read as zeros: " + at);
                }
            }
        }
        Assert.That(sawOld, Is.GreaterThan(0), "some cut lands before the grow is durable");
        Assert.That(sawNew, Is.GreaterThan(0), "some cut lands after it");
    }

    [Test]
    public async Task Shrinking_or_a_device_that_cannot_grow_is_refused_with_a_reason_and_changes_nothing()
    {
        var vol = new PlainVolume(new MemoryBlockDevice((long)OldBlocks * Bs), Bs, name: "lun");
        var shrink = await vol.GrowAsync(OldBlocks - 1);
        Assert.That(shrink.Status, Is.EqualTo(VolumeStatus.Unsupported));
        Assert.That(shrink.Detail, Does.Contain("shrinking is not supported"));
        Assert.That(vol.BlockCount, Is.EqualTo(OldBlocks));
        Assert.That((await vol.GrowAsync(OldBlocks + 8)).IsOk, Is.True);
        Assert.That(vol.BlockCount, Is.EqualTo(OldBlocks + 8));
        var block = new byte[Bs];
        Assert.That((await vol.WriteAsync(OldBlocks + 7, block, fua: false)).IsOk, Is.True, "the new last block is writable");
    }
}
