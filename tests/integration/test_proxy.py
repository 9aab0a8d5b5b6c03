"""The proxy with real tracker, proxy and board processes; a board in its own network namespace."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Pattern, Sequence, Tuple

import numpy as np
import pytest

import farm
from conftest import BoardServer, check_sanitizer_log, every_board_server, python_env, wait_for
from farm.ops.processes import DaemonProcess
from farm.protocol.handshake import CODE_MISMATCH, ReplyReader, encode_hello

WAITING = re.compile(r"waiting at the proxy")
VADD = "void vadd(const float *a, const float *b, float *c, int64_t n)"

Starter = Callable[..., DaemonProcess]


@pytest.fixture
def start(tmp_path: Path, board_server: BoardServer) -> Iterator[Starter]:
    """Start ``python -m farm.<module> ARGS`` (optionally under a command prefix), the board server ``server`` being
    ``board_server``'s; stopped at teardown."""
    started: List[DaemonProcess] = []

    def launch(module: str, *args: str, prefix: Sequence[str] = (), wait_for: Optional[Pattern[str]] = None):
        native = module == "server" and board_server.program is not None
        program = [board_server.program] if native else [sys.executable, "-m", "farm.%s" % module]
        env = python_env(**board_server.env) if native else None
        daemon = DaemonProcess([*prefix, *program, *args], str(tmp_path / ("%s-%d.log" % (module, len(started)))), env)
        started.append(daemon)
        if wait_for is None:
            daemon.wait_for_bind()
        else:
            daemon.wait_for_log(wait_for)
        return daemon

    yield launch
    for daemon in reversed(started):
        daemon.stop()
    for daemon in started:
        check_sanitizer_log(daemon)


def free_boards(tracker: farm.TrackerClient, key: str) -> int:
    return tracker.summary()["queue_info"].get(key, {}).get("free", 0)


def offered(tracker: farm.TrackerClient, key: str) -> Optional[Dict[str, Any]]:
    """The tracker's summary once one board of ``key`` is free and the proxy's entry is in it, else None."""
    summary = tracker.summary()
    free = summary["queue_info"].get(key, {}).get("free", 0)
    return summary if free == 1 and summary["server_info"] else None


def run_vadd(session: farm.RemoteSession, library: Path) -> None:
    session.upload(library)
    vadd = session.load_module(library.name).get_function("vadd", signature=VADD)
    x = np.random.default_rng(1).standard_normal(1 << 16, dtype=np.float32)
    a, b, c = session.array(x), session.array(2 * x), session.empty(x.shape, "float32")
    vadd(a, b, c, x.size)
    np.testing.assert_array_equal(c.numpy(), 3 * x)


def address(daemon: DaemonProcess) -> str:
    assert daemon.address is not None
    return "%s:%d" % daemon.address


@every_board_server
def test_board_behind_the_proxy_serves_through_the_tracker(start: Starter, kernels) -> None:
    tracker_daemon = start("tracker", "--port", "0")
    proxy = start("proxy", "--port", "0", "--tracker", address(tracker_daemon))
    start("server", "--host", proxy.address[0], "--port", str(proxy.address[1]), "--through-proxy", "--key", "nat",
          wait_for=WAITING)  # fmt: skip
    tracker = farm.connect_tracker(*tracker_daemon.address)
    # the proxy offers the board (PUT), then tells the tracker about its boards (UPDATE_INFO): wait for both
    summary = wait_for(lambda: offered(tracker, "nat"), 10, "the proxy to offer the board and describe it")
    (entry,) = summary["server_info"]
    assert entry["key"] == "server:proxy[nat]"
    assert entry["addr"] == [proxy.address[0], proxy.address[1]]
    with tracker.request("nat", user="ci", session_timeout=60) as session:
        assert (session.host, session.port) == proxy.address
        run_vadd(session, kernels["libvadd.so"])
        big = np.arange(8 << 20, dtype=np.float32)  # 32 MiB each way through the proxy
        np.testing.assert_array_equal(session.array(big).numpy(), big)
        assert free_boards(tracker, "nat") == 0
    wait_for(lambda: free_boards(tracker, "nat") == 1, 10, "the board to dial the proxy again")
    with tracker.request("nat") as session:
        session.ping()


@every_board_server
def test_the_tracker_counts_every_board_behind_the_proxy_held_or_free(start: Starter) -> None:
    tracker_daemon = start("tracker", "--port", "0")
    proxy = start("proxy", "--port", "0", "--tracker", address(tracker_daemon))
    boards = [
        start(
            "server",
            "--host",
            proxy.address[0],
            "--port",
            str(proxy.address[1]),
            "--through-proxy",
            "--key",
            "nat",
            wait_for=WAITING,
        )  # fmt: skip
        for _ in range(2)
    ]
    tracker = farm.connect_tracker(*tracker_daemon.address)

    def counts() -> Tuple[int, int]:
        queue = tracker.summary()["queue_info"].get("nat", {})
        return queue.get("total", 0), queue.get("free", 0)

    wait_for(lambda: counts() == (2, 2), 10, "the proxy to offer both boards")
    with tracker.request("nat"):
        assert counts() == (2, 1)  # the held board still counts
    wait_for(lambda: counts() == (2, 2), 10, "the board to dial the proxy again")
    boards[0].stop()
    # (Its offer stays at the tracker until a client tries it: the proxy refuses it, the client asks again.)
    wait_for(lambda: counts()[0] == 1, 10, "the proxy to report the board that left")


@every_board_server
def test_session_timeout_reaches_the_board_through_the_proxy(start: Starter, kernels) -> None:
    tracker_daemon = start("tracker", "--port", "0")
    proxy = start("proxy", "--port", "0", "--tracker", address(tracker_daemon))
    start("server", "--host", proxy.address[0], "--port", str(proxy.address[1]), "--through-proxy", "--key", "nat",
          wait_for=WAITING)  # fmt: skip
    tracker = farm.connect_tracker(*tracker_daemon.address)
    wait_for(lambda: free_boards(tracker, "nat") == 1, 10, "the proxy to offer the board")
    with tracker.request("nat", session_timeout=1) as session:
        session.upload(kernels["libmisbehave.so"])
        spin = session.load_module("libmisbehave.so")["spin_forever"]
        with pytest.raises(farm.SessionLostError) as lost:
            spin()
    assert lost.value.timed_out
    wait_for(lambda: free_boards(tracker, "nat") == 1, 10, "the board to come back")


def test_unknown_match_key_is_refused_by_the_proxy(start: Starter) -> None:
    tracker_daemon = start("tracker", "--port", "0")
    proxy = start("proxy", "--port", "0", "--tracker", address(tracker_daemon))
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(encode_hello("client", "nat:0.123"))
        reply = ReplyReader().feed(sock.recv(16))
    assert reply is not None and reply.code == CODE_MISMATCH
    with pytest.raises(farm.HandshakeError, match="mismatch"):
        farm.connect(*proxy.address, key="nat:0.456")


@every_board_server
def test_without_a_tracker_client_and_board_pair_by_key(start: Starter, kernels) -> None:
    proxy = start("proxy", "--port", "0")
    start("server", "--host", proxy.address[0], "--port", str(proxy.address[1]), "--through-proxy", "--key", "solo",
          wait_for=WAITING)  # fmt: skip
    with farm.connect(*proxy.address, key="solo") as session:
        assert session.system_info()["key"] == "solo"
        run_vadd(session, kernels["libvadd.so"])


@every_board_server
def test_a_board_that_leaves_is_not_handed_out(start: Starter) -> None:
    tracker_daemon = start("tracker", "--port", "0")
    proxy = start("proxy", "--port", "0", "--tracker", address(tracker_daemon))
    board = start("server", "--host", proxy.address[0], "--port", str(proxy.address[1]), "--through-proxy",
                  "--key", "nat", wait_for=WAITING)  # fmt: skip
    tracker = farm.connect_tracker(*tracker_daemon.address)
    wait_for(lambda: free_boards(tracker, "nat") == 1, 10, "the proxy to offer the board")
    board.stop()
    wait_for(lambda: "left before a client came" in proxy.log_text(), 10, "the proxy to notice")
    with pytest.raises(farm.TrackerError):
        tracker.request("nat", wait=3)


# --- across a network boundary -------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def board_namespace() -> Iterator[Tuple[str, str, str]]:
    """A network namespace linked to this one by a veth pair only: (namespace, our address, its address)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed")
    name = "farmt-" + uuid.uuid4().hex[:8]
    ours, theirs = "fv%s" % name[6:12], "fw%s" % name[6:12]
    subnet = 1 + int(name[6:8], 16) % 250
    here, there = "10.250.%d.1" % subnet, "10.250.%d.2" % subnet
    _ip("netns", "add", name)
    try:
        _ip("link", "add", ours, "type", "veth", "peer", "name", theirs)
        _ip("link", "set", theirs, "netns", name)
        _ip("addr", "add", here + "/30", "dev", ours)
        _ip("link", "set", ours, "up")
        _ip("-n", name, "addr", "add", there + "/30", "dev", theirs)
        _ip("-n", name, "link", "set", theirs, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield name, here, there
    finally:
        subprocess.run(["ip", "link", "del", ours], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_board_in_another_network_namespace_runs_a_kernel_through_the_proxy(
    start: Starter, kernels, board_namespace: Tuple[str, str, str]
) -> None:
    namespace, here, there = board_namespace
    tracker_daemon = start("tracker", "--port", "0")
    # The proxy listens on our end of the veth link: the only address the board can reach.
    proxy = start("proxy", "--host", here, "--port", "0", "--tracker", address(tracker_daemon))
    prefix = ["ip", "netns", "exec", namespace]
    # Seen from the namespace, the tracker on our loopback does not exist: only the proxy helps.
    probe = "import socket; socket.create_connection(%r, timeout=2)" % (tracker_daemon.address,)
    unreachable = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True)
    assert unreachable.returncode != 0
    start("server", "--host", here, "--port", str(proxy.address[1]), "--through-proxy", "--key", "netns",
          prefix=prefix, wait_for=WAITING)  # fmt: skip
    tracker = farm.connect_tracker(*tracker_daemon.address)
    wait_for(lambda: free_boards(tracker, "netns") == 1, 10, "the proxy to offer the board")
    with tracker.request("netns", user="ci") as session:
        assert session.host == here
        run_vadd(session, kernels["libvadd.so"])
    # And nothing listens for us on the board's side of the link.
    with pytest.raises(OSError):
        socket.create_connection((there, 9090), timeout=2)
