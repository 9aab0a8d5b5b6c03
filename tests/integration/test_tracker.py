"""The tracker as a real process on 127.0.0.1, with real board daemons registered with it.

Trackers, boards and the clients killed in the fault tests are child processes; the other
clients are :class:`farm.client.tracker.TrackerClient` objects, some blocked in threads.
Nothing of the package is replaced or mocked. Waits poll a condition against a deadline
instead of sleeping; every process and thread started here is stopped at teardown.
"""

from __future__ import annotations

import json
import os
import queue
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

import farm
from conftest import BoardServer, check_sanitizer_log, every_board_server, python_env, wait_for
from farm.client.tracker import Assignment, NoBoardError, TrackerClient, TrackerError, connect_tracker
from farm.ops.processes import DaemonProcess, start_board
from farm.protocol.tracker import MAX_MESSAGE, TRACKER_MAGIC, Code, MessageReader, encode_magic, encode_message

KEY = "tk"
Address = Tuple[str, int]
INT32 = struct.Struct("<i")


# --- helpers -------------------------------------------------------------------------


def summary_of(address: Address) -> Optional[Dict[str, Any]]:
    """The tracker's summary over a connection of its own; None while the tracker cannot be reached."""
    try:
        with connect_tracker(address[0], address[1], timeout=5) as client:
            return client.summary()
    except TrackerError:
        return None


def key_state(summary: Optional[Dict[str, Any]], key: str) -> Optional[Dict[str, int]]:
    """``{"total", "free", "pending"}`` of ``key``: boards registered under it, free ones, queued requests."""
    if summary is None:
        return None
    queue_info = summary["queue_info"].get(key, {})
    total = sum(1 for server in summary["server_info"] if server.get("key") == "server:" + key)
    return {"total": total, "free": queue_info.get("free", 0), "pending": queue_info.get("pending", 0)}


def board_entry(summary: Dict[str, Any], port: int) -> Optional[Dict[str, Any]]:
    """The summary's entry for the board listening on ``port``."""
    return next((s for s in summary["server_info"] if s.get("addr", [None, None])[1] == port), None)


def port_of(board: DaemonProcess) -> int:
    assert board.address is not None
    return board.address[1]


def free_board(board: Assignment) -> None:
    """Use a handed-out board for one session and close it, which puts the board back in the pool."""
    with farm.connect(board.host, board.port, key=board.matchkey, connect_timeout=5) as session:
        session.ping()


class Background:
    """A blocking call run in a thread: its result or exception, and when it ended."""

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.ended_at: Optional[float] = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(function, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, function: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            self.result = function(*args, **kwargs)
        except BaseException as exc:  # handed to the test thread by wait()
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.done.set()

    def wait(self, timeout: float) -> Any:
        """The call's result (or its exception, raised here); fail the test if it does not end in time."""
        if not self.done.wait(timeout):
            pytest.fail("the call in the background did not end within %g s" % timeout)
        if self.error is not None:
            raise self.error
        return self.result


class Pool:
    """A tracker process, boards registered with it, clients, client processes and threads of one test."""

    def __init__(self, directory: Path, server: Optional[BoardServer] = None) -> None:
        self.directory = directory
        self.server = server or BoardServer("python")  # the board server its boards run
        self.trackers: List[DaemonProcess] = []
        self.boards: List[DaemonProcess] = []
        self.clients: List[TrackerClient] = []
        self.sessions: List[Any] = []
        self.processes: List[subprocess.Popen] = []
        self.background: List[Background] = []
        self.tracker: Optional[DaemonProcess] = None
        self.address: Address = ("127.0.0.1", 0)

    # --- processes -----------------------------------------------------------------

    def start_tracker(self, port: int = 0, options: Sequence[str] = ()) -> DaemonProcess:
        """``python -m farm.tracker`` on ``port`` (0: any free port; else exactly that one) with ``options``."""
        argv = [sys.executable, "-m", "farm.tracker", "--host", "127.0.0.1", "--port", str(port), *options]
        if port:
            argv += ["--port-end", str(port + 1)]
        log = self.directory / ("tracker-%d.log" % len(self.trackers))
        daemon = DaemonProcess(argv, str(log), env=python_env())
        self.trackers.append(daemon)
        self.address = daemon.wait_for_bind()
        self.tracker = daemon
        return daemon

    def start_board(self, key: str = KEY) -> DaemonProcess:
        """A board daemon registered with the tracker under ``key`` (it may not have registered yet)."""
        log = self.directory / ("board-%d.log" % len(self.boards))
        extra = ["--tracker", "%s:%d" % self.address]
        daemon = start_board(
            str(log), key=key, extra=extra, env=python_env(**self.server.env), **self.server.start_options()
        )
        self.boards.append(daemon)
        return daemon

    def start_boards(self, count: int, key: str = KEY) -> List[DaemonProcess]:
        boards = [self.start_board(key) for _ in range(count)]
        self.wait_free(key, count)
        return boards

    def run_client(self, script: str, *args: str) -> subprocess.Popen:
        """A client in a process of its own: ``python -c script HOST PORT KEY args...``, stdout piped."""
        argv = [sys.executable, "-c", script, self.address[0], str(self.address[1]), KEY, *args]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=python_env(),
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    # --- clients -------------------------------------------------------------------

    def client(self) -> TrackerClient:
        client = connect_tracker(*self.address)
        self.clients.append(client)
        return client

    def keep(self, session: Any) -> Any:
        """Close ``session`` at teardown (if the test does not)."""
        self.sessions.append(session)
        return session

    def in_background(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Background:
        call = Background(function, *args, **kwargs)
        self.background.append(call)
        return call

    def request_in_background(self, **kwargs: Any) -> Background:
        """``request_board(KEY, **kwargs)`` on a client of its own, in a thread."""
        kwargs.setdefault("wait", 30)  # bounded, whatever happens to the test
        return self.in_background(self.client().request_board, kwargs.pop("key", KEY), **kwargs)

    # --- the tracker's view ----------------------------------------------------------

    def summary(self) -> Dict[str, Any]:
        summary = summary_of(self.address)
        assert summary is not None, "the tracker at %s:%d cannot be reached" % self.address
        return summary

    def state(self, key: str = KEY) -> Dict[str, int]:
        state = key_state(self.summary(), key)
        assert state is not None
        return state

    def wait_state(self, timeout: float = 5.0, key: str = KEY, **expected: int) -> Dict[str, int]:
        """Wait until the key's ``total``/``free``/``pending`` (those given) are as expected."""

        def matches() -> Optional[Dict[str, int]]:
            state = key_state(summary_of(self.address), key)
            if state is not None and all(state[name] == value for name, value in expected.items()):
                return state
            return None

        return wait_for(matches, timeout, "the tracker shows %r for key %r" % (expected, key))

    def wait_free(self, key: str = KEY, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``count`` boards are registered under ``key`` and all of them are free."""
        self.wait_state(timeout, key, total=count, free=count)

    def wait_pending(self, count: int, key: str = KEY, timeout: float = 5.0) -> None:
        self.wait_state(timeout, key, pending=count)

    def tracker_log(self) -> str:
        assert self.tracker is not None
        return self.tracker.log_text()

    # --- teardown ----------------------------------------------------------------------

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        for session in self.sessions:
            try:
                session.close()
            except farm.FarmError:
                pass
        for board in self.boards:
            board.stop()
            check_sanitizer_log(board)
        for tracker in self.trackers:
            tracker.stop()  # its connections close, so the threads blocked on them return
        for call in self.background:
            call.thread.join(10)
        for client in self.clients:
            client.close()
        stuck = [call for call in self.background if call.thread.is_alive()]
        assert not stuck, "%d background calls still blocked after the tracker stopped" % len(stuck)


@pytest.fixture
def pool(tmp_path: Path, board_server: BoardServer) -> Iterator[Pool]:
    """A tracker process started for one test, and whatever the test starts with it; all stopped at teardown."""
    setup = Pool(tmp_path, board_server)
    try:
        setup.start_tracker()
        yield setup
    finally:
        setup.close()


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """The next line of a child's stdout; fail the test if none comes in time or the child exits."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail("no line from the client process within %g s (so far %r)" % (timeout, data))
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                pytest.fail("the client process exited (code %s) after printing %r" % (process.wait(), data))
            data += chunk
    return data.decode().strip()


class RawPeer:
    """A bare socket speaking the tracker protocol, as TVM's boards and clients do."""

    def __init__(self, address: Address, magic: bool = True, source: str = "") -> None:
        """``source``: the local address to connect from (another 127.x.y.z stands for another machine)."""
        self.sock = socket.create_connection(address, timeout=5, source_address=(source, 0) if source else None)
        self.reader = MessageReader(expect_magic=True)
        self.messages: List[Any] = []
        if magic:
            self.sock.sendall(encode_magic())
            while not self.reader.magic_seen:
                self._receive_some(5)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _receive_some(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the tracker closed the connection")
        self.messages += self.reader.feed(data)

    def send(self, value: Any) -> None:
        self.sock.sendall(encode_message(value))

    def receive(self, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while not self.messages:
            self._receive_some(max(0.01, deadline - time.monotonic()))
        return self.messages.pop(0)

    def call(self, value: Any, timeout: float = 5.0) -> Any:
        self.send(value)
        return self.receive(timeout)

    def closed_by_tracker(self, timeout: float = 5.0) -> bool:
        """Whether the tracker closes the connection (end of stream or reset) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except socket.timeout:
                return False

    def close(self) -> None:
        self.sock.close()


# --- the queue --------------------------------------------------------------------------


@every_board_server
def test_two_boards_three_clients_the_third_waits_for_the_first_freed(pool: Pool) -> None:
    boards = pool.start_boards(2)
    first, second, third = pool.client(), pool.client(), pool.client()
    one = pool.keep(first.request(KEY, user="one"))
    two = pool.keep(second.request(KEY, user="two"))
    assert {one.port, two.port} == {board.address[1] for board in boards}
    assert pool.state() == {"total": 2, "free": 0, "pending": 0}

    waiting = pool.in_background(third.request, KEY, user="three", wait=30)
    pool.wait_pending(1)
    assert not waiting.done.is_set()

    one.close()
    closed_at = time.monotonic()
    three = pool.keep(waiting.wait(5))
    assert three.port == one.port
    assert waiting.ended_at is not None and waiting.ended_at - closed_at < 2.0
    three.ping()
    two.ping()
    assert pool.state() == {"total": 2, "free": 0, "pending": 0}
    held_by = {entry["addr"][1]: entry["held_by"] for entry in pool.summary()["server_info"]}
    assert held_by == {one.port: "three", two.port: "two"}


def test_priority_first_then_first_come_first_served(pool: Pool) -> None:
    (board,) = pool.start_boards(1)
    held = pool.client().request_board(KEY, user="holder")
    served: queue.Queue[Tuple[str, Assignment]] = queue.Queue()

    def request(client: TrackerClient, label: str, priority: int) -> None:
        served.put((label, client.request_board(KEY, priority=priority, user=label, wait=30)))

    for count, (label, priority) in enumerate([("p0", 0), ("p5-first", 5), ("p5-second", 5), ("p1", 1)], 1):
        pool.in_background(request, pool.client(), label, priority)
        pool.wait_pending(count)  # queued in this order: the tracker has it before the next is sent

    order = []
    for left in (3, 2, 1, 0):
        free_board(held)
        try:
            label, held = served.get(timeout=5)
        except queue.Empty:
            pytest.fail("nobody got the board after %s freed it" % (order[-1] if order else "the holder"))
        order.append(label)
        assert held.port == board.address[1]
        state = pool.wait_state(pending=left)
        assert state["free"] == 0 and served.empty()  # one board freed: exactly one request served
        assert board_entry(pool.summary(), held.port)["held_by"] == label  # type: ignore[index]
    assert order == ["p5-first", "p5-second", "p1", "p0"]
    free_board(held)
    pool.wait_free()


def test_a_request_fails_at_its_wait_deadline_over_the_wire(pool: Pool) -> None:
    """The server wakes the state at the deadline; the message and the counts ahead: tests/unit/farm/tracker."""
    pool.start_boards(1)
    pool.client().request_board(KEY, user="holder")
    client = pool.client()

    started = time.monotonic()
    with pytest.raises(NoBoardError) as refused:
        client.request_board(KEY, wait=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3.0
    assert str(refused.value) == "no board of key %r freed within 0.3 s (0 requests ahead)" % KEY
    assert pool.state()["pending"] == 0  # the expired request left the queue
    client.ping()  # the client is still in step with the tracker


def test_unknown_key_fails_fast_unless_asked_to_wait_for_it(pool: Pool) -> None:
    pool.start_boards(1)
    client = pool.client()
    for call in (client.request_board, client.request):
        started = time.monotonic()
        with pytest.raises(NoBoardError) as refused:
            call("absent")  # no deadline: only the refusal can end it
        assert time.monotonic() - started < 1.0
        assert str(refused.value) == "no board serves key 'absent' (keys served: %s)" % KEY

    waiting = pool.request_in_background(key="late", wait_for_key=True, wait=30)
    pool.wait_pending(1, key="late")
    assert not waiting.done.is_set()
    late = pool.start_board("late")
    board = waiting.wait(5)
    assert (board.port, board.protocol) == (late.address[1], "farm")
    assert board.matchkey.startswith("late:")
    free_board(board)
    pool.wait_free("late")


def test_queue_positions_are_reported_as_the_queue_moves(pool: Pool) -> None:
    pool.start_boards(1)
    held = pool.client().request_board(KEY)
    first_seen: List[Dict[str, int]] = []
    second_seen: List[Dict[str, int]] = []
    first = pool.request_in_background(on_progress=first_seen.append)
    wait_for(lambda: first_seen, 5, "the first waiter hears its position")
    second = pool.request_in_background(on_progress=second_seen.append)
    wait_for(lambda: second_seen, 5, "the second waiter hears its position")
    assert [p.pop("waited") >= 0 for p in first_seen + second_seen] == [True, True]
    assert first_seen == [{"position": 0, "ahead": 0, "boards": 1, "free": 0}]
    assert second_seen == [{"position": 1, "ahead": 1, "boards": 1, "free": 0}]

    free_board(held)
    held = first.wait(5)
    wait_for(lambda: len(second_seen) > 1, 5, "the second waiter hears it moved up")
    assert [p["position"] for p in second_seen] == [1, 0]
    assert second_seen[-1]["ahead"] == 0
    assert not second.done.is_set()
    free_board(held)
    free_board(second.wait(5))
    assert [p["position"] for p in first_seen] == [0]
    assert [p["position"] for p in second_seen] == [1, 0]


def test_progress_ticks_while_waiting_and_the_summary_lists_the_waiters(pool: Pool) -> None:
    pool.start_boards(1)
    held = pool.client().request_board(KEY)
    ticks: List[Dict[str, float]] = []
    waiting = pool.request_in_background(on_progress=ticks.append, progress_every=0.05, user="tester")
    wait_for(lambda: len(ticks) >= 4, 10, "four progress reports while the board is held")
    assert ticks[-1]["position"] == 0  # the tracker's last report, repeated on each tick
    assert {t.get("position") for t in ticks} <= {0, None}  # (None: a tick before the first report)
    waited = [t["waited"] for t in ticks]
    assert waited == sorted(waited) and waited[-1] > waited[0]
    queue = pool.client().summary()["queue_info"][KEY]
    assert (queue["total"], queue["free"], queue["pending"]) == (1, 0, 1)
    (entry,) = queue["waiters"]
    assert (entry["user"], entry["priority"]) == ("tester", 0) and entry["waited"] >= waited[0]
    free_board(held)
    free_board(waiting.wait(5))


@every_board_server
def test_summary_and_query_show_who_holds_the_board(pool: Pool) -> None:
    (board,) = pool.start_boards(1)
    host, port = pool.address
    entry = board_entry(pool.summary(), board.address[1])
    assert entry is not None
    assert (entry["key"], entry["state"], entry["held_by"], entry["since"]) == ("server:" + KEY, "free", None, None)
    assert entry["protocol"] == "farm" and entry["addr"] == list(board.address)

    session = pool.keep(pool.client().request(KEY, user="nightly-run-42"))
    taken_at = time.time()
    entry = board_entry(pool.summary(), board.address[1])
    assert entry is not None
    assert (entry["state"], entry["held_by"], entry["free"]) == ("held", "nightly-run-42", False)
    assert abs(entry["since"] - taken_at) < 5.0
    waiting = pool.request_in_background(user="next")
    pool.wait_pending(1)

    def query(*options: str) -> str:
        argv = [sys.executable, "-m", "farm.query", "--host", host, "--port", str(port), *options]
        done = subprocess.run(argv, capture_output=True, text=True, env=python_env(), timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    text = query()
    assert "Server List" in text and "Queue Status" in text and "held by" not in text  # TVM's tables (test_query)
    assert re.search(r"^key\s+total\s+free\s+pending\s*$", text, re.M), text
    assert re.search(r"^%s\s+1\s+0\s+1\s*$" % KEY, text, re.M), text
    wide = query("--wide")
    assert re.search(r"127\.0\.0\.1:%d\s+server:%s\s+held by nightly-run-42 for \d+ s" % (port_of(board), KEY), wide)
    raw = json.loads(query("--json"))
    queue = raw["queue_info"][KEY]
    assert (queue["free"], queue["pending"], queue["total"]) == (0, 1, 1)
    assert [(w["user"], w["priority"]) for w in queue["waiters"]] == [("next", 0)]
    assert [s["held_by"] for s in raw["server_info"]] == ["nightly-run-42"]

    session.close()
    next_board = waiting.wait(5)
    assert board_entry(pool.summary(), board.address[1])["held_by"] == "next"  # type: ignore[index]
    free_board(next_board)
    pool.wait_free()
    entry = board_entry(pool.summary(), board.address[1])
    assert entry is not None
    assert (entry["state"], entry["held_by"], entry["since"], entry["free"]) == ("free", None, None, True)
    assert re.search(r"^%s\s+1\s+1\s+0\s*$" % KEY, query(), re.M)


@every_board_server
def test_a_registered_board_admits_only_the_current_match_key(pool: Pool) -> None:
    (board,) = pool.start_boards(1)
    host, port = board.address  # type: ignore[misc]
    for key in (KEY, "", KEY + ":0.5"):
        with pytest.raises(farm.HandshakeError, match="mismatch"):
            farm.connect(host, port, key=key, connect_timeout=5)
    assert pool.state() == {"total": 1, "free": 1, "pending": 0}  # the attempts took nothing

    handed = pool.client().request_board(KEY)
    free_board(handed)
    pool.wait_free()
    with pytest.raises(farm.HandshakeError, match="mismatch"):  # a match key is good for one session
        farm.connect(host, port, key=handed.matchkey, connect_timeout=5)


# --- faults ---------------------------------------------------------------------------

HOLDING_CLIENT = """
import signal, sys
import farm
tracker = farm.connect_tracker(sys.argv[1], int(sys.argv[2]))
session = tracker.request(sys.argv[3], user="doomed")
print("held", session.port, flush=True)
signal.pause()
"""

QUEUED_CLIENT = """
import sys
import farm
tracker = farm.connect_tracker(sys.argv[1], int(sys.argv[2]))
tracker.request_board(sys.argv[3], user="doomed", on_progress=lambda p: print("queued", p["position"], flush=True))
print("served", flush=True)
"""


@every_board_server
def test_client_killed_while_holding_a_board_gives_it_back(pool: Pool) -> None:
    (board,) = pool.start_boards(1)
    client = pool.run_client(HOLDING_CLIENT)
    assert read_line(client, 15) == "held %d" % port_of(board)
    entry = board_entry(pool.summary(), port_of(board))
    assert entry is not None and (entry["state"], entry["held_by"]) == ("held", "doomed")

    client.kill()
    client.wait()
    pool.wait_free(timeout=2.0)
    with pool.client().request(KEY, wait=5) as session:
        session.ping()


def test_client_killed_while_queued_leaves_the_queue(pool: Pool) -> None:
    pool.start_boards(1)
    held = pool.client().request_board(KEY, user="holder")
    client = pool.run_client(QUEUED_CLIENT)
    assert read_line(client, 15) == "queued 0"
    pool.wait_pending(1)

    client.kill()
    client.wait()
    pool.wait_pending(0, timeout=2.0)
    free_board(held)
    pool.wait_free(timeout=2.0)  # nobody (dead) was handed the board
    entry = pool.summary()["server_info"][0]
    assert (entry["state"], entry["held_by"]) == ("free", None)


@every_board_server
def test_killed_board_leaves_the_pool(pool: Pool) -> None:
    doomed, survivor = pool.start_boards(2)
    os.kill(doomed.pid, signal.SIGKILL)
    pool.wait_state(timeout=5.0, total=1, free=1)
    summary = pool.summary()
    assert board_entry(summary, port_of(doomed)) is None
    assert board_entry(summary, port_of(survivor)) is not None
    assert re.search(r"board 127\.0\.0\.1:\d+ \(%s\) left" % KEY, pool.tracker_log())
    with pool.client().request(KEY, wait=5) as session:
        assert session.port == port_of(survivor)


@every_board_server
def test_board_killed_after_it_was_handed_out_fails_clearly(pool: Pool) -> None:
    (board,) = pool.start_boards(1)
    client = pool.client()
    handed = client.request_board(KEY)
    os.kill(board.pid, signal.SIGKILL)
    pool.wait_state(timeout=5.0, total=0)  # the tracker saw it go

    started = time.monotonic()
    with pytest.raises((OSError, farm.HandshakeError)):
        farm.connect(handed.host, handed.port, key=handed.matchkey, connect_timeout=3)
    assert time.monotonic() - started < 3.0

    started = time.monotonic()
    request = pool.in_background(client.request, KEY, wait=1.0)
    with pytest.raises(NoBoardError, match="no board serves key %r" % KEY):
        request.wait(10)
    assert time.monotonic() - started < 3.0


def test_board_killed_while_free_then_requested_at_once_fails_clearly(pool: Pool) -> None:
    (board,) = pool.start_boards(1)
    client = pool.client()
    os.kill(board.pid, signal.SIGKILL)
    started = time.monotonic()
    # the tracker may still offer the dead board: the request must then skip it and end, not hang
    request = pool.in_background(client.request, KEY, wait=2.0)
    with pytest.raises(TrackerError) as failed:
        request.wait(15)
    assert time.monotonic() - started < 6.0
    message = str(failed.value)
    assert KEY in message and ("no board serves" in message or "could not be reached" in message), message


@every_board_server
def test_boards_register_again_after_the_tracker_restarts(pool: Pool) -> None:
    boards = pool.start_boards(2)
    old = pool.tracker
    assert old is not None
    port = pool.address[1]
    assert old.stop() == 0
    assert all(board.process.poll() is None for board in boards)
    assert summary_of(pool.address) is None

    pool.start_tracker(port)
    assert pool.address[1] == port
    pool.wait_free(count=2, timeout=5.0)
    ports = {entry["addr"][1] for entry in pool.summary()["server_info"]}
    assert ports == {port_of(board) for board in boards}
    with pool.client().request(KEY, wait=5) as session:
        session.ping()
    for board in boards:
        assert board.log_text().count("registered with the tracker") == 2


@every_board_server
def test_a_board_in_a_session_while_the_tracker_restarts_is_offered_after_it(pool: Pool) -> None:
    boards = pool.start_boards(2)
    session = pool.keep(pool.client().request(KEY, user="through-the-restart"))
    port = pool.address[1]
    assert pool.tracker is not None and pool.tracker.stop() == 0
    pool.start_tracker(port)

    pool.wait_state(timeout=5.0, total=2, free=1)  # the busy board is known again, not offered
    entry = board_entry(pool.summary(), session.port)
    assert entry is not None and entry["state"] == "busy"
    session.ping()  # the session did not notice
    session.close()
    pool.wait_free(count=2, timeout=5.0)
    assert {entry["addr"][1] for entry in pool.summary()["server_info"]} == {port_of(b) for b in boards}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@every_board_server
def test_a_registered_board_daemon_rests_while_its_session_runs(pool: Pool) -> None:
    """The daemon waits on its sockets during a session: it must not spin on a stale poll deadline."""
    (board,) = pool.start_boards(1)
    session = pool.keep(pool.client().request(KEY, user="resting"))
    pool.wait_state(free=0)
    before, started = cpu_seconds(board.pid), time.monotonic()
    pings = 0
    while time.monotonic() - started < 1.5 or pings < 10:  # the window measured: calls go to the session process
        session.ping()
        pings += 1
    used, window = cpu_seconds(board.pid) - before, time.monotonic() - started
    assert used < 0.2 * window, "the board daemon used %.2f s of CPU in %.2f s of a session" % (used, window)


@pytest.mark.slow  # the board's 5 s for an unused key, on the wire; the rule is unit-tested with a clock
@every_board_server
def test_unused_match_key_is_offered_again(pool: Pool) -> None:
    (board,) = pool.start_boards(1)
    handed = pool.client().request_board(KEY, user="vanished")  # and never used
    assert pool.state() == {"total": 1, "free": 0, "pending": 0}
    assert board_entry(pool.summary(), port_of(board))["state"] == "held"  # type: ignore[index]

    pool.wait_free(timeout=10.0)
    with pytest.raises(farm.HandshakeError, match="mismatch"):
        farm.connect(handed.host, handed.port, key=handed.matchkey, connect_timeout=5)
    again = pool.client().request_board(KEY)
    assert again.matchkey != handed.matchkey
    free_board(again)
    pool.wait_free()


# --- malformed input --------------------------------------------------------------------


def framed(payload: bytes) -> bytes:
    return INT32.pack(len(payload)) + payload


# name -> (send the magic first, bytes sent next)
MALFORMED = {
    "bad-magic": (False, INT32.pack(TRACKER_MAGIC + 1)),
    "http-request": (False, b"GET / HTTP/1.1\r\nHost: tracker\r\n\r\n"),
    "zero-length": (True, INT32.pack(0)),
    "negative-length": (True, INT32.pack(-5)),
    "huge-length": (True, INT32.pack(2**31 - 1)),
    "over-the-limit": (True, INT32.pack(MAX_MESSAGE + 1) + b"[" * 1000),
    "invalid-json": (True, framed(b"{not json")),
    "not-utf8": (True, framed(b"\xff\xfe\xfd")),
    "deeply-nested": (True, framed(b"[" * 50_000 + b"]" * 50_000)),
    "not-a-list": (True, encode_message({"code": 1})),
    "a-string": (True, encode_message("PING")),
    "empty-list": (True, encode_message([])),
    "code-not-int": (True, encode_message(["1"])),
    "code-bool": (True, encode_message([True])),
    "put-bad-types": (True, encode_message([3, 5, "x"])),
    "put-bad-port": (True, encode_message([3, KEY, [70000, KEY + ":1"]])),
    "put-bad-host": (True, encode_message([3, KEY, [9000, KEY + ":1"], 5])),
    "request-short": (True, encode_message([4, KEY])),
    "request-bad-priority": (True, encode_message([4, KEY, "", "high"])),
    "update-info-not-dict": (True, encode_message([5, "x"])),
    "update-info-bad-addr": (True, encode_message([5, {"addr": "here"}])),
    "unknown-code": (True, encode_message([99])),
    "valid-then-garbage": (True, encode_message([1]) + INT32.pack(-1)),
}


class Shared:
    """A tracker with a registered board and an established client, shared by the malformed-input tests."""

    def __init__(self, setup: Pool) -> None:
        self.farm = setup
        self.board = setup.start_boards(1)[0]
        self.client = setup.client()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    setup = Pool(tmp_path_factory.mktemp("tracker"))
    try:
        setup.start_tracker()
        yield Shared(setup)
    finally:
        setup.close()


def closing_line(log: str, port: int) -> Optional[str]:
    """The tracker's log line about closing the connection from our ``port``."""
    match = re.search(r"^.*closing the connection from 127\.0\.0\.1:%d\b.*$" % port, log, re.M)
    return match.group(0) if match else None


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_closes_that_connection_only(shared: Shared, name: str) -> None:
    send_magic, data = MALFORMED[name]
    tracker = shared.farm.tracker
    assert tracker is not None
    peer = RawPeer(shared.farm.address, magic=send_magic)
    try:
        peer.sock.sendall(data)
        assert peer.closed_by_tracker(5.0), "the tracker kept the connection open after %s" % name
        line = wait_for(lambda: closing_line(tracker.log_text(), peer.port), 5, "the tracker logs why it closed")
    finally:
        peer.close()
    assert tracker.process.poll() is None
    shared.client.ping()
    assert key_state(shared.client.summary(), KEY) == {"total": 1, "free": 1, "pending": 0}
    assert "internal error" not in line, "malformed input taken for an internal error: %s" % line


@pytest.mark.parametrize(
    "request_message",
    [
        [4, KEY, "", float("inf")],
        [4, KEY, "", float("nan")],
        [4, KEY, "", 0, {"protocols": 5}],
        [4, KEY, "", 0, {"protocols": [["farm"]]}],
    ],
    ids=["infinite-priority", "nan-priority", "protocols-not-a-list", "protocols-not-strings"],
)
def test_request_with_nonsense_numbers_or_options(shared: Shared, request_message: List[Any]) -> None:
    """JSON that Python's json module accepts (Infinity, NaN) and options of the wrong types."""
    tracker = shared.farm.tracker
    assert tracker is not None
    peer = RawPeer(shared.farm.address)
    try:
        peer.send(request_message)
        try:
            reply = peer.receive(5.0)
        except (ConnectionError, socket.timeout):
            reply = None  # closed: then the tracker must say why, as for any malformed request
        line = ""
        if reply is None:
            line = wait_for(lambda: closing_line(tracker.log_text(), peer.port), 5, "the tracker logs why it closed")
        else:
            assert isinstance(reply, list) and reply[0] in (-1, 0), reply
    finally:
        peer.close()
    assert tracker.process.poll() is None
    shared.client.ping()
    assert key_state(shared.client.summary(), KEY) == {"total": 1, "free": 1, "pending": 0}
    assert "internal error" not in line, "malformed input taken for an internal error: %s" % line


def test_a_peer_cannot_forge_log_lines(pool: Pool) -> None:
    """Keys are the peer's text; a newline in one is logged escaped, never as a line of its own."""
    peer = RawPeer(pool.address)
    assert peer.call([Code.PUT, "evil\nWARNING farm.tracker: forged", [9999, "evil:1"], "127.0.0.1"]) == Code.SUCCESS
    peer.close()
    wait_for(lambda: "left" in pool.tracker_log(), 10, "the tracker logs the board that left")
    log = pool.tracker_log()
    assert not any(line.startswith("WARNING farm.tracker: forged") for line in log.splitlines()), log
    assert "evil\\x0aWARNING farm.tracker: forged" in log


def test_a_peers_oversized_info_does_not_cost_the_others_their_summary(pool: Pool) -> None:
    pool.start_boards(1)
    client = pool.client()
    abuser = RawPeer(pool.address)
    try:
        # each message is within the limit; what the tracker keeps of them together is not
        for field in ("pad1", "pad2"):
            abuser.send([5, {"key": "server:abuse", "addr": [None, 9], field: "x" * 600_000}])
        try:
            assert [abuser.receive(), abuser.receive()] == [0, 0]
        except (ConnectionError, socket.timeout):
            pass  # refusing such a peer is fine too
        # the abuser is still connected (or was refused): everyone else must still get a summary
        assert key_state(client.summary(), KEY) == {"total": 1, "free": 1, "pending": 0}
        text = subprocess.run(
            [sys.executable, "-m", "farm.query", "--port", str(pool.address[1])],
            capture_output=True,
            text=True,
            env=python_env(),
            timeout=30,
        )
        assert text.returncode == 0, text.stderr
    finally:
        abuser.close()
    client.ping()


# --- TVM's peers ---------------------------------------------------------------------------


def test_tvm_board_and_client_speak_plain_tvm(pool: Pool) -> None:
    board = RawPeer(pool.address)
    client = RawPeer(pool.address)
    try:
        assert board.call([5, {"key": "server:tvmkey", "addr": [None, 9091]}]) == 0
        assert board.call([3, "tvmkey", ["9091", "tvmkey:0.5"], None]) == 0  # TVM's C++ boards send a string port
        assert board.call([7]) == ["tvmkey:0.5"]

        assert client.call([4, "tvmkey", "", 0]) == [0, ["127.0.0.1", 9091, "tvmkey:0.5"]]  # three elements
        assert board.call([7]) == []
        entry = board_entry(client.call([6])[1], 9091)
        assert entry is not None and (entry["protocol"], entry["state"]) == ("tvm", "held")

        with pytest.raises(NoBoardError, match="speak tvm, and this client speaks farm"):
            pool.client().request_board("tvmkey")
    finally:
        board.close()
        client.close()
    pool.wait_state(key="tvmkey", total=0)


def test_tvm_client_is_not_handed_a_farm_board(pool: Pool) -> None:
    pool.start_boards(1)
    client = RawPeer(pool.address)
    try:
        started = time.monotonic()
        reply = client.call([4, KEY, "", 0])
        assert time.monotonic() - started < 2.0
        assert isinstance(reply, list) and len(reply) == 2 and reply[0] == -1, reply
        assert "speak farm" in reply[1] and KEY in reply[1]
        assert client.call([1]) == 0  # refused, not disconnected
    finally:
        client.close()
    assert pool.state() == {"total": 1, "free": 1, "pending": 0}


def keepalive_timers(port: int) -> List[Tuple[str, str]]:
    """The timers of the established connections on local port ``port``: (kind, time left), from ``ss -o``."""
    output = subprocess.run(
        ["ss", "-tnoH", "state", "established", "( sport = :%d )" % port], capture_output=True, text=True, check=True
    ).stdout
    return re.findall(r"timer:\((\w+),([\w.]+),", output)


def test_the_tracker_keeps_its_connections_alive(pool: Pool) -> None:
    """Keepalive probes within a minute, so a peer that vanished without a word leaves the queues."""
    client = pool.client()
    wait_for(lambda: keepalive_timers(pool.address[1]), 5, "the tracker's side of the connection is listed")
    ((kind, left),) = keepalive_timers(pool.address[1])
    assert kind == "keepalive", "the tracker's accepted connection has no keepalive timer"
    assert left.endswith("sec") and float(left[: -len("sec")]) <= 60, left  # not Linux's default two hours
    client.summary()
