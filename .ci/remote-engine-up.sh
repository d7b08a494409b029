#!/usr/bin/env bash
# A "remote" Docker engine on this machine, for the integration suite's remote lane: a second
# dockerd in a network namespace of its own (devenv-remote), reached over plain TCP on the
# namespace's address, with its own data root, and in a mount namespace of its own where the
# folders checkouts and tests live in (/tmp, /root, /home, /work, /srv, /opt, /mnt and this
# checkout itself, wherever it is: CI clones into /check/...) are empty tmpfs: it shares
# neither this machine's loopback nor its files, so a bind mount of a host path would give the
# containers an empty directory, as on a real remote host.
#
# Idempotent: the namespace, the veth pair and the daemon are made only when missing; the test
# images are loaded from the first engine (docker save | docker load) only when absent.
# Prints the line to export; also writes it to .ci/remote-engine.env for `.ci/run` to source.
set -euo pipefail

NS=devenv-remote
HOST_IF=devenv-rmt0  # this machine's end of the veth pair
NS_IF=devenv-rmt1    # the namespace's end
HOST_ADDR=10.213.0.1
NS_ADDR=10.213.0.2
PORT=2375
ROOT=/var/lib/devenv-remote-engine  # data root, exec root, pid file, socket, log
ENDPOINT="tcp://${NS_ADDR}:${PORT}"
CHECKOUT="$(cd "$(dirname "$0")/.." && pwd -P)"  # hidden from the engine too
IMAGES=(devenv-test/postgres:15 devenv-test/pgbouncer:1.18 devenv-test/redis:7)

log() { printf '[remote-engine-up] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root"; exit 1
fi

# 1. The namespace and its link to this machine (a /30: nothing else lives there).
# Tests on captured output, not `| grep -q`: under pipefail, grep's early exit can make the
# pipeline fail (SIGPIPE) and the "missing" branch run again on a second run.
if [[ " $(ip netns list | cut -d' ' -f1 | tr '\n' ' ') " != *" $NS "* ]]; then
    log "creating network namespace $NS"
    ip netns add "$NS"
fi
ip netns exec "$NS" ip link set lo up
if ! ip link show "$HOST_IF" >/dev/null 2>&1; then
    ip link add "$HOST_IF" type veth peer name "$NS_IF"
    ip link set "$NS_IF" netns "$NS"
fi
[[ "$(ip -4 addr show dev "$HOST_IF")" == *"$HOST_ADDR/"* ]] || ip addr add "$HOST_ADDR/30" dev "$HOST_IF"
ip link set "$HOST_IF" up
[[ "$(ip netns exec "$NS" ip -4 addr show dev "$NS_IF")" == *"$NS_ADDR/"* ]] || ip netns exec "$NS" ip addr add "$NS_ADDR/30" dev "$NS_IF"
ip netns exec "$NS" ip link set "$NS_IF" up

# Only this machine's own processes reach the namespace: traffic forwarded into the veth (from
# any engine's containers, which are masqueraded as this host) is dropped first thing, as the
# engine's API is plain TCP without authentication.
iptables -C FORWARD -o "$HOST_IF" -j DROP 2>/dev/null || iptables -I FORWARD 1 -o "$HOST_IF" -j DROP

answers() { DOCKER_HOST="$ENDPOINT" timeout 5 docker info >/dev/null 2>&1; }

# 2. The daemon: its own data, exec root, pid file and socket; its bridges on subnets of
#    their own; the API on the namespace's address only (plain TCP: nothing outside this
#    machine reaches a /30 on a veth pair). Started with nsenter, not `ip netns exec`, which
#    mounts the namespace's own sysfs over /sys and so hides the cgroups dockerd needs.
mkdir -p "$ROOT/data" "$ROOT/exec"
chmod 700 "$ROOT"
if answers; then
    log "remote engine already answers at $ENDPOINT"
else
    pidfile="$ROOT/dockerd.pid"
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then
        rm -f "$pidfile"
    fi
    if [ ! -f "$pidfile" ]; then
        log "starting dockerd in $NS (log: $ROOT/dockerd.log)"
        # shellcheck disable=SC2016  # expanded by the inner shell
        # From / (in a subshell): the daemon outlives this checkout's directory.
        (cd / && nohup setsid unshare --mount --propagation private sh -c '
            for dir in /tmp /root /home /work /srv /opt /mnt "$4"; do
                [ -d "$dir" ] && mount -t tmpfs -o mode=1777,size=16m devenv-remote-empty "$dir"
            done
            exec nsenter --net="/run/netns/$0" dockerd \
                --data-root "$1/data" --exec-root "$1/exec" --pidfile "$2" \
                --host "unix://$1/docker.sock" --host "$3" \
                --bip 10.214.0.1/24 --default-address-pool base=10.215.0.0/16,size=24' \
            "$NS" "$ROOT" "$pidfile" "$ENDPOINT" "$CHECKOUT" >>"$ROOT/dockerd.log" 2>&1 </dev/null &)
    fi
    for _ in $(seq 1 120); do
        answers && break
        [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null && break  # it died
        sleep 0.5
    done
    if ! answers; then
        log "the remote engine did not answer within 60 s; last log lines:"
        tail -n 30 "$ROOT/dockerd.log" >&2 || true
        exit 1
    fi
    log "remote engine is up at $ENDPOINT"
fi

# 3. The test images, from the first engine (no registry is reachable here; no rebuild).
missing=()
for image in "${IMAGES[@]}"; do
    DOCKER_HOST="$ENDPOINT" docker image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "loading ${missing[*]} into the remote engine"
    docker save "${missing[@]}" | DOCKER_HOST="$ENDPOINT" docker load -q >/dev/null
fi

line="export DEVENV_TEST_REMOTE_DOCKER_HOST=$ENDPOINT"
printf '%s\n' "$line" >"$(dirname "$0")/remote-engine.env"
echo "$line"
