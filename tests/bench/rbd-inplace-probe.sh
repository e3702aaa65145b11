#!/usr/bin/env bash
# Could a small write on RBD go in place, data and tags in ONE librbd write? Measures, on ONE throwaway ceph-mini
# cluster and straight through librbd (python3-rbd, rbd_cache=false as the gateway runs it; no iSCSI, no gateway),
# random writes of the shapes an RBD layout could give a 4 KiB command (see rbd-inplace-probe.py's header):
#   a  4096 B at 4096-aligned offsets                         (what tgt-rbd sends for a 4k write)
#   b  4128 B at object + i*4128, never across a 4 MiB object   (8 x 512 B blocks + 8 x 4 B tags interleaved)
#   c  4096 B + a separate 32 B write to the same object        (today's home copy: data + tag region, no journal)
#   d  4608 B at object + i*4608                                (8 x (512 B + 64 B tag room))
#   e  the two writes of c as ONE librados op on the data object (bypassing librbd: today's slot layout, atomic)
#   f  4096 B + the whole 4096 B tag sector holding its tags, as ONE librados op (both aligned to 4 KiB)
#   g  8192 B at 8192-aligned offsets                           (4 KiB of data + a 4 KiB tag sector of its own)
#   h  4096 B aligned + its 32 B of tags as an omap key of the object, as ONE librados op (tags in BlueStore's KV store)
# per cell: IOPS, mean/p99 latency per command, the OSD's op/byte/BlueStore counters (admin socket) and CPU per command
# of the OSD and of the client process (/proc). Cells alternate: each round runs every variant at QD1, then at QD32,
# starting with a different variant each round; ratios are taken against variant a of the same round.
# Not a test; the machine is noisy (2 cores), only ratios within one run mean much.
#   tests/bench/rbd-inplace-probe.sh [SECONDS=8] [ROUNDS=2] [SIZE=1G]
# VARIANTS="a b c d e f g h" and DEPTHS="1 32" (defaults), CELLS_OUT=FILE keeps the raw per-cell JSON lines,
# PYTHON=/usr/bin/python3 (the interpreter that has Debian's python3-rados/python3-rbd).
# Run it under the heavy lock: flock /work/.heavy.lock tests/bench/rbd-inplace-probe.sh 8 2
set -euo pipefail
seconds=${1:-8}; rounds=${2:-2}; size=${3:-1G}
repo=$(cd "$(dirname "$0")/../.." && pwd)
tools=${SHARED_TOOLS:-$repo/../shared/tools}
[ -d "$tools/ceph-mini" ] || tools=$repo/../../shared/tools
py=${PYTHON:-/usr/bin/python3}
probe=$repo/tests/bench/rbd-inplace-probe.py
"$py" -c 'import rados, rbd' 2>/dev/null || { echo "$py has no rados/rbd modules: apt-get install python3-rados python3-rbd" >&2; exit 2; }
read -r -a variants <<<"${VARIANTS:-a b c d e f g h}"
read -r -a depths <<<"${DEPTHS:-1 32}"

work=$(mktemp -d /tmp/rbd-inplace.XXXXXX)
ceph_dir=$work/ceph
cleanup() {
  "$tools/ceph-mini/ceph-mini.sh" stop "$ceph_dir" --wipe >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

conf=$("$tools/ceph-mini/ceph-mini.sh" start "$ceph_dir" | tail -n 1)
osd_pid=$(awk '$1 == "osd.0" { print $2 }' "$ceph_dir/run/daemons.pids")
export OSD_ASOK=$ceph_dir/run/ceph-osd.0.asok OSD_PID=$osd_pid
image=inplace
rbd -c "$conf" create --size "$size" rbd/$image
info="image rbd/$image: $(rbd -c "$conf" info rbd/$image | grep -E 'order|features' | tr -s ' ' | tr '\n' ' ')
OSD: $("$py" "$repo/tests/bench/rbd-probe.py" config "$OSD_ASOK" bluestore_min_alloc_size_hdd bluestore_prefer_deferred_size_hdd bluestore_csum_type bluestore_compression_mode osd_objectstore)"
echo "$info" >&2
"$py" "$probe" fill "$conf" rbd "$image"
sleep 3

out=$work/cells.jsonl
for ((r = 0; r < rounds; r++)); do
  for qd in "${depths[@]}"; do
    for ((k = 0; k < ${#variants[@]}; k++)); do
      v=${variants[$(( (k + r) % ${#variants[@]} ))]}
      "$py" "$probe" cell "$conf" rbd "$image" "$out" "$v" "$qd" "$seconds" "$r"
      sleep 1
    done
  done
done
"$py" "$probe" report "$out"
echo
echo "$info"
[[ -n "${CELLS_OUT:-}" ]] && cp "$out" "$CELLS_OUT"
echo
echo "librbd $(dpkg-query -W -f '${Version}' librbd1) via python3-rbd, rbd_cache=false, ${seconds}s per cell, $rounds round(s), image $size (4 MiB objects, default features), one ceph-mini cluster (1 OSD, BlueStore on a sparse file, HDD tuning), $(nproc) cores, $(date -u +%F)"
