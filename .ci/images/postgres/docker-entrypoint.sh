#!/usr/bin/env bash
# Entrypoint of devenv-test/postgres:15. Behaves like the official postgres
# image's entrypoint (the contract in shared/image-contracts.md):
#   - a first argument starting with '-' gets 'postgres' put in front of it;
#   - for 'postgres': as root, create/chown PGDATA and the socket dir, then run
#     this script again as user postgres (uid 999);
#   - empty data dir (no PG_VERSION): initdb --username=$POSTGRES_USER with the
#     password, 'host all all all <scram-sha-256|trust>' appended to pg_hba.conf,
#     a temporary server on the unix socket only, CREATE DATABASE $POSTGRES_DB,
#     /docker-entrypoint-initdb.d/* (*.sh, *.sql, *.sql.gz|xz|zst), stop;
#   - initialised data dir: skip all that and ignore every POSTGRES_* variable;
#   - finally exec the command, so postgres is PID 1.
# Variables: POSTGRES_PASSWORD, POSTGRES_USER, POSTGRES_DB, POSTGRES_INITDB_ARGS
# (each also as *_FILE), POSTGRES_HOST_AUTH_METHOD, POSTGRES_INITDB_WALDIR.
set -Eeo pipefail

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# load_var NAME [DEFAULT]: NAME from the environment, or read from the file named
# by NAME_FILE (Docker secrets), else DEFAULT. Setting both is an error.
load_var() {
    local name=$1 default=${2:-} file_name="${1}_FILE"
    local value=${!name:-} file=${!file_name:-}
    if [ -n "$value" ] && [ -n "$file" ]; then
        die "both $name and $file_name are set (but are exclusive)"
    fi
    if [ -n "$file" ]; then
        value=$(<"$file")
    fi
    export "$name=${value:-$default}"
    unset "$file_name"
}

load_env() {
    load_var POSTGRES_PASSWORD
    load_var POSTGRES_USER postgres
    load_var POSTGRES_DB "$POSTGRES_USER"
    load_var POSTGRES_INITDB_ARGS
    export POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-}"
    DATA_EXISTS=''
    if [ -s "$PGDATA/PG_VERSION" ]; then
        DATA_EXISTS=1
    fi
}

# Directories the server needs; as root also make them postgres's.
prepare_dirs() {
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA" 2>/dev/null || true
    mkdir -p /var/run/postgresql 2>/dev/null || true
    chmod 3775 /var/run/postgresql 2>/dev/null || true
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        mkdir -p "$POSTGRES_INITDB_WALDIR"
        [ "$(id -u)" = 0 ] && find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres {} +
        chmod 0700 "$POSTGRES_INITDB_WALDIR"
    fi
    if [ "$(id -u)" = 0 ]; then
        find "$PGDATA" \! -user postgres -exec chown postgres {} +
        find /var/run/postgresql \! -user postgres -exec chown postgres {} +
    fi
}

check_env() {
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        cat >&2 <<'EOF'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
       connections without a password. This is *not* recommended.
EOF
        exit 1
    fi
    if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
        say 'WARNING: POSTGRES_HOST_AUTH_METHOD=trust: every host connection is accepted without a password.' >&2
    fi
}

run_initdb() {
    # initdb wants the current uid in /etc/passwd (docker run --user ARBITRARY).
    local nss_files=()
    if ! getent passwd "$(id -u)" >/dev/null 2>&1; then
        local lib
        for lib in /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so; do
            [ -s "$lib" ] || continue
            NSS_WRAPPER_PASSWD=$(mktemp) NSS_WRAPPER_GROUP=$(mktemp)
            printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$(id -u)" "$(id -g)" "$PGDATA" >"$NSS_WRAPPER_PASSWD"
            printf 'postgres:x:%s:\n' "$(id -g)" >"$NSS_WRAPPER_GROUP"
            export LD_PRELOAD=$lib NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
            nss_files=("$NSS_WRAPPER_PASSWD" "$NSS_WRAPPER_GROUP")
            break
        done
    fi

    local extra=()
    [ -n "${POSTGRES_INITDB_WALDIR:-}" ] && extra=(--waldir "$POSTGRES_INITDB_WALDIR")
    # --pwfile rejects an empty file, hence always a newline.
    local pwfile; pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    # POSTGRES_INITDB_ARGS is shell words (quotes allowed), hence eval.
    eval 'initdb --username="$POSTGRES_USER" --pwfile="$pwfile" '"$POSTGRES_INITDB_ARGS"' "${extra[@]}"'
    rm -f "$pwfile"

    if [ "${#nss_files[@]}" -gt 0 ]; then
        rm -f "${nss_files[@]}"
        unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
    fi
}

# Host connections: POSTGRES_HOST_AUTH_METHOD, else the password_encryption in
# force for this command line (scram-sha-256 by default on 14+).
setup_hba() {
    [ "${1:-}" = postgres ] && shift
    local method=$POSTGRES_HOST_AUTH_METHOD
    [ -n "$method" ] || method=$(postgres -C password_encryption "$@")
    {
        printf '\n'
        [ "$method" = trust ] && printf '# warning: trust is enabled for all host connections\n'
        printf 'host all all all %s\n' "$method"
    } >>"$PGDATA/pg_hba.conf"
}

# Temporary server for the set-up: unix socket only, same arguments otherwise.
temp_server_start() {
    [ "${1:-}" = postgres ] && shift
    set -- "$@" -c listen_addresses= -p "${PGPORT:-5432}"
    PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -o "$(printf '%q ' "$@")" -w start
}

temp_server_stop() {
    PGUSER="${PGUSER:-postgres}" pg_ctl -D "$PGDATA" -m fast -w stop
}

# psql against the temporary server (socket), stopping at the first error.
run_sql() {
    local cmd=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
    [ -n "$POSTGRES_DB" ] && cmd+=(--dbname "$POSTGRES_DB")
    PGHOST='' PGHOSTADDR='' "${cmd[@]}" "$@"
}

create_db() {
    [ "$POSTGRES_DB" = postgres ] && return 0
    local exists
    exists=$(POSTGRES_DB='' run_sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")
    if [ -z "${exists// /}" ]; then
        POSTGRES_DB='' run_sql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
}

# Kept under the official names too, for *.sh init scripts that call them.
docker_process_sql() { run_sql "$@"; }

decompress() {  # tool args... : run a decompressor, clearly failing if it is absent
    command -v "$1" >/dev/null || die "$1 is not installed in this image"
    "$@"
}

run_init_files() {
    local f
    printf '\n'
    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then say "$0: running $f"; "$f"
                else say "$0: sourcing $f"; . "$f"; fi ;;
            *.sql)     say "$0: running $f"; run_sql -f "$f" ;;
            *.sql.gz)  say "$0: running $f"; decompress gzip -dc "$f" | run_sql ;;
            *.sql.xz)  say "$0: running $f"; decompress xz -dc "$f" | run_sql ;;
            *.sql.zst) say "$0: running $f"; decompress zstd -dc "$f" | run_sql ;;
            *)         say "$0: ignoring $f" ;;
        esac
        printf '\n'
    done
}

# Options that make postgres print something and exit: no set-up for those.
wants_info_only() {
    local a
    for a in "$@"; do
        case "$a" in -'?'|--help|--describe-config|-V|--version) return 0 ;; esac
    done
    return 1
}

main() {
    if [ "${1:0:1}" = - ]; then
        set -- postgres "$@"
    fi

    if [ "$1" = postgres ] && ! wants_info_only "$@"; then
        load_env
        prepare_dirs
        if [ "$(id -u)" = 0 ]; then
            # Start again as postgres (uid 999); no gosu here, setpriv does the same.
            HOME=$(getent passwd postgres | cut -d: -f6) \
                exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
        fi

        if [ -z "$DATA_EXISTS" ]; then
            check_env
            # Fail before initdb when the scripts directory is unreadable.
            ls /docker-entrypoint-initdb.d/ >/dev/null
            run_initdb
            setup_hba "$@"
            # For 'local' connections that need a password (--auth-local=...).
            export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
            temp_server_start "$@"
            create_db
            run_init_files
            temp_server_stop
            unset PGPASSWORD
            printf '\nPostgreSQL init process complete; ready for start up.\n\n'
        else
            printf '\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n\n'
        fi
    fi

    exec "$@"
}

main "$@"
