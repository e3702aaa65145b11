#!/usr/bin/env bash
# Stands in for the README's esxcli block (no ESXi here, see ReadmeCommandTests.cs): the SATP rule must
# name the vendor and model the target really reports, or ESXi never applies it. Starts a server and holds
# the rule's -V and -M against what iscsi-inq reads from INQUIRY, and checks TPGS is set (tpgs_on).
set -euo pipefail
block=${1:-${BLOCK:?no block given}}
fail() { echo "readme-esxi-check: $*" >&2; exit 1; }
vendor=$(grep -oE -- '-V [^ ]+' "$block" | cut -d' ' -f2); model=$(grep -oE -- '-M [^ ]+' "$block" | cut -d' ' -f2)
[ -n "$vendor" ] && [ -n "$model" ] || fail "the block has no -V VENDOR -M MODEL rule"
grep -q -- '-c tpgs_on' "$block" || fail "the rule does not ask for tpgs_on"
work=$(mktemp -d); port=3260
integrity-target serve --no-config --listen 127.0.0.1:$port --data-dir "$work" --lun "$work/l.img" --size 16MiB >"$work/log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 900); do grep -q 'Ready;' "$work/log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.2; done
grep -q 'Ready;' "$work/log" || { cat "$work/log"; fail "the server did not start"; }
iqn=$(grep -oE 'Target iqn[^:]*:[^:]+' "$work/log" | head -1 | cut -d' ' -f2)
inq=$(iscsi-inq "iscsi://127.0.0.1:$port/$iqn/0") || { cat "$work/log"; fail "iscsi-inq failed"; }
grep -E '^(Vendor|Product|TPGS):' <<<"$inq" || true
grep -qE "^Vendor:$vendor *\$" <<<"$inq" || fail "INQUIRY vendor is not $vendor"
grep -qE "^Product:$model *\$" <<<"$inq" || fail "INQUIRY product is not $model"
grep -qE '^TPGS:1$' <<<"$inq" || fail "INQUIRY does not report implicit TPGS (1)"
echo "readme-esxi-check: the rule's vendor $vendor and model $model are what INQUIRY reports, TPGS implicit"
