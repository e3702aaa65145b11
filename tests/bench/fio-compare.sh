#!/usr/bin/env bash
# Side-by-side fio (libiscsi engine) comparison in ONE run: integrity-target with integrity on,
# integrity off, integrity off over the DotNetty transport, and tgt (reference) on the same kind of
# sparse backing file. Prints markdown tables: IOPS with ratios, p99, p99.9 and max completion latency, and the
# server's CPU time per I/O (from /proc). Not a test: machines here are noisy, only the ratios in one
# run mean much.
#   tests/bench/fio-compare.sh [RUNTIME_SECONDS=10] [SIZE=1G] [ROUNDS=2]
# Environment:
#   TARGETS="tgt on off dotnetty"  which targets to run (any subset; "on" and "off" are needed for on/off)
#   INTEGRITY_TARGET_BIN=DIR       use this build instead of building the working tree
#   INTEGRITY_TARGET_BIN_B=DIR     also run target "onB": integrity on from this second build (A/B experiments);
#                                  it is added at the end of TARGETS unless TARGETS names it
#   STRESS_CPU=N                   run `stress-ng --cpu N` for the whole run (a CPU-bound neighbour)
#   FORMAT_ON="--journal-size 128MiB", FORMAT_ONB=...  format that target's LUN with these `format` options
#                                  before serving it (A/B of format choices: same build as on and onB)
#   LOG_LEVEL=Debug, KEEP_LOGS=DIR  the servers' log level (default Warning) and a directory the servers' logs are
#                                  copied to at the end (at Debug the volume logs its JournalStats per checkpoint)
#   KEEP_CELLS=FILE                keep the raw cells ("job target round iops MB/s p99 cpu p99.9 max" per line)
#   JOBS="name rw bs depth [fio options...];..."  replace the six default jobs; anything after the depth goes
#                                  to fio as is (e.g. --fsync=32: SYNCHRONIZE CACHE after every 32 writes; but fio's
#                                  libiscsi engine sends it with an out-of-range block count, which integrity-target
#                                  refuses and fio counts as done: docs/integrity-volume.md, "Measured", 2026-12-07 evening)
set -euo pipefail
runtime=${1:-10}; size=${2:-1G}; rounds=${3:-2}
repo=$(cd "$(dirname "$0")/../.." && pwd)
tools=${SHARED_TOOLS:-${SHARED_DIR:+$SHARED_DIR/tools}}
[[ -z "$tools" ]] && for d in "$repo/../shared/tools" "$repo/../../shared/tools"; do [[ -d "$d" ]] && tools=$d && break; done
work=$(mktemp -d /tmp/fio-compare.XXXXXX)
FIO=$("$tools/fio-iscsi/build.sh" | tail -n 1)
read -r -a targets <<<"${TARGETS:-tgt on off dotnetty}"
# onB joins at the end unless TARGETS names it (its place there sets when it starts, fills and runs first)
[[ -n "${INTEGRITY_TARGET_BIN_B:-}" && " ${targets[*]} " != *" onB "* ]] && targets+=(onB)
if [[ -n "${INTEGRITY_TARGET_BIN:-}" ]]; then mkdir -p "$work/bin"; cp -r "$INTEGRITY_TARGET_BIN"/. "$work/bin/"
else dotnet build -c Release "$repo/src/IntegrityTarget.Host" -o "$work/bin" >/dev/null; fi
if [[ -n "${INTEGRITY_TARGET_BIN_B:-}" ]]; then mkdir -p "$work/binB"; cp -r "$INTEGRITY_TARGET_BIN_B"/. "$work/binB/"; fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$tools/ref-target.sh" stop "$work/tgt" >/dev/null 2>&1 || true
  if [[ -n "${KEEP_LOGS:-}" ]]; then mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

declare -A url pid
has() { [[ " ${targets[*]} " == *" $1 "* ]]; }

# Reference target.
if has tgt; then
  "$tools/ref-target.sh" start "$work/tgt" 3311 "$size" >/dev/null
  url[tgt]='iscsi\://127.0.0.1\:3311/iqn.2026-11.org.example\:ref/1'
  pid[tgt]=$(cat "$work/tgt/tgtd.pid")
fi

start_ours() { # name port integrity [transport] [bin]
  local name=$1 port=$2 integ=$3 transport=${4:-pipelines} bin=${5:-$work/bin}
  mkdir -p "$work/$name"
  local fmt_var="FORMAT_${name^^}"
  if [[ -n "${!fmt_var:-}" ]]; then
    # shellcheck disable=SC2086 # the format options are split on purpose
    dotnet "$bin/integrity-target.dll" format "$work/$name/lun0.img" --size "$size" --block-size 512 ${!fmt_var} >"$work/$name.format.log" 2>&1
  fi
  dotnet "$bin/integrity-target.dll" serve --listen 127.0.0.1:"$port" --iqn iqn.2026-11.org.example:"$name" \
    --data-dir "$work/$name" --lun "$work/$name/lun0.img" --size "$size" --block-size 512 --integrity "$integ" \
    --transport "$transport" --log-level "${LOG_LEVEL:-Warning}" >"$work/$name.log" 2>&1 &
  pids+=($!); pid[$name]=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.2; done
  url[$name]="iscsi\\://127.0.0.1\\:$port/iqn.2026-11.org.example\\:$name/0"
}
# Started in the order TARGETS gives (the LUNs are filled in that order too).
for t in "${targets[@]}"; do
  case $t in
    on) start_ours on 3312 true ;;
    off) start_ours off 3313 false ;;
    dotnetty) start_ours dotnetty 3314 false dotnetty ;;
    onB) start_ours onB 3315 true pipelines "$work/binB" ;;
  esac
done

if [[ -n "${STRESS_CPU:-}" ]]; then
  stress-ng --cpu "$STRESS_CPU" --quiet >/dev/null 2>&1 &
  pids+=($!)
fi

# name rw bs iodepth
jobs=("seqwrite-1M-QD8 write 1M 8" "seqread-1M-QD8 read 1M 8" "randwrite-4k-QD32 randwrite 4k 32"
      "randread-4k-QD32 randread 4k 32" "randwrite-4k-QD1 randwrite 4k 1" "randread-4k-QD1 randread 4k 1")
[[ -n "${JOBS:-}" ]] && IFS=';' read -r -a jobs <<<"$JOBS"

cpu_ticks() { # utime+stime of a process and its threads, in clock ticks
  awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

activity() { # CPU ticks and bytes written (wchar) of every server, one number each, summed
  local p sum=0
  for p in "${pid[@]}"; do
    sum=$(( sum + $(cpu_ticks "$p") + $(awk '/^wchar/ { print int($2 / 4096) }' "/proc/$p/io" 2>/dev/null || echo 0) ))
  done
  echo "$sum"
}

# Before every cell: sync, then wait until no server has used CPU or written anything for half a second (at
# most 30 s). The integrity servers go on working after a write cell ends (a background checkpoint copies
# blocks home and flushes); without the wait that work can run into the next target's timed cell.
settle_s=0
settle() {
  local a b i t0=$SECONDS
  for ((i = 0; i < 60; i++)); do
    sync; a=$(activity); sleep 0.5; b=$(activity)
    (( b - a <= 1 )) && break
  done
  settle_s=$(( settle_s + SECONDS - t0 ))
}

run_fio() { # target rw bs depth [fio options...] -> "iops MB/s p99_us cpu_us_per_io p99.9_us max_us"
  local out c0 c1 extra=("${@:5}")
  c0=$(cpu_ticks "${pid[$1]}")
  out=$("$FIO" --name=j --ioengine=libiscsi --filename="${url[$1]}" --rw="$2" --bs="$3" --iodepth="$4" \
        --size="$size" --time_based --runtime="$runtime" --ramp_time=1 --output-format=json "${extra[@]}" 2>/dev/null)
  c1=$(cpu_ticks "${pid[$1]}")
  python3 -c '
import sys, json, os
t = sys.stdin.read(); j = json.loads(t[t.index("{"):])["jobs"][0]
d = j["write"] if j["write"]["io_bytes"] > 0 else j["read"]
pct = d["clat_ns"]["percentile"]
p99, p999, worst = pct.get("99.000000", 0) / 1000, pct.get("99.900000", 0) / 1000, d["clat_ns"]["max"] / 1000
runtime, ramp = float(sys.argv[1]), 1.0
ticks = (int(sys.argv[3]) - int(sys.argv[2])) / os.sysconf("SC_CLK_TCK")
ios = max(d["iops"] * (runtime + ramp), 1)  # the server also served the ramp-up second
print("%.0f %.1f %.0f %.1f %.0f %.0f" % (d["iops"], d["bw_bytes"] / 1e6, p99, ticks * 1e6 / ios, p999, worst))' "$runtime" "$c0" "$c1" <<<"$out"
}

# Precondition: fill every LUN once so reads do not hit holes.
for t in "${targets[@]}"; do "$FIO" --name=fill --ioengine=libiscsi --filename="${url[$t]}" --rw=write --bs=1M --iodepth=8 --size="$size" >/dev/null 2>&1; done

# Every cell of every round, "job target round iops MB/s p99 cpu p99.9 max" per line; the tables are derived from it.
cells=$work/cells.txt
for ((r = 0; r < rounds; r++)); do
  for j in "${jobs[@]}"; do
    read -r name rw bs depth extra <<<"$j"
    # The targets take turns going first, and every cell starts with no dirty page cache: otherwise the
    # kernel writes back one target's unsynced writes (integrity off and tgt never sync during a job)
    # while the next target's cell is being timed, and that cell pays for them.
    # Odd rounds go the other way round, so no target always follows the same one. (This and the idle wait did
    # not remove the A/B bias: with one build in both slots the server started and filled later still got ~+7 %
    # at 4k QD32 writes, docs "Measured"; run A/Bs both ways round, TARGETS="onB on off tgt" for the second.)
    for ((k = 0; k < ${#targets[@]}; k++)); do
      n=${#targets[@]}
      if (( r % 2 == 0 )); then t=${targets[$(( (k + r) % n ))]}; else t=${targets[$(( (n - 1 - k + r) % n ))]}; fi
      settle
      # shellcheck disable=SC2086 # the extra fio options are split on purpose
      echo "$name $t $r $(run_fio "$t" "$rw" "$bs" "$depth" $extra)" >>"$cells"
    done
  done
done
[[ -n "${KEEP_CELLS:-}" ]] && cp "$cells" "$KEEP_CELLS"

# Best of the rounds per cell for the IOPS columns; the ratios are means of per-round ratios (the two cells
# of a round ran minutes apart at most) with their spread, which shows how far this machine's noise moves
# the comparison. p99 and CPU per I/O are medians over the rounds.
python3 - "$cells" "${targets[*]}" "${jobs[@]}" <<'PY'
import sys, statistics
cells = {}
for line in open(sys.argv[1]):
    job, target, rnd, iops, mbs, p99, cpu, p999, worst = line.split()
    cells.setdefault((job, target), {})[int(rnd)] = (float(iops), mbs, float(p99), float(cpu), float(p999), float(worst))
targets = sys.argv[2].split()
jobs = [s.split()[0] for s in sys.argv[3:]]
def ratio(job, a, b, k=0):
    if (job, a) not in cells or (job, b) not in cells: return "–"
    A, B = cells[(job, a)], cells[(job, b)]
    rr = [A[r][k] / max(B[r][k], 1e-9) for r in sorted(A) if r in B]
    return "%.2f (%.2f–%.2f)" % (sum(rr) / len(rr), min(rr), max(rr))
pairs = [(a, b) for a, b in (("on", "off"), ("on", "tgt"), ("onB", "on"), ("onB", "off"), ("dotnetty", "off")) if a in targets and b in targets]
print("| job | " + " | ".join("%s IOPS (MB/s)" % t for t in targets) + " | " + " | ".join("%s/%s per round: mean (min–max)" % p for p in pairs) + " |")
print("|---|" + "---|" * (len(targets) + len(pairs)))
for job in jobs:
    best = {t: max(cells[(job, t)].values(), key=lambda c: c[0]) for t in targets}
    print("| %s | " % job + " | ".join("%.0f (%s)" % best[t][:2] for t in targets) + " | " + " | ".join(ratio(job, a, b) for a, b in pairs) + " |")
print()
print("p99 completion latency in µs (median over rounds), and the per-round p99 ratio to tgt:")
print()
cmp = [t for t in targets if t != "tgt"] if "tgt" in targets else []
print("| job | " + " | ".join("%s p99" % t for t in targets) + "".join(" | %s/tgt p99" % t for t in cmp) + " |")
print("|---|" + "---|" * (len(targets) + len(cmp)))
for job in jobs:
    med = {t: statistics.median(c[2] for c in cells[(job, t)].values()) for t in targets}
    print("| %s | " % job + " | ".join("%.0f" % med[t] for t in targets) + "".join(" | " + ratio(job, t, "tgt", 2) for t in cmp) + " |")
print()
print("p99.9 and the slowest command's completion latency in µs (medians over rounds; a stall that hits a few")
print("commands in a cell, e.g. ~30 of ~100,000 at 4k QD1, shows only in the max):")
print()
print("| job | " + " | ".join("%s p99.9 (max)" % t for t in targets) + " |")
print("|---|" + "---|" * len(targets))
for job in jobs:
    print("| %s | " % job + " | ".join("%.0f (%.0f)" % (statistics.median(c[4] for c in cells[(job, t)].values()),
                                                     statistics.median(c[5] for c in cells[(job, t)].values())) for t in targets) + " |")
print()
print("Server CPU time per I/O in µs (process user+system from /proc, median over rounds):")
print()
print("| job | " + " | ".join(targets) + " |")
print("|---|" + "---|" * len(targets))
for job in jobs:
    print("| %s | " % job + " | ".join("%.1f" % statistics.median(c[3] for c in cells[(job, t)].values()) for t in targets) + " |")
PY
echo
echo "fio $("$FIO" --version), runtime ${runtime}s per cell, $rounds rounds (targets take turns going first, odd rounds in reverse order; before every cell sync and wait until the servers are idle: ${settle_s}s waited in all), size $size, $(nproc) cores${STRESS_CPU:+, stress-ng --cpu $STRESS_CPU running}, $(date -u +%F)"
