#!/usr/bin/env bash
# The Debian packages `make test` needs beyond Python and npm: chromium (with a font) for the
# browser tests, ApacheBench for tests/test_bench.py. Nothing missing: silent, exit 0. As root:
# installs what is missing with apt-get. As another user: one line naming what to install, exit 1.
#
# PORTAL_CHROMIUM is the browser the tests launch (default /usr/bin/chromium), as in tests/conftest.py.
# Only shell builtins run before the root branch, so `PATH=/nowhere scripts/system-deps.sh` works.
set -u

chromium="${PORTAL_CHROMIUM:-/usr/bin/chromium}"
packages=()
needs=()
if [ ! -x "$chromium" ]; then
  packages+=(chromium fonts-dejavu-core)
  needs+=("Debian's chromium")
fi
if ! command -v ab >/dev/null 2>&1; then
  packages+=(apache2-utils)
  needs+=("ApacheBench")
fi
[ "${#packages[@]}" -eq 0 ] && exit 0

what="${needs[0]}"
[ "${#needs[@]}" -gt 1 ] && what="${needs[0]} and ${needs[1]}"
line="make test needs $what: sudo apt-get install ${packages[*]}"

if [ "$EUID" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "$line" >&2
  exit 1
fi

echo "make test: installing ${packages[*]} (apt-get, as root)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q && apt-get install -y -q --no-install-recommends "${packages[@]}" || {
  echo "make test: apt-get could not install ${packages[*]}" >&2
  exit 1
}
missing=()
[ -x "$chromium" ] || missing+=("$chromium")
command -v ab >/dev/null 2>&1 || missing+=(ab)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "make test: apt-get installed ${packages[*]}, but ${missing[*]} is still missing" >&2
  exit 1
fi
