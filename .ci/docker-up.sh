#!/usr/bin/env bash
# Ensure a Docker engine is running on this (Debian 12, root) machine.
# Idempotent: installs docker.io only if dockerd is missing, starts dockerd only
# if `docker info` fails, then waits (up to 60 s) for the daemon to answer.
set -euo pipefail

log() { printf '[docker-up] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root"; exit 1
fi

# 1. Engine binary. A docker CLI may already be at /usr/local/bin/docker
#    (client only), so test for dockerd, not docker.
if ! command -v dockerd >/dev/null 2>&1; then
    log "dockerd not found: installing docker.io with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # iptables is needed by dockerd's bridge networking; docker.io depends on it
    # but list it explicitly in case of a trimmed install.
    apt-get install -y -qq --no-install-recommends docker.io iptables ca-certificates >/dev/null
fi

# 2. Daemon. `docker info` fails when no daemon answers (or no CLI exists yet).
if docker info >/dev/null 2>&1; then
    log "dockerd already running"
    exit 0
fi

# A stale pid file from a dead daemon blocks a new one from starting.
if [ -f /var/run/docker.pid ]; then
    pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "dockerd (pid $pid) is running but not answering yet; waiting"
    else
        rm -f /var/run/docker.pid
    fi
fi

if ! { [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; }; then
    log "starting dockerd (log: /var/log/dockerd.log)"
    # Detach fully so the daemon outlives this script and any CI step.
    nohup setsid dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
fi

# 3. Wait until the daemon answers.
for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then
        log "dockerd is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
        exit 0
    fi
    sleep 0.5
done

log "dockerd did not answer within 60 s; last log lines:"
tail -n 30 /var/log/dockerd.log >&2 || true
exit 1
