"""pyfed.wire.auth in-process: where the token comes from, token files, the weak-token advice,
and the mutual HMAC challenge played from both sides (no sockets)."""

from __future__ import annotations

import logging
import os
import re
import stat

import pytest

from pyfed.errors import ConfigurationError, PyFedError
from pyfed.wire import auth

TOKEN = "a-strong-federation-token-0123456789"
ENV = auth.TOKEN_ENVIRONMENT_VARIABLE


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


# ---------------------------------------------------------------------------------------------
# Where the token comes from
# ---------------------------------------------------------------------------------------------


def test_no_token_anywhere_means_no_authentication():
    assert ENV == "PYFED_TOKEN"
    assert auth.resolve_token() is None


def test_an_explicit_token_wins_over_the_file_and_the_environment(tmp_path, monkeypatch):
    token_file = tmp_path / "fed.token"
    token_file.write_text("the-token-from-the-file-000000\n")
    monkeypatch.setenv(ENV, "the-token-from-the-environment")
    assert auth.resolve_token(TOKEN, token_file) == TOKEN.encode()
    assert auth.resolve_token(TOKEN.encode()) == TOKEN.encode()  # bytes are taken as they are
    assert auth.resolve_token(bytearray(b"\xff" * 20)) == b"\xff" * 20


def test_a_token_file_is_read_and_stripped_and_wins_over_the_environment(tmp_path, monkeypatch):
    token_file = tmp_path / "fed.token"
    token_file.write_text(f"  {TOKEN}\n\n")
    monkeypatch.setenv(ENV, "the-token-from-the-environment")
    assert auth.resolve_token(token_file=token_file) == TOKEN.encode()
    assert auth.resolve_token(token_file=str(token_file)) == TOKEN.encode()


def test_the_environment_is_the_last_resort(monkeypatch):
    monkeypatch.setenv(ENV, TOKEN)
    assert auth.resolve_token() == TOKEN.encode()


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_a_set_but_empty_environment_variable_is_an_error(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ConfigurationError, match=r"^\$PYFED_TOKEN is set but empty"):
        auth.resolve_token()


def test_an_empty_or_missing_token_file_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "empty.token"
    empty.write_text(" \n")
    with pytest.raises(ConfigurationError, match=f"token file {re.escape(str(empty))} is empty"):
        auth.resolve_token(token_file=empty)
    missing = tmp_path / "missing.token"
    with pytest.raises(ConfigurationError,
                       match=f"cannot read token file {re.escape(str(missing))}: No such file"):
        auth.resolve_token(token_file=missing)


def test_a_token_shorter_than_the_minimum_is_refused():
    assert auth.MIN_TOKEN_BYTES == 8
    with pytest.raises(ConfigurationError, match="at least 8 bytes; received 7"):
        auth.resolve_token("1234567")
    with pytest.raises(ConfigurationError, match="received 4"):
        auth.resolve_token("é" * 2)  # counted in UTF-8 bytes, not characters
    assert isinstance(ConfigurationError("x"), PyFedError)


def test_a_short_token_is_accepted_with_advice_logged_once(caplog):
    caplog.set_level(logging.WARNING, logger="pyfed")
    assert auth.resolve_token("ten-bytes!") == b"ten-bytes!"
    advice = [r.getMessage() for r in caplog.records]
    assert advice == [auth.weak_token_warning(b"ten-bytes!")]
    assert "the token is 10 bytes long" in advice[0] and "ten-bytes!" not in advice[0]
    caplog.clear()
    auth.resolve_token(TOKEN)
    assert caplog.records == []


def test_weak_token_warning_only_below_the_strong_length():
    assert auth.STRONG_TOKEN_BYTES == 16
    assert auth.weak_token_warning(None) is None
    assert auth.weak_token_warning(b"x" * 16) is None
    advice = auth.weak_token_warning(b"x" * 15)
    assert advice.startswith("the token is 15 bytes long")
    assert "use at least 16 random bytes" in advice and "`pyfed token`" in advice


# ---------------------------------------------------------------------------------------------
# New tokens and token files
# ---------------------------------------------------------------------------------------------


def test_new_tokens_are_strong_url_safe_and_different():
    tokens = {auth.new_token() for _ in range(20)}
    assert len(tokens) == 20
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token), token
        assert auth.weak_token_warning(token.encode()) is None
        assert auth.resolve_token(token) == token.encode()


def test_a_token_file_is_private_whatever_the_umask_and_reads_back(tmp_path):
    path = tmp_path / "fed.token"
    token = auth.new_token()
    previous = os.umask(0)  # the most permissive umask: the file must still be 0600
    try:
        auth.write_token_file(path, token)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == token + "\n"
    assert auth.resolve_token(token_file=path) == token.encode()


def test_a_token_file_is_never_overwritten(tmp_path):
    path = tmp_path / "fed.token"
    auth.write_token_file(path, "first-token-0000000000")
    with pytest.raises(ConfigurationError, match="already exists; remove it first"):
        auth.write_token_file(path, "second-token-000000000")
    assert path.read_text() == "first-token-0000000000\n"


def test_a_token_file_that_cannot_be_created_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot write token file .*No such file"):
        auth.write_token_file(tmp_path / "no-such-folder" / "fed.token", TOKEN)


# ---------------------------------------------------------------------------------------------
# The challenge, played from both sides
# ---------------------------------------------------------------------------------------------


def handshake(client_token: bytes, server_token: bytes, name: str = "client_1"):
    """(server's proof checked by the client, client's proof checked by the server), as the
    client and the gateway compute them."""
    client_nonce = auth.new_nonce()                                   # HELLO
    server_nonce = auth.new_nonce()                                   # CHALLENGE ...
    server_says = auth.server_proof(server_token, client_nonce, server_nonce)
    client_trusts = auth.proofs_match(                                # ... checked by the client
        auth.server_proof(client_token, client_nonce, server_nonce), server_says)
    client_says = auth.client_proof(client_token, client_nonce, server_nonce, name)   # AUTH
    server_trusts = auth.proofs_match(
        auth.client_proof(server_token, client_nonce, server_nonce, name), client_says)
    return client_trusts, server_trusts


def test_the_same_token_on_both_sides_is_trusted_both_ways():
    assert handshake(TOKEN.encode(), TOKEN.encode()) == (True, True)


def test_a_wrong_token_fails_both_ways():
    assert handshake(b"the-wrong-token-000000", TOKEN.encode()) == (False, False)
    assert handshake(TOKEN.encode(), TOKEN.encode() + b"x") == (False, False)


def test_proofs_bind_both_nonces_the_role_and_the_name():
    token = TOKEN.encode()
    c, s = auth.new_nonce(), auth.new_nonce()
    proof = auth.client_proof(token, c, s, "client_1")
    assert re.fullmatch(r"[0-9a-f]{64}", proof)
    assert proof == auth.client_proof(token, c, s, "client_1")  # deterministic
    others = {auth.client_proof(token, s, c, "client_1"),  # nonces swapped: no replay
              auth.client_proof(token, c, auth.new_nonce(), "client_1"),
              auth.client_proof(token, c, s, "client_2"),  # another name
              auth.client_proof(token, c + s[0], s[1:], "client_1"),  # the parts stay apart
              auth.server_proof(token, c, s)}  # the server's proof is never a client's
    assert proof not in others and len(others) == 5


def test_proofs_match_compares_in_constant_time_and_never_raises():
    token = TOKEN.encode()
    c, s = auth.new_nonce(), auth.new_nonce()
    expected = auth.client_proof(token, c, s, "client_1")
    assert auth.proofs_match(expected, expected)
    assert not auth.proofs_match(expected, expected[:-1])          # shorter
    assert not auth.proofs_match(expected, expected + "0")         # longer
    assert not auth.proofs_match(expected, expected.upper())       # hex is case-sensitive here
    assert not auth.proofs_match(expected, "")
    # compare_digest refuses non-ASCII str; a hostile peer's proof is mapped, never an error.
    assert not auth.proofs_match(expected, "é" * 64)
    assert not auth.proofs_match(expected, expected[:-1] + "\u2028")


# ---------------------------------------------------------------------------------------------
# Nonces and reconnect secrets
# ---------------------------------------------------------------------------------------------


def test_nonces_are_64_lowercase_hex_digits_and_anything_else_is_refused():
    nonce = auth.new_nonce()
    assert auth.valid_nonce(nonce) and nonce != auth.new_nonce()
    for bad in [None, 42, "", nonce[:-1], nonce + "0", nonce.upper(), "g" * 64, " " + nonce[1:],
                nonce[:-1] + "\n", list(nonce)]:
        assert not auth.valid_nonce(bad), repr(bad)


def test_a_reconnect_secret_matches_only_itself():
    secret = auth.new_reconnect_secret()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret) and secret != auth.new_reconnect_secret()
    assert auth.reconnect_secret_matches(secret, secret)
    for presented in [None, "", secret[:-1], secret + "x", secret.encode(), 12, "é" + secret[1:]]:
        assert not auth.reconnect_secret_matches(secret, presented), repr(presented)
    assert not auth.reconnect_secret_matches(None, secret)  # no secret given out: no takeover
    assert not auth.reconnect_secret_matches("", "")
