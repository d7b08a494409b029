"""The PostgreSQL wire protocol, just enough for health checks and simple queries.

Importing psycopg costs 150-250 ms on a small machine, more than starting Postgres itself,
and `devenv up` on an existing stack needs only a few one-line queries: liveness, readiness,
PgBouncer's admin console, "is the seeded state current?". This speaks protocol 3.0 over a
socket: startup, password / MD5 / SCRAM-SHA-256 authentication, TLS when asked, and the simple
query protocol with text results. Everything else (seeding, resets, the Python API) uses psycopg.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import socket
import struct
from typing import Optional

Row = tuple[Optional[str], ...]

_PROTOCOL_3 = 196608
_SSL_REQUEST = 80877103


class PgError(Exception):
    """An error the server sent (with its SQLSTATE), or a broken conversation."""

    def __init__(self, message: str, sqlstate: str = "") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ServerClosedError(PgError):
    """The server, or a proxy in front of it (Docker's), closed the connection."""


class Connection:
    """One authenticated session; `query` runs simple-protocol statements.

    `host` is an address, or a directory holding the server's unix socket (as for libpq).
    `timeout` bounds connecting and logging in, `query_timeout` (default none) each answer.

    Use as a context manager: the session is terminated and the socket closed on exit.
    """

    def __init__(self, host: str, port: int, user: str, password: str, dbname: str, *,
                 ssl: bool | str = False, timeout: float = 2.0, query_timeout: float | None = None,
                 application_name: str = "devenv", options: str = "", verify: str = "",
                 root_cert: str = "", scram_only: bool = False) -> None:
        self.parameters: dict[str, str] = {}
        # Only a server that proves it knows the login (SCRAM's server signature) gets anything:
        # no cleartext or MD5 answer, no login it lets in without asking (a one-time password).
        self._scram_only = scram_only
        self.scram_salt = ""  # "<iterations>:<salt>" the server's SCRAM exchange used (see scram_salt_of)
        self.columns: list[str] = []  # the column names of the last result set
        self._buffer = b""
        if host.startswith("/"):  # a socket directory, as libpq reads it
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(timeout)
            try:
                self._sock.connect(f"{host}/.s.PGSQL.{port}")
            except OSError:
                self._sock.close()
                raise
        else:
            # A bytes host skips the idna codec getaddrinfo would import for a str.
            self._sock = socket.create_connection((host.encode(), port), timeout=timeout)
        try:
            if ssl:  # True: required; "prefer": if the server offers it (libpq's sslmode=prefer)
                self._start_tls(required=ssl is True, verify=verify, root_cert=root_cert, host=host)
            params = {"user": user, "database": dbname, "application_name": application_name}
            if options:  # command-line options for the backend, e.g. "-c search_path=..."
                params["options"] = options
            body = struct.pack("!i", _PROTOCOL_3) + b"".join(
                k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
            self._sock.sendall(struct.pack("!i", len(body) + 4) + body)
            self._authenticate(user, password)
            self._until_ready()
            # `timeout` bounds connecting and logging in; a query may take as long as the server
            # works on it (a restore of a large table) unless the caller bounds it too.
            self._sock.settimeout(query_timeout)
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Say goodbye (Terminate) and close the socket."""
        try:
            self._sock.sendall(b"X\0\0\0\4")
        except OSError:
            pass
        self._sock.close()

    def query(self, sql: str) -> list[Row]:
        """Run one or more statements; the rows of the last result set, as text (None for NULL)."""
        self.send_query(sql)
        return self.result()

    def query_named(self, sql: str) -> list[dict[str, Optional[str]]]:
        """As `query`, each row a dict by column name (PgBouncer's SHOW commands)."""
        rows = self.query(sql)
        return [dict(zip(self.columns, row)) for row in rows]

    def send_query(self, sql: str, *more: str) -> None:
        """Send statements without waiting for the answer (see `answered`, then `result` once
        per query). Several queries go in one write, so that PgBouncer's console runs them
        back to back, with nothing else happening in between."""
        self._sock.sendall(b"".join(b"Q" + struct.pack("!i", len(q.encode()) + 5) + q.encode() + b"\0"
                                    for q in (sql, *more)))

    def answered(self, timeout: float) -> bool:
        """Whether the server has begun to answer, waiting up to `timeout` seconds."""
        import select

        if self._buffer or getattr(self._sock, "pending", lambda: 0)():  # TLS holds decrypted bytes
            return True
        return bool(select.select([self._sock], [], [], timeout)[0])

    def result(self) -> list[Row]:
        """The answer to the statements sent: the rows of the last result set (raises its error)."""
        rows: list[Row] = []
        error: PgError | None = None
        while True:
            kind, data = self._receive()
            if kind == b"T":
                rows = []  # a new result set
                self.columns = column_names(data)
            elif kind == b"D":
                rows.append(_data_row(data))
            elif kind == b"E":
                error = _error(data)
            elif kind == b"Z":
                if error is not None:
                    raise error
                return rows

    @property
    def server_major(self) -> int:
        """The server's major version, from the startup's server_version ("15.18 (Debian ...)")."""
        version = self.parameters.get("server_version", "")
        digits = version[: len(version) - len(version.lstrip("0123456789"))]
        if not digits:
            raise PgError(f"the server reported no version number ({version!r})")
        return int(digits)

    def scalar(self, sql: str) -> Optional[str]:
        """The first column of the first row (None when there is no row)."""
        rows = self.query(sql)
        return rows[0][0] if rows else None

    # ---- the conversation --------------------------------------------------------------

    def _start_tls(self, required: bool = True, verify: str = "", root_cert: str = "", host: str = "") -> None:
        """TLS as libpq's sslmode: require (encrypted, certificate not verified), prefer (only if
        offered), verify-ca / verify-full (against `root_cert`, else the system's CAs)."""
        import ssl as tls

        self._sock.sendall(struct.pack("!ii", 8, _SSL_REQUEST))
        answer = self._sock.recv(1)
        if not answer:  # no server behind the port yet (Docker's proxy accepted and closed)
            raise ServerClosedError("the server closed the connection")
        if answer != b"S":
            if not required:
                return
            raise PgError("the server does not offer TLS")
        context = tls.create_default_context(cafile=root_cert or None)
        context.check_hostname = verify == "verify-full"
        if not verify:
            context.verify_mode = tls.CERT_NONE
        self._sock = context.wrap_socket(self._sock, server_hostname=host if verify == "verify-full" else None)

    def _authenticate(self, user: str, password: str) -> None:
        while True:
            kind, data = self._receive()
            if kind == b"E":
                raise _error(data)
            if kind != b"R":
                raise PgError(f"unexpected message {kind!r} during authentication")
            (code,) = struct.unpack("!i", data[:4])
            if self._scram_only and code != 10:
                raise PgError("the server did not ask for a SCRAM-SHA-256 proof of this login: refused "
                              "(it is not the server that holds it)")
            if code == 0:  # AuthenticationOk
                return
            if code == 3:  # cleartext password
                self._send(b"p", password.encode() + b"\0")
            elif code == 5:  # MD5 with a 4-byte salt
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()
                self._send(b"p", b"md5" + hashlib.md5(inner + data[4:8]).hexdigest().encode() + b"\0")
            elif code == 10:  # SASL: the server lists its mechanisms
                if b"SCRAM-SHA-256\0" not in data[4:]:
                    raise PgError("the server offers no SASL mechanism devenv speaks (SCRAM-SHA-256)")
                self._scram(password)
                return self._authenticate_done()
            else:
                raise PgError(f"unsupported authentication request {code}")

    def _scram(self, password: str) -> None:
        scram = Scram(password)
        first = scram.client_first().encode()
        self._send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
        self._send(b"p", scram.client_final(self._sasl_data(11)).encode())
        scram.verify_server_final(self._sasl_data(12))
        self.scram_salt = scram.server_salt

    def _sasl_data(self, expected: int) -> str:
        kind, data = self._receive()
        if kind == b"E":
            raise _error(data)
        (code,) = struct.unpack("!i", data[:4])
        if kind != b"R" or code != expected:
            raise PgError(f"unexpected SASL message {kind!r}/{code}")
        return data[4:].decode()

    def _authenticate_done(self) -> None:
        kind, data = self._receive()
        if kind == b"E":
            raise _error(data)
        if kind != b"R" or struct.unpack("!i", data[:4])[0] != 0:
            raise PgError("authentication did not complete")

    def _until_ready(self) -> None:
        while True:
            kind, data = self._receive()
            if kind == b"S":
                name, value = data.rstrip(b"\0").split(b"\0", 1)
                self.parameters[name.decode()] = value.decode()
            elif kind == b"E":
                raise _error(data)
            elif kind == b"Z":
                return

    def _send(self, kind: bytes, body: bytes) -> None:
        self._sock.sendall(kind + struct.pack("!i", len(body) + 4) + body)

    def _receive(self) -> tuple[bytes, bytes]:
        """The next message, NoticeResponses skipped."""
        while True:
            header = self._read(5)
            kind, length = header[:1], struct.unpack("!i", header[1:])[0]
            data = self._read(length - 4)
            if kind != b"N":
                return kind, data

    def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self._sock.recv(max(65536, size - len(self._buffer)))
            if not chunk:
                raise ServerClosedError("the server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


class Scram:
    """The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel binding."""

    def __init__(self, password: str, nonce: str | None = None, user: str = "") -> None:
        self.password = password
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n={user},r={self.nonce}"  # Postgres takes the user from the startup packet
        self._server_signature = b""
        self.server_salt = ""

    def client_first(self) -> str:
        """The client-first message: no channel binding, our nonce."""
        return "n,," + self.first_bare

    def client_final(self, server_first: str) -> str:
        """The client-final message with the proof, for the server-first message received."""
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        if not fields["r"].startswith(self.nonce):
            raise PgError("SCRAM: the server's nonce does not extend ours")
        salted = _salted_password(self.password, fields["s"], int(fields["i"]))
        self.server_salt = f"{fields['i']}:{fields['s']}"
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self._server_signature = hmac.digest(hmac.digest(salted, b"Server Key", "sha256"), auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def verify_server_final(self, server_final: str) -> None:
        """Check the server proved it knows the password too."""
        fields = dict(item.split("=", 1) for item in server_final.split(","))
        if "e" in fields:
            raise PgError(f"SCRAM: {fields['e']}")
        if not hmac.compare_digest(base64.b64decode(fields.get("v", "")), self._server_signature):
            raise PgError("SCRAM: the server's signature does not match")


def scram_secret(user: str, password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 secret Postgres stores for a password (pg_authid.rolpassword), with a
    salt derived from the user and password, so every caller computes the same string.

    PgBouncer's userlist holds it instead of the password: given the very secret the server
    stores, PgBouncer checks clients and logs in to Postgres for them without running PBKDF2
    itself (~12 ms of its single thread per login with a plain password).
    """
    salt = hmac.digest(password.encode(), b"devenv scram salt\0" + user.encode(), "sha256")[:16]
    salted = _salted_password(password, base64.b64encode(salt).decode(), iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@functools.lru_cache(maxsize=8)
def scram_salt_of(secret: str) -> str:
    """"<iterations>:<salt>" of a SCRAM secret. A login that succeeded with a salt the server
    sent equal to this proves the server stores that very secret (its keys verified both ways)."""
    return secret.split("$")[1] if secret.count("$") == 2 else ""


def _salted_password(password: str, salt: str, iterations: int) -> bytes:
    """PBKDF2 of the password (4096 rounds, ~3 ms): the same for every session of one role."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), iterations)


def _data_row(data: bytes) -> Row:
    (count,) = struct.unpack("!h", data[:2])
    values: list[Optional[str]] = []
    offset = 2
    for _ in range(count):
        (length,) = struct.unpack("!i", data[offset : offset + 4])
        offset += 4
        if length < 0:
            values.append(None)
        else:
            values.append(data[offset : offset + length].decode())
            offset += length
    return tuple(values)


def column_names(data: bytes) -> list[str]:
    """The names in a RowDescription message (each: name, then 18 bytes of type information)."""
    (count,) = struct.unpack("!h", data[:2])
    names, offset = [], 2
    for _ in range(count):
        end = data.index(b"\0", offset)
        names.append(data[offset:end].decode())
        offset = end + 1 + 18
    return names


def _error(data: bytes) -> PgError:
    fields = {part[:1]: part[1:].decode(errors="replace") for part in data.split(b"\0") if part}
    return PgError(fields.get(b"M", "unknown error"), fields.get(b"C", ""))


def literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings is on in every supported version)."""
    return "'" + text.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'

