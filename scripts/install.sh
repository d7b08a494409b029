#!/usr/bin/env bash
# Install what devenv needs on this machine, then devenv itself (editable, with test extras).
# Idempotent: installs only what is missing. Debian/Ubuntu (apt) and macOS (Homebrew).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have pgbouncer    || need+=(pgbouncer)
have redis-server || need+=(redis-server)
have openssl      || need+=(openssl)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || have postgres || need+=(postgresql)
have psql         || need+=(postgresql-client)
have zstd         || need+=(zstd)

if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing with apt-get: ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  elif command -v brew >/dev/null 2>&1; then
    brew install postgresql@16 pgbouncer redis
  else
    echo "error: install ${need[*]} with your package manager, then rerun" >&2
    exit 4
  fi
  # Debian starts the packaged services; devenv runs its own on its own ports.
  for svc in redis-server pgbouncer postgresql; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
      $sudo systemctl stop "$svc" || true
    elif command -v service >/dev/null 2>&1; then
      $sudo service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
fi

python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
# pyenv finds new console scripts only after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
echo "devenv installed: $(python3 -m devenv --version)"
