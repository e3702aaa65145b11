#!/usr/bin/env bash
# Memory soak: what the serving process holds before, during and after load, beside tgt in the same run.
# Not a test: prints numbers. Run it under the heavy lock on a quiet machine.
#
#   flock /work/.heavy.lock tests/bench/soak.sh [SESSIONS=32] [SECONDS=120] [IDLE=60]
#
# For each target (integrity-target with integrity on, then tgt via ../shared/tools/ref-target.sh, same
# parameters): start it on a sparse LUN, wait, measure idle RSS; run fio (libiscsi engine) with SESSIONS
# jobs, each its own iSCSI session, of 4k random reads and writes for SECONDS, sampling RSS every 5 s;
# then let it idle for IDLE seconds (integrity-target runs a compacting collection after 25 s idle) and
# measure again. The target for integrity-target: idle RSS after load <= 2x idle start.
# Env: INTEGRITY_TARGET_BIN (a built Host output directory instead of building this checkout),
#      SOAK_BS (4k), SOAK_RW (randrw), SOAK_DEPTH (4), SOAK_SIZE (1G), SOAK_TGT (1; 0 skips tgt),
#      SOAK_ENV (extra environment for integrity-target, e.g. "DOTNET_GCgen0size=0x1000000"),
#      SOAK_KEEP=1 keeps the work directory (server log, fio JSON) and prints its path.
# With dotnet-counters on PATH (dotnet tool install -g dotnet-counters; ~/.dotnet/tools is searched) it also
# prints integrity-target's GC heap (committed, and live after the last collection) at the same points, and
# the bytes the process allocated per I/O during the load. Per-command allocation of a 4k read:
#   SOAK_RW=randread SOAK_DEPTH=1 SOAK_TGT=0 tests/bench/soak.sh 1 20 0
set -euo pipefail
sessions=${1:-32}; seconds=${2:-120}; idle=${3:-60}
bs=${SOAK_BS:-4k}; rw=${SOAK_RW:-randrw}; depth=${SOAK_DEPTH:-4}; size=${SOAK_SIZE:-1G}
repo=$(cd "$(dirname "$0")/../.." && pwd)
tools=${SHARED_TOOLS:-$repo/../shared/tools}
[ -d "$tools" ] || tools=$repo/../../shared/tools
work=$(mktemp -d /tmp/soak.XXXXXX)
FIO=$("$tools/fio-iscsi/build.sh" | tail -n 1)
if [[ -n "${INTEGRITY_TARGET_BIN:-}" ]]; then mkdir -p "$work/bin"; cp -r "$INTEGRITY_TARGET_BIN"/. "$work/bin/"
else dotnet build -c Release "$repo/src/IntegrityTarget.Host" -o "$work/bin" >/dev/null; fi
# A free port; below 32768 for tgt, whose control port (tgtadm -C) is the same number and must be that small.
free_port() { python3 -c '
import random, socket
while True:
    p = random.randint(20000, 32000); s = socket.socket()
    try: s.bind(("127.0.0.1", p)); print(p); break
    except OSError: pass'; }
pid=; tgt_started=
cleanup() {
  [[ -n "$counters_pid" ]] && kill "$counters_pid" 2>/dev/null
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  [[ -n "$tgt_started" ]] && "$tools/ref-target.sh" stop "$work/tgt" >/dev/null 2>&1
  if [[ "${SOAK_KEEP:-0}" == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
PATH=$PATH:$HOME/.dotnet/tools
counters=$(command -v dotnet-counters || true)
rss_of() { awk '/^VmRSS/ {print int($2/1024)}' "/proc/$1/status"; }
wait_port() { for _ in $(seq 150); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.2; done; echo "port $1 never opened" >&2; exit 1; }

# soak NAME PID URL: runs the load against URL while sampling PID's RSS; prints one block of results.
soak() {
  local name=$1 p=$2 url=$3 start peak r end_of_load after iops fio samples=() idle_samples=()
  sleep 5
  start=$(rss_of "$p"); peak=$start; gc_at start
  load_from=$(date +%s)
  "$FIO" --name=soak --ioengine=libiscsi --filename="$url" --rw="$rw" --bs="$bs" --iodepth="$depth" \
    --numjobs="$sessions" --size="$size" --time_based --runtime="$seconds" --group_reporting \
    --output-format=json >"$work/fio-$name.json" 2>"$work/fio-$name.err" &
  fio=$!
  while kill -0 "$fio" 2>/dev/null; do
    r=$(rss_of "$p"); samples+=("$r"); (( r > peak )) && peak=$r; sleep 5
  done
  wait "$fio" || { echo "$name: fio failed:"; tail -20 "$work/fio-$name.err"; exit 1; }
  end_of_load=$(rss_of "$p"); load_to=$(date +%s); gc_at end_of_load
  iops=$(python3 -c '
import sys, json
t = open(sys.argv[1]).read(); j = json.loads(t[t.index("{"):])["jobs"][0]
print("%.0f" % (j["read"]["iops"] + j["write"]["iops"]))' "$work/fio-$name.json")
  for ((t = 10; t <= idle; t += 10)); do sleep 10; idle_samples+=("+${t}s:$(rss_of "$p")"); done
  after=$(rss_of "$p"); gc_at after
  echo "== $name: $sessions sessions x ${seconds}s $rw $bs QD$depth: $iops IOPS"
  echo "   RSS MiB: idle start $start, peak $peak, end of load $end_of_load, idle +${idle}s $after" \
       "($(python3 -c "print('%.2f' % ($after / $start))")x start)"
  echo "   during load (every 5 s): ${samples[*]}"
  echo "   idle after load: ${idle_samples[*]}"
  echo "   at the end: $(awk '/^(RssAnon|RssFile|Threads)/ {printf "%s %s ", $1, ($1 == "Threads:" ? $2 : int($2/1024) " MiB")}' "/proc/$p/status")"
  [[ -n "$counters_pid" ]] && gc_summary "$work/fio-$name.json"
  return 0
}

# The GC's own view of integrity-target (dotnet-counters, 1 s samples into a CSV): committed and live heap at
# each named moment, and allocated bytes per I/O over the load window. No-ops without dotnet-counters.
counters_pid=; gc_marks=()
start_counters() {
  [[ -n "$counters" ]] || return 0
  "$counters" collect -p "$1" --counters System.Runtime --format csv -o "$work/counters.csv" \
    --refresh-interval 1 >/dev/null 2>&1 &
  counters_pid=$!
}
gc_at() { [[ -n "$counters_pid" ]] && sleep 2 && gc_marks+=("$1=$(date +%s)"); return 0; }
gc_summary() {
  python3 - "$work/counters.csv" "$1" "$load_from" "$load_to" "${gc_marks[@]}" <<'PY'
import csv, json, sys, datetime
rows, fio, t0, t1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
marks = [m.split("=") for m in sys.argv[5:]]
series = {}
for r in csv.reader(open(rows)):
    if len(r) < 5 or r[0] == "Timestamp": continue
    t = datetime.datetime.strptime(r[0], "%m/%d/%Y %H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
    series.setdefault(r[2], []).append((t, float(r[4])))
def at(name, t):
    pts = [v for (u, v) in series.get(name, []) if u <= t]
    return pts[-1] if pts else float("nan")
def live(t):
    return sum(at(f"dotnet.gc.last_collection.heap.size (By)[gc.heap.generation={g}]", t) for g in ("gen0", "gen1", "gen2", "loh", "poh"))
mib = lambda b: b / 1048576
print("   GC heap MiB (committed / live at last collection): " + ", ".join(
    "%s %.0f / %.0f" % (n, mib(at("dotnet.gc.last_collection.memory.committed_size (By)", int(t))), mib(live(int(t)))) for n, t in marks))
alloc = sum(v for (u, v) in series.get("dotnet.gc.heap.total_allocated (By / 1 sec)", []) if t0 < u <= t1 + 1)
txt = open(fio).read(); j = json.loads(txt[txt.index("{"):])["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
print("   allocated during load: %.0f MiB, %.0f B per I/O (%d I/Os)" % (mib(alloc), alloc / max(ios, 1), ios))
PY
}

port=$(free_port)
# shellcheck disable=SC2086
env ${SOAK_ENV:-} dotnet "$work/bin/integrity-target.dll" serve --no-config --listen 127.0.0.1:"$port" \
  --iqn iqn.2026-11.org.example:soak --data-dir "$work" --lun "$work/lun0.img" --size "$size" \
  --log-level Warning >"$work/server.log" 2>&1 &
pid=$!
wait_port "$port"
start_counters "$pid"
soak integrity-target "$pid" "iscsi\\://127.0.0.1\\:$port/iqn.2026-11.org.example\\:soak/0"
grep -E "ERR|FTL" "$work/server.log" | head -5 || true
if [[ -n "$counters_pid" ]]; then kill "$counters_pid" 2>/dev/null; wait "$counters_pid" 2>/dev/null || true; counters_pid=; fi
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

if [[ "${SOAK_TGT:-1}" == 1 ]]; then
  port=$(free_port)
  url=$("$tools/ref-target.sh" start "$work/tgt" "$port" "$size" | tail -n 1); tgt_started=1
  soak tgt "$(cat "$work/tgt/tgtd.pid")" "${url//:/\\:}"
fi
