#!/bin/sh
# Entrypoint of devenv-test/pgbouncer:1.18. Like edoburu/pgbouncer's it ends in
# `exec "$@"` and creates a missing auth file. edoburu can also write
# pgbouncer.ini and userlist.txt from DATABASE_URL / DB_* / ADMIN_* variables;
# devenv must not rely on that (it mounts both files read-only), so this test
# image refuses those variables instead of silently ignoring them.
set -e

for var in DATABASE_URL DB_HOST DB_USER DB_PASSWORD DB_NAME ADMIN_PASSWORD ADMIN_PASSWORDS STATS_PASSWORDS; do
    eval "val=\${$var:-}"
    if [ -n "$val" ]; then
        echo "error: $var is set; devenv-test/pgbouncer does not generate its config from variables." >&2
        echo "       Mount pgbouncer.ini and userlist.txt under /etc/pgbouncer instead." >&2
        exit 1
    fi
done

auth_file="${AUTH_FILE:-/etc/pgbouncer/userlist.txt}"
if [ ! -e "$auth_file" ]; then
    touch "$auth_file" 2>/dev/null || true
fi

if [ "$1" = pgbouncer ] || [ "$1" = /usr/bin/pgbouncer ]; then
    for arg in "$@"; do
        case "$arg" in
            *.ini)
                if [ ! -r "$arg" ]; then
                    echo "error: $arg is missing or unreadable by uid $(id -u); mount pgbouncer.ini there (readable by uid 70)." >&2
                    exit 1
                fi ;;
        esac
    done
    echo "Starting $*..."
fi

exec "$@"
