#!/usr/bin/env bash
# What the test suite needs from the system, beyond Python packages: PostgreSQL server binaries (the suite
# starts its own server), util-linux `unshare` (read-only mount tests) and headless Chromium (the dbt Docs
# browser test). Anything missing is installed with apt-get when this user may (root, or sudo without a
# password); otherwise the script says what to install and fails, so `make test` stops before running.
set -euo pipefail

have_pg_server() {  # as tests/pgserver.py looks: pg_config's bindir, else Debian's versioned dirs
  if command -v pg_config >/dev/null 2>&1; then
    local bindir
    bindir="$(pg_config --bindir)"
    [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ] && return 0
  fi
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && return 0
  done
  return 1
}
have_unshare() { command -v unshare >/dev/null 2>&1; }
have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }

missing() {  # "package (what the suite runs from it)" for each thing not there yet, one a line
  have_pg_server || echo "postgresql (the server binaries initdb and pg_ctl)"
  have_unshare || echo "util-linux (unshare)"
  have_chromium || echo "chromium (headless, as chromium on PATH)"
  return 0
}

needed="$(missing)"
[ -z "$needed" ] && exit 0
pkgs="$(echo "$needed" | cut -d' ' -f1 | tr '\n' ' ')"
pkgs="${pkgs% }"

sudo=()
can_install=no
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    can_install=yes
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    can_install=yes
    sudo=(sudo -n)
  fi
fi
if [ "$can_install" = no ]; then
  cat >&2 <<MSG
The test suite needs what these packages provide, and this user cannot install them:
$needed
Install them first (Debian/Ubuntu: sudo apt-get install $pkgs), then run make test again.
MSG
  exit 1
fi

echo "Installing the test suite's system packages with apt-get: $pkgs"
"${sudo[@]}" apt-get update -qq
# shellcheck disable=SC2086  # one word per package
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null

still="$(missing)"
if [ -n "$still" ]; then
  echo "Still missing after apt-get install: $still" >&2
  exit 1
fi
