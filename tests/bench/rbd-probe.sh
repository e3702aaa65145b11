#!/usr/bin/env bash
# Where a small write's (and a 1 MiB read's) time goes on an RBD LUN, per target, on ONE throwaway ceph-mini
# cluster: fio libiscsi against tgt-rbd and integrity-target (integrity on and off), one cell at a time, with
# the counters around each cell that say what it cost:
#   - the OSD's perf counters (ops, bytes, latencies, BlueStore deferred writes) from its admin socket,
#   - the gateway's own librbd/objecter counters (what it sent, librbd's write latency, flushes) from the
#     client admin socket every librados client of this cluster opens (admin_socket in ceph.conf [client]),
#   - CPU seconds per process from /proc (ceph-osd, ceph-mon, ceph-mgr, the gateway, fio) and the machine's,
#     and per thread name for the OSD and the gateway (which OSD stage, .NET or librados threads),
#   - for integrity on: the JournalStats Debug line of each checkpoint (transactions, home copies, waits),
#   - the OSD ops that arrive after fio ended (background home copies and checkpoints), until the OSD is idle.
# Extra targets, each an image-level librbd override (`rbd config image set`, read at image open; src/
# is not involved):
#   off-cache:   integrity off with librbd's write-around cache on and rbd_cache_writethrough_until_flush
#                off (so it is active without a flush: the gateway flushes nothing with rbd_cache=false)
#                -- sizes how much of off/tgt-rbd is the cache. NOT a safe configuration for this gateway.
#   tgt-nocache: tgt-rbd's second LUN on an image with rbd_cache=false -- what tgt-rbd costs without it.
#   on-nospin, off-nospin: integrity on / off with the .NET thread pool's idle workers not spinning
#                (DOTNET_ThreadPool_UnfairSemaphoreSpinLimit=0 in the gateway's environment; not in the default list).
# Not a test; numbers swing with the machine's load; only the comparison within one run means much.
#   tests/bench/rbd-probe.sh [RUNTIME_SECONDS=10] [SIZE=1G] [ROUNDS=1]
# TARGETS="tgt tgt-nocache on off off-cache" (default all). JOBS="name rw bs depth [fio options];..." (default:
# 4k random write QD32 and QD1, 1M sequential read QD8); "w4k-fsync randwrite 4k 1 --fsync=32" makes fio send
# SYNCHRONIZE CACHE every 32 writes, and after tgt-rbd's first one librbd's write-around cache is on for the rest
# of the run, so put such jobs last. INTEGRITY_TARGET_BIN=DIR (a built integrity-target; else built here),
# CELLS_OUT=FILE (keep the raw per-cell counters, JSON lines), PROBE_KEEP=1 (keep the work dir: server logs).
# PERF_DIR=DIR: a `perf record -g` of the gateway process during each cell, DIR/JOB.TARGET.perf.data (our servers
# then run with DOTNET_PerfMapEnabled=1 so JIT frames have names, in /tmp/perf-PID.map, left for `perf report -i FILE
# --no-children --sort dso,sym`; delete them afterwards).
# Our servers run with --log-level Debug (the JournalStats lines; nothing per command is logged at Debug).
# Run it under the heavy lock: flock /work/.heavy.lock tests/bench/rbd-probe.sh 10 1G 1
set -euo pipefail
runtime=${1:-10}; size=${2:-1G}; rounds=${3:-1}
repo=$(cd "$(dirname "$0")/../.." && pwd)
tools=${SHARED_TOOLS:-$repo/../shared/tools}
[ -d "$tools/ceph-mini" ] || tools=$repo/../../shared/tools
work=$(mktemp -d /tmp/rbd-probe.XXXXXX)
export FIO; FIO=$("$tools/fio-iscsi/build.sh" | tail -n 1)
if [[ -n "${INTEGRITY_TARGET_BIN:-}" ]]; then mkdir -p "$work/bin"; cp -r "$INTEGRITY_TARGET_BIN"/. "$work/bin/"
else dotnet build -c Release "$repo/src/IntegrityTarget.Host" -o "$work/bin" >/dev/null; fi
read -r -a targets <<<"${TARGETS:-tgt tgt-nocache on off off-cache}"
has() { [[ " ${targets[*]} " == *" $1 "* ]]; }

asok=$work/asok; mkdir -p "$asok"
ceph_dir=$work/ceph
CEPH_MINI_EXTRA_CONF=$'[client]\nadmin_socket = '"$asok"'/$name.$pid.$cctid.asok' \
  "$tools/ceph-mini/ceph-mini.sh" start "$ceph_dir" >/dev/null
conf=$ceph_dir/ceph.conf
osd_asok=$ceph_dir/run/ceph-osd.0.asok
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$tools/ceph-mini/tgt-rbd.sh" stop "$ceph_dir" >/dev/null 2>&1 || true
  "$tools/ceph-mini/ceph-mini.sh" stop "$ceph_dir" --wipe >/dev/null 2>&1 || true
  if [[ -n "${PROBE_KEEP:-}" ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

declare -A url pid log
daemon_pid() { awk -v n="$1" '$1 == n { print $2 }' "$ceph_dir/run/daemons.pids"; }
port=${TGT_PORT:-3341}
if has tgt || has tgt-nocache; then
  u=$("$tools/ceph-mini/tgt-rbd.sh" start "$ceph_dir" "$port" rbd/probe-tgt "$size" 2>/dev/null)
  url[tgt]=$(sed 's/:/\\:/g' <<<"$u"); pid[tgt]=$(cat "$ceph_dir/tgt/tgtd.pid")
  if has tgt-nocache; then
    rbd -c "$conf" create --size "$size" rbd/probe-tgt-nocache
    rbd -c "$conf" config image set rbd/probe-tgt-nocache rbd_cache false
    tgtadm -C "$port" --lld iscsi --op new --mode logicalunit --tid 1 --lun 2 --bstype rbd \
      --backing-store rbd/probe-tgt-nocache --bsopts "conf=$conf"
    url[tgt-nocache]=$(sed 's/:/\\:/g; s/\/1$/\/2/' <<<"$u"); pid[tgt-nocache]=${pid[tgt]}
  fi
fi
start_ours() { # name port integrity [VAR=VALUE ...: extra environment of this gateway]
  local name=$1 p=$2 integ=$3; shift 3
  mkdir -p "$work/$name"
  env ${PERF_DIR:+DOTNET_PerfMapEnabled=1} "$@" CEPH_CONF="$conf" dotnet "$work/bin/integrity-target.dll" serve --no-config --listen 127.0.0.1:"$p" --iqn iqn.2026-12.org.example:"$name" \
    --data-dir "$work/$name" --lun "rbd:rbd/probe-$name" --size "${size}iB" --block-size 512 --integrity "$integ" \
    --log-level Debug >"$work/$name.log" 2>&1 &
  pids+=($!); pid[$name]=$!; log[$name]=$work/$name.log
  for _ in $(seq 150); do (echo >/dev/tcp/127.0.0.1/"$p") 2>/dev/null && break; sleep 0.2; done
  url[$name]="iscsi\\://127.0.0.1\\:$p/iqn.2026-12.org.example\\:$name/0"
}
has on && start_ours on $((port + 1)) true
has off && start_ours off $((port + 2)) false
has on-nospin && start_ours on-nospin $((port + 4)) true DOTNET_ThreadPool_UnfairSemaphoreSpinLimit=0
has off-nospin && start_ours off-nospin $((port + 5)) false DOTNET_ThreadPool_UnfairSemaphoreSpinLimit=0
if has off-cache; then
  rbd -c "$conf" create --size "$size" rbd/probe-off-cache
  rbd -c "$conf" config image set rbd/probe-off-cache rbd_cache true
  rbd -c "$conf" config image set rbd/probe-off-cache rbd_cache_writethrough_until_flush false
  start_ours off-cache $((port + 3)) false
fi
for t in "${targets[@]}"; do
  [[ -n "${url[$t]:-}" ]] || { echo "target $t did not start" >&2; cat "$work/$t.log" >&2 || true; exit 1; }
done
echo "librbd settings of each gateway process (its admin socket) and the image's own overrides (rbd config image list):" >&2
for t in "${targets[@]}"; do
  sock=$(ls "$asok"/client.*."${pid[$t]}".*asok 2>/dev/null | head -n 1 || true)
  printf '  %-12s %s %s\n' "$t" \
    "$([[ -n "$sock" ]] && python3 "$repo/tests/bench/rbd-probe.py" config "$sock" rbd_cache rbd_cache_policy rbd_cache_writethrough_until_flush rbd_cache_max_dirty rbd_readahead_max_bytes rbd_readahead_disable_after_bytes)" \
    "$(rbd -c "$conf" config image list "rbd/probe-$t" 2>/dev/null | awk '$3 == "image" { printf "image: %s=%s ", $1, $2 }')" >&2
done

jobs=("randwrite-4k-QD32 randwrite 4k 32" "randwrite-4k-QD1 randwrite 4k 1" "seqread-1M-QD8 read 1M 8")
[[ -n "${JOBS:-}" ]] && mapfile -t jobs < <(tr ';' '\n' <<<"$JOBS")

# Precondition: fill every LUN once, so reads hit written objects and writes overwrite (as in fio-compare-rbd.sh).
for t in "${targets[@]}"; do "$FIO" --name=fill --ioengine=libiscsi --filename="${url[$t]}" --rw=write --bs=1M --iodepth=8 --size="$size" >/dev/null 2>&1; done
sleep 5

out=$work/cells.jsonl
export OSD_ASOK=$osd_asok SIZE=$size
for ((r = 0; r < rounds; r++)); do
  for j in "${jobs[@]}"; do
    read -r name rw bs depth opts <<<"$j"
    for ((k = 0; k < ${#targets[@]}; k++)); do
      t=${targets[$(( (k + r) % ${#targets[@]} ))]}
      client_asok=$(ls "$asok"/client.*."${pid[$t]}".*asok 2>/dev/null | tr '\n' ' ' || true)
      PIDS="osd=$(daemon_pid osd.0) mon=$(daemon_pid mon.a) mgr=$(daemon_pid mgr.x) gateway=${pid[$t]}" \
      CLIENT_ASOK=$client_asok LOG=${log[$t]:-} \
        python3 "$repo/tests/bench/rbd-probe.py" cell "$out" "$name" "$t" "${url[$t]}" "$rw" "$bs" "$depth" "$runtime" ${opts:-}
    done
  done
done
python3 "$repo/tests/bench/rbd-probe.py" report "$out"
[[ -n "${CELLS_OUT:-}" ]] && cp "$out" "$CELLS_OUT"
echo
echo "fio $("$FIO" --version), ${runtime}s per cell, $rounds round(s), size $size, one ceph-mini cluster (1 OSD, bluestore on a sparse file), $(nproc) cores, $(date -u +%F)"
echo "tgt-nocache shares tgtd (and its CPU column) with tgt; ceph daemons' CPU includes what other clients of the cluster did meanwhile (nothing else runs I/O)."
