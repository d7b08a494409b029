#!/usr/bin/env bash
# CI: rootless Podman for the integration suite's rootless lane (tests/integration/
# test_rootless_podman.py): the API service of an unprivileged user (devenv-rootless, with
# subordinate uids), on $XDG_RUNTIME_DIR/podman/podman.sock, the devenv-test images loaded
# into that user's storage from dockerd. Under its uid mapping a 0600 file of root's is
# unreadable in a container: what devenv must handle by copying its files in.
# Run after .ci/podman-up.sh (Podman installed; /etc/containers/containers.conf's ulimits).
# Idempotent: makes only what is missing, starts the service only when it does not answer.
# Prints the line to export; also writes it to .ci/podman-rootless.env for `.ci/run`.
set -euo pipefail

USER_NAME=devenv-rootless
IMAGES=(devenv-test/postgres:15 devenv-test/pgbouncer:1.18 devenv-test/redis:7)
log() { printf '[podman-rootless-up] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root"; exit 1
fi
command -v podman >/dev/null || { log "podman is not installed: run .ci/podman-up.sh first"; exit 1; }

# 1. Packages: newuidmap/newgidmap (the user namespace with subordinate ids) and slirp4netns
#    (a rootless container's network).
missing=()
for pkg in uidmap slirp4netns; do
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == *"ok installed"* ]] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# 2. The user, its subordinate ids, its runtime directory, overlay storage (the rootless
#    default here is vfs: a full copy of every image layer per container).
id -u "$USER_NAME" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$USER_NAME"
uid="$(id -u "$USER_NAME")"
home="$(getent passwd "$USER_NAME" | cut -d: -f6)"
grep -q "^$USER_NAME:" /etc/subuid || usermod --add-subuids 300000-365535 "$USER_NAME"
grep -q "^$USER_NAME:" /etc/subgid || usermod --add-subgids 300000-365535 "$USER_NAME"
run="/run/user/$uid"
install -d -m 700 -o "$USER_NAME" -g "$USER_NAME" "$run" "$run/podman"
install -d -m 700 -o "$USER_NAME" -g "$USER_NAME" "$home/.config" "$home/.config/containers"
storage="$home/.config/containers/storage.conf"
if [ ! -f "$storage" ]; then
    printf '[storage]\ndriver = "overlay"\n' >"$storage"
    chown "$USER_NAME:" "$storage"
fi
# slirp4netns opens /dev/net/tun as the user: this machine leaves it root's only (0600), where
# most distributions make it 0666 (each open makes a device of the caller's own namespace).
if [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
    log "chmod 0666 /dev/net/tun (was $(stat -c %a /dev/net/tun)), as on most distributions"
    chmod 0666 /dev/net/tun
fi

as_user() { (cd / && runuser -u "$USER_NAME" -- env -i HOME="$home" XDG_RUNTIME_DIR="$run" \
    PATH=/usr/local/bin:/usr/bin:/bin "$@"); }
SOCK="$run/podman/podman.sock"
answers() { curl -sf --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }

# 3. The test images, from dockerd (no registry here), only those missing.
load=()
for image in "${IMAGES[@]}"; do
    as_user podman image exists "$image" || load+=("$image")
done
if [ "${#load[@]}" -gt 0 ]; then
    log "loading ${load[*]} into $USER_NAME's podman"
    docker save "${load[@]}" | as_user podman load -q >/dev/null
fi

# 4. The API service, as the user, from / (conmon inherits the working directory).
if ! answers; then
    log "starting $USER_NAME's podman system service on $SOCK (log: /var/log/podman-rootless.log)"
    rm -f "$SOCK"
    touch /var/log/podman-rootless.log && chown "$USER_NAME:" /var/log/podman-rootless.log
    (cd / && nohup setsid runuser -u "$USER_NAME" -- env -i HOME="$home" XDG_RUNTIME_DIR="$run" \
        PATH=/usr/local/bin:/usr/bin:/bin podman system service --time=0 "unix://$SOCK" \
        >>/var/log/podman-rootless.log 2>&1 </dev/null &)
    for _ in $(seq 1 60); do
        answers && break
        sleep 0.5
    done
    if ! answers; then
        log "rootless podman did not answer within 30 s; last log lines:"
        tail -n 30 /var/log/podman-rootless.log >&2 || true
        exit 1
    fi
fi

line="export DEVENV_TEST_ROOTLESS_DOCKER_HOST=unix://$SOCK"
printf '%s\n' "$line" >"$(dirname "$0")/podman-rootless.env"
echo "$line"
