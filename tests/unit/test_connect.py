"""The door (devenv.clients.connect) and the clients behind it, without servers: where each kind
of session goes, what a refused connection says, RESP replies, the console's verdicts.
(Sessions against real servers: tests/integration/test_services.py.)"""

from __future__ import annotations

import io
import socket
import struct
import threading
from typing import Iterator

import pytest

from devenv.clients import connect, pgwire, resp
from devenv.clients.pgbouncer import Console
from devenv.errors import HealthCheckError
from devenv.config.stack import PgBouncer, Postgres, Redis, Stack


def _stack(pg_port: int, pgb_port: int, redis_port: int, tmp_path) -> Stack:  # type: ignore[no-untyped-def]
    return Stack(
        project="t", profile="dev", root=tmp_path, ephemeral=True,
        postgres=Postgres("postgres", "postgres:16", pg_port, {}, database="app", user="owner", password="pw"),
        pgbouncer=PgBouncer("pgbouncer", "pgbouncer", pgb_port, {}, database="pooled_app",
                            admin_user="admin", admin_password="apw"),
        redis=Redis("redis", "redis:7", redis_port, {}, password="rpw"),
    )


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A port whose first connection's startup packet is kept, then refused with an ErrorResponse."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            (length,) = struct.unpack("!i", conn.recv(4))
            seen.append(conn.recv(length - 4))
            body = b"SFATAL\0C28000\0Mno entry for you\0\0"
            conn.sendall(b"E" + struct.pack("!i", len(body) + 4) + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    thread.join(5)
    server.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _startup(packet: bytes) -> dict[str, str]:
    words = packet[4:].rstrip(b"\0").split(b"\0")
    return {k.decode(): v.decode() for k, v in zip(words[::2], words[1::2])}


def test_direct_sessions_go_to_postgres_as_the_role_in_the_application_database(listener, tmp_path) -> None:
    port, seen = listener
    with pytest.raises(pgwire.PgError) as caught:
        connect.postgres(_stack(port, 1, 1, tmp_path), timeout=5)
    assert caught.value.sqlstate == "28000"
    assert _startup(seen[0]) == {"user": "owner", "database": "app", "application_name": "devenv"}


def test_pooled_sessions_go_to_pgbouncer_in_its_database(listener, tmp_path) -> None:
    port, seen = listener
    with pytest.raises(pgwire.PgError):
        connect.postgres(_stack(1, port, 1, tmp_path), pooled=True, timeout=5, application_name="probe")
    assert _startup(seen[0]) == {"user": "owner", "database": "pooled_app", "application_name": "probe"}


def test_the_admin_console_is_the_pgbouncer_database_as_the_admin(listener, tmp_path) -> None:
    port, seen = listener
    with pytest.raises(pgwire.PgError):
        connect.pgbouncer_admin(_stack(1, port, 1, tmp_path), timeout=5)
    assert _startup(seen[0])["user"] == "admin" and _startup(seen[0])["database"] == "pgbouncer"


def test_an_unreachable_console_is_explained_when_asked(tmp_path) -> None:
    stack = _stack(1, _closed_port(), 1, tmp_path)
    with pytest.raises(ConnectionRefusedError):
        connect.pgbouncer_admin(stack, timeout=5)
    with pytest.raises(HealthCheckError) as caught:
        connect.pgbouncer_admin(stack, timeout=5, explain=True)
    assert f"127.0.0.1:{stack.pgbouncer.port}" in caught.value.message
    assert "devenv up -p dev" in caught.value.hint


def test_a_refused_psycopg_session_names_the_address_when_explained(tmp_path) -> None:
    psycopg = pytest.importorskip("psycopg")
    stack = _stack(_closed_port(), 1, 1, tmp_path)
    with pytest.raises(psycopg.OperationalError):
        connect.psycopg_postgres(stack)
    with pytest.raises(HealthCheckError) as caught:
        connect.psycopg_postgres(stack, explain=True)
    assert f"PostgreSQL at 127.0.0.1:{stack.postgres.port} (database app)" in caught.value.message


def test_redis_sessions_refuse_at_once_without_a_server(tmp_path) -> None:
    with pytest.raises(ConnectionRefusedError):
        connect.redis(_stack(1, 1, _closed_port(), tmp_path))


def test_resp_reply_kinds() -> None:
    data = io.BytesIO(b"+OK\r\n-ERR wrong\r\n:42\r\n$5\r\nhe\r\no\r\n$-1\r\n*2\r\n$9\r\nmaxmemory\r\n$3\r\n100\r\n*0\r\n")
    assert resp.read_reply(data) == "OK"
    error = resp.read_reply(data)
    assert isinstance(error, resp.ReplyError) and str(error) == "ERR wrong"
    assert resp.read_reply(data) == 42
    assert resp.read_reply(data) == "he\r\no"  # a bulk string is length-delimited, not line-delimited
    assert resp.read_reply(data) is None
    assert resp.read_reply(data) == ["maxmemory", "100"]
    assert resp.read_reply(data) == []


def test_resp_truncated_replies_raise() -> None:
    with pytest.raises(ConnectionError):
        resp.read_reply(io.BytesIO(b"$10\r\nshort\r\n"))
    with pytest.raises(ConnectionError):
        resp.read_reply(io.BytesIO(b""))


def test_resp_encodes_bulk_strings() -> None:
    assert resp.encode([["SET", "k", "v 1"]]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv 1\r\n"


def test_the_console_judges_answers_once() -> None:
    console = Console.__new__(Console)
    console._profile = "ci"
    assert console._judge("RECONNECT app", pgwire.PgError("no such database: app")) is False
    with pytest.raises(HealthCheckError) as caught:
        console._judge("PAUSE app", pgwire.PgError("admin access needed"))
    assert "PgBouncer refused `PAUSE app`" in caught.value.message and "-p ci" in caught.value.hint


def test_row_descriptions_name_the_columns() -> None:
    def column(name: bytes) -> bytes:
        return name + b"\0" + b"\0" * 18
    data = struct.pack("!h", 2) + column(b"database") + column(b"cl_active")
    assert pgwire.column_names(data) == ["database", "cl_active"]
