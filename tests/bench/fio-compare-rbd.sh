#!/usr/bin/env bash
# Side-by-side fio (libiscsi engine) comparison on ONE Ceph cluster, in one run: integrity-target serving an
# RBD image with integrity on and with integrity off, and tgt's own RBD backing store (Debian's tgt-rbd)
# as the reference, each on its own image of the same size. Prints a markdown table with ratios. Not a
# test: machines here are noisy, only the ratios within one run mean much.
#   tests/bench/fio-compare-rbd.sh [RUNTIME_SECONDS=10] [SIZE=1G] [ROUNDS=2]
# EXTRA_BUILDS="NAME:DIR ..." adds, in the same run, an integrity-on target served by each other build of
# integrity-target (a directory holding integrity-target.dll), as column "on-NAME".
# FORMAT_ON="--journal-size 256MiB", FORMAT_ON_NAME=... format that target's image with these `format` options
# before serving it (e.g. EXTRA_BUILDS="j256:<the same build>" FORMAT_ON_J256="--journal-size 256MiB").
# Uses the cluster CEPH_DIR names (a running `ceph-mini.sh start DIR`), else starts a throwaway one.
# tgt-rbd reads librbd's defaults from ceph.conf (rbd cache on, policy writearound, write-through until the first
# flush, after it a write completes once librbd has sent it); these jobs send no SYNCHRONIZE CACHE, so tgt-rbd stays
# write-through here (measured with tests/bench/rbd-probe.sh; a job with --fsync turns write-around on for the rest
# of the run). integrity-target runs librbd without a cache (a write completes once the OSDs have it, so
# nothing acknowledged lives only in the gateway's memory).
set -euo pipefail
runtime=${1:-10}; size=${2:-1G}; rounds=${3:-2}
repo=$(cd "$(dirname "$0")/../.." && pwd)
tools=${SHARED_TOOLS:-$repo/../shared/tools}
[ -d "$tools/ceph-mini" ] || tools=$repo/../../shared/tools
work=$(mktemp -d /tmp/fio-rbd.XXXXXX)
FIO=$("$tools/fio-iscsi/build.sh" | tail -n 1)
if [[ -n "${INTEGRITY_TARGET_BIN:-}" ]]; then mkdir -p "$work/bin"; cp -r "$INTEGRITY_TARGET_BIN"/. "$work/bin/"
else dotnet build -c Release "$repo/src/IntegrityTarget.Host" -o "$work/bin" >/dev/null; fi
own_cluster=
if [[ -n "${CEPH_DIR:-}" ]]; then ceph_dir=$CEPH_DIR
else ceph_dir=$work/ceph; own_cluster=1; "$tools/ceph-mini/ceph-mini.sh" start "$ceph_dir" >/dev/null; fi
conf=$ceph_dir/ceph.conf
tag=$$
pids=()
extra=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$tools/ceph-mini/tgt-rbd.sh" stop "$ceph_dir" >/dev/null 2>&1 || true
  for i in tgt on off "${extra[@]}"; do rbd -c "$conf" rm --no-progress "rbd/bench-$i-$tag" >/dev/null 2>&1 || true; done
  [[ -n "$own_cluster" ]] && "$tools/ceph-mini/ceph-mini.sh" stop "$ceph_dir" --wipe >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

declare -A url
tgt_port=${TGT_PORT:-3331}
u=$("$tools/ceph-mini/tgt-rbd.sh" start "$ceph_dir" "$tgt_port" "rbd/bench-tgt-$tag" "$size" 2>/dev/null)
url[tgt]=$(sed 's/:/\\:/g' <<<"$u")

start_ours() { # name port integrity [bin]
  local name=$1 port=$2 integ=$3 bin=${4:-$work/bin}
  mkdir -p "$work/$name"
  local fmt_var="FORMAT_${name^^}"; fmt_var=${fmt_var//-/_}
  if [[ -n "${!fmt_var:-}" ]]; then
    # shellcheck disable=SC2086 # the format options are split on purpose
    CEPH_CONF=$conf dotnet "$bin/integrity-target.dll" format "rbd:rbd/bench-$name-$tag" --size "${size}iB" --block-size 512 \
      ${!fmt_var} >"$work/$name.format.log" 2>&1
  fi
  CEPH_CONF=$conf dotnet "$bin/integrity-target.dll" serve --no-config --listen 127.0.0.1:"$port" --iqn iqn.2026-11.org.example:"$name" \
    --data-dir "$work/$name" --lun "rbd:rbd/bench-$name-$tag" --size "${size}iB" --block-size 512 --integrity "$integ" \
    --log-level Warning >"$work/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 150); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.2; done
  url[$name]="iscsi\\://127.0.0.1\\:$port/iqn.2026-11.org.example\\:$name/0"
}
start_ours on $((tgt_port + 1)) true
start_ours off $((tgt_port + 2)) false
targets=(tgt on off)
k=3
for e in ${EXTRA_BUILDS:-}; do
  name=on-${e%%:*}; mkdir -p "$work/bin-$name"; cp -r "${e#*:}"/. "$work/bin-$name/"
  start_ours "$name" $((tgt_port + k)) true "$work/bin-$name"
  targets+=("$name"); extra+=("$name"); k=$((k + 1))
done

jobs=("seqwrite-1M-QD8 write 1M 8" "seqread-1M-QD8 read 1M 8" "randwrite-4k-QD32 randwrite 4k 32"
      "randread-4k-QD32 randread 4k 32" "randwrite-4k-QD1 randwrite 4k 1" "randread-4k-QD1 randread 4k 1")
[[ -n "${JOBS:-}" ]] && mapfile -t jobs < <(tr ';' '\n' <<<"$JOBS")

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

# Precondition: fill every LUN once so reads do not hit unallocated objects.
for t in "${targets[@]}"; do "$FIO" --name=fill --ioengine=libiscsi --filename="${url[$t]}" --rw=write --bs=1M --iodepth=8 --size="$size" >/dev/null 2>&1; done

cells=$work/cells.txt
for ((r = 0; r < rounds; r++)); do
  for j in "${jobs[@]}"; do
    read -r name rw bs depth <<<"$j"
    for ((k = 0; k < ${#targets[@]}; k++)); do
      t=${targets[$(( (k + r) % ${#targets[@]} ))]}
      echo "$name $t $r $(run_fio "$t" "$rw" "$bs" "$depth")" | tee -a "$cells" >&2
    done
  done
done

python3 - "$cells" "${#extra[@]}" "${extra[@]}" "${jobs[@]}" <<'PY'
import sys
cells = {}
for line in open(sys.argv[1]):
    job, target, rnd, iops, mbs = line.split()
    cells.setdefault((job, target), {})[int(rnd)] = (float(iops), mbs)
n = int(sys.argv[2]); extra = sys.argv[3:3 + n]; specs = sys.argv[3 + n:]
print("| job | tgt-rbd IOPS (MB/s) | integrity on | integrity off | on/tgt-rbd | off/tgt-rbd | on/tgt-rbd per round: mean (min–max) | on/off |"
      + "".join(" %s | %s/tgt-rbd |" % (e, e) for e in extra))
print("|---|---|---|---|---|---|---|---|" + "---|---|" * n)
for spec in specs:
    job = spec.split()[0]
    best = {t: max(cells[(job, t)].values(), key=lambda c: c[0]) for t in ["tgt", "on", "off"] + extra}
    show = lambda t: "%.0f (%s)" % best[t]
    on, tgt = cells[(job, "on")], cells[(job, "tgt")]
    rr = [on[r][0] / max(tgt[r][0], 1) for r in sorted(on)]
    iops = {t: best[t][0] for t in best}
    print("| %s | %s | %s | %s | %.2f | %.2f | %.2f (%.2f–%.2f) | %.2f |" % (
        job, show("tgt"), show("on"), show("off"), iops["on"] / max(iops["tgt"], 1), iops["off"] / max(iops["tgt"], 1),
        sum(rr) / len(rr), min(rr), max(rr), iops["on"] / max(iops["off"], 1))
        + "".join(" %s | %.2f |" % (show(e), iops[e] / max(iops["tgt"], 1)) for e in extra))
PY
echo
echo "fio $("$FIO" --version), runtime ${runtime}s per cell, best of $rounds rounds (targets take turns going first), size $size, one ceph-mini cluster (1 OSD, bluestore on a sparse file), $(nproc) cores, $(date -u +%F)"
