"""The farm-secret exchange, sans-IO, and reading the secret file."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.errors import ProtocolError
from farm.net.secret import MIN_SECRET_BYTES, load_secret, secret_from
from farm.protocol.auth import ADMITTED, AUTH_MAGIC, REFUSED, Acceptor, AuthError, Connector
from farm.protocol.handshake import encode_hello
from farm.protocol.tracker import encode_magic

SECRET = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"


def run_exchange(connector: Connector, acceptor: Acceptor, chunk: int = 4096) -> Tuple[bytes, bytes]:
    """Shuttle bytes between the two until neither has anything to say; what each side sent, in order."""
    sent_by_connector, sent_by_acceptor = bytearray(), bytearray()
    for _ in range(10):  # the exchange has four messages
        outgoing = connector.data_to_send()
        sent_by_connector += outgoing
        for start in range(0, len(outgoing), chunk):
            acceptor.feed(outgoing[start : start + chunk])
        answer = acceptor.data_to_send()
        sent_by_acceptor += answer
        for start in range(0, len(answer), chunk):
            connector.feed(answer[start : start + chunk])
        if not outgoing and not answer:
            break
    return bytes(sent_by_connector), bytes(sent_by_acceptor)


@given(chunk=st.integers(1, 80))
def test_both_sides_holding_the_secret_are_admitted_in_any_chunking(chunk: int) -> None:
    connector, acceptor = Connector(SECRET), Acceptor(SECRET)
    to_acceptor, to_connector = run_exchange(connector, acceptor, chunk)
    assert connector.done and acceptor.done
    assert to_connector.endswith(ADMITTED)
    assert SECRET not in to_acceptor + to_connector  # the secret never crosses the wire
    assert len(to_acceptor) == 4 + 1 + 32 + 32 and len(to_connector) == 32 + 32 + 1


def test_bytes_after_the_exchange_are_left_for_the_protocol() -> None:
    connector, acceptor = Connector(SECRET), Acceptor(SECRET)
    acceptor.feed(connector.data_to_send())
    connector.feed(acceptor.data_to_send())
    hello = encode_hello("client", "rasp4")
    acceptor.feed(connector.data_to_send() + hello)
    assert acceptor.done and acceptor.leftover() == hello
    connector.feed(acceptor.data_to_send() + encode_magic())
    assert connector.done and connector.leftover() == encode_magic()


def test_a_connector_with_another_secret_sees_the_acceptor_is_not_its_farm() -> None:
    connector, acceptor = Connector(OTHER), Acceptor(SECRET)
    acceptor.feed(connector.data_to_send())
    with pytest.raises(AuthError, match="does not hold this farm's secret"):
        connector.feed(acceptor.data_to_send())
    assert connector.data_to_send() == b""  # it gives no proof to a stranger


def test_a_wrong_proof_is_refused_with_a_refusal_byte() -> None:
    connector, acceptor = Connector(SECRET), Acceptor(SECRET)
    acceptor.feed(connector.data_to_send())
    acceptor.data_to_send()
    with pytest.raises(AuthError, match="proof does not match"):
        acceptor.feed(b"\x00" * 32)
    assert acceptor.data_to_send() == REFUSED and not acceptor.done


def test_a_recorded_exchange_cannot_be_replayed() -> None:
    connector, acceptor = Connector(SECRET), Acceptor(SECRET)
    recorded, _ = run_exchange(connector, acceptor)
    assert acceptor.done
    replayed = Acceptor(SECRET)  # a fresh nonce, as every connection gets
    with pytest.raises(AuthError):
        replayed.feed(recorded)
    assert replayed.data_to_send().endswith(REFUSED)


def test_the_connector_learns_it_was_refused() -> None:
    connector, acceptor = Connector(SECRET), Acceptor(SECRET)
    acceptor.feed(connector.data_to_send())
    connector.feed(acceptor.data_to_send())
    connector.data_to_send()
    with pytest.raises(AuthError, match="refused our proof"):
        connector.feed(REFUSED)


@pytest.mark.parametrize(
    ("first", "spoke"),
    [
        (struct.pack("<i", 0xFF271) + b"\x00" * 8, "TVM's data-plane handshake"),
        (encode_magic(), "TVM's tracker protocol"),
        (b"GET / HTTP/1.1\r\n", "no protocol of this farm"),
    ],
)
def test_peers_without_the_secret_are_told_apart_at_their_first_bytes(first: bytes, spoke: str) -> None:
    acceptor = Acceptor(SECRET)
    with pytest.raises(AuthError, match="did not authenticate: it spoke %s" % spoke):
        acceptor.feed(first)
    assert acceptor.data_to_send() == b""  # nothing is said to a stranger


def test_version_mismatch_and_errors_are_protocol_errors() -> None:
    acceptor = Acceptor(SECRET)
    with pytest.raises(AuthError, match="authentication version 2, not 1"):
        acceptor.feed(struct.pack("<iB", AUTH_MAGIC, 2) + b"\x00" * 32)
    assert issubclass(AuthError, ProtocolError)


@given(data=st.binary(max_size=200), chunks=st.lists(st.integers(1, 50), max_size=10))
def test_arbitrary_bytes_only_ever_raise_auth_errors(data: bytes, chunks: List[int]) -> None:
    for exchange in (Acceptor(SECRET), Connector(SECRET)):
        exchange.data_to_send()
        position = 0
        try:
            for size in chunks + [len(data)]:
                exchange.feed(data[position : position + size])
                position += size
        except AuthError:
            pass


def test_empty_secret_and_bad_nonce_are_refused() -> None:
    with pytest.raises(ValueError):
        Connector(b"")
    with pytest.raises(ValueError):
        Acceptor(SECRET, nonce=b"short")


# --- the secret file -------------------------------------------------------------------------------


def secret_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> str:
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(mode)
    return str(path)


def test_load_secret_strips_the_trailing_newline(tmp_path: Path) -> None:
    assert load_secret(secret_file(tmp_path, SECRET + b"\n")) == SECRET


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is 0 bytes; use at least %d random bytes" % MIN_SECRET_BYTES),
        (b"password\n", "is 8 bytes; use at least"),
        (b"x" * 5000, "holds more than 4096 bytes"),
    ],
)
def test_unusable_secrets_are_refused_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = secret_file(tmp_path, content)
    with pytest.raises(ValueError, match=message) as info:
        load_secret(path)
    assert path in str(info.value)


def test_missing_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the secret file .*absent"):
        load_secret(str(tmp_path / "absent"))


def test_a_secret_others_can_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "farm.auth"):
        load_secret(secret_file(tmp_path, SECRET, 0o644))
    assert "can be read by other users (mode 644): chmod 600 it" in caplog.text


def test_secret_from_the_option_then_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REMOTEDEV_SECRET_FILE", raising=False)
    assert secret_from(None) is None
    path = secret_file(tmp_path, SECRET)
    monkeypatch.setenv("REMOTEDEV_SECRET_FILE", path)
    assert secret_from(None) == SECRET
    other = tmp_path / "other"
    other.write_bytes(OTHER)
    other.chmod(0o600)
    assert secret_from(str(other)) == OTHER
    assert os.environ["REMOTEDEV_SECRET_FILE"] == path
