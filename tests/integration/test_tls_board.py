"""A board daemon with TLS, as a real process on 127.0.0.1, with certificates the tests made.

The crash, timeout, busy and shutdown behaviour under TLS runs in
test_board_daemon.py (``EVERY_BOARD``); here: who gets in, what the logs
and errors say, the relay's bytes, and strangers that do not finish TLS, on
the Python board and on the native one alike.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator

import numpy as np
import pytest
from farm_certs import TlsFiles

import farm
from conftest import BoardServer, every_board_server, fd_count, python_env, wait_for
from farm.net.tls import TlsConfig
from farm.ops.processes import DaemonProcess
from farm.protocol.handshake import encode_hello

pytestmark = every_board_server
KEY = "secure"
VADD_SIG = "void vadd(const float *a, const float *b, float *c, int64_t n)"


@pytest.fixture
def tls_board(board_factory: Callable[..., DaemonProcess], tls_files: TlsFiles) -> DaemonProcess:
    return board_factory(key=KEY, env=python_env(**tls_files.daemon().as_env()))


@pytest.fixture(autouse=True)
def no_tls_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TlsConfig.from_env().as_env():
        monkeypatch.delenv(name)


def test_a_client_with_the_farm_ca_gets_a_tls_session(tls_board: DaemonProcess, tls_files: TlsFiles) -> None:
    with farm.connect(*tls_board.address, key=KEY, tls=tls_files.client()) as session:
        sock = session._conn.sock
        assert isinstance(sock, ssl.SSLSocket) and sock.version() in ("TLSv1.2", "TLSv1.3")
        assert session.system_info()["key"] == KEY


def test_the_environment_turns_tls_on_for_clients(
    tls_board: DaemonProcess, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTEDEV_TLS_CA", tls_files.ca)
    with farm.connect(*tls_board.address, key=KEY) as session:
        session.ping()


def test_a_plain_client_is_refused_and_the_log_names_what_it_spoke(tls_board: DaemonProcess) -> None:
    with pytest.raises(farm.HandshakeError, match="REMOTEDEV_TLS_CA"):
        farm.connect(*tls_board.address, key=KEY, tls=TlsConfig())
    wait_for(
        lambda: "it spoke TVM's data-plane handshake, not TLS" in tls_board.log_text(),
        5,
        "the board to log the refusal",
    )


def test_a_client_trusting_another_ca_refuses_the_board(tls_board: DaemonProcess, tls_files: TlsFiles) -> None:
    with pytest.raises(farm.HandshakeError, match="certificate was refused: unable to get local issuer"):
        farm.connect(*tls_board.address, key=KEY, tls=tls_files.client(ca=tls_files.other_ca))
    wait_for(lambda: "TLS handshake failed" in tls_board.log_text(), 5, "the board to log the failed handshake")


def test_a_board_with_another_ca_certificate_is_refused(
    board_factory: Callable[..., DaemonProcess], tls_files: TlsFiles
) -> None:
    stranger = TlsConfig(tls_files.other_cert, tls_files.other_key, tls_files.other_ca)
    board = board_factory(key=KEY, env=python_env(**stranger.as_env()))
    with pytest.raises(farm.HandshakeError, match="certificate was refused"):
        farm.connect(*board.address, key=KEY, tls=tls_files.client())


def test_the_certificate_must_carry_the_name_dialled_or_the_server_name(
    tls_board: DaemonProcess, tls_files: TlsFiles
) -> None:
    host, port = tls_board.address
    with farm.connect(host, port, key=KEY, tls=tls_files.client(server_name="farm.test")) as session:
        session.ping()
    with pytest.raises(farm.HandshakeError, match="not valid for 'elsewhere.test'"):
        farm.connect(host, port, key=KEY, tls=tls_files.client(server_name="elsewhere.test"))


def test_a_tls_client_of_a_plain_board_is_told_it_does_not_speak_tls(
    board_factory: Callable[..., DaemonProcess], tls_files: TlsFiles
) -> None:
    board = board_factory(key=KEY)
    with pytest.raises(farm.HandshakeError) as caught:
        farm.connect(*board.address, key=KEY, tls=tls_files.client(), connect_timeout=5)
    assert "TLS" in str(caught.value)
    wait_for(lambda: "TLS (is TLS on at one end only?)" in board.log_text(), 5, "the plain board to name TLS")


def test_the_farm_secret_is_proved_inside_tls(
    board_factory: Callable[..., DaemonProcess], tls_files: TlsFiles, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(24).hex().encode())
    secret.chmod(0o600)
    board = board_factory(key=KEY, env=python_env(REMOTEDEV_SECRET_FILE=str(secret), **tls_files.daemon().as_env()))
    with farm.connect(*board.address, key=KEY, tls=tls_files.client(), secret=secret.read_bytes()) as session:
        session.ping()
    with pytest.raises(farm.HandshakeError):
        farm.connect(*board.address, key=KEY, tls=tls_files.client(), secret=os.urandom(24), connect_timeout=5)


@pytest.mark.parametrize("mebibytes", [1, 24])
def test_arrays_round_trip_through_the_relay(tls_board: DaemonProcess, tls_files: TlsFiles, mebibytes: int) -> None:
    """More than the relay's buffer each way, checked byte for byte."""
    data = np.random.default_rng(mebibytes).integers(0, 255, size=mebibytes << 20, dtype=np.uint8)
    with farm.connect(*tls_board.address, key=KEY, tls=tls_files.client()) as session:
        remote = session.array(data)
        np.testing.assert_array_equal(remote.numpy(), data)
        session.ping()


def test_calls_through_tls_take_the_fast_paths_and_their_errors_the_general_one(
    tls_board: DaemonProcess, tls_files: TlsFiles, kernels: Dict[str, Path]
) -> None:
    """Calls over TLS: the client's one send and one receive per call on a TLS socket, the relay, the board's
    answer; a call the board refuses comes back as an error, and the calls after it and pipelined ones are answered."""
    with farm.connect(*tls_board.address, key=KEY, tls=tls_files.client()) as session:
        session.upload(kernels["libvadd.so"])
        vadd = session.load_module("libvadd.so").get_function("vadd", VADD_SIG)
        x = np.arange(8, dtype=np.float32)
        a, b, c = session.array(x), session.array(x * 2), session.empty(8, "float32")
        for _ in range(50):
            assert vadd(a, b, c, 8) is None
        np.testing.assert_array_equal(c.numpy(), x * 3)
        made_up = farm.RemoteArray(session, 1 << 40, (8,), np.float32)
        with pytest.raises(farm.RemoteError, match="argument 1 is an array that was freed or is not of this session"):
            vadd(made_up, b, c, 8)
        with session.pipeline():
            futures = [vadd.submit(a, a, c, 8) for _ in range(20)]
        assert [future.result() for future in futures] == [None] * 20
        np.testing.assert_array_equal(c.numpy(), x * 2)


def test_a_board_exits_with_a_clear_error_on_an_unusable_certificate(
    tmp_path: Path, tls_files: TlsFiles, board_server: BoardServer
) -> None:
    cases: Dict[str, Dict[str, str]] = {
        "missing.pem": TlsConfig(str(tmp_path / "missing.pem"), tls_files.key, tls_files.ca).as_env(),
        "--tls-key": TlsConfig(tls_files.cert, None, tls_files.ca).as_env(),
        "does not match": TlsConfig(tls_files.cert, tls_files.other_key, tls_files.ca).as_env(),
    }
    for expected, env in cases.items():
        program = [board_server.program] if board_server.program else [sys.executable, "-m", "farm.server"]
        done = subprocess.run(
            [*program, "--port", "0", "--key", KEY],
            env=python_env(**env, **board_server.env),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, (expected, done.stderr)
        assert expected in done.stderr or "KEY_VALUES_MISMATCH" in done.stderr, done.stderr


@pytest.fixture
def strangers() -> Iterator[list]:
    opened: list = []
    yield opened
    for sock in opened:
        sock.close()


def test_strangers_that_never_finish_tls_do_not_keep_the_board(
    tls_board: DaemonProcess, tls_files: TlsFiles, strangers: list
) -> None:
    """Plain hellos, garbage, a bare TLS record header, a ClientHello cut short, silence: the board refuses or
    times them out, serves a client meanwhile, and its file descriptors come back to where they were."""
    baseline = fd_count(tls_board.pid)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = tls_files.client().client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        handshake.do_handshake()
    client_hello = outgoing.read()
    sent = [
        encode_hello("client", KEY),  # a plain client
        os.urandom(64),
        b"\x16\x03\x01\x40\x00",  # a TLS record header, then nothing
        client_hello[:40],  # a ClientHello cut short
        client_hello,  # a whole one, then silence
        b"",  # silence
    ]
    for payload in sent:
        sock = socket.create_connection(tls_board.address, timeout=5)
        if payload:
            sock.sendall(payload)
        strangers.append(sock)
    with farm.connect(*tls_board.address, key=KEY, tls=tls_files.client()) as session:
        session.ping()
    for sock in strangers:
        sock.close()
    wait_for(lambda: fd_count(tls_board.pid) <= baseline, 15, "the board's descriptors back to %d" % baseline)
    with farm.connect(*tls_board.address, key=KEY, tls=tls_files.client()) as session:
        session.ping()
