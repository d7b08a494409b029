#!/bin/sh
# Entrypoint of devenv-test/redis:7, behaving like the official redis image's:
#   - a first argument ending in .conf or starting with '-' gets 'redis-server'
#     put in front of it;
#   - for redis-server started as root: chown /data to redis and run again as
#     redis (uid 999);
#   - the official image compiles redis with protected-mode off by default;
#     Debian's binary has it on, so the same default is given on the command
#     line, placed before the user's own arguments, and only when the config
#     file does not set protected-mode itself;
#   - umask 0077 unless one other than 0022 is set; exec the command.
set -e

case "$1" in
    -* | *.conf) set -- redis-server "$@" ;;
esac

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find /data \! -user redis -exec chown redis {} +
    HOME=/data exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$1" = redis-server ]; then
    shift
    if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
        # redis-server CONFIG [options]: the file comes first.
        conf=$1
        shift
        if grep -qiE '^[[:space:]]*protected-mode[[:space:]]' "$conf" 2>/dev/null; then
            set -- redis-server "$conf" "$@"
        else
            set -- redis-server "$conf" --protected-mode no "$@"
        fi
    else
        set -- redis-server --protected-mode no "$@"
    fi
fi

if [ "$(umask)" = 0022 ]; then
    umask 0077
fi

exec "$@"
