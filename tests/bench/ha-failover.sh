#!/usr/bin/env bash
# Failover time of two gateways sharing one LUN file, measured from a real Linux initiator: the
# vm-initiator guest (open-iscsi + dm-multipath + scsi_dh_alua) writes fsync'd files through the
# multipath device; when it is steady the owning gateway is killed with SIGKILL. Reported per run:
#   takeover  kill -> the survivor logs that it owns the LUN (lock taken, journal replayed), in ms
#   stall     the guest's longest time without a completed fsync around the failure (its
#             "failover stall": owner's death -> first write done through the survivor, plus one fsync)
# Profiles: "default" = gateway defaults and the guest's multipath defaults (fast_io_fail_tmo 5 s,
# polling_interval 2 s); "tuned" = Ha:LockRetryMilliseconds 100, HeartbeatMilliseconds 250,
# PeerTimeoutMilliseconds 1000 and fast_io_fail_tmo 2 s, polling_interval 1 s; "tuned1" = "tuned" with
# fast_io_fail_tmo 1 s (the guest's own recovery timeout is most of a tuned failover).
# Not a test: each run is a 1-2 minute VM boot under TCG; run it under the heavy lock:
#   flock /work/.heavy.lock tests/bench/ha-failover.sh [RUNS_PER_PROFILE=3] [PROFILES="default tuned"]
# INTEGRITY_TARGET_BIN=DIR uses that build instead of building the working tree; KEEP=1 keeps the logs;
# CEPH_CONF=FILE shares a fresh image of that cluster's pool rbd instead of a file (ceph-mini.sh start DIR).
set -euo pipefail
runs=${1:-3}; read -r -a profiles <<<"${2:-default tuned}"
repo=$(cd "$(dirname "$0")/../.." && pwd)
tools=${SHARED_TOOLS:-${SHARED_DIR:+$SHARED_DIR/tools}}
[[ -z "$tools" ]] && for d in "$repo/../shared/tools" "$repo/../../shared/tools"; do [[ -d "$d" ]] && tools=$d && break; done
work=$(mktemp -d /tmp/ha-failover.XXXXXX)
if [[ -n "${INTEGRITY_TARGET_BIN:-}" ]]; then mkdir -p "$work/bin"; cp -r "$INTEGRITY_TARGET_BIN"/. "$work/bin/"
else dotnet build -c Release "$repo/src/IntegrityTarget.Host" -o "$work/bin" >/dev/null; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [[ ${KEEP:-0} == 1 ]]; then echo "logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# epoch seconds of the first JSON log event whose message template contains $2
event_time() { python3 - "$1" "$2" <<'EOF'
import json, sys, datetime
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith('{'): continue
    e = json.loads(line)
    if sys.argv[2] in e.get('@mt', ''):
        t = e['@t'][:26].rstrip('Z')
        print(datetime.datetime.fromisoformat(t).replace(tzinfo=datetime.timezone.utc).timestamp()); break
EOF
}

results=()
for profile in "${profiles[@]}"; do
  for run in $(seq "$runs"); do
    d="$work/$profile-$run"; mkdir -p "$d/gw1" "$d/gw2" "$d/shared"
    p1=$(free_port); p2=$(free_port); q1=$(free_port); q2=$(free_port)
    ha=(--Ha:PeerSecret=bench-peer-secret-0123 --Ha:Gateways:0:Name=gw1 "--Ha:Gateways:0:Peer=127.0.0.1:$q1"
        --Ha:Gateways:1:Name=gw2 "--Ha:Gateways:1:Peer=127.0.0.1:$q2" --Logging:Json=true)
    guest=()
    if [[ $profile == tuned* ]]; then
      ha+=(--Ha:LockRetryMilliseconds=100 --Ha:HeartbeatMilliseconds=250 --Ha:PeerTimeoutMilliseconds=1000)
      guest=(VMX_MP_FAST_IO_FAIL=2 VMX_MP_POLLING_INTERVAL=1)
      [[ $profile == tuned1 ]] && guest[0]=VMX_MP_FAST_IO_FAIL=1
    fi
    lun="$d/shared/lun0.img"
    if [[ -n ${CEPH_CONF:-} ]]; then lun="rbd:rbd/ha-bench-$$-$profile-$run"; ha+=(--ceph-conf "$CEPH_CONF"); fi
    start() { # NAME PORT: sets $started to the gateway's pid
      dotnet "$work/bin/integrity-target.dll" serve --listen "127.0.0.1:$2" --iqn iqn.2026-11.org.example:ha \
        --data-dir "$d/$1" --lun "$lun" --size 1GiB --ha-self "$1" "${ha[@]}" >"$d/$1/log.json" 2>&1 </dev/null &
      started=$!; pids+=("$started"); disown "$started" # no "Killed" line when it is killed
    }
    start gw1 "$p1"; pid1=$started
    for _ in $(seq 100); do grep -q 'now the owner' "$d/gw1/log.json" 2>/dev/null && break; sleep 0.1; done
    start gw2 "$p2"; pid2=$started
    for _ in $(seq 100); do grep -q 'commands are forwarded' "$d/gw2/log.json" 2>/dev/null && break; sleep 0.1; done
    log="$d/vm.log"
    env "${guest[@]}" VMX_MP_SECONDS=30 VM_RUN_DIR="$d/vm" "$tools/vm-initiator/run.sh" --multipath \
      "127.0.0.1:$p1,127.0.0.1:$p2" iqn.2026-11.org.example:ha 0 >"$log" 2>&1 &
    vm=$!
    until grep -qx 'VMX-MP: READY' "$log" 2>/dev/null; do kill -0 $vm 2>/dev/null || break; sleep 0.1; done
    killed=$(date +%s.%N); kill -9 "$pid1"
    wait $vm || true
    owner=$(event_time "$d/gw2/log.json" 'now the owner')
    locked=$(event_time "$d/gw2/log.json" 'got the lock')
    takeover=$(python3 -c "print(round((float('$owner') - float('$killed')) * 1000))" 2>/dev/null || echo '?')
    lockwait=$(python3 -c "print(round((float('$locked') - float('$killed')) * 1000))" 2>/dev/null || echo '?')
    stall=$(grep -o -m1 'failover stall [0-9.]*s' "$log" | grep -o '[0-9.]*' || echo '?')
    verdict=$(tail -n 1 "$log")
    results+=("| $profile | $run | $lockwait | $takeover | $stall | ${verdict#VM-INITIATOR: } |")
    echo "$profile run $run: lock after ${lockwait} ms, owner after ${takeover} ms, guest stall ${stall} s, ${verdict}" >&2
    kill "$pid2" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid2" 2>/dev/null || break; sleep 0.1; done
    [[ $lun == rbd:* ]] && rbd -c "$CEPH_CONF" rm --no-progress "${lun#rbd:}" >/dev/null 2>&1 || true
  done
done
echo "| profile | run | kill -> survivor has the lock (ms) | kill -> survivor owns the LUN (ms) | guest I/O stall (s) | guest verdict |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
echo
echo "$(date +%F), 2 cores, vm-initiator (QEMU TCG, Linux $(uname -r | cut -d- -f1) host), $runs run(s) per profile, LUN on $([[ -n ${CEPH_CONF:-} ]] && echo "an RBD image (ceph-mini)" || echo "a shared file")"
