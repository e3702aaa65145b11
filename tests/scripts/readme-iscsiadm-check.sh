#!/usr/bin/env bash
# Stands in for a README block of iscsiadm commands on a host without a kernel initiator (see
# tests/IntegrityTarget.Integration.Tests/Readme/ReadmeCommandTests.cs). It holds the block ($BLOCK, or
# the file given) against the sample config it is meant to run with: valid shell, the portal the sample
# listens on, target names the sample serves, and CHAP users and secrets the sample sets (MutualChap's
# are in a comment there, to uncomment). Logging in with these node settings is what the Vm tests do.
set -euo pipefail
block=${1:-${BLOCK:?no block given}}
config=config/integrity-target.json
fail() { echo "readme-iscsiadm-check: $*" >&2; exit 1; }
bash -n "$block" || fail "the block is not valid shell"
grep -q 'iscsiadm ' "$block" || fail "no iscsiadm command in the block"
for portal in $(grep -oE -- '-p [0-9.]+:[0-9]+|P=[0-9.]+:[0-9]+' "$block" | sed -E 's/^(-p |P=)//' | sort -u); do
  grep -q "\"$portal\"" "$config" || fail "portal $portal is not a portal of $config"
done
for iqn in $(grep -oE 'iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9.-]+:[a-z0-9.-]+' "$block" | sort -u); do
  grep -q "\"Iqn\": \"$iqn\"" "$config" || fail "target $iqn is not served by $config"
done
while read -r name value; do
  value=${value//\'/}
  case $name in
    node.session.auth.authmethod) [ "$value" = CHAP ] || fail "authmethod $value is not CHAP" ;;
    node.session.auth.username|node.session.auth.username_in) grep -q "\"User\": \"$value\"" "$config" || fail "CHAP user $value is not in $config" ;;
    node.session.auth.password|node.session.auth.password_in) grep -q "\"Secret\": \"$value\"" "$config" || fail "a CHAP secret of the block is not in $config" ;;
    *) fail "unknown node setting $name" ;;
  esac
done < <(grep -oE -- "-n node\.[a-z_.]+ -v ('[^']*'|[^ ]+)" "$block" | sed -E 's/^-n ([^ ]+) -v (.*)$/\1 \2/')
echo "readme-iscsiadm-check: $(grep -c 'iscsiadm ' "$block") iscsiadm commands agree with $config"
