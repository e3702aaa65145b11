#!/usr/bin/env bash
# Installs integrity-target from this repository as a .NET tool:
#   PREFIX/lib/integrity-target/   the tool (dotnet tool install --tool-path)
#   PREFIX/bin/integrity-target    a link to it, on PATH
# PREFIX is /usr/local when run as root (what packaging/integrity-target.service expects), else
# ~/.local. Needs the .NET 10 SDK. Running it again replaces the installed version.
#   bash packaging/install.sh            PREFIX=/opt/it bash packaging/install.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "$(id -u)" = 0 ]; then PREFIX=${PREFIX:-/usr/local}; else PREFIX=${PREFIX:-$HOME/.local}; fi
tools="$PREFIX/lib/integrity-target"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "integrity-target: building the package"
dotnet pack src/IntegrityTarget.Host -c Release -o "$work/package" -v quiet -nologo >"$work/pack.log" 2>&1 \
  || { cat "$work/pack.log" >&2; exit 1; }
# A private package cache: a rebuilt package with an unchanged version must not be taken from the
# machine's NuGet cache (the tool package has no dependencies to fetch).
if [ -e "$tools/integrity-target" ]; then
  NUGET_PACKAGES="$work/cache" dotnet tool uninstall --tool-path "$tools" integrity-target >/dev/null
fi
# Only the package just built as a source: no other feed is asked (none may be reachable).
cat >"$work/nuget.config" <<CONFIG
<configuration><packageSources><clear /><add key="integrity-target" value="$work/package" /></packageSources></configuration>
CONFIG
NUGET_PACKAGES="$work/cache" dotnet tool install --tool-path "$tools" --configfile "$work/nuget.config" integrity-target >/dev/null
mkdir -p "$PREFIX/bin"
ln -sfn "$tools/integrity-target" "$PREFIX/bin/integrity-target"
echo "integrity-target: installed $("$PREFIX/bin/integrity-target" --version | sed 's/^integrity-target //') as $PREFIX/bin/integrity-target"
case ":$PATH:" in
  *":$PREFIX/bin:"*) ;;
  *) echo "integrity-target: $PREFIX/bin is not on PATH; add it, e.g. export PATH=\"$PREFIX/bin:\$PATH\" in ~/.profile" ;;
esac
