#!/usr/bin/env bash
# Development-time reference run (not a CI test): libiscsi's conformance suite against tgt, to
# calibrate the CUnit summary parser and the "skip fewer than tgt" bar of the NUnit conformance test.
#   tests/scripts/cu-against-tgt.sh [OUTFILE]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHARED=${SHARED_DIR:-$(cd "$HERE/../../.." && pwd)/shared}
[ -x "$SHARED/tools/ref-target.sh" ] || SHARED=$(cd "$HERE/../../../.." && pwd)/shared
out=${1:-/tmp/cu-tgt.log}
dir=$(mktemp -d /tmp/cu-tgt.XXXXXX)
port=$((20000 + RANDOM % 10000))
url=$("$SHARED/tools/ref-target.sh" start "$dir" "$port" 1G)
trap '"$SHARED/tools/ref-target.sh" stop "$dir"; rm -rf "$dir"' EXIT
echo "conformance run against $url -> $out"
iscsi-test-cu --dataloss --test=ALL \
  -i iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test -I iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2 \
  "$url" >"$out" 2>&1 </dev/null || true
sed -n "/Run Summary/,\$p" "$out"
echo "[SKIPPED] lines: $(grep -c "\[SKIPPED\]" "$out")"
