#!/usr/bin/python3
"""Measurement half of tests/bench/rbd-inplace-probe.sh (see its header): small random writes straight through
librbd (python3-rbd, rbd_cache=false, as the gateway runs it) in the shapes an RBD layout of the integrity volume
could give a 4 KiB command, with the OSD's counters and CPU around each cell.

  rbd-inplace-probe.py fill CONF POOL IMAGE
  rbd-inplace-probe.py cell CONF POOL IMAGE OUT.jsonl VARIANT QD SECONDS ROUND   (env: OSD_ASOK, OSD_PID)
  rbd-inplace-probe.py report OUT.jsonl

Variants (offsets uniformly random over the image's 4 MiB objects; nothing ever crosses an object boundary):
  a  4096 B at a 4096-aligned offset                                  (what tgt-rbd and integrity off send)
  b  4128 B at object + i*4128, i < 1016                              (8 x 512 B blocks + their 8 x 4 B tags, interleaved)
  c  4096 B at object + i*4096 (i < 992) AND 32 B at object + 992*4096 + i*32, both in flight together
                                                                      (today's home copy, data + tag write, without the journal)
  d  4608 B at object + i*4608, i < 910                               (8 x (512 B block + 64 B tag room), aligned to 4608)
  e  the two writes of c as ONE librados op (a WriteOp holding both), straight to the image's data object,
     bypassing librbd                                                 (today's slot layout, data + tags atomic)
  f  4096 B at object + i*4096 (i < 992) AND the whole 4096 B tag sector holding its tags (object + 992*4096
     + (i // 128)*4096), as ONE librados op                           (both extents aligned to BlueStore's 4 KiB blocks)
  g  8192 B at object + i*8192                                        (4 KiB of data + a 4 KiB tag sector of its own, aligned)
  h  4096 B at object + i*4096 AND its 32 B of tags as one omap key of the object ("%08x" % i), as ONE librados op
                                                                      (data aligned; tags in BlueStore's key-value store)
"""
import importlib.util, json, os, queue, random, sys, time

import rados, rbd

# The admin-socket and /proc helpers of the existing probe (rbd-probe.py), not a copy of them (no __pycache__ left in the tree).
sys.dont_write_bytecode = True
_spec = importlib.util.spec_from_file_location("rbd_probe", os.path.join(os.path.dirname(os.path.abspath(__file__)), "rbd-probe.py"))
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)

OBJ = 4 << 20
HZ = os.sysconf("SC_CLK_TCK")


def open_image(conf, pool, image):
    # rbd_cache off as the gateway runs it; an op timeout so a dead cluster fails the cell instead of hanging it
    cluster = rados.Rados(conffile=conf, conf={"rbd_cache": "false", "rados_osd_op_timeout": "60"})
    cluster.connect()
    io = cluster.open_ioctx(pool)
    img = rbd.Image(io, image)
    return cluster, io, img


def shapes(variant, objects, rng):
    """One command's writes: a list of (offset, length)."""
    o = rng.randrange(objects) * OBJ
    if variant == "a":
        return [(o + rng.randrange(OBJ // 4096) * 4096, 4096)]
    if variant == "b":
        return [(o + rng.randrange(OBJ // 4128) * 4128, 4128)]
    if variant in ("c", "e"):
        i = rng.randrange(992)
        return [(o + i * 4096, 4096), (o + 992 * 4096 + i * 32, 32)]
    if variant == "f":
        i = rng.randrange(992)
        return [(o + i * 4096, 4096), (o + 992 * 4096 + (i // 128) * 4096, 4096)]
    if variant == "h":
        i = rng.randrange(OBJ // 4096)
        return [(o + i * 4096, 4096), (o + i, 0)]     # the second "write" is the omap key of block i
    if variant == "g":
        return [(o + rng.randrange(OBJ // 8192) * 8192, 8192)]
    if variant == "d":
        return [(o + rng.randrange(OBJ // 4608) * 4608, 4608)]
    raise SystemExit("unknown variant " + variant)


def fill(conf, pool, image):
    """Writes every object once (so object-map, allocation and first-write costs are out of the cells)."""
    cluster, io, img = open_image(conf, pool, image)
    try:
        size = img.size()
        buf = os.urandom(OBJ)
        q = queue.SimpleQueue()
        inflight = 0
        for off in range(0, size, OBJ):
            if inflight >= 8:
                q.get()
                inflight -= 1
            img.aio_write(buf, off, lambda c: q.put(c.get_return_value()))
            inflight += 1
        while inflight:
            r = q.get()
            inflight -= 1
            if r < 0:
                raise SystemExit(f"fill: write failed {r}")
        img.flush()
    finally:
        img.close(); io.close(); cluster.shutdown()


def cell(conf, pool, image, out, variant, qd, seconds, rnd):
    qd, seconds = int(qd), float(seconds)
    cluster, io, img = open_image(conf, pool, image)
    ops = [None] * qd               # variant e: the WriteOp of each slot, released once it completed
    try:
        objects = img.size() // OBJ
        rng = random.Random(f"{variant}-{qd}-{rnd}")
        payload = {n: os.urandom(n) for n in (32, 4096, 4128, 4608, 8192)}
        done = queue.SimpleQueue()
        lats, errors = [], 0
        pending = [0] * qd          # writes still in flight per command slot
        started = [0] * qd

        def on_done(slot):
            return lambda comp: done.put((slot, comp.get_return_value(), time.perf_counter_ns()))

        prefix = img.stat()["block_name_prefix"]

        def submit(slot):
            ws = shapes(variant, objects, rng)
            started[slot] = time.perf_counter_ns()
            if variant in ("e", "f", "h"):  # both writes in one RADOS op on the object (no snapshots: no snap context needed)
                pending[slot] = 1
                if ops[slot] is not None:
                    io.release_write_op(ops[slot])
                op = ops[slot] = io.create_write_op()
                for off, n in ws:
                    if n:
                        op.write(payload[n], off % OBJ)
                    else:
                        io.set_omap(op, ("%08x" % (off % OBJ),), (payload[32],))
                io.operate_aio_write_op(op, "%s.%016x" % (prefix, ws[0][0] // OBJ), oncomplete=on_done(slot))
                return
            pending[slot] = len(ws)
            for off, n in ws:
                img.aio_write(payload[n], off, on_done(slot))

        # Warm-up: one write of each shape, so the exclusive lock is taken before the clock starts.
        for off, n in shapes(variant, objects, rng):
            if n:
                img.write(payload[n], off)
        if variant in ("e", "f", "h"):   # librados writes underneath librbd: the image must not hold the lock meanwhile
            img.close()
            img = None
        osd_pid = os.environ["OSD_PID"]
        s0 = (probe.flat(probe.asok(os.environ["OSD_ASOK"])), probe.proc_ticks(osd_pid), probe.proc_ticks(os.getpid()),
              probe.machine_ticks(), time.monotonic())
        end = time.monotonic() + seconds
        for s in range(qd):
            submit(s)
        inflight, stopping = qd, False
        while inflight:
            slot, ret, t = done.get()
            if ret < 0:
                errors += 1
            pending[slot] -= 1
            if pending[slot]:
                continue
            lats.append((t - started[slot]) / 1000)
            if not stopping and time.monotonic() >= end:
                stopping = True
            if stopping:
                inflight -= 1
            else:
                submit(slot)
        s1 = (probe.flat(probe.asok(os.environ["OSD_ASOK"])), probe.proc_ticks(osd_pid), probe.proc_ticks(os.getpid()),
              probe.machine_ticks(), time.monotonic())
    finally:
        for op in ops:
            if op is not None:
                io.release_write_op(op)
        if img is not None:
            img.close()
        io.close(); cluster.shutdown()
    if errors:
        raise SystemExit(f"{variant} QD{qd}: {errors} writes failed")
    el = s1[4] - s0[4]
    lats.sort()
    n = len(lats)
    rec = {"variant": variant, "qd": qd, "round": int(rnd), "ios": n, "seconds": el, "iops": n / el,
           "lat_us": sum(lats) / n, "p99_us": lats[min(n - 1, int(n * 0.99))],
           "osd": probe.diff(s0[0], s1[0]), "osd_cpu_s": (s1[1] - s0[1]) / HZ, "client_cpu_s": (s1[2] - s0[2]) / HZ,
           "machine": [(s1[3][0] - s0[3][0]) / HZ, (s1[3][1] - s0[3][1]) / HZ]}
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    o = rec["osd"]
    sys.stderr.write(f"round {rnd} {variant} QD{qd}: {rec['iops']:.0f} IOPS, mean {rec['lat_us']:.0f} us, p99 {rec['p99_us']:.0f} us, "
                     f"OSD op_w/cmd {o.get('osd.op_w', 0) / n:.2f}, OSD CPU/cmd {rec['osd_cpu_s'] / n * 1e6:.0f} us\n")


NAMES = {"a": "4096 B aligned (tgt-rbd)", "b": "4128 B interleaved (in place)", "c": "4096 B + 32 B (home copy, no journal)",
         "d": "4608 B interleaved (64 B tag room)",
         "e": "4096 B + 32 B as one librados op", "f": "4096 B + 4096 B tag sector as one librados op",
         "g": "8192 B aligned (data + own tag sector)", "h": "4096 B + tags as an omap key, one librados op"}


def report(path):
    recs = [json.loads(l) for l in open(path)]
    g = lambda m, k: m.get(k, 0)
    for qd in sorted({r["qd"] for r in recs}):
        rows = [r for r in recs if r["qd"] == qd]
        variants = [v for v in "abcdefgh" if any(r["variant"] == v for r in rows)]
        rounds = sorted({r["round"] for r in rows})
        print(f"\n### 4k-class random writes, QD{qd} (per round; ratio = IOPS / variant a's IOPS in the same round)\n")
        print("| variant | round | IOPS | /a | mean µs | p99 µs | OSD op_w / cmd | OSD KiB in / cmd | BlueStore txc / cmd | "
              "deferred writes / cmd (KiB) | small-write pre-reads / cmd | OSD CPU µs / cmd | client CPU µs / cmd | machine busy |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for rnd in rounds:
            base = next((r for r in rows if r["round"] == rnd and r["variant"] == "a"), None)
            for v in variants:
                r = next((r for r in rows if r["round"] == rnd and r["variant"] == v), None)
                if r is None:
                    continue
                n, o = r["ios"], r["osd"]
                print("| %s %s | %d | %.0f | %s | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f (%.1f) | %.2f | %.0f | %.0f | %.0f %% |" % (
                    v, NAMES[v], rnd, r["iops"], "%.2f" % (r["iops"] / base["iops"]) if base else "-", r["lat_us"], r["p99_us"],
                    g(o, "osd.op_w") / n, g(o, "osd.op_in_bytes") / n / 1024, g(o, "bluestore.bluestore_txc") / n,
                    g(o, "bluestore.deferred_write_ops") / n, g(o, "bluestore.deferred_write_bytes") / n / 1024,
                    g(o, "bluestore.bluestore_write_small_pre_read") / n,
                    r["osd_cpu_s"] / n * 1e6, r["client_cpu_s"] / n * 1e6, 100 * r["machine"][1] / max(r["machine"][0], 1e-9)))
        print(f"\nMeans over rounds, QD{qd} (ratio = mean of the per-round ratios, min–max):\n")
        print("| variant | IOPS | /a mean (min–max) | mean µs | p99 µs | OSD op_w / cmd | OSD CPU µs / cmd | client CPU µs / cmd |")
        print("|---|---|---|---|---|---|---|---|")
        for v in variants:
            rs = [r for r in rows if r["variant"] == v]
            ratios = []
            for r in rs:
                base = next((b for b in rows if b["round"] == r["round"] and b["variant"] == "a"), None)
                if base:
                    ratios.append(r["iops"] / base["iops"])
            m = lambda f: sum(f(r) for r in rs) / len(rs)
            print("| %s | %.0f | %s | %.0f | %.0f | %.2f | %.0f | %.0f |" % (
                v, m(lambda r: r["iops"]),
                "%.2f (%.2f–%.2f)" % (sum(ratios) / len(ratios), min(ratios), max(ratios)) if ratios else "-",
                m(lambda r: r["lat_us"]), m(lambda r: r["p99_us"]), m(lambda r: g(r["osd"], "osd.op_w") / r["ios"]),
                m(lambda r: r["osd_cpu_s"] / r["ios"] * 1e6), m(lambda r: r["client_cpu_s"] / r["ios"] * 1e6)))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "fill":
        fill(*sys.argv[2:5])
    elif cmd == "cell":
        cell(*sys.argv[2:10])
    elif cmd == "report":
        report(sys.argv[2])
    else:
        sys.exit(__doc__)
