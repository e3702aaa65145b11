#!/usr/bin/env bash
# Checks packaging/integrity-target.service on a host whose PID 1 is not systemd (the README's systemd
# block stands on it; see tests/IntegrityTarget.Integration.Tests/Readme/ReadmeCommandTests.cs):
#  1. systemd-analyze verify, in a scratch root holding the unit, systemd's own units and an executable
#     at the ExecStart path; any complaint fails (verify itself exits 0 on parse warnings)
#  2. installs with packaging/install.sh into a scratch PREFIX, then runs the unit's ExecStart the way
#     the unit would: its Environment= lines, WorkingDirectory=, LimitNOFILE=, an unprivileged user
#     (nobody, standing in for DynamicUser=) and a fresh state directory (StateDirectory=, mode 0750),
#     with the paths of a real install mapped into the scratch directory; iscsi-ls must log in, status
#     must answer on the state directory's socket, and SIGTERM must stop it with exit code 0.
# Not exercised here: systemd itself (DynamicUser allocation, the sandboxing directives, Restart=).
# Listens on 127.0.0.1:3260 (the sample config's portal): run it in a private network namespace.
set -euo pipefail
unit=packaging/integrity-target.service
fail() { echo "systemd-unit-check: $*" >&2; exit 1; }
scratch=$(mktemp -d); chmod 755 "$scratch"
cleanup() { [ -n "${pid:-}" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$scratch"; }
trap cleanup EXIT
value() { sed -n "s/^$1=//p" "$unit"; }

# 1. systemd-analyze verify
exec_start=$(value ExecStart)
program=${exec_start%% *}
root="$scratch/root"
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root$(dirname "$program")"
cp -r /lib/systemd/system "$root/usr/lib/systemd/"
printf '#!/bin/sh\n' > "$root$program"; chmod 755 "$root$program"
cp "$unit" "$root/etc/systemd/system/"
complaints=$(cd "$scratch" && systemd-analyze verify --root="$root" "$root/etc/systemd/system/$(basename "$unit")" 2>&1) \
  || fail "systemd-analyze verify failed: $complaints"
[ -z "$complaints" ] || fail "systemd-analyze verify complains: $complaints"
for key in LimitNOFILE Restart StateDirectory DynamicUser ExecReload; do [ -n "$(value $key)" ] || fail "the unit sets no $key="; done
echo "systemd-unit-check: systemd-analyze verify: no complaints"

# 2. ExecStart as the unit runs it
prefix="$scratch/prefix"
PREFIX="$prefix" bash packaging/install.sh >/dev/null
state_dir=/var/lib/$(value StateDirectory)
state="$scratch/state"
mkdir -p "$state" "$scratch/etc"
chmod "$(value StateDirectoryMode)" "$state"; chown nobody:nogroup "$state"
config_dir=/etc/integrity-target
cp config/integrity-target.json "$scratch/etc/"; chmod 644 "$scratch/etc/integrity-target.json"
map() { local s=$1; s=${s//$program/$prefix/bin/integrity-target}; s=${s//$state_dir/$state}; s=${s//$config_dir/$scratch/etc}; printf '%s' "$s"; }
envs=(); while IFS= read -r e; do envs+=("$(map "$e")"); done < <(value Environment)
workdir=$(map "$(value WorkingDirectory)")
read -r -a cmd <<<"$(map "$exec_start")"
nofile=$(value LimitNOFILE)
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ]; then
  # systemd (PID 1) may raise the limit; this test process may not go past its own hard limit.
  echo "systemd-unit-check: this host's hard limit of $hard open files is below the unit's LimitNOFILE=$nofile; running with $hard"
  nofile=$hard
fi
mask=$(value UMask)
echo "systemd-unit-check: running as nobody in $workdir with ${envs[*]}: ${cmd[*]}"
(cd "$workdir" && umask "$mask" && exec env -i PATH=/usr/bin:/bin "${envs[@]}" \
  prlimit --nofile="$nofile:$nofile" setpriv --reuid=nobody --regid=nogroup --clear-groups "${cmd[@]}") >"$scratch/serve.log" 2>&1 &
pid=$!
for _ in $(seq 600); do grep -q 'Ready;' "$scratch/serve.log" && break; kill -0 $pid 2>/dev/null || { cat "$scratch/serve.log"; fail "serve exited while starting"; }; sleep 0.1; done
grep -q 'Ready;' "$scratch/serve.log" || { cat "$scratch/serve.log"; fail "serve was not ready after 60 s"; }
[ "$(stat -c %U "$state/lun0.img")" = nobody ] || fail "the LUN file is not owned by the service's user"
limit=$(sed -n 's/^Max open files *\([0-9]*\).*/\1/p' /proc/$pid/limits)
[ "$limit" = "$nofile" ] || fail "the server runs with a limit of $limit open files, not $nofile"
iscsi-ls -s iscsi://127.0.0.1:3260/ | tee "$scratch/ls.out"
grep -q 'iqn.2026-11.org.example:integrity' "$scratch/ls.out" || fail "iscsi-ls did not list the default target"
"$prefix/bin/integrity-target" status --socket "$state/status.sock" | head -3
# systemctl reload runs ExecReload as the service's user.
read -r -a reload_cmd <<<"$(map "$(value ExecReload)")"
(cd "$workdir" && exec env -i PATH=/usr/bin:/bin "${envs[@]}" setpriv --reuid=nobody --regid=nogroup --clear-groups "${reload_cmd[@]}") \
  | tee "$scratch/reload.out" || fail "ExecReload failed: ${reload_cmd[*]}"
grep -q 'nothing changed' "$scratch/reload.out" || fail "ExecReload did not reload: $(cat "$scratch/reload.out")"
kill -TERM $pid; rc=0; wait $pid || rc=$?
pid=
cat "$scratch/serve.log"
[ $rc = 0 ] || fail "serve exited with $rc after SIGTERM"
echo "systemd-unit-check: PASS"
