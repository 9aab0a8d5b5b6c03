"""Attacks on what the daemons hold before peers prove anything, and on the proxy's boards, with real processes.

A stranger (from 127.0.0.2: loopback answers every 127.0.0.0/8 address) holds
silent connections to a tracker, a proxy or a board whose open-file limit is
1024 (``prlimit``, as ``ulimit -n``); a member of the farm, holding the secret,
must still be served, and the daemon must hold only the stranger's share. A
daemon out of descriptors logs it once per interval, without tracebacks. Boards
with long keys, or too many of them, must not get the proxy dropped by the
tracker. Nothing is mocked.
"""

from __future__ import annotations

import os
import re
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pytest

import farm
from conftest import fd_count, python_env, wait_for
from farm.net.aio import DEFAULT_LIMITS
from farm.net.secret import prove_on_socket
from farm.ops.processes import DaemonProcess
from farm.protocol.handshake import CODE_BUSY, CODE_SUCCESS, ReplyReader, encode_hello
from farm.proxy.server import boards_within_info

HOST = "127.0.0.1"
STRANGER = "127.0.0.2"
SILENT = 1000
NOFILE = 1024
MODULES = {"tracker": "farm.tracker", "proxy": "farm.proxy", "board": "farm.server"}

Starter = Callable[..., DaemonProcess]


@pytest.fixture
def secret(tmp_path: Path) -> Tuple[str, bytes]:
    value = os.urandom(32).hex().encode()
    path = tmp_path / "secret"
    path.write_bytes(value)
    path.chmod(0o600)
    return str(path), value


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    """Start ``python -m MODULE ARGS`` on 127.0.0.1 and wait until it listens; stopped at teardown."""
    started: List[DaemonProcess] = []

    def launch(kind: str, *args: str) -> DaemonProcess:
        argv = [sys.executable, "-m", MODULES[kind], "--host", HOST, "--port", "0", *args]
        daemon = DaemonProcess(argv, str(tmp_path / ("%s-%d.log" % (kind, len(started)))), env=python_env())
        started.append(daemon)
        daemon.wait_for_bind()
        return daemon

    yield launch
    for daemon in reversed(started):
        daemon.stop()


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """This process may open the stranger's connections and then some."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, SILENT * 3)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def silent_connections(port: int, count: int, source: str = STRANGER) -> List[socket.socket]:
    """``count`` connections from ``source`` that say nothing (those the daemon's kernel does not take in a second
    are left out)."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(1.0)
        try:
            sock.connect((HOST, port))
        except OSError:
            sock.close()
            continue
        held.append(sock)
    return held


def hello_from_board(port: int, key: str, source: str = HOST, secret: Optional[bytes] = None) -> socket.socket:
    """A board's connection to the proxy, its hello sent."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((HOST, port))
    if secret is not None:
        prove_on_socket(sock, secret)
    sock.sendall(encode_hello("server", key))
    return sock


def reply_of(sock: socket.socket) -> Tuple[int, str]:
    replies = ReplyReader()
    while True:
        data = sock.recv(4096)
        assert data, "the proxy closed the connection without a reply"
        reply = replies.feed(data)
        if reply is not None:
            return reply.code, reply.text


def member_is_served(kind: str, port: int, secret: bytes) -> None:
    """What a member asks of each daemon: a tracker's summary, a board's session, a pairing at the proxy."""
    if kind == "tracker":
        with farm.connect_tracker(HOST, port, timeout=5, secret=secret) as tracker:
            assert "queue_info" in tracker.summary()
    elif kind == "board":
        with farm.connect(HOST, port, key="gated", connect_timeout=5, secret=secret) as session:
            assert session.system_info()["name"]
    else:
        board = hello_from_board(port, "gated", secret=secret)
        client = socket.create_connection((HOST, port), timeout=5)
        try:
            prove_on_socket(client, secret, 5)
            client.sendall(encode_hello("client", "gated"))
            assert reply_of(client)[0] == CODE_SUCCESS
            assert reply_of(board)[0] == CODE_SUCCESS
        finally:
            board.close()
            client.close()


@pytest.mark.parametrize("addresses", [1, 16], ids=["one-address", "16-addresses"])
@pytest.mark.parametrize("kind", ["tracker", "proxy", "board"])
def test_a_member_is_served_while_a_stranger_holds_1000_silent_connections_under_ulimit_1024(
    start: Starter, secret: Tuple[str, bytes], many_descriptors: None, kind: str, addresses: int
) -> None:
    daemon = start(kind, "--secret-file", secret[0], *(["--key", "gated"] if kind == "board" else []))
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    baseline = fd_count(daemon.pid)
    port = daemon.address[1]  # type: ignore[index]
    total, share = (DEFAULT_LIMITS.total, DEFAULT_LIMITS.per_address) if kind != "board" else (64, 16)
    sources = ["127.0.0.%d" % (2 + index) for index in range(addresses)]
    held = [sock for source in sources for sock in silent_connections(port, SILENT // addresses, source)]
    try:
        assert len(held) > share  # the kernel took them in; the daemon keeps the stranger's share, or its total
        wait_for(lambda: "have proven nothing yet" in daemon.log_text(), 10, "the daemon refuses past a bound")
        bound = baseline + min(total, share * addresses) + 2  # (+ a connection being refused or displaced)
        wait_for(lambda: fd_count(daemon.pid) <= bound, 10, "the daemon holds at most %d descriptors" % bound)
        started = time.monotonic()
        member_is_served(kind, port, secret[1])  # from 127.0.0.1: with many addresses, it takes an older's place
        assert time.monotonic() - started < 5
    finally:
        for sock in held:
            sock.close()
    log = daemon.log_text()
    assert "Traceback" not in log
    if addresses == 1:
        refusals = re.findall(r"(?:refused|refusing) 127\.0\.0\.2:\d+: \d+ connections from 127\.0\.0\.2", log)
        assert 1 <= len(refusals) <= 2  # once per 10 s, not once per connection
    assert len(log) < 64 << 10
    assert daemon.process.poll() is None


@pytest.mark.parametrize("kind", ["tracker", "proxy", "board"])
def test_a_daemon_out_of_descriptors_logs_it_once_per_interval_without_tracebacks(
    start: Starter, many_descriptors: None, kind: str
) -> None:
    # Bounds above the open-file limit, so that the descriptors run out first.
    daemon = start(kind, "--max-unproven", "5000", "--max-unproven-per-address", "5000")
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (64, 64))
    held = silent_connections(daemon.address[1], 100)  # type: ignore[index]
    try:
        wait_for(lambda: "cannot accept connections" in daemon.log_text(), 10, "the daemon runs out of descriptors")
        started = time.monotonic()
        wait_for(lambda: time.monotonic() - started > 3, 10, "three seconds of accept failures")  # a pause each s
    finally:
        for sock in held:
            sock.close()
    log = daemon.log_text()
    assert "Traceback" not in log
    assert len(re.findall("cannot accept connections", log)) == 1  # within 10 s: once
    assert daemon.process.poll() is None


def test_boards_with_long_keys_are_refused_and_the_proxy_stays_registered(start: Starter) -> None:
    tracker = start("tracker")
    where = "%s:%d" % tracker.address  # type: ignore[str-format]
    proxy = start("proxy", "--tracker", where)
    port = proxy.address[1]  # type: ignore[index]
    with farm.connect_tracker(*tracker.address) as observer:  # type: ignore[misc]
        normal = hello_from_board(port, "near")
        wait_for(lambda: proxy_entries(observer) == ["near"], 10, "the proxy registers its board")
        long_boards = [hello_from_board(port, "k%02d-" % index + "x" * 3996) for index in range(20)]
        try:
            for sock in long_boards:
                code, text = reply_of(sock)
                assert code == CODE_BUSY
                assert (
                    text == "the proxy refuses the board: its key is 4000 characters, more than 128 (--max-board-key)"
                )
            assert proxy_entries(observer) == ["near"]  # still registered
            assert observer.summary()["queue_info"]["near"]["free"] == 1  # its board offered
        finally:
            for sock in long_boards + [normal]:
                sock.close()
    assert "UPDATE_INFO grows" not in tracker.log_text()
    assert proxy.log_text().count("refusing board") == 20


def test_as_many_boards_as_the_trackers_limit_allows_wait_at_the_proxy_and_the_others_are_refused(
    start: Starter,
) -> None:
    tracker = start("tracker")
    where = "%s:%d" % tracker.address  # type: ignore[str-format]
    proxy = start("proxy", "--tracker", where, "--max-board-key", "4096")
    port = proxy.address[1]  # type: ignore[index]
    most = boards_within_info(4096)
    boards: List[socket.socket] = []
    with farm.connect_tracker(*tracker.address) as observer:  # type: ignore[misc]
        try:
            for index in range(20):  # 4 KB keys
                boards.append(hello_from_board(port, "k%02d-" % index + "x" * 3990))
            wait_for(
                lambda: sum(entry["free"] for entry in observer.summary()["queue_info"].values()) == most,
                10,
                "the tracker offers the boards the proxy took",
            )
            refused = []
            for sock in boards:
                sock.settimeout(0.5)
                try:
                    refused.append(reply_of(sock))
                except socket.timeout:
                    pass  # waiting for a client
            assert len(refused) == 20 - most
            assert {code for code, _ in refused} == {CODE_BUSY}
            expected = "the proxy refuses the board: %d boards are connected here, its most (--max-boards)" % most
            assert {text for _, text in refused} == {expected}
            # still registered (its entry in the summary is cut short: it names `most` keys of 4 KB)
            assert proxy_entries(observer) is not None
            assert observer.summary()["queue_info"].keys() >= {"k%02d-" % index + "x" * 3990 for index in range(most)}
        finally:
            for sock in boards:
                sock.close()
    assert "UPDATE_INFO grows" not in tracker.log_text()
    assert tracker.process.poll() is None


def test_boards_from_one_address_leave_room_for_the_others(start: Starter) -> None:
    proxy = start("proxy", "--max-boards-per-address", "2")
    port = proxy.address[1]  # type: ignore[index]
    boards = [hello_from_board(port, "b%d" % index, STRANGER) for index in range(3)]
    try:
        assert reply_of(boards[2]) == (
            CODE_BUSY,
            "the proxy refuses the board: 2 boards from 127.0.0.2 wait here, its most (--max-boards-per-address)",
        )
        other = hello_from_board(port, "b9", "127.0.0.3")
        boards.append(other)
        client = socket.create_connection((HOST, port), timeout=5)
        boards.append(client)
        client.sendall(encode_hello("client", "b9"))
        assert reply_of(client)[0] == CODE_SUCCESS
    finally:
        for sock in boards:
            sock.close()


def proxy_entries(observer: farm.TrackerClient) -> Optional[List[str]]:
    """The keys the proxy's entry in the tracker's summary names, or None while it is not registered."""
    for entry in observer.summary()["server_info"]:
        if str(entry.get("key", "")).startswith("server:proxy"):
            return sorted(entry.get("boards", {}))
    return None
