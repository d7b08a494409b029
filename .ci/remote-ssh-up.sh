#!/usr/bin/env bash
# The ssh:// lane: an sshd in the remote engine's network namespace (.ci/remote-engine-up.sh
# first), so that DOCKER_HOST=ssh://devenv-remote-ssh reaches that dockerd through OpenSSH as it
# would a devbox: the engine's API socket and the containers' ports (published on the
# namespace's 127.0.0.1) are forwarded over the SSH connection.
#
# Everything lives in /var/lib/devenv-remote-engine/ssh (0700): sshd's config, host key and
# pid file, a client key, its authorized_keys, a known_hosts, and the client config that names
# the alias. Root's own ~/.ssh is left alone: the tests point devenv at that config with
# DEVENV_SSH_CONFIG (devenv passes it to ssh as -F). The client config sends DOCKER_HOST (sshd
# accepts only that variable) saying where the engine's socket is on the "remote" host.
#
# Idempotent: keys and configs are made when missing, sshd started when the alias does not
# answer. Prints the lines to export; also writes them to .ci/remote-ssh.env for `.ci/run`.
set -euo pipefail

NS=devenv-remote
NS_ADDR=10.213.0.2
ROOT=/var/lib/devenv-remote-engine
DIR="$ROOT/ssh"
ALIAS=devenv-remote-ssh

log() { printf '[remote-ssh-up] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root"; exit 1
fi
if [ ! -S "$ROOT/docker.sock" ]; then
    log "no remote engine socket at $ROOT/docker.sock: run .ci/remote-engine-up.sh first"; exit 1
fi
if [ ! -x /usr/sbin/sshd ]; then
    log "installing openssh-server (its service is not started: sshd runs in $NS only)"
    # Its package would start sshd on every interface: forbid service starts while it installs.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
             openssh-server >/dev/null; }
    [ "$own_policy" = 1 ] && rm -f "$policy"
    # Should a service manager have started it anyway, stop it: only the namespace's sshd serves.
    if command -v systemctl >/dev/null 2>&1; then systemctl stop ssh >/dev/null 2>&1 || true; fi
fi

mkdir -p "$DIR" /run/sshd
chmod 700 "$DIR"
[ -f "$DIR/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "$ALIAS host" -f "$DIR/host_ed25519"
[ -f "$DIR/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "$ALIAS client" -f "$DIR/client_ed25519"
install -m 600 "$DIR/client_ed25519.pub" "$DIR/authorized_keys"
printf '%s %s\n' "$ALIAS" "$(cut -d' ' -f1,2 "$DIR/host_ed25519.pub")" >"$DIR/known_hosts"

cat >"$DIR/sshd_config.new" <<EOF
# devenv's ssh:// test lane (.ci/remote-ssh-up.sh): keys only, forwarding from this side only.
ListenAddress $NS_ADDR:22
HostKey $DIR/host_ed25519
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding local
AllowStreamLocalForwarding local
X11Forwarding no
PermitTunnel no
AcceptEnv DOCKER_HOST
MaxSessions 50
MaxStartups 50:30:100
EOF

# A changed sshd config (this script edited) restarts the lane's sshd below.
changed=0
cmp -s "$DIR/sshd_config.new" "$DIR/sshd_config" 2>/dev/null || changed=1
mv "$DIR/sshd_config.new" "$DIR/sshd_config"

cat >"$DIR/config" <<EOF
# ssh client config of devenv's ssh:// test lane: DEVENV_SSH_CONFIG=$DIR/config
Host $ALIAS
    HostName $NS_ADDR
    User root
    IdentityFile $DIR/client_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $DIR/known_hosts
    GlobalKnownHostsFile /dev/null
    HostKeyAlias $ALIAS
    StrictHostKeyChecking yes
    SetEnv DOCKER_HOST=unix://$ROOT/docker.sock
EOF
chmod 600 "$DIR/sshd_config" "$DIR/config" "$DIR/known_hosts"

answers() { timeout 10 ssh -F "$DIR/config" -o BatchMode=yes -o ConnectTimeout=5 "$ALIAS" true </dev/null >/dev/null 2>&1; }

if [ "$changed" -eq 0 ] && answers; then
    log "sshd already answers as $ALIAS ($NS_ADDR:22)"
else
    pidfile="$DIR/sshd.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        log "restarting the lane's sshd (pid $(cat "$pidfile"): its config changed or it does not answer)"
        kill "$(cat "$pidfile")"
        sleep 0.5
    fi
    rm -f "$pidfile"
    /usr/sbin/sshd -t -f "$DIR/sshd_config"
    log "starting sshd in $NS on $NS_ADDR:22 (log: $DIR/sshd.log)"
    # From /: the daemon outlives this checkout's directory. sshd detaches itself.
    (cd / && ip netns exec "$NS" /usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log")
    for _ in $(seq 1 40); do
        answers && break
        sleep 0.25
    done
    if ! answers; then
        log "sshd does not answer as $ALIAS; last log lines:"
        tail -n 20 "$DIR/sshd.log" >&2 || true
        exit 1
    fi
fi

lines="export DEVENV_TEST_SSH_DOCKER_HOST=ssh://$ALIAS
export DEVENV_TEST_SSH_CONFIG=$DIR/config"
printf '%s\n' "$lines" >"$(dirname "$0")/remote-ssh.env"
echo "$lines"
