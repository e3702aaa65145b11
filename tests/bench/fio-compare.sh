#!/usr/bin/env bash
# Side-by-side fio (libiscsi engine) comparison in ONE run: integrity-target with integrity on,
# integrity off, integrity off over the DotNetty transport, and tgt (reference) on the same kind of
# sparse backing file. Prints a markdown
# table with ratios. Not a test: machines here are noisy, only the ratios in one run mean much.
#   tests/bench/fio-compare.sh [RUNTIME_SECONDS=10] [SIZE=1G] [ROUNDS=2]
set -euo pipefail
runtime=${1:-10}; size=${2:-1G}; rounds=${3:-2}
repo=$(cd "$(dirname "$0")/../.." && pwd)
tools=${SHARED_TOOLS:-$repo/../shared/tools}
work=$(mktemp -d /tmp/fio-compare.XXXXXX)
FIO=$("$tools/fio-iscsi/build.sh" | tail -n 1)
if [[ -n "${INTEGRITY_TARGET_BIN:-}" ]]; then mkdir -p "$work/bin"; cp -r "$INTEGRITY_TARGET_BIN"/. "$work/bin/"
else dotnet build -c Release "$repo/src/IntegrityTarget.Host" -o "$work/bin" >/dev/null; fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$tools/ref-target.sh" stop "$work/tgt" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Reference target.
"$tools/ref-target.sh" start "$work/tgt" 3311 "$size" >/dev/null
declare -A url
url[tgt]='iscsi\://127.0.0.1\:3311/iqn.2026-11.org.example\:ref/1'

start_ours() { # name port integrity [transport]
  local name=$1 port=$2 integ=$3 transport=${4:-pipelines}
  mkdir -p "$work/$name"
  dotnet "$work/bin/integrity-target.dll" serve --listen 127.0.0.1:"$port" --iqn iqn.2026-11.org.example:"$name" \
    --data-dir "$work/$name" --lun "$work/$name/lun0.img" --size "$size" --block-size 512 --integrity "$integ" \
    --transport "$transport" --log-level Warning >"$work/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.2; done
  url[$name]="iscsi\\://127.0.0.1\\:$port/iqn.2026-11.org.example\\:$name/0"
}
start_ours on 3312 true
start_ours off 3313 false
start_ours dotnetty 3314 false dotnetty
targets=(tgt on off dotnetty)

# name rw bs iodepth
jobs=("seqwrite-1M-QD8 write 1M 8" "seqread-1M-QD8 read 1M 8" "randwrite-4k-QD32 randwrite 4k 32"
      "randread-4k-QD32 randread 4k 32" "randwrite-4k-QD1 randwrite 4k 1" "randread-4k-QD1 randread 4k 1")

run_fio() { # target rw bs depth -> "iops MB/s"
  local out
  out=$("$FIO" --name=j --ioengine=libiscsi --filename="${url[$1]}" --rw="$2" --bs="$3" --iodepth="$4" \
        --size="$size" --time_based --runtime="$runtime" --ramp_time=1 --output-format=json 2>/dev/null)
  python3 -c '
import sys, json
t = sys.stdin.read(); j = json.loads(t[t.index("{"):])["jobs"][0]
d = j["write"] if j["write"]["io_bytes"] > 0 else j["read"]
print("%.0f %.1f" % (d["iops"], d["bw_bytes"] / 1e6))' <<<"$out"
}

# Precondition: fill every LUN once so reads do not hit holes.
for t in "${targets[@]}"; do "$FIO" --name=fill --ioengine=libiscsi --filename="${url[$t]}" --rw=write --bs=1M --iodepth=8 --size="$size" >/dev/null 2>&1; done

# Every cell of every round, "job target round iops MB/s" per line; the table is derived from it.
cells=$work/cells.txt
for ((r = 0; r < rounds; r++)); do
  for j in "${jobs[@]}"; do
    read -r name rw bs depth <<<"$j"
    # The targets take turns going first, and every cell starts with no dirty page cache: otherwise the
    # kernel writes back one target's unsynced writes (integrity off and tgt never sync during a job)
    # while the next target's cell is being timed, and that cell pays for them.
    for ((k = 0; k < ${#targets[@]}; k++)); do
      t=${targets[$(( (k + r) % ${#targets[@]} ))]}
      sync
      echo "$name $t $r $(run_fio "$t" "$rw" "$bs" "$depth")" >>"$cells"
    done
  done
done

# Best of the rounds per cell (the one least disturbed by foreign load) for the IOPS columns. Best-of picks
# each target's luckiest cell, so the on/off ratio of each round (its two cells ran minutes apart at most),
# with its mean and spread, shows how far this machine's noise moves the comparison.
python3 - "$cells" "${jobs[@]}" <<'PY'
import sys
cells = {}
for line in open(sys.argv[1]):
    job, target, rnd, iops, mbs = line.split()
    cells.setdefault((job, target), {})[int(rnd)] = (float(iops), mbs)
print("| job | tgt IOPS (MB/s) | integrity on | integrity off | off, DotNetty | on/tgt | on/off | on/off per round: mean (min–max) | DotNetty/pipelines |")
print("|---|---|---|---|---|---|---|---|---|")
for spec in sys.argv[2:]:
    job = spec.split()[0]
    best = {t: max(cells[(job, t)].values(), key=lambda c: c[0]) for t in ("tgt", "on", "off", "dotnetty")}
    show = lambda t: "%.0f (%s)" % best[t]
    on, off = cells[(job, "on")], cells[(job, "off")]
    rr = [on[r][0] / max(off[r][0], 1) for r in sorted(on)]
    iops = {t: best[t][0] for t in best}
    print("| %s | %s | %s | %s | %s | %.2f | %.2f | %.2f (%.2f–%.2f) | %.2f |" % (
        job, show("tgt"), show("on"), show("off"), show("dotnetty"), iops["on"] / max(iops["tgt"], 1),
        iops["on"] / max(iops["off"], 1), sum(rr) / len(rr), min(rr), max(rr), iops["dotnetty"] / max(iops["off"], 1)))
PY
echo
echo "fio $("$FIO" --version), runtime ${runtime}s per cell, best of $rounds rounds (targets take turns going first; sync before every cell), size $size, $(nproc) cores, $(date -u +%F)"
