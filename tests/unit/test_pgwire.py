"""devenv.clients.pgwire's pure logic: SCRAM-SHA-256 against RFC 7677's worked example, row decoding.
(The wire conversation itself is tested against real servers in tests/integration/test_services.py.)"""

from __future__ import annotations

import struct

import pytest

from devenv.clients import pgwire

# RFC 7677, section 3: user "user", password "pencil".
NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_matches_rfc7677() -> None:
    scram = pgwire.Scram("pencil", nonce=NONCE, user="user")
    assert scram.client_first() == f"n,,n=user,r={NONCE}"
    assert scram.client_final(SERVER_FIRST) == CLIENT_FINAL
    scram.verify_server_final(SERVER_FINAL)  # raises if the server's proof were wrong


def test_scram_rejects_a_wrong_server_signature_and_a_foreign_nonce() -> None:
    scram = pgwire.Scram("not-pencil", nonce=NONCE, user="user")
    scram.client_final(SERVER_FIRST)
    with pytest.raises(pgwire.PgError, match="signature"):
        scram.verify_server_final(SERVER_FINAL)
    with pytest.raises(pgwire.PgError, match="nonce"):
        pgwire.Scram("pencil", nonce="other").client_final(SERVER_FIRST)


def test_data_row_decodes_text_and_null() -> None:
    data = struct.pack("!h", 3) + struct.pack("!i", 2) + b"42" + struct.pack("!i", -1) + struct.pack("!i", 0)
    assert pgwire._data_row(data) == ("42", None, "")


def test_a_one_time_login_answers_only_a_scram_challenge() -> None:
    """scram_only (a cache's one-time login over TCP): a server that asks for the password in
    clear or as MD5, or lets the login in without asking, gets nothing and is refused."""
    import socket
    import struct
    import threading

    import pytest

    from devenv.clients import pgwire

    for code in (3, 5, 0):  # cleartext, MD5 (with its salt), AuthenticationOk without a challenge
        listener = socket.create_server(("127.0.0.1", 0))
        heard: list[bytes] = []

        def serve(code: int = code) -> None:
            conn, _ = listener.accept()
            with conn:
                length = struct.unpack("!i", conn.recv(4))[0]
                conn.recv(length - 4)  # the startup message
                body = struct.pack("!i", code) + (b"salt" if code == 5 else b"")
                conn.sendall(b"R" + struct.pack("!i", len(body) + 4) + body)
                conn.settimeout(2)
                try:
                    heard.append(conn.recv(4096))
                except OSError:
                    pass

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with pytest.raises(pgwire.PgError, match="SCRAM"):
            pgwire.Connection("127.0.0.1", listener.getsockname()[1], "devenv_restore", "the-secret", "postgres",
                              scram_only=True)
        server.join(5)
        listener.close()
        assert all(b"the-secret" not in data and not data.startswith(b"p") for data in heard), (code, heard)
