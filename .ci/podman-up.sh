#!/usr/bin/env bash
# CI: a rootful Podman (Debian 12's 4.3, Docker-compatible API 1.41) serving the Docker API on
# /run/podman/podman.sock, with the devenv-test images loaded from dockerd (no rebuild).
# Idempotent and fast on a second run: installs only what is missing, starts the service only
# when the socket does not answer, loads only images whose ids differ.
set -euo pipefail

SOCK=/run/podman/podman.sock
IMAGES=(devenv-test/postgres:15 devenv-test/pgbouncer:1.18 devenv-test/redis:7)
log() { printf '[podman-up] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root"; exit 1
fi

# 1. Packages: podman, and netavark + aardvark-dns for DNS between containers (PgBouncer
#    resolves `postgres`); without them the compat API makes networks without DNS.
missing=()
for pkg in podman netavark aardvark-dns; do
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == *"ok installed"* ]] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# 2. containers.conf: this machine's hard open-files limit (20,000) is below Podman's default
#    ulimit, so containers would not start; netavark is the backend whose networks have DNS.
mkdir -p /etc/containers
conf=/etc/containers/containers.conf
want='[containers]
default_ulimits = []

[network]
network_backend = "netavark"'
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    printf '%s\n' "$want" >"$conf"
    log "wrote $conf"
fi

answers() { curl -sf --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }

# 3. The API service, rootful, outliving this script.
if ! answers; then
    log "starting podman system service on $SOCK (log: /var/log/podman-service.log)"
    mkdir -p /run/podman
    rm -f "$SOCK"
    # From /: conmon, which it starts for each container, inherits the working directory and
    # fails ("Failed to get working directory") once a checkout it was started from is gone.
    (cd / && nohup setsid podman system service --time=0 "unix://$SOCK" >>/var/log/podman-service.log 2>&1 </dev/null &)
    for _ in $(seq 1 60); do
        answers && break
        sleep 0.5
    done
    if ! answers; then
        log "podman did not answer within 30 s; last log lines:"
        tail -n 30 /var/log/podman-service.log >&2 || true
        exit 1
    fi
fi
log "podman is up ($(podman version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"

# 4. The test images, saved from dockerd (built by .ci/images/build.sh): only when their ids differ.
load=()
for image in "${IMAGES[@]}"; do
    want_id="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
    [ -n "$want_id" ] || { log "$image is not in dockerd: run .ci/images/build.sh first"; exit 1; }
    have_id="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
    [ "sha256:$have_id" = "$want_id" ] || [ "$have_id" = "$want_id" ] || load+=("$image")
done
if [ "${#load[@]}" -gt 0 ]; then
    log "loading ${load[*]} into podman"
    docker save "${load[@]}" | podman load -q >/dev/null
fi
log "images ready"
