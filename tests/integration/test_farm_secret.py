"""A farm with a secret, on real processes at 127.0.0.1: members are admitted, strangers refused and logged.

The farm (tracker, proxy, a listening board and a board behind the proxy) is
started with :class:`farm.ops.launcher.FarmStack` with ``REMOTEDEV_SECRET_FILE``
set, as ``farm up --secret-file`` and the plugin pass it on. Nothing is mocked.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import farm
from conftest import python_env, wait_for
from farm.client.tracker import TrackerError
from farm.net.secret import SECRET_ENV
from farm.ops.inventory import parse_inventory
from farm.ops.launcher import FarmStack
from farm.ops.processes import DaemonProcess
from farm.protocol.auth import AUTH_MAGIC, Connector
from farm.protocol.handshake import encode_hello
from farm.protocol.tracker import encode_magic

INVENTORY = "tracker: {port: 0}\nproxy: {port: 0}\nboards:\n  - {key: locked}\n  - {key: locked, proxy: true}\n"


def write_secret(path: Path, content: bytes) -> str:
    path.write_bytes(content + b"\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, str]:
    """The farm's secret file and another one."""
    directory = tmp_path_factory.mktemp("secrets")
    return write_secret(directory / "farm", os.urandom(32).hex().encode()), write_secret(
        directory / "other", os.urandom(32).hex().encode()
    )


@pytest.fixture(scope="module")
def locked_farm(tmp_path_factory: pytest.TempPathFactory, secrets: Tuple[str, str]) -> Iterator[FarmStack]:
    previous = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = secrets[0]  # the daemons inherit it, as under farm up --secret-file
    try:
        stack = FarmStack(parse_inventory(INVENTORY, "locked.yaml"), str(tmp_path_factory.mktemp("farm")))
        stack.start(timeout=30)
    finally:
        if previous is None:
            del os.environ[SECRET_ENV]
        else:
            os.environ[SECRET_ENV] = previous
    yield stack
    stack.stop()


@pytest.fixture(autouse=True)
def no_secret_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)


def log_of(stack: FarmStack, name: str) -> str:
    return (Path(stack.log_dir) / (name + ".log")).read_text()


def test_members_holding_the_secret_get_boards_directly_and_through_the_proxy(
    locked_farm: FarmStack, secrets: Tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, secrets[0])
    tracker = farm.connect_tracker(*locked_farm.tracker_address)
    sessions = [tracker.request("locked", wait=30), tracker.request("locked", wait=30)]  # both boards at once
    try:
        names = sorted(session.system_info()["name"] for session in sessions)
        assert names == ["locked-0", "locked-1"]  # locked-1 is behind the proxy
        assert all(session.run(sum, [1, 2]) == 3 for session in sessions)
    finally:
        for session in sessions:
            session.close()
        tracker.close()


def test_a_client_without_the_secret_is_refused_and_told_what_to_set(locked_farm: FarmStack) -> None:
    with pytest.raises(
        TrackerError, match="closed the connection .*a farm with a secret does so: set %s" % SECRET_ENV
    ):
        farm.connect_tracker(*locked_farm.tracker_address)
    wait_for(
        lambda: "it spoke TVM's tracker protocol without the farm secret" in log_of(locked_farm, "tracker"),
        10,
        "the tracker logs the refusal",
    )


def test_a_client_with_another_secret_is_refused(locked_farm: FarmStack, secrets: Tuple[str, str]) -> None:
    other = Path(secrets[1]).read_bytes().rstrip(b"\n")
    with pytest.raises(TrackerError, match="does not hold this farm's secret"):
        farm.connect_tracker(*locked_farm.tracker_address, secret=other)


def test_the_board_and_the_proxy_refuse_strangers(locked_farm: FarmStack) -> None:
    described = locked_farm.describe()
    proxy = tuple(described["proxy"])
    with socket.create_connection(proxy, timeout=10) as sock:  # a TVM client or server without the secret
        sock.sendall(encode_hello("client", "locked"))
        sock.settimeout(10)
        assert sock.recv(100) == b""  # closed, nothing said
    wait_for(
        lambda: "it spoke TVM's data-plane handshake without the farm secret" in log_of(locked_farm, "proxy"),
        10,
        "the proxy logs the refusal",
    )
    board = next(board for board in locked_farm.boards if not board.group.proxy)
    host, port = board.process.wait_for_bind()
    with pytest.raises(farm.HandshakeError, match="closed the connection during the handshake .*set %s" % SECRET_ENV):
        farm.connect(host, port, key="locked", connect_timeout=10)
    wait_for(
        lambda: "it spoke TVM's data-plane handshake without the farm secret" in log_of(locked_farm, "locked-0"),
        10,
        "the board logs the refusal",
    )


def test_a_recorded_proof_replayed_on_a_new_connection_is_refused(
    locked_farm: FarmStack, secrets: Tuple[str, str]
) -> None:
    secret = Path(secrets[0]).read_bytes().rstrip(b"\n")
    recorded = bytearray()
    with socket.create_connection(locked_farm.tracker_address, timeout=10) as sock:  # a member, overheard
        exchange = Connector(secret)
        while not exchange.done:
            outgoing = exchange.data_to_send()
            recorded += outgoing
            sock.sendall(outgoing)
            exchange.feed(sock.recv(4096))
        sock.sendall(exchange.data_to_send() + encode_magic())
        assert sock.recv(4) == encode_magic()
    with socket.create_connection(locked_farm.tracker_address, timeout=10) as sock:  # the eavesdropper replays
        sock.sendall(bytes(recorded) + encode_magic())
        sock.settimeout(10)
        answer = b""
        while True:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    assert answer[-1:] == b"\x00" and encode_magic() not in answer  # refused, never admitted
    wait_for(lambda: "proof does not match this farm's secret" in log_of(locked_farm, "tracker"), 10, "logged")
    assert recorded[:4] == AUTH_MAGIC.to_bytes(4, "little")


@pytest.mark.parametrize("daemon", ["tracker", "proxy", "server"])
def test_listening_beyond_this_machine_without_a_secret_is_warned_about(daemon: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "farm.%s" % daemon, "--host", "0.0.0.0", "--port", "0", "--port-end", "1"]
    with DaemonProcess(argv, str(tmp_path / "open.log"), env=python_env()) as process:
        process.wait_for_bind()
        assert "listens on 0.0.0.0 without a farm secret: anyone who can reach it can use it" in process.log_text()
    secret = write_secret(tmp_path / "secret", os.urandom(16).hex().encode())
    with DaemonProcess(argv + ["--secret-file", secret], str(tmp_path / "locked.log"), env=python_env()) as process:
        process.wait_for_bind()
        assert "without a farm secret" not in process.log_text()


def test_a_daemon_given_an_unusable_secret_file_stops_naming_it(tmp_path: Path) -> None:
    weak = write_secret(tmp_path / "weak", b"hunter2")
    argv = [sys.executable, "-m", "farm.tracker", "--port", "0", "--port-end", "1", "--secret-file", weak]
    process = DaemonProcess(argv, str(tmp_path / "weak.log"), env=python_env())
    try:
        assert process.process.wait(timeout=30) == 2
    finally:
        process.stop()
    assert "the secret in %s is 7 bytes; use at least 16 random bytes" % weak in process.log_text()


def test_tvm_tools_without_the_secret_are_refused(locked_farm: FarmStack) -> None:
    rpc = pytest.importorskip("tvm.rpc", reason="TVM is not installed (the tvm extra needs Python 3.10+)")
    host, port = locked_farm.tracker_address
    with pytest.raises(Exception):  # noqa: B017  (TVM raises what its socket code meets: a reset, a short read)
        rpc.connect_tracker(host, port).summary()
    wait_for(
        lambda: log_of(locked_farm, "tracker").count("it spoke TVM's tracker protocol without the farm secret") >= 1,
        10,
        "the tracker logs the TVM client it refused",
    )


def test_the_plugin_takes_the_secret_file_option(pytester: pytest.Pytester, secrets: Tuple[str, str]) -> None:
    inventory = pytester.makefile(".yaml", farm="tracker: {port: 0}\nboards:\n  - {key: locked}\n")
    pytester.makepyfile(
        """
        import os
        import socket

        from farm.protocol.tracker import encode_magic

        def test_locked_farm(device, farm):
            assert device.run(sum, [1, 2]) == 3
            assert os.environ["REMOTEDEV_SECRET_FILE"] == %r
            with socket.create_connection(farm.tracker, timeout=10) as sock:  # no proof: refused
                sock.sendall(encode_magic())
                assert sock.recv(4) == b""
        """
        % secrets[0]
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--farm", str(inventory), "--secret-file", secrets[0], timeout=120
    )
    result.assert_outcomes(passed=1)
