"""What the settings tables may hold: the keys devenv manages itself (refused in a row), the
characters a value may contain for each server's config lexer, and how long names may be so
that every name devenv derives from them still fits.

Pure data and checks, no I/O: resolve.py calls them with the location (file, line, key) for the
message; render.py quotes with them.
"""

from __future__ import annotations

import re

# ---- keys devenv manages (class: a settings row must not override them) ------------------------

_ADDRESS = "devenv binds every server to 127.0.0.1 (or its container) on the port devenv.yaml's `port:` gives"
_SOCKET = "devenv places the unix sockets in a private directory of its own"
_AUTH = "devenv manages authentication: its own users, with passwords from .devenv/secrets.json"
_FILES = "devenv manages where the server keeps its files"
_TLS = "devenv manages TLS: its own certificate, required where the profile asks for it"
_INCLUDE = "an include would read settings from outside the tables, unchecked"
_COMMAND = "it runs a shell command as the server's OS user; devenv's servers run none"
_LIBRARY_PATH = "it makes the server load code from a directory of your choosing"
_PROCESS = "devenv runs and supervises the process itself"
_REPLICA = "devenv's Redis is a standalone server: a replica's data is replaced by its primary's"
_CLIENT_POWER = "it lets any client holding REDIS_URL change files or load code on the server"

MANAGED: dict[str, dict[str, str]] = {
    "postgres": {
        "listen_addresses": _ADDRESS, "port": _ADDRESS,
        "unix_socket_directories": _SOCKET, "unix_socket_group": _SOCKET, "unix_socket_permissions": _SOCKET,
        "hba_file": _AUTH, "ident_file": _AUTH, "db_user_namespace": _AUTH, "krb_server_keyfile": _AUTH,
        # pg_hba.conf says scram-sha-256: a password stored as md5 could never log in again.
        "password_encryption": _AUTH,
        "data_directory": _FILES, "config_file": _FILES, "external_pid_file": _FILES, "log_directory": _FILES,
        "log_filename": _FILES,
        "ssl_cert_file": _TLS, "ssl_key_file": _TLS, "ssl_ca_file": _TLS, "ssl_crl_file": _TLS,
        "ssl_crl_dir": _TLS, "ssl_dh_params_file": _TLS,
        "ssl_passphrase_command": _COMMAND, "ssl_passphrase_command_supports_reload": _COMMAND,
        "archive_command": _COMMAND, "restore_command": _COMMAND, "archive_cleanup_command": _COMMAND,
        "recovery_end_command": _COMMAND, "archive_library": _LIBRARY_PATH,
        "dynamic_library_path": _LIBRARY_PATH, "jit_provider": _LIBRARY_PATH,
        "include": _INCLUDE, "include_if_exists": _INCLUDE, "include_dir": _INCLUDE,
    },
    "pgbouncer": {
        "listen_addr": _ADDRESS, "listen_port": _ADDRESS,
        "unix_socket_dir": _SOCKET, "unix_socket_mode": _SOCKET, "unix_socket_group": _SOCKET,
        "auth_type": _AUTH, "auth_file": _AUTH, "auth_hba_file": _AUTH, "auth_ident_file": _AUTH,
        "auth_query": _AUTH, "auth_user": _AUTH, "auth_dbname": _AUTH, "admin_users": _AUTH, "stats_users": _AUTH,
        "logfile": _FILES, "pidfile": _FILES, "conffile": _FILES, "resolv_conf": _FILES,
        "user": _PROCESS,
        "client_tls_sslmode": _TLS, "client_tls_key_file": _TLS, "client_tls_cert_file": _TLS,
        "client_tls_ca_file": _TLS, "client_tls_dheparams": _TLS,
        "server_tls_sslmode": _TLS, "server_tls_key_file": _TLS, "server_tls_cert_file": _TLS,
        "server_tls_ca_file": _TLS,
        "%include": _INCLUDE,
    },
    "redis": {
        "bind": _ADDRESS, "port": _ADDRESS, "protected-mode": _ADDRESS,
        "unixsocket": _SOCKET, "unixsocketperm": _SOCKET,
        "requirepass": _AUTH, "user": _AUTH, "aclfile": _AUTH, "masterauth": _AUTH, "masteruser": _AUTH,
        "dir": _FILES, "dbfilename": _FILES, "appendfilename": _FILES, "appenddirname": _FILES,
        "logfile": _FILES, "pidfile": _FILES, "cluster-config-file": _FILES,
        "daemonize": _PROCESS, "supervised": _PROCESS,
        "include": _INCLUDE, "rename-command": _AUTH, "loadmodule": _LIBRARY_PATH,
        "replicaof": _REPLICA, "slaveof": _REPLICA,
        "enable-protected-configs": _CLIENT_POWER, "enable-debug-command": _CLIENT_POWER,
        "enable-module-command": _CLIENT_POWER,
    },
}
# Every Redis TLS setting: tls-port listens, the others name files or change who may connect.
_MANAGED_PREFIXES = {"redis": {"tls-": _TLS}}


def managed_reason(service: str, name: str) -> str | None:
    """Why devenv manages setting `name` of `service` itself, or None when a row may set it."""
    lowered = name.lower()  # Redis and PgBouncer read names case-insensitively
    reason = MANAGED[service].get(lowered)
    if reason is None:
        reason = next((r for prefix, r in _MANAGED_PREFIXES.get(service, {}).items() if lowered.startswith(prefix)), None)
    return reason


# ---- values: what each config lexer reads back exactly --------------------------------------

# C0 controls, DEL and C1 controls: a newline ends a line (and injects the next), a NUL or an
# escape ends or garbles a token; none of them belongs in a setting.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# postgresql.conf libraries by bare name only: loaded from the server's own $libdir.
_LIBRARY_LIST = re.compile(r"\s*[A-Za-z0-9_-]+\s*(,\s*[A-Za-z0-9_-]+\s*)*")
_LIBRARY_SETTINGS = ("shared_preload_libraries", "session_preload_libraries", "local_preload_libraries")
# Redis settings that take several words (`save 3600 1 300 100`), written as bare words; every
# other Redis value is one word, written double-quoted so spaces and quotes read back exactly.
REDIS_MULTI_WORD = frozenset({
    "save", "client-output-buffer-limit", "oom-score-adj-values", "latency-tracking-info-percentiles",
    "shutdown-on-sigint", "shutdown-on-sigterm",
})
_REDIS_WORDS = re.compile(r"[A-Za-z0-9_.:,+%-]+( [A-Za-z0-9_.:,+%-]+)*")
_REDIS_WORD = re.compile(r"[A-Za-z0-9_.:,+%-]+")


# Types of the PgBouncer and Redis settings people set (neither server can describe its own):
# a value of the wrong type is refused here, with the form it takes, instead of failing the
# server's start. Settings not listed are checked by character only (above and below).
_INT = ("int", re.compile(r"-?[0-9]+"), "a whole number, e.g. 20")
_COUNT = ("count", re.compile(r"[0-9]+"), "a whole number, 0 or more, e.g. 20")  # PgBouncer's counts and sizes
_SECONDS = ("seconds", re.compile(r"[0-9]+(\.[0-9]+)?"), "a number of seconds, e.g. 30 or 0.5")
_REDIS_BOOL = ("yes/no", re.compile(r"(?i)yes|no"), "yes or no")
_REDIS_MEMORY = ("memory", re.compile(r"(?i)[0-9]+(b|k|kb|m|mb|g|gb)?"), "a size, e.g. 256mb or 1gb")


def _enum(*values: str) -> tuple[str, re.Pattern[str], str]:
    return ("enum", re.compile("(?i)" + "|".join(map(re.escape, values))), "one of " + ", ".join(values))


TYPES: dict[str, dict[str, tuple[str, re.Pattern[str], str]]] = {
    "pgbouncer": {
        "pool_mode": _enum("session", "transaction", "statement"),
        **dict.fromkeys((
            "default_pool_size", "max_client_conn", "min_pool_size", "reserve_pool_size", "max_db_connections",
            "max_user_connections", "max_prepared_statements", "log_connections", "log_disconnections",
            "log_pooler_errors", "log_stats", "verbose", "stats_period", "server_round_robin",
            "application_name_add_host", "disable_pqexec", "server_reset_query_always", "tcp_keepalive",
            "listen_backlog", "pkt_buf", "sbuf_loopcnt", "tcp_keepcnt", "tcp_keepidle", "tcp_keepintvl",
            "tcp_socket_buffer", "max_packet_size", "so_reuseport",
        ), _COUNT),
        **dict.fromkeys((
            "server_lifetime", "server_idle_timeout", "server_connect_timeout", "server_login_retry",
            "client_login_timeout", "autodb_idle_timeout", "dns_max_ttl", "dns_nxdomain_ttl",
            "dns_zone_check_period", "query_timeout", "query_wait_timeout", "client_idle_timeout",
            "idle_transaction_timeout", "suspend_timeout", "reserve_pool_timeout", "server_check_delay",
        ), _SECONDS),
    },
    "redis": {
        "maxmemory-policy": _enum("volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
                                  "allkeys-lru", "allkeys-lfu", "allkeys-random", "noeviction"),
        "appendfsync": _enum("always", "everysec", "no"),
        "loglevel": _enum("debug", "verbose", "notice", "warning"),
        "repl-diskless-load": _enum("disabled", "on-empty-db", "swapdb"),
        **dict.fromkeys((
            "activedefrag", "activerehashing", "appendonly", "lazyfree-lazy-eviction", "lazyfree-lazy-expire",
            "lazyfree-lazy-server-del", "lazyfree-lazy-user-del", "lazyfree-lazy-user-flush", "rdbcompression",
            "rdbchecksum", "stop-writes-on-bgsave-error", "io-threads-do-reads", "dynamic-hz",
            "aof-use-rdb-preamble", "jemalloc-bg-thread", "replica-read-only", "replica-serve-stale-data",
            "always-show-logo", "set-proc-title", "crash-log-enabled", "crash-memcheck-enabled",
            "latency-tracking", "no-appendfsync-on-rewrite", "aof-load-truncated", "aof-timestamp-enabled",
        ), _REDIS_BOOL),
        **dict.fromkeys((
            "maxclients", "timeout", "tcp-keepalive", "databases", "hz", "io-threads", "slowlog-log-slower-than",
            "slowlog-max-len", "tcp-backlog", "maxmemory-samples", "latency-monitor-threshold", "lfu-log-factor",
            "lfu-decay-time", "list-compress-depth", "active-expire-effort", "lua-time-limit",
            "busy-reply-threshold", "repl-timeout", "maxmemory-eviction-tenacity", "shutdown-timeout",
            "acllog-max-len",
        ), _INT),
        **dict.fromkeys((
            "maxmemory", "repl-backlog-size", "client-query-buffer-limit", "proto-max-bulk-len",
            "stream-node-max-bytes", "auto-aof-rewrite-min-size", "active-defrag-ignore-bytes",
        ), _REDIS_MEMORY),
    },
}


def control_character(text: str) -> str | None:
    """The first control character in `text`, spelled for a message (`\\n`, `\\x1b`), or None."""
    match = _CONTROL.search(text)
    return None if match is None else repr(match.group())[1:-1]


def value_problem(service: str, name: str, value: str) -> tuple[str, str] | None:
    """Why `value` cannot be written for setting `name` of `service`, with a hint; None if it can.

    Postgres strings are quoted and escaped for its own lexer (`pg_literal`), so only control
    characters are refused. PgBouncer's ini reads the rest of the line verbatim with surrounding
    blanks trimmed: no control characters, no leading or trailing blank. Redis values are one
    word, double-quoted (`redis_value`), or for the settings that take several, bare words.
    """
    bad = control_character(value)
    if bad is not None:
        return (f"the value contains a control character ({bad}), which would end the line in the rendered file",
                "write the value on one line, without tabs or other control characters.")
    if service == "postgres" and name in _LIBRARY_SETTINGS and value.strip() and not _LIBRARY_LIST.fullmatch(value):
        return ("libraries are named, not given by path", f"write {name}: \"pg_stat_statements, auto_explain\" "
                "(libraries installed with the server).")
    kind = TYPES.get(service, {}).get(name.lower())
    if kind is not None and not kind[1].fullmatch(value):
        return (f"{name} takes {kind[2]}", f"give {name} {kind[2]} (quote it in YAML if it has a colon).")
    if service == "pgbouncer" and value != value.strip():
        return ("PgBouncer trims blanks around a value", "remove the leading or trailing blanks.")
    if service == "redis" and name.lower() in REDIS_MULTI_WORD and value and not _REDIS_WORDS.fullmatch(value):
        return (f"{name} takes words of letters, digits and . : , + % - _ separated by single spaces",
                f"write e.g. {name}: \"3600 1 300 100\".")
    return None


def pg_literal(value: str) -> str:
    """`value` as a postgresql.conf string: quoted, quotes doubled, backslashes escaped.

    The server's lexer (guc-file.l) turns `\\\\` back into one backslash and `''` into one quote;
    a lone backslash would escape the closing quote and run the value on into the next line.
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def redis_value(name: str, value: str) -> str:
    """`value` as redis.conf reads it back: bare words for multi-word settings, else one
    double-quoted word with backslashes and quotes escaped (Redis's sdssplitargs)."""
    if (name.lower() in REDIS_MULTI_WORD and value) or _REDIS_WORD.fullmatch(value):
        return value  # nothing to quote: written as it always was
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- names that others are derived from ---------------------------------------------------------

MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes; longer names are cut silently
_PID = "4194304"  # the largest pid Linux hands out (pid_max's ceiling): seven digits
_COUNTER = "999999"  # a long-lived process's count of dropped databases
# Every name devenv derives from the working database `{db}` (and the test databases the pytest
# plugin makes from it, `{db}_test_gw<N>`): templates, their building copies, reset/restore
# scratch databases and snapshot scratch. tests/unit/test_names.py checks that each `__` infix
# the code uses is listed here.
_TEMPLATE = "{db}__tpl_" + "0" * 12
DERIVED_DATABASES = (
    _TEMPLATE,
    _TEMPLATE + "__building_" + _PID,
    "{w}__new_" + _PID,
    "{w}__old_" + _PID + "_" + _COUNTER,
    "{w}__restore_" + _PID,
    "{db}__migrate_" + _PID,  # the working database brought forward (devenv.db.steps)
    "{db}__snapshot__building_" + _PID,
    "{db}__snap_x",  # a snapshot's own name is checked (to fit) when it is taken
)
_TEST_DATABASE = "{db}_test_gw99"  # pytest-xdist workers: at most gw13 (Redis has 16 indexes)
# Database names must not contain devenv's separator `__`: `x__new_123` would be taken for a
# dead process's scratch database and dropped.
RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})
# Role names PostgreSQL refuses to create (`role name "public" is reserved`) or reads as keywords.
RESERVED_ROLES = frozenset({"public", "none", "current_user", "current_role", "session_user"})


def max_database_bytes() -> int:
    """The longest working database name (bytes) whose every derived name fits in 63 bytes."""
    longest = max(len(p.format(db="", w=_TEST_DATABASE.format(db="")).encode()) for p in DERIVED_DATABASES)
    return MAX_IDENTIFIER - longest


def database_problem(name: str, derives: bool = True) -> str | None:
    """Why `name` cannot be the working database (`derives`: devenv derives names from it) or
    PgBouncer's name for it, or None."""
    if name.lower() in RESERVED_DATABASES:
        return f"'{name}' is one of PostgreSQL's own databases, which devenv connects to for its work"
    if name.lower() == "pgbouncer":
        return "'pgbouncer' is PgBouncer's admin console: the pooled URL would reach it, not the database"
    if "__" in name:
        return "'__' separates devenv's own names (templates, scratch databases) from the database's"
    limit = max_database_bytes() if derives else MAX_IDENTIFIER
    if len(name.encode()) > limit and not derives:
        return f"it is {len(name.encode())} bytes; PostgreSQL and PgBouncer cut names at {MAX_IDENTIFIER}"
    if len(name.encode()) > limit:
        return (f"it is {len(name.encode())} bytes; devenv derives names such as "
                f"'{DERIVED_DATABASES[1].format(db=name)}' from it, and PostgreSQL cuts names at "
                f"{MAX_IDENTIFIER} bytes, so at most {limit} bytes fit")
    return None


def role_problem(name: str) -> str | None:
    """Why `name` cannot be a role devenv creates (the application user, PgBouncer's admin)."""
    if len(name.encode()) > MAX_IDENTIFIER:
        return f"it is {len(name.encode())} bytes; PostgreSQL cuts names at {MAX_IDENTIFIER}"
    if name.lower() == "postgres" or name.lower().startswith("pg_"):
        return "'postgres' and names starting with 'pg_' are PostgreSQL's own roles"
    if name.lower() in RESERVED_ROLES:
        return f"'{name}' is a name PostgreSQL reserves (it means something else in GRANT and ALTER ROLE)"
    return None


# Docker: a container `<project>-<profile>-<checkout id>-<service>-1` is also its DNS name on
# the compose network, a label of at most 63 bytes (the id: devenv.config.identity, 6 hex digits).
_LONGEST_CONTAINER = "-{profile}-123456-pgbouncer-1"


def stack_name_problem(project: str, profile: str) -> str | None:
    """Why `<project>-<profile>-<checkout id>` makes a container name too long, or None."""
    name = project + _LONGEST_CONTAINER.format(profile=profile)
    if len(name.encode()) > MAX_IDENTIFIER:
        return (f"the container name '{name}' would be {len(name.encode())} bytes; Docker's DNS names "
                f"hold {MAX_IDENTIFIER}")
    return None
