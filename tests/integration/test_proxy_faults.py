"""The proxy under faults, with real tracker, proxy, board and client processes on 127.0.0.1.

Malformed and silent peers on raw sockets, a board, a client or the proxy itself killed
in the middle of a session, and a transfer far larger than the proxy should ever hold.
Nothing of the package is replaced or mocked; every process is stopped at teardown.
Waits poll a condition against a deadline, and calls that could hang run in a thread
with a deadline of their own.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Pattern, Tuple

import numpy as np
import pytest

import farm
from conftest import in_thread, python_env, wait_for
from farm.ops.processes import DaemonProcess
from farm.protocol.handshake import CODE_MISMATCH, RPC_MAGIC, ReplyReader, encode_hello

HOST = "127.0.0.1"
KEY = "nat"
WAITING = re.compile(r"waiting at the proxy")
Address = Tuple[str, int]

#: A client that takes a board of a key through the tracker, says so, and then holds it until killed.
HOLDING_CLIENT = """
import sys, threading, farm
tracker = farm.connect_tracker(sys.argv[1], int(sys.argv[2]))
session = tracker.request(sys.argv[3], session_timeout=60, wait=20)
session.ping()
print("held", flush=True)
threading.Event().wait()
"""


# --- helpers -------------------------------------------------------------------------


def summary_of(address: Address) -> Optional[Dict[str, Any]]:
    """The tracker's summary over a connection of its own; None while it cannot be reached."""
    try:
        with farm.connect_tracker(address[0], address[1], timeout=5) as client:
            return client.summary()
    except farm.TrackerError:
        return None


def free_boards(tracker: Address, key: str = KEY) -> int:
    summary = summary_of(tracker)
    return 0 if summary is None else summary["queue_info"].get(key, {}).get("free", 0)


def memory_kib(pid: int) -> Dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak resident size) of a process, in KiB, from /proc/PID/status."""
    with open("/proc/%d/status" % pid) as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes the connection (a reset counts as closing)."""
    received = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail("the proxy did not close the connection within %g s" % timeout)
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        except socket.timeout:
            continue
        if not data:
            return bytes(received)
        received += data


class Farm:
    """One test's tracker, proxy (offering to the tracker) and boards behind the proxy."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: List[DaemonProcess] = []
        self.tracker: Address = ("", 0)
        self.proxy_daemon: Optional[DaemonProcess] = None

    def _start(self, name: str, argv: List[str], wait_for_log: Optional[Pattern[str]] = None) -> DaemonProcess:
        log = self.directory / ("%s-%d.log" % (name, len(self.started)))
        daemon = DaemonProcess(argv, str(log), env=python_env())
        self.started.append(daemon)
        if wait_for_log is None:
            daemon.wait_for_bind()
        else:
            daemon.wait_for_log(wait_for_log)
        return daemon

    def start_tracker(self) -> Address:
        daemon = self._start("tracker", [sys.executable, "-m", "farm.tracker", "--host", HOST, "--port", "0"])
        assert daemon.address is not None
        self.tracker = daemon.address
        return self.tracker

    def start_proxy(self, port: int = 0) -> DaemonProcess:
        """The proxy on ``port`` (0: any free one), offering its boards to the tracker."""
        argv = [sys.executable, "-m", "farm.proxy", "--host", HOST, "--port", str(port), "--port-end", str(port + 1)]
        self.proxy_daemon = self._start("proxy", [*argv, "--tracker", "%s:%d" % self.tracker])
        return self.proxy_daemon

    @property
    def proxy(self) -> DaemonProcess:
        assert self.proxy_daemon is not None
        return self.proxy_daemon

    @property
    def proxy_address(self) -> Address:
        assert self.proxy.address is not None
        return self.proxy.address

    def start_board(self, key: str = KEY) -> DaemonProcess:
        """A board dialling out to the proxy; returns once the tracker offers it."""
        host, port = self.proxy_address
        argv = [sys.executable, "-m", "farm.server", "--host", host, "--port", str(port), "--through-proxy"]
        board = self._start("board", [*argv, "--key", key], wait_for_log=WAITING)
        wait_for(lambda: free_boards(self.tracker, key) == 1, 10, "the proxy offers the board of key %r" % key)
        return board

    def start_holding_client(self, key: str = KEY) -> DaemonProcess:
        """A client process that holds a session on a board of ``key`` until it is killed."""
        argv = [sys.executable, "-c", HOLDING_CLIENT, self.tracker[0], str(self.tracker[1]), key]
        return self._start("client", argv, wait_for_log=re.compile(r"^held$", re.MULTILINE))

    def request(self, key: str = KEY, session_timeout: float = 30) -> farm.RemoteSession:
        """A session on a board of ``key`` through the tracker and the proxy, with a deadline."""

        def request() -> farm.RemoteSession:
            with farm.connect_tracker(*self.tracker) as client:
                return client.request(key, session_timeout=session_timeout, wait=10)

        return in_thread(request, 20, "the request for a board of %r" % key)

    def assert_pairing_works(self, key: str = KEY) -> None:
        """A client gets the board through the proxy, uses it, and the board is offered again afterwards."""
        assert self.proxy.process.poll() is None, "the proxy exited:\n" + self.proxy.log_text()[-4000:]
        session = self.request(key)
        try:
            assert (session.host, session.port) == self.proxy_address
            info = in_thread(session.system_info, 10, "a call through the proxy")
            assert info["key"] == key
        finally:
            in_thread(session.close, 15, "closing the session")
        wait_for(lambda: free_boards(self.tracker, key) == 1, 10, "the board is offered again after the session")

    def stop(self) -> None:
        for daemon in reversed(self.started):
            daemon.stop()


@pytest.fixture
def farm_procs(tmp_path: Path) -> Iterator[Farm]:
    processes = Farm(tmp_path)
    yield processes
    processes.stop()


@pytest.fixture
def proxied(farm_procs: Farm) -> Farm:
    """A tracker, a proxy offering to it, and one board of key ``nat`` behind the proxy, free."""
    farm_procs.start_tracker()
    farm_procs.start_proxy()
    farm_procs.start_board()
    return farm_procs


# --- malformed input on raw sockets -----------------------------------------------------------

MALFORMED = {
    "wrong-magic": (struct.pack("<ii", 0x12345, 10) + b"client:nat", r"without a valid hello: wrong handshake magic"),
    "huge-key-length": (struct.pack("<ii", RPC_MAGIC, 2**31 - 1), r"without a valid hello: .*length 2147483647"),
    "unknown-role": (encode_hello("tracker", "nat"), r"role 'tracker' is neither server nor client"),
    "garbage-after-hello-for-unknown-key": (
        encode_hello("client", "nat:0.123456") + bytes(range(256)) * 64,
        r"presented key 'nat:0\.123456', which no board here holds",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_is_logged_and_the_proxy_serves_on(proxied: Farm, case: str) -> None:
    data, logged = MALFORMED[case]
    with socket.create_connection(proxied.proxy_address, timeout=10) as sock:
        sock.sendall(data)
        answer = read_until_closed(sock, 10)
    if case.startswith("garbage"):
        reply = ReplyReader().feed(answer)
        assert reply is not None and reply.code == CODE_MISMATCH, answer
    else:
        assert answer == b""  # closed without a word
    wait_for(lambda: re.search(logged, proxied.proxy.log_text()), 10, "the proxy logs %r" % logged)
    assert proxied.proxy.process.poll() is None
    proxied.assert_pairing_works()
    proxied.assert_pairing_works()  # and again: the board dialled the proxy again after the first session


def test_silent_peers_do_not_hold_up_the_proxy(proxied: Farm) -> None:
    silent = [socket.create_connection(proxied.proxy_address, timeout=10) for _ in range(8)]
    try:
        # Well within the proxy's hello timeout: others are served while the silent ones say nothing.
        started = time.monotonic()
        proxied.assert_pairing_works()
        assert time.monotonic() - started < 8
        for sock in silent:  # the proxy has not given up on them yet, and they are still connected
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in silent:
            sock.close()
    wait_for(lambda: proxied.proxy.log_text().count("the peer closed the connection before its hello") == 8, 10,
             "the proxy logs each silent peer that left")  # fmt: skip
    assert proxied.proxy.process.poll() is None
    proxied.assert_pairing_works()


# --- a board, a client or the proxy killed mid-session ------------------------------------------


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of a process, in clock ticks, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def running(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie has)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def session_pid(board: DaemonProcess) -> int:
    """The pid of the board's latest session process, from its log: the board logs it when its spawner reports
    the start, which may come after the session has answered its first call."""
    started = wait_for(
        lambda: re.findall(r"session from .* started \(pid (\d+)", board.log_text()), 10, "the board logs the session"
    )
    return int(started[-1])


@pytest.mark.parametrize("when", ["between-calls", "during-a-call"])
def test_board_killed_mid_session_fails_the_client_quickly(proxied: Farm, kernels: Dict[str, Path], when: str) -> None:
    board = proxied.started[-1]
    session = proxied.request()
    child = 0  # the board's session process, once known
    try:
        in_thread(session.ping, 10, "a call through the proxy")
        if when == "between-calls":
            child = session_pid(board)
            os.kill(board.pid, signal.SIGKILL)
            board.process.wait(10)
            started = time.monotonic()
            # the session process dies with its daemon, a moment after it (parent-death signals, one link at a time)
            wait_for(lambda: not running(child), 5, "the session process dies with its board")
            with pytest.raises(farm.SessionLostError):
                in_thread(session.ping, 15, "the next call after the board was killed")
        else:
            in_thread(lambda: session.upload(kernels["libmisbehave.so"]), 10, "an upload through the proxy")
            spin = in_thread(lambda: session.load_module("libmisbehave.so")["spin_forever"], 10, "loading a module")
            child = session_pid(board)
            idle = cpu_ticks(child)
            outcome: Dict[str, BaseException] = {}

            def call() -> None:
                try:
                    spin()
                except BaseException as exc:  # looked at by the test thread
                    outcome["error"] = exc

            caller = threading.Thread(target=call, daemon=True)
            caller.start()
            wait_for(lambda: cpu_ticks(child) - idle >= 10, 10, "the board's session process spins")
            os.kill(board.pid, signal.SIGKILL)  # the session process dies with its daemon
            board.process.wait(10)
            started = time.monotonic()
            caller.join(15)
            assert not caller.is_alive(), "the call in flight did not return after the board was killed"
            assert isinstance(outcome.get("error"), farm.SessionLostError), outcome
            wait_for(lambda: not running(child), 5, "the session process dies with its board")
        assert time.monotonic() - started < 5
        assert session.closed
    finally:
        if child and running(child):  # in its own process group: not stopped with the board's
            os.killpg(child, signal.SIGKILL)
        in_thread(session.close, 15, "closing the lost session")
    wait_for(lambda: "are done" in proxied.proxy.log_text(), 10, "the proxy ends the pair")
    assert proxied.proxy.process.poll() is None
    proxied.start_board()  # a new board behind the same proxy is offered and serves
    proxied.assert_pairing_works()


def test_client_killed_mid_session_frees_the_board_behind_the_proxy(proxied: Farm) -> None:
    board = proxied.started[-1]
    client = proxied.start_holding_client()
    summary = summary_of(proxied.tracker)
    assert summary is not None and summary["queue_info"][KEY]["free"] == 0
    (entry,) = summary["server_info"]
    assert entry["state"] == "held", entry

    os.kill(client.pid, signal.SIGKILL)
    client.process.wait(10)
    wait_for(lambda: free_boards(proxied.tracker) == 1, 5, "the board is offered again after its client died")
    assert len(WAITING.findall(board.log_text())) == 2, board.log_text()  # it dialled the proxy again
    assert proxied.proxy.process.poll() is None
    proxied.assert_pairing_works()


def test_proxy_killed_mid_session_and_restarted_on_its_port(proxied: Farm) -> None:
    board = proxied.started[-1]
    old_proxy = proxied.proxy
    port = proxied.proxy_address[1]
    session = proxied.request()
    try:
        in_thread(session.ping, 10, "a call through the proxy")
        os.kill(old_proxy.pid, signal.SIGKILL)
        old_proxy.process.wait(10)
        with pytest.raises(farm.SessionLostError, match="lost"):
            in_thread(session.ping, 15, "the next call after the proxy was killed")
    finally:
        in_thread(session.close, 15, "closing the lost session")

    # The board's session ends and it keeps dialling the proxy, which is not there.
    backing_off = re.compile(r"dialling again in 0\.50 s")
    wait_for(lambda: backing_off.search(board.log_text()), 10, "the board dials the missing proxy, backing off")
    wait_for(lambda: (summary_of(proxied.tracker) or {}).get("server_info") == [], 10,
             "the tracker forgets the dead proxy")  # fmt: skip
    assert free_boards(proxied.tracker) == 0

    restarted = time.monotonic()
    proxied.start_proxy(port)
    assert proxied.proxy_address == (HOST, port)
    wait_for(lambda: free_boards(proxied.tracker) == 1, 10, "the board is offered again through the new proxy")
    assert time.monotonic() - restarted < 10
    assert len(WAITING.findall(board.log_text())) == 2, board.log_text()
    proxied.assert_pairing_works()


# --- a transfer much larger than what the proxy may hold ----------------------------------------


def test_large_transfer_through_the_proxy_is_exact_and_streamed(proxied: Farm) -> None:
    size = 64 << 20
    payload = np.random.default_rng(7).integers(0, 256, size=size, dtype=np.uint8)
    session = proxied.request(session_timeout=60)
    try:
        assert (session.host, session.port) == proxied.proxy_address
        in_thread(session.ping, 10, "a call through the proxy")
        before = memory_kib(proxied.proxy.pid)

        def round_trip() -> np.ndarray:
            return session.array(payload).numpy()  # 64 MiB up, then 64 MiB down

        back = in_thread(round_trip, 60, "64 MiB up and down through the proxy")
        after = memory_kib(proxied.proxy.pid)
    finally:
        in_thread(session.close, 15, "closing the session")
    assert back.dtype == np.uint8 and back.shape == payload.shape
    assert back.tobytes() == payload.tobytes()
    # The peak resident size of the proxy while both transfers ran, over its size before them.
    growth_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
    assert growth_mib < 32, "the proxy grew by %.1f MiB forwarding 64 MiB each way (%r -> %r)" % (
        growth_mib,
        before,
        after,
    )
    wait_for(lambda: free_boards(proxied.tracker) == 1, 10, "the board is offered again after the session")


# --- clients that wait for the board behind the proxy -------------------------------------------


def test_a_client_queued_for_the_busy_board_gets_a_working_session(proxied: Farm) -> None:
    """The board comes back to the proxy after each session and is handed at once to the client queued for it."""
    for _ in range(3):
        first = proxied.request()
        outcome: Dict[str, Any] = {}

        def second(outcome: Dict[str, Any]) -> None:
            try:
                with farm.connect_tracker(*proxied.tracker) as client:
                    with client.request(KEY, session_timeout=30, wait=10) as session:
                        outcome["key"] = session.system_info()["key"]
            except BaseException as exc:  # looked at by the test thread
                outcome["error"] = exc

        waiter = threading.Thread(target=second, args=(outcome,), daemon=True)
        try:
            in_thread(first.ping, 10, "a call through the proxy")
            waiter.start()
            wait_for(lambda: (summary_of(proxied.tracker) or {}).get("queue_info", {}).get(KEY, {}).get("pending"),
                     10, "the second client queues for the busy board")  # fmt: skip
        finally:
            in_thread(first.close, 15, "closing the first session")
        waiter.join(20)
        assert not waiter.is_alive(), "the queued client did not get the board within 20 s"
        assert "error" not in outcome, "the queued client's session failed: %r\n%s" % (
            outcome.get("error"),
            proxied.proxy.log_text()[-3000:],
        )
        assert outcome["key"] == KEY
        wait_for(lambda: free_boards(proxied.tracker) == 1, 10, "the board is offered again")
    assert "Unhandled exception" not in proxied.proxy.log_text()


def test_a_session_through_the_proxy_names_the_boards_key(proxied: Farm) -> None:
    session = proxied.request()
    try:
        assert in_thread(session.system_info, 10, "a call through the proxy")["key"] == KEY
        assert session.key == KEY, "a session through the proxy calls its board %r" % session.key
    finally:
        in_thread(session.close, 15, "closing the session")


def key_totals(tracker: Address, key: str = KEY) -> Tuple[int, int]:
    """The tracker's ``(total, free)`` for ``key``."""
    with farm.connect_tracker(*tracker) as client:
        queue = client.summary().get("queue_info", {}).get(key, {})
    return int(queue.get("total", 0)), int(queue.get("free", 0))


def test_a_board_that_leaves_the_proxy_while_free_is_no_longer_offered(proxied: Farm) -> None:
    """The proxy withdraws the tracker's offer of a board that left before a client came for it."""
    for _ in range(3):
        leaving = proxied.started[-1]  # the board of key nat behind the proxy
        os.kill(leaving.pid, signal.SIGKILL)
        leaving.process.wait(10)
        wait_for(lambda: key_totals(proxied.tracker) == (0, 0), 10, "the tracker forgets the board that left")
        proxied.start_board()  # its replacement, as a launcher would start it
        # the proxy offers the board (PUT) a moment before it counts it (UPDATE_INFO): a stale offer stays at 2 free
        wait_for(lambda: key_totals(proxied.tracker) == (1, 1), 10, "the tracker shows one board, free")
    proxied.assert_pairing_works()  # the one offer left is the live board's: no stale match key handed out
    wait_for(lambda: "withdrew its offer" in proxied.started[0].log_text(), 10, "the tracker logs the withdrawal")
