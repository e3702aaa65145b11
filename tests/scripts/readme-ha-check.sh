#!/usr/bin/env bash
# Stands in for the README's two-gateway block (see ReadmeCommandTests.cs), which is written for two hosts.
# In the test's own network and mount namespaces it gives loopback the block's two addresses, mounts an
# empty /srv, writes the README's ha.json (the JSON block just before it), and runs the block's serve
# commands each in its own directory (its own "host": data directory and status socket). Then it runs the
# block's status command on the first "host" and on the second, and checks owner and follower.
set -euo pipefail
block=${1:-${BLOCK:?no block given}}
readme=${README:-README.md}
fail() { echo "readme-ha-check: $*" >&2; exit 1; }
mapfile -t serves < <(grep -E '^integrity-target serve ' "$block" | sed 's/ *#.*$//')
[ ${#serves[@]} -eq 2 ] || fail "expected two serve commands in the block, found ${#serves[@]}"
grep -qE '^integrity-target status' "$block" || fail "no status command in the block"
work=$(mktemp -d)
# the JSON block that comes right before the block's first serve line
awk -v first="${serves[0]}" '
  /^```json/ { injson = 1; buf = ""; next }
  injson && /^```/ { injson = 0; json = buf; next }
  injson { buf = buf $0 "\n"; next }
  index($0, first) == 1 { printf "%s", json; exit }' "$readme" > "$work/ha.json"
[ -s "$work/ha.json" ] || fail "no JSON block before the serve commands in $readme"
for a in $(grep -oE -- '--listen [0-9.]+' "$block" | cut -d' ' -f2) $(grep -oE '"Peer": "[0-9.]+' "$work/ha.json" | cut -d'"' -f4); do
  ip addr add "$a/32" dev lo 2>/dev/null || true
done
mount -t tmpfs tmpfs /srv || fail "cannot mount a tmpfs on /srv"
mkdir -p /srv/shared
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
i=0
for cmd in "${serves[@]}"; do
  i=$((i + 1)); mkdir -p "$work/host$i"; cp "$work/ha.json" "$work/host$i/"
  (cd "$work/host$i" && exec bash -c "exec $cmd" </dev/null >"$work/host$i/log" 2>&1) &
  pids+=($!)
  for _ in $(seq 900); do grep -q 'Ready;' "$work/host$i/log" && break; kill -0 $! 2>/dev/null || { cat "$work/host$i/log"; fail "gateway $i exited"; }; sleep 0.2; done
  grep -q 'Ready;' "$work/host$i/log" || { cat "$work/host$i/log"; fail "gateway $i not ready"; }
done
ok=0
for _ in $(seq 100); do
  s1=$(cd "$work/host1" && integrity-target status 2>&1 || true)
  s2=$(cd "$work/host2" && integrity-target status 2>&1 || true)
  if grep -qi 'owner' <<<"$s1" && grep -qi 'follower' <<<"$s2"; then ok=1; break; fi
  sleep 0.3
done
echo "== status on the first host:"; echo "$s1"; echo "== status on the second host:"; echo "$s2"
[ $ok -eq 1 ] || { cat "$work/host1/log" "$work/host2/log"; fail "status did not show the first gateway as owner and the second as follower"; }
echo "readme-ha-check: two gateways from the README's config and commands, gw1 owner, gw2 follower"
