#!/usr/bin/env bash
# Run the integration tests, or one category of them, against a Release build.
#   tests/scripts/run-integration.sh [CATEGORY ...]
# Categories: Harness Clients Conformance Qemu Fuzz Hostile Integrity PowerCut Vm Operations FirstContact
# Env: POWERCUT_CUTS=1000 (long power-cut campaign), KEEP_TEST_DATA=1 (keep server data dirs and logs),
#      POWERCUT_DIR / VM_INITIATOR_DIR / SHARED_DIR (tool locations; default ../shared/tools beside the repo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
filter=()
if [ $# -gt 0 ]; then
  f=$(printf 'Category=%s|' "$@"); filter=(--filter "${f%|}")
fi
exec dotnet test tests/IntegrityTarget.Integration.Tests -c Release --logger "console;verbosity=normal" "${filter[@]}"
