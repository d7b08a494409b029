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
