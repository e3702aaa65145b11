#!/usr/bin/env python3
"""Measurement half of tests/bench/rbd-probe.sh (see its header): runs one fio cell against one target and
records, around it, the counters that say where the time went; then prints the tables.

  rbd-probe.py cell OUT.jsonl NAME TARGET URL RW BS DEPTH RUNTIME [FIO_OPTION...]  (env: FIO, SIZE, OSD_ASOK, CLIENT_ASOK (space-separated), PIDS, LOG)
  rbd-probe.py report OUT.jsonl

Counters come straight from the admin sockets (the wire protocol: a JSON command and a NUL, answered by a
4-byte big-endian length and the JSON), so a snapshot costs milliseconds, not a `ceph` CLI start on two cores.
"""
import json, os, re, socket, struct, subprocess, sys, time

HZ = os.sysconf("SC_CLK_TCK")


def asok(path, prefix="perf dump"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(json.dumps({"prefix": prefix}).encode() + b"\0")
    head = b""
    while len(head) < 4:
        head += s.recv(4 - len(head))
    n = struct.unpack(">I", head)[0]
    body = b""
    while len(body) < n:
        body += s.recv(min(1 << 20, n - len(body)))
    s.close()
    return json.loads(body)


def flat(dump):
    """{"osd": {"op_w": 3, "op_w_latency": {"avgcount": 3, "sum": 0.1}}} -> {"osd.op_w": 3, "osd.op_w_latency.avgcount": 3, ...};
    every librbd-<id>-<pool>-<image> section is summed as "librbd" (one image per process here)."""
    out = {}
    for sec, vals in dump.items():
        name = "librbd" if sec.startswith("librbd-") else sec
        for k, v in vals.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    if isinstance(vv, (int, float)):
                        out[f"{name}.{k}.{kk}"] = out.get(f"{name}.{k}.{kk}", 0) + vv
            elif isinstance(v, (int, float)):
                out[f"{name}.{k}"] = out.get(f"{name}.{k}", 0) + v
    return out


def proc_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    except (OSError, IndexError):
        return 0


def thread_ticks(pid):
    """CPU ticks of a process's threads, grouped by thread name with digits dropped (msgr-worker-0.. -> msgr-worker-)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = re.sub(r"\d+", "", raw[raw.index("(") + 1:raw.rindex(")")]).strip() or "?"
        fields = raw.rsplit(")", 1)[1].split()
        out[comm] = out.get(comm, 0) + int(fields[11]) + int(fields[12])
    return out


def machine_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    idle = v[3] + v[4]
    return total, total - idle


def snapshot(pids):
    s = {"t": time.monotonic()}
    s["osd"] = flat(asok(os.environ["OSD_ASOK"]))
    s["client"] = {}
    for ca in os.environ.get("CLIENT_ASOK", "").split():  # one per librados client of the gateway process
        for k, v in flat(asok(ca)).items():
            s["client"][k] = s["client"].get(k, 0) + v
    s["cpu"] = {name: proc_ticks(pid) for name, pid in pids.items()}
    s["threads"] = {name: thread_ticks(pids[name]) for name in ("osd", "gateway") if name in pids}
    s["machine"] = machine_ticks()
    return s


def diff(a, b):
    return {k: b[k] - a.get(k, 0) for k in b if isinstance(b[k], (int, float)) and b[k] != a.get(k, 0)}


CKPT = re.compile(r"(\d+) transactions, (\d+) flushes, checkpoints (\d+) background / (\d+) blocking \((\d+) ms of work; "
                  r"committer waited (\d+) ms for ring space and (\d+) ms at cuts\), writers waited (\d+) ms on back-pressure and "
                  r"(\d+) ms for slots; home copies: (\d+) blocks in (\d+) slots, (\d+) tag reads, (\d+) data writes, (\d+) tag writes")
CKPT_KEYS = ["transactions", "flushes", "bg_ckpt", "blocking_ckpt", "ckpt_ms", "committer_wait_ms", "cut_ms", "backpressure_ms",
             "slot_wait_ms", "home_blocks", "home_slots", "home_tag_reads", "home_data_writes", "home_tag_writes"]


def journal_lines(log, start):
    """Sums the JournalStats Debug lines (one per checkpoint, figures since the previous one) written after byte `start`."""
    if not log or not os.path.exists(log):
        return None
    with open(log, errors="replace") as f:
        f.seek(start)
        text = f.read()
    tot = dict.fromkeys(CKPT_KEYS, 0)
    n = 0
    for m in CKPT.finditer(text):
        n += 1
        for k, v in zip(CKPT_KEYS, m.groups()):
            tot[k] += int(v)
    tot["lines"] = n
    return tot


def cell(out, name, target, url, rw, bs, depth, runtime, *extra):
    pids = dict(p.split("=") for p in os.environ["PIDS"].split())
    log = os.environ.get("LOG", "")
    log_start = os.path.getsize(log) if log and os.path.exists(log) else 0
    s0 = snapshot(pids)
    perf = None
    if os.environ.get("PERF_DIR"):  # a CPU profile of the gateway during the cell (perf record; .NET needs DOTNET_PerfMapEnabled=1)
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "499", "-g", "-p", pids["gateway"], "-o",
                                 os.path.join(os.environ["PERF_DIR"], f"{name}.{target}.perf.data")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fio = subprocess.run([os.environ["FIO"], "--name=j", "--ioengine=libiscsi", f"--filename={url}", f"--rw={rw}", f"--bs={bs}",
                          f"--iodepth={depth}", f"--size={os.environ.get('SIZE', '1G')}", "--time_based", f"--runtime={runtime}",
                          "--output-format=json", *extra], capture_output=True, text=True)
    s1 = snapshot(pids)
    if perf:
        perf.send_signal(2)
        perf.wait()
    # Settle: background work (home copies, checkpoints) that the job left behind, until the OSD sees no op for 1 s.
    last, quiet, deadline = s1["osd"].get("osd.op", 0), 0, time.monotonic() + 30
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        now = flat(asok(os.environ["OSD_ASOK"])).get("osd.op", 0)
        quiet = quiet + 1 if now == last else 0
        last = now
    s2 = snapshot(pids)
    t = fio.stdout
    try:
        j = json.loads(t[t.index("{"):])["jobs"][0]
    except ValueError:
        sys.stderr.write(f"fio failed for {name} {target}: {fio.stderr[-500:]}\n")
        return
    d = j["write"] if j["write"]["io_bytes"] > 0 else j["read"]
    rec = {"job": name, "target": target, "extra": " ".join(extra), "rw": rw, "bs": bs, "depth": int(depth),
           "ios": d["total_ios"], "bytes": d["io_bytes"], "iops": d["iops"], "lat_us": d["lat_ns"]["mean"] / 1000,
           "p99_us": d["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000,
           "fio_cpu_pct": j["usr_cpu"] + j["sys_cpu"], "seconds": s1["t"] - s0["t"], "settle_s": s2["t"] - s1["t"],
           "osd": diff(s0["osd"], s1["osd"]), "osd_tail": diff(s1["osd"], s2["osd"]),
           "client": diff(s0["client"], s1["client"]), "client_tail": diff(s1["client"], s2["client"]),
           "cpu": {k: (s1["cpu"][k] - s0["cpu"][k]) / HZ for k in pids}, "cpu_tail": {k: (s2["cpu"][k] - s1["cpu"][k]) / HZ for k in pids},
           "threads": {n: {c: (v - s0["threads"][n].get(c, 0)) / HZ for c, v in s1["threads"][n].items() if v != s0["threads"][n].get(c, 0)}
                       for n in s1["threads"]},
           "machine": [(s1["machine"][0] - s0["machine"][0]) / HZ, (s1["machine"][1] - s0["machine"][1]) / HZ],
           "journal": journal_lines(log, log_start)}
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    sys.stderr.write(f"{name} {target}: {d['iops']:.0f} IOPS, mean {rec['lat_us']:.0f} us, p99 {rec['p99_us']:.0f} us, "
                     f"OSD ops {rec['osd'].get('osd.op_w', 0)} w / {rec['osd'].get('osd.op_r', 0)} r, settle {rec['settle_s']:.1f} s\n")


def report(path):
    recs = [json.loads(l) for l in open(path)]
    jobs = list(dict.fromkeys(r["job"] for r in recs))
    g = lambda m, k: m.get(k, 0)

    def per(x, n):
        return x / n if n else 0

    def lat(m, k):  # mean of a latency counter, in us
        return per(g(m, k + ".sum"), g(m, k + ".avgcount")) * 1e6

    for job in jobs:
        rows = [r for r in recs if r["job"] == job]
        print(f"\n### {job} ({rows[0]['rw']} {rows[0]['bs']} QD{rows[0]['depth']} {rows[0].get('extra', '')})\n")
        print("| target | IOPS | mean lat µs | p99 µs | librbd wr (rd) per I/O | librbd wr (rd) lat µs | librbd flushes | "
              "OSD op_w per I/O | OSD KiB in per I/O | OSD op_r per I/O | OSD KiB out per I/O | OSD op_w lat µs | OSD op_r lat µs | "
              "bluestore deferred w per I/O | + after the job: OSD op_w (s) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            n, o, c, ot = r["ios"], r["osd"], r["client"], r["osd_tail"]
            print("| %s | %.0f | %.0f | %.0f | %.2f (%.2f) | %.0f (%.0f) | %d | %.2f | %.1f | %.2f | %.1f | %.0f | %.0f | %.2f | %d (%.1f) |" % (
                r["target"], r["iops"], r["lat_us"], r["p99_us"],
                per(g(c, "librbd.wr"), n), per(g(c, "librbd.rd"), n), lat(c, "librbd.wr_latency"), lat(c, "librbd.rd_latency"),
                g(c, "librbd.flush") + g(c, "librbd.aio_flush"),
                per(g(o, "osd.op_w"), n), per(g(o, "osd.op_in_bytes"), n) / 1024, per(g(o, "osd.op_r"), n), per(g(o, "osd.op_out_bytes"), n) / 1024,
                lat(o, "osd.op_w_latency"), lat(o, "osd.op_r_latency"),
                per(g(o, "bluestore.deferred_write_ops"), n), g(ot, "osd.op_w"), r["settle_s"]))
        print("\nInside the OSD, per fio I/O (BlueStore transactions, RocksDB syncs) and mean latencies in µs "
              "(op queue = before dequeue; txc commit = BlueStore prepare to commit; kv sync = one RocksDB sync):\n")
        print("| target | txc per I/O | kv syncs per I/O | op queue µs | op_w process µs | txc commit µs | kv sync µs | deferred KiB per I/O |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            n, o = r["ios"], r["osd"]
            print("| %s | %.2f | %.2f | %.0f | %.0f | %.0f | %.0f | %.1f |" % (
                r["target"], per(g(o, "bluestore.bluestore_txc"), n), per(g(o, "bluestore.kv_sync_lat.avgcount"), n),
                lat(o, "osd.op_before_dequeue_op_lat"), lat(o, "osd.op_w_process_latency"), lat(o, "bluestore.commit_lat"),
                lat(o, "bluestore.kv_sync_lat"), per(g(o, "bluestore.deferred_write_bytes"), n) / 1024))
        print("\nCPU per I/O (µs; machine = all processes, others' too; busy = share of the 2 cores during the job):\n")
        names = list(rows[0]["cpu"].keys())
        print("| target | " + " | ".join(names) + " | fio | machine | busy | + after the job: " + ", ".join(names) + " (ms) |")
        print("|---|" + "---|" * (len(names) + 4))
        for r in rows:
            n = r["ios"]
            fio_s = r["fio_cpu_pct"] / 100 * r["seconds"]
            print("| %s | %s | %.0f | %.0f | %.0f %% | %s |" % (
                r["target"], " | ".join("%.0f" % (per(r["cpu"][k], n) * 1e6) for k in names), per(fio_s, n) * 1e6,
                per(r["machine"][1], n) * 1e6, 100 * per(r["machine"][1], r["machine"][0]),
                ", ".join("%.0f" % (r["cpu_tail"][k] * 1e3) for k in names)))
        print("\nCPU per I/O by thread (µs; thread names without digits; the five largest of the OSD and of the gateway):\n")
        for r in rows:
            n = r["ios"]
            parts = []
            for who in ("osd", "gateway"):
                th = sorted(r.get("threads", {}).get(who, {}).items(), key=lambda kv: -kv[1])[:5]
                parts.append(who + ": " + ", ".join("%s %.0f" % (c, per(v, n) * 1e6) for c, v in th))
            print("- %s: %s" % (r["target"], "; ".join(parts)))
        js = [r for r in rows if r.get("journal") and r["journal"]["lines"]]
        if js:
            print("\nJournalStats (Debug lines, one per checkpoint, during the job and its settle):\n")
            print("| target | checkpoints | transactions | fio I/Os per transaction | flushes | home blocks | home slots | home data writes | home tag writes | tag reads | checkpoint ms | committer waited ms | back-pressure ms |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in js:
                q = r["journal"]
                print("| %s | %d | %d | %.2f | %d | %d | %d | %d | %d | %d | %d | %d | %d |" % (
                    r["target"], q["lines"], q["transactions"], per(r["ios"], q["transactions"]), q["flushes"], q["home_blocks"],
                    q["home_slots"], q["home_data_writes"], q["home_tag_writes"], q["home_tag_reads"], q["ckpt_ms"],
                    q["committer_wait_ms"], q["backpressure_ms"]))


def config(sock, *keys):
    """Prints KEY=VALUE as the running process's librados client has it (its admin socket's config get)."""
    for k in keys:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(sock)
        s.sendall(json.dumps({"prefix": "config get", "var": k}).encode() + b"\0")
        head = s.recv(4)
        n = struct.unpack(">I", head)[0]
        body = b""
        while len(body) < n:
            body += s.recv(n - len(body))
        print("%s=%s" % (k, json.loads(body).get(k, "?")), end=" ")
    print()


if __name__ == "__main__":
    if sys.argv[1] == "config":
        config(*sys.argv[2:])
    elif sys.argv[1] == "cell":
        cell(*sys.argv[2:])
    elif sys.argv[1] == "report":
        report(sys.argv[2])
    else:
        sys.exit(__doc__)
