#!/usr/bin/env bash
# Stands in for the README's "Configuring two gateways" block, which needs two hosts (see
# tests/IntegrityTarget.Integration.Tests/Readme/ReadmeCommandTests.cs; the ESXi block has
# readme-esxi-check.sh). It runs inside the test's private network and mount namespaces, as root, and
# plays both hosts on one machine:
#   - the gateways' addresses of the blocks (10.0.0.1, 10.0.0.2) go on this namespace's loopback, and a
#     private directory is bind-mounted over the LUN path's top directory (/srv), so the JSON of
#     "Configuring two gateways" is used exactly as printed;
#   - each host is a working directory of its own (its own data directory and status socket), where the
#     block's serve line for that host runs; the block's status line must say what its comment says
#     (owner on the first host, follower of gw1 on the second);
#   - INQUIRY through each gateway (iscsi-inq) gives the vendor and product of the dm-multipath device
#     section and of the ESXi SATP rule, with TPGS set (the rule's tpgs_on), and the same LU designator;
#   - the owner is killed with SIGKILL: the second host's status must then say owner, and it stops cleanly.
set -euo pipefail
readme=${README:-README.md}
fail() { echo "readme-ha-check: $*" >&2; for f in "${logs[@]}"; do echo "== $f"; cat "$f"; done >&2; exit 1; }
logs=()
# the first fenced block of KIND after the heading HEADING
block() { awk -v h="$1" -v k="$2" '$0 == h {s=1; next} s && /^## / {exit} s && $0 == "```" k {b=1; next} b && $0 == "```" {exit} b' "$readme"; }
json=$(block "### Configuring two gateways" json)
cmds=$(block "### Configuring two gateways" sh)
device=$(block "### Linux dm-multipath" "")
esxi=$(block "### VMware ESXi" sh)
[ -n "$json" ] && [ -n "$cmds" ] && [ -n "$device" ] && [ -n "$esxi" ] || fail "a block of the two-gateway section is missing in $readme"
mapfile -t serve < <(grep 'integrity-target serve ' <<<"$cmds")
status=$(grep 'integrity-target status' <<<"$cmds")
[ ${#serve[@]} = 2 ] || fail "expected two serve lines (one per host), found ${#serve[@]}"

# the hosts' addresses, and the shared LUN directory
for ip in $(grep -ohE '([0-9]{1,3}\.){3}[0-9]{1,3}' <<<"$json$cmds" | sort -u); do ip addr add "$ip/32" dev lo; done
lun=$(grep -oE '"Path": *"[^"]+"' <<<"$json" | head -1 | sed -E 's/.*"([^"]+)"$/\1/')
top=/$(cut -d/ -f2 <<<"$lun")
work=$(mktemp -d /tmp/readme-ha.XXXXXX)
mkdir -p "$work/store" "$top" && mount --bind "$work/store" "$top"
mkdir -p "$(dirname "$lun")"
trap 'for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; umount "$top" 2>/dev/null || true; rm -rf "$work"' EXIT

pids=()
for h in 1 2; do
  mkdir -p "$work/host$h"
  printf '%s\n' "$json" >"$work/host$h/ha.json"
  logs+=("$work/host$h/log")
  (cd "$work/host$h" && exec bash -c "${serve[$((h - 1))]}") </dev/null >"$work/host$h/log" 2>&1 &
  pids+=($!); disown $!
  # the first host takes the LUN before the second starts, as the block's order says
  for _ in $(seq 600); do grep -q 'Ready;' "$work/host$h/log" && break; kill -0 "${pids[-1]}" 2>/dev/null || fail "host $h's gateway exited"; sleep 0.1; done
  grep -q 'Ready;' "$work/host$h/log" || fail "host $h's gateway not ready after 60 s"
done
for _ in $(seq 300); do grep -q 'commands are forwarded to it' "$work/host2/log" && break; sleep 0.1; done
say() { (cd "$work/host$1" && bash -c "$status"); }
s1=$(say 1) && s2=$(say 2) || fail "status failed"
# the status line's comment: "what host 1 says" / "what host 2 says"
mapfile -t said < <(grep -oE '"[^"]+"' <<<"${status#*#}" | tr -d '"')
[ ${#said[@]} = 2 ] || fail "the status line's comment should quote what each host says"
grep -qF "${said[0]}" <<<"$s1" || fail "host 1's status does not say '${said[0]}': $s1"
grep -qF "${said[1]}" <<<"$s2" || fail "host 2's status does not say '${said[1]}': $s2"
grep -qF 'gateways: this one is owner' <<<"$s1" || fail "host 1 does not own the LUN: $s1"
# the follower reports the LUN's size too (it has no volume open, but read the geometry from the store)
size1=$(grep -oE 'LUN 0: [^ ]+ +[0-9.]+ [KMGT]?i?B \([0-9]+ x [0-9]+\)' <<<"$s1" | sed -E 's/^LUN 0: [^ ]+ +//') || fail "no LUN size in host 1's status: $s1"
grep -qF "$size1" <<<"$s2" || fail "host 2's status does not give the LUN's size ($size1): $s2"

# what dm-multipath and ESXi match on
vendor=$(sed -nE 's/^ *vendor +"([^"]+)".*/\1/p' <<<"$device"); product=$(sed -nE 's/^ *product +"([^"]+)".*/\1/p' <<<"$device")
[ "$(grep -oE -- '-V [^ ]+' <<<"$esxi")" = "-V $vendor" ] && [ "$(grep -oE -- '-M [^ ]+' <<<"$esxi")" = "-M $product" ] ||
  fail "the ESXi rule and the multipath device section name different devices"
grep -q -- '-c tpgs_on' <<<"$esxi" || fail "the ESXi rule does not claim by TPGS"
iqn=$(grep -oE '"Iqn": *"[^"]+"' <<<"$json" | sed -E 's/.*"([^"]+)"$/\1/')
portal() { grep -oE -- '--listen [0-9.:]+' <<<"${serve[$(($1 - 1))]}" | cut -d' ' -f2; }
inq() { iscsi-inq -i iqn.2026-11.org.example:readme-ha "iscsi://$(portal "$1")/$iqn/0"; }
# the logical unit's designators of VPD 83h (T10 vendor ID and NAA; the port's own ones differ by design)
designator() {
  iscsi-inq -i iqn.2026-11.org.example:readme-ha -e 1 -c 131 "iscsi://$(portal "$1")/$iqn/0" |
    awk 'BEGIN {RS = "DEVICE DESIGNATOR #[0-9]+\n"} /LOGICAL_UNIT/' | od -An -tx1 | tr -d ' \n'
}
q=$(inq 1) || fail "iscsi-inq through gw1 failed: $q"
grep -qE "Vendor:[[:space:]]*$vendor\b" <<<"$q" && grep -qE "Product:[[:space:]]*$product\b" <<<"$q" || fail "INQUIRY does not give $vendor $product: $q"
grep -qiE 'tpgs:[[:space:]]*1' <<<"$q" || fail "INQUIRY does not report implicit ALUA (TPGS 1): $q"
d1=$(designator 1)

# failover: the owner dies, the second host owns the LUN and answers with the same identity
kill -KILL "${pids[0]}"
for _ in $(seq 300); do grep -q 'this gateway is now the owner' "$work/host2/log" && break; sleep 0.1; done
s2=$(say 2) || fail "status on host 2 failed"
grep -q 'gateways: this one is owner' <<<"$s2" || fail "host 2 did not take the LUN over: $s2"
d2=$(designator 2)
[ -n "$d1" ] && [ "$d1" = "$d2" ] || fail "the LU designator differs between the gateways: '$d1' / '$d2'"
kill -TERM "${pids[1]}"
for _ in $(seq 600); do kill -0 "${pids[1]}" 2>/dev/null || break; sleep 0.1; done
grep -q 'Stopped; every volume flushed' "$work/host2/log" || fail "host 2's gateway did not stop cleanly"
echo "readme-ha-check: gw1 owned $lun and gw2 followed; INQUIRY $vendor $product with TPGS 1 and one LU designator on both; after SIGKILL of gw1, gw2 owned it and stopped cleanly"
