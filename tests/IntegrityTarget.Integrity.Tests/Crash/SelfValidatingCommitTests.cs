using IntegrityTarget.Storage;

namespace IntegrityTarget.Integrity.Tests.Crash;

/// <summary>
/// Exact crash states for commits that validate themselves (docs/integrity-volume.md, write paths 1–2): a
/// remap reaches the medium but its slot does not (lost, torn, or still holding an older complete version of
/// the same chunk, also after the slot was reused within one flush epoch), and crashes during the recovery
/// of such a log. Each state is built from the recorded device calls by choosing exactly which writes since
/// the last flush survived, which the crash model allows in any combination.
/// </summary>
public class SelfValidatingCommitTests
{
    private const int Bs = 4096, Bpc = 32;
    private const ulong Blocks = 16 * Bpc;

    private static byte[] Chunk(long c, int version) => T.Pattern((ulong)c * Bpc, Bpc, Bs, version);

    /// <summary>A recorded volume on a crash-simulating device, with idle home copies off so only the test decides when
    /// durable points happen.</summary>
    private sealed class Run : IAsyncDisposable
    {
        public readonly CrashSimulatingDevice Dev;
        public IntegrityVolume V = null!;
        public readonly long DeviceBytes;
        public long DataStart, JournalStart, JournalEnd;
        public readonly OpenOptions Tuning;

        private Run(long? spare, bool skipValidation)
        {
            DeviceBytes = IntegrityVolume.DeviceBytesFor(Blocks, Bs, TagAlgorithm.Crc32c, spareSlots: spare);
            Dev = new CrashSimulatingDevice(new MemoryBlockDevice(DeviceBytes, "sv"), record: true);
            Tuning = new OpenOptions { IdleHomeMs = Timeout.Infinite, SkipRemapValidation = skipValidation };
            Spare = spare;
        }

        public long? Spare { get; }

        public static async Task<Run> StartAsync(long? spare = null, bool skipValidation = false)
        {
            var r = new Run(spare, skipValidation);
            r.V = await IntegrityVolume.FormatAsync(r.Dev, new FormatOptions { BlockSize = Bs, LogicalBlocks = Blocks, SpareSlots = spare, AllowTinySparePool = true, Tuning = r.Tuning }, Serilog.Core.Logger.None);
            r.DataStart = r.V.MapArea.Offset + r.V.MapArea.Bytes;
            (r.JournalStart, long bytes) = r.V.JournalArea;
            r.JournalEnd = r.JournalStart + bytes;
            return r;
        }

        public int Ops => Dev.RecordedOperations.Count;

        public async Task WriteChunkAsync(long c, int version, bool fua = false)
        {
            long commits = V.Counters.JournalCommits;
            var res = await V.WriteAsync((ulong)c * Bpc, Chunk(c, version), fua);
            Assert.That(res.IsOk, res.ToString());
            // Write-back commits go out within 20 ms; wait so the transaction is among the recorded calls.
            for (int i = 0; i < 400 && V.Counters.JournalCommits == commits; i++) await Task.Delay(5);
            Assert.That(V.Counters.JournalCommits, Is.GreaterThan(commits), "the remap was committed");
        }

        /// <summary>The slot write (one whole slot) among the recorded calls from <paramref name="from"/> on.</summary>
        public int SlotWriteAfter(int from) =>
            Enumerable.Range(from, Ops - from).First(i => Dev.RecordedOperations[i] is { Kind: DeviceOperationKind.Write } o && o.Offset >= DataStart && o.Length > 64 * 1024);

        public int JournalWriteAfter(int from) =>
            Enumerable.Range(from, Ops - from).First(i => Dev.RecordedOperations[i] is { Kind: DeviceOperationKind.Write } o && o.Offset >= JournalStart && o.Offset < JournalEnd);

        public async ValueTask DisposeAsync() => await V.AbandonAsync();
    }

    /// <summary>
    /// The medium after the first <paramref name="upTo"/> recorded calls, where every write since the last flush
    /// survives except as <paramref name="fate"/> says: null = lost, or the sectors of it that survive.
    /// </summary>
    private static MemoryBlockDevice Image(Run run, int upTo, Dictionary<int, Func<int, bool>?> fate)
    {
        var ops = run.Dev.RecordedOperations;
        int lastFlush = -1;
        for (int i = 0; i < upTo; i++) if (ops[i].Kind == DeviceOperationKind.Flush) lastFlush = i;
        foreach (var k in fate.Keys) Assert.That(k, Is.GreaterThan(lastFlush), "only writes after the last flush may be lost");
        var img = new MemoryBlockDevice(run.DeviceBytes, "image");
        for (int i = 0; i < upTo; i++)
        {
            var o = ops[i];
            if (o.Kind == DeviceOperationKind.Flush) continue;
            Func<int, bool> keep = fate.TryGetValue(i, out var f) ? f ?? (_ => false) : _ => true;
            for (int s = 0; s < o.Length / 512; s++)
            {
                if (!keep(s)) continue;
                if (o.Kind == DeviceOperationKind.Write) img.Write(o.Offset + s * 512L, o.Data.Span.Slice(s * 512, 512));
                else img.Write(o.Offset + s * 512L, new byte[512]);
            }
        }
        return img;
    }

    private static async Task<IntegrityVolume> OpenAsync(IBlockDevice dev, OpenOptions tuning) =>
        await IntegrityVolume.OpenAsync(dev, tuning with { IdleHomeMs = 50 }, Serilog.Core.Logger.None);

    /// <summary>Every block of the volume reads and verifies; returns chunk <paramref name="c"/>'s version (0 = zeros, -1 = none of them).</summary>
    private static async Task<int> VersionOfAsync(IntegrityVolume v, long c, int maxVersion)
    {
        var all = new byte[(int)Blocks * Bs];
        var r = await v.ReadAsync(0, all);
        Assert.That(r.IsOk, $"every block reads and verifies after recovery: {r}");
        var got = all.AsSpan((int)(c * Bpc * Bs), Bpc * Bs).ToArray();
        if (!got.AsSpan().ContainsAnyExcept((byte)0)) return 0;
        for (int ver = 1; ver <= maxVersion; ver++) if (got.SequenceEqual(Chunk(c, ver))) return ver;
        return -1;
    }

    [Test]
    public async Task A_remap_that_reached_the_medium_without_its_slot_is_discarded_whole()
    {
        await using var run = await Run.StartAsync();
        await run.WriteChunkAsync(0, 1, fua: true);
        int from = run.Ops;
        await run.WriteChunkAsync(0, 2);
        await run.WriteChunkAsync(1, 2);
        int slot = run.SlotWriteAfter(from), txn = run.JournalWriteAfter(slot);
        var fates = new (string What, Func<int, bool>? Fate)[]
        {
            ("lost", null),
            ("torn: first half of the data only", s => s < 128),
            ("torn: data but not the tag region", s => s < 256),
            ("torn: every other sector", s => s % 2 == 0),
        };
        foreach (var (what, fate) in fates)
        {
            var img = Image(run, run.Ops, new() { [slot] = fate });
            await using var v = await OpenAsync(img, run.Tuning);
            Assert.That(await VersionOfAsync(v, 0, 2), Is.EqualTo(1), $"slot {what}: chunk 0 keeps its durable version");
            Assert.That(v.LastRecovery.TornDiscarded, Is.GreaterThan(0), $"slot {what}: the remap's transaction is discarded");
            Assert.That(await VersionOfAsync(v, 1, 2), Is.EqualTo(0), $"slot {what}: the later, unflushed write to chunk 1 went with it (prefix)");
        }
        // With the slot there, the same journal keeps both writes.
        await using var whole = await OpenAsync(Image(run, run.Ops, new()), run.Tuning);
        Assert.That((await VersionOfAsync(whole, 0, 2), await VersionOfAsync(whole, 1, 2)), Is.EqualTo((2, 2)));
        Assert.That(txn, Is.GreaterThan(slot));
    }

    /// <summary>Chunk 0 v1 in slot A (durable); v2 in slot B; the pool is then empty, so the next write makes a
    /// durable point that frees A, and v3 goes to A, which still holds v1 complete. Returns the run and the v3 slot write.</summary>
    private static async Task<(Run Run, int SlotWrite)> OlderVersionInTheReusedSlot(bool skipValidation = false)
    {
        var run = await Run.StartAsync(spare: 1, skipValidation: skipValidation);
        for (long c = 0; c < 16; c++) await run.WriteChunkAsync(c, 1, fua: c == 15); // every slot but one in use, all durable
        await run.WriteChunkAsync(0, 2);   // takes the last free slot; slot A waits in limbo
        int from = run.Ops;
        await run.WriteChunkAsync(0, 3);   // no free slot: flush + marker free A, v3 goes there
        return (run, run.SlotWriteAfter(from));
    }

    [Test]
    public async Task A_free_slot_holding_an_older_complete_version_of_the_same_chunk_does_not_pass_for_the_new_one()
    {
        var (run, slot) = await OlderVersionInTheReusedSlot();
        await using var _ = run;
        Assert.That(run.Dev.RecordedOperations.Skip(slot).Any(o => o.Kind == DeviceOperationKind.Flush), Is.False, "v3 is not flushed");
        await using var v = await OpenAsync(Image(run, run.Ops, new() { [slot] = null }), run.Tuning);
        Assert.That(await VersionOfAsync(v, 0, 3), Is.EqualTo(2), "v3's slot still holds v1, complete and verifying: recovery must not take it for v3");
        Assert.That(v.LastRecovery.SlotsValidated, Is.GreaterThan(0));
    }

    [Test]
    public async Task Without_validation_the_older_version_would_come_back_so_the_check_is_what_prevents_it()
    {
        var (run, slot) = await OlderVersionInTheReusedSlot(skipValidation: true);
        await using var _ = run;
        await using var v = await OpenAsync(Image(run, run.Ops, new() { [slot] = null }), run.Tuning);
        Assert.That(await VersionOfAsync(v, 0, 3), Is.EqualTo(1), "the broken recovery maps chunk 0 to the old slot and serves v1, older than the durable v2");
    }

    [Test]
    public async Task A_crash_at_any_point_of_recovering_such_a_log_recovers_the_same_state()
    {
        var (run, slot) = await OlderVersionInTheReusedSlot();
        await using var _ = run;
        var img = Image(run, run.Ops, new() { [slot] = null });
        var probe = new CrashSimulatingDevice(CrashSimulatingDevice.CopyImage(img));
        await (await OpenAsync(probe, run.Tuning)).AbandonAsync();
        long recoveryOps = probe.OperationCount;
        Assert.That(recoveryOps, Is.GreaterThan(3), "recovery writes (decision, replay, checkpoint)");
        int states = 0;
        for (long k = 0; k <= recoveryOps; k++)
            foreach (var mode in Enum.GetValues<CrashMode>())
            {
                var dev = new CrashSimulatingDevice(CrashSimulatingDevice.CopyImage(img));
                dev.CrashAfterOperations(k);
                try { await (await OpenAsync(dev, run.Tuning)).AbandonAsync(); } catch (IOException) { /* the power went during recovery */ }
                var after = dev.Crash(mode, (ulong)(k * 7 + (long)mode));
                await using var v = await OpenAsync(after, run.Tuning);
                Assert.That(await VersionOfAsync(v, 0, 3), Is.EqualTo(2), $"crash after {k} recovery operations, mode {mode}");
                for (long c = 1; c < 16; c++) Assert.That(await VersionOfAsync(v, c, 1), Is.EqualTo(1), $"chunk {c}, crash after {k}, {mode}");
                states++;
            }
        TestContext.Out.WriteLine($"{states} crash states during recovery checked");
    }

    [Test]
    public async Task A_slot_reused_within_one_flush_epoch_is_checked_like_any_other()
    {
        await using var run = await Run.StartAsync();
        await run.WriteChunkAsync(0, 1, fua: true); // slot A, durable
        int at = run.Ops;
        await run.WriteChunkAsync(0, 2);            // slot B (A to limbo)
        int v2 = run.SlotWriteAfter(at);
        at = run.Ops;
        await run.WriteChunkAsync(0, 3);            // slot C; B was named in this epoch: fresh, free at once
        int v3 = run.SlotWriteAfter(at);
        at = run.Ops;
        await run.WriteChunkAsync(0, 4);            // reuses B, which holds v2 complete
        int v4 = run.SlotWriteAfter(at);
        var ops = run.Dev.RecordedOperations;
        Assert.That(ops[v4].Offset, Is.EqualTo(ops[v2].Offset), "v4 reuses v2's slot");
        Assert.That(ops.Skip(v2).Any(o => o.Kind == DeviceOperationKind.Flush), Is.False, "with no flush since v2 was written");

        await using (var v = await OpenAsync(Image(run, run.Ops, new() { [v4] = null }), run.Tuning))
            Assert.That(await VersionOfAsync(v, 0, 4), Is.EqualTo(3), "v4 lost, B still holding v2: recovery keeps v3");
        await using (var v = await OpenAsync(Image(run, run.Ops, new() { [v4] = s => s < 200 }), run.Tuning))
            Assert.That(await VersionOfAsync(v, 0, 4), Is.EqualTo(3), "v4 torn over v2 in B: recovery keeps v3");
        await using (var v = await OpenAsync(Image(run, run.Ops, new() { [v4] = s => s < 200, [v3] = null }), run.Tuning))
            Assert.That(await VersionOfAsync(v, 0, 4), Is.EqualTo(1), "v3 and v4 both lost, B torn: back to the durable v1 in A, which limbo kept intact");
    }

    /// <summary>Spare pool of 4: chunks 0..15 v1 durable, then 0, 1, 2 get v2; the third leaves one free slot, below the
    /// background water (2), so the committer starts a flush without waiting; once it completes the three limbo slots
    /// return, with no marker written, and chunk 3's v2 goes into chunk 2's v1 slot. Crashes around that reuse and
    /// before the flush completed.</summary>
    [Test]
    public async Task A_limbo_slot_reused_right_after_a_background_flush_completes_keeps_every_durable_version()
    {
        await using var run = await Run.StartAsync(spare: 4);
        int fill2 = -1;
        for (long c = 0; c < 16; c++)
        {
            int at = run.Ops;
            await run.WriteChunkAsync(c, 1, fua: c == 15);
            if (c == 2) fill2 = run.SlotWriteAfter(at);
        }
        int before = run.Ops;
        long background = run.V.BackgroundFlushes;
        for (long c = 0; c < 3; c++) await run.WriteChunkAsync(c, 2);
        for (int i = 0; i < 400 && run.V.FreeSlots < 4; i++) await Task.Delay(5);
        Assert.That(run.V.FreeSlots, Is.EqualTo(4), "the background flush completed and its limbo slots returned");
        Assert.That(run.V.BackgroundFlushes, Is.EqualTo(background + 1));
        int at3 = run.Ops;
        await run.WriteChunkAsync(3, 2);
        int slot3 = run.SlotWriteAfter(at3), txn3 = run.JournalWriteAfter(slot3);
        var ops = run.Dev.RecordedOperations;
        Assert.That(ops[slot3].Offset, Is.EqualTo(ops[fill2].Offset), "chunk 3's v2 reuses chunk 2's v1 slot");
        int flush = Enumerable.Range(before, at3 - before).Single(i => ops[i].Kind == DeviceOperationKind.Flush);
        Assert.That(ops.Skip(before).Take(slot3 - before).Any(o => o.Kind == DeviceOperationKind.Write && o.Fua), Is.False,
            "no marker: a flushed replacing remap is enough to reuse the slot");

        async Task Expect(IBlockDevice img, int v0, int v2, int v3, string what)
        {
            await using var v = await OpenAsync(img, run.Tuning);
            Assert.That((await VersionOfAsync(v, 0, 2), await VersionOfAsync(v, 2, 2), await VersionOfAsync(v, 3, 2)), Is.EqualTo((v0, v2, v3)), what);
            for (long c = 4; c < 16; c++) Assert.That(await VersionOfAsync(v, c, 2), Is.EqualTo(1), $"{what}: chunk {c}");
        }
        await Expect(Image(run, run.Ops, new()), 2, 2, 2, "nothing lost");
        await Expect(Image(run, run.Ops, new() { [slot3] = null }), 2, 2, 1, "chunk 3's slot write lost: chunk 2 keeps its flushed v2, chunk 3 its v1");
        await Expect(Image(run, run.Ops, new() { [slot3] = s => s % 3 == 0 }), 2, 2, 1, "chunk 3's slot write torn over chunk 2's old v1");
        await Expect(Image(run, run.Ops, new() { [txn3] = null }), 2, 2, 1, "chunk 3's transaction lost");
        // Power lost while the background flush ran: everything after the FUA write of chunk 15 may be gone.
        var lost = Enumerable.Range(before, flush - before).Where(i => ops[i].Kind == DeviceOperationKind.Write).ToDictionary(i => i, _ => (Func<int, bool>?)null);
        await Expect(Image(run, flush, lost), 1, 1, 1, "crash during the background flush, every write since the last flush lost");
        // Some of those writes torn, the rest whole: each chunk is v1 or v2, in command order (a prefix).
        var torn = lost.Keys.Where(i => i % 2 == 0).ToDictionary(i => i, Func<int, bool>? (_) => s => s < 100);
        await using (var v = await OpenAsync(Image(run, flush, torn), run.Tuning))
        {
            int[] got = [await VersionOfAsync(v, 0, 2), await VersionOfAsync(v, 1, 2), await VersionOfAsync(v, 2, 2)];
            Assert.That(got, Is.All.InRange(1, 2), "crash during the background flush, writes torn: old or new");
            Assert.That(got, Is.Ordered.Descending, "a prefix of the commands survives");
        }
    }
}
