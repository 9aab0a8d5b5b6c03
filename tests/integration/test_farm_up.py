"""``farm up INVENTORY`` as a real process: the farm it starts, supervises and stops.

Each test runs ``python -m farm.cli up`` with a unique ``FARM_UP_TEST_TAG`` in its
environment; the tracker, proxy, boards and session processes inherit it, so
whatever of a farm is still alive is found in /proc (the proof that nothing
outlives ``farm up``). Clients are the real :func:`farm.connect_tracker` and
``farm status``. Nothing is mocked; waits poll a condition against a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import pytest

import farm
from conftest import parent_of, processes_with_env, python_env, wait_for
from farm.ops import emulators
from farm.ops.targets import EMULATED

TAG_ENV = "FARM_UP_TEST_TAG"
#: Seconds a farm of local boards has to come up, and a stopped one to be gone.
UP_TIMEOUT, GONE_TIMEOUT = 30.0, 15.0
#: The emulated farm's boards start the board server's Python under qemu-user: slower.
EMULATED_UP_TIMEOUT = 120.0

PAIR = """\
tracker: {port: 0}
proxy: {port: 0}
boards:
  - {key: alpha, count: 1}
  - {key: alpha, count: 1, proxy: true}
"""
WITH_EXTERNAL = """\
tracker: {port: %d}
boards:
  - {key: alpha, count: 1}
  - {key: rasp4, start: external, arch: aarch64}
"""


# --- processes found by the tag --------------------------------------------------------------


def tagged(tag: str) -> Dict[int, str]:
    """Live processes whose environment has ``FARM_UP_TEST_TAG=tag``: pid -> command line."""
    return processes_with_env(TAG_ENV, tag)


def kill_tagged(tag: str) -> None:
    for pid in tagged(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- farm up as a child process -------------------------------------------------------------


class FarmUp:
    """One ``farm up`` process; its stdout and stderr go to files so it never blocks on a pipe."""

    def __init__(self, directory: Path, inventory: str, *options: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex
        self.json_file = directory / "farm.json"
        self.log_dir = directory / "logs"
        self._stdout_path, self._stderr_path = directory / "stdout.txt", directory / "stderr.txt"
        self._files: List[IO[bytes]] = [open(self._stdout_path, "wb"), open(self._stderr_path, "wb")]
        argv = [sys.executable, "-m", "farm", "up", inventory, "--logs", str(self.log_dir)]
        argv += ["--json-file", str(self.json_file), *options]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._files[0],
            stderr=self._files[1],
            env=python_env(**{TAG_ENV: self.tag}),
            cwd=str(directory),
        )
        self.started = time.monotonic()

    @property
    def stdout(self) -> str:
        return self._stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    def outputs(self) -> str:
        return "---- stdout:\n%s---- stderr:\n%s" % (self.stdout, self.stderr[-6000:])

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """:func:`wait_for`, with what farm up printed so far in the failure."""
        try:
            return wait_for(condition, timeout, what)
        except pytest.fail.Exception as exc:
            pytest.fail("%s\n%s" % (exc, self.outputs()))

    def wait_up(self, timeout: float = UP_TIMEOUT) -> Dict[str, Any]:
        """The JSON description, once ``farm up`` has written it; fails at once if ``farm up`` exits instead."""

        def written_or_exited() -> bool:
            return self.json_file.exists() or self.process.poll() is not None

        self.wait(written_or_exited, timeout, "farm up wrote %s" % self.json_file)
        if not self.json_file.exists():
            pytest.fail("farm up exited with code %s before it was up\n%s" % (self.process.returncode, self.outputs()))
        return json.loads(self.json_file.read_text())

    def wait_exit(self, timeout: float = GONE_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("farm up did not exit within %g s\n%s" % (timeout, self.outputs()))

    def signal(self, number: int) -> int:
        """Send ``number`` to ``farm up`` and return its exit code."""
        self.process.send_signal(number)
        return self.wait_exit()

    def children(self) -> Dict[int, str]:
        """The live processes ``farm up`` started itself: its daemons."""
        return {pid: cmd for pid, cmd in tagged(self.tag).items() if parent_of(pid) == self.process.pid}

    def daemon_pid(self, module: str) -> int:
        """The pid of the one child running ``python -m MODULE`` (farm.tracker, farm.proxy)."""
        pids = [pid for pid, cmd in self.children().items() if " -m %s " % module in cmd + " "]
        assert len(pids) == 1, (module, self.children())
        return pids[0]

    def alive(self, pid: int) -> bool:
        """Whether ``pid`` is still a (non-zombie) process of this farm."""
        return pid in tagged(self.tag)

    def assert_stopped_before_exit(self, pids: Iterable[int]) -> None:
        """``farm up`` stopped (and reaped) these daemons itself before it exited: none is left even for a moment.

        (They would also go on their own once it exits, by FARM_PARENT_PID; this tells an orderly stop from that.)
        """
        assert self.process.poll() is not None, "farm up still runs"
        left = {pid: cmd for pid, cmd in tagged(self.tag).items() if pid in set(pids)}
        assert not left, "daemons still running when farm up had exited: %r" % left

    def assert_nothing_left(self, pids: Iterable[int] = ()) -> None:
        """``farm up`` has exited and, within GONE_TIMEOUT, none of ``pids`` nor any process of the farm lives."""
        assert self.process.poll() is not None, "farm up still runs"
        left: Dict[int, str] = {}

        def none_left() -> bool:
            left.clear()
            left.update(tagged(self.tag))
            left.update({pid: "(listed) " + str(pid) for pid in pids if self.alive(pid)})
            return not left

        try:
            wait_for(none_left, GONE_TIMEOUT, "no process of the farm remains")
        except pytest.fail.Exception:
            pytest.fail("processes of the farm still there %g s after farm up exited: %r" % (GONE_TIMEOUT, left))

    def close(self) -> None:
        """Whatever happened: farm up and every process of its farm are killed, the output files closed."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        kill_tagged(self.tag)
        for handle in self._files:
            handle.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., FarmUp]]:
    """``launch(inventory, *options)`` starts ``farm up``; everything it started is killed at teardown."""
    started: List[FarmUp] = []

    def start(inventory: str, *options: str) -> FarmUp:
        up = FarmUp(tmp_path / ("farm-%d" % len(started)), inventory, *options)
        started.append(up)
        return up

    yield start
    for up in started:
        up.close()


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def free_port() -> int:
    """A port that was free a moment ago, for an inventory's fixed tracker port (external boards need one).

    Bound to port 0 and closed again, so something else might take it before the tracker binds it:
    the farm never does this itself (each daemon binds port 0 and publishes its port), but an inventory
    with external boards must name the port in advance, and this is the one place the tests accept the race.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the tracker, as a client sees it --------------------------------------------------------


def address(pair: List[Any]) -> Tuple[str, int]:
    return str(pair[0]), int(pair[1])


def summary(tracker: Tuple[str, int]) -> Optional[Dict[str, Any]]:
    """The tracker's summary, or None while it cannot be reached (being restarted)."""
    try:
        with farm.connect_tracker(*tracker, timeout=2.0) as client:
            return client.summary()
    except farm.TrackerError:
        return None


def queue_is(tracker: Tuple[str, int], key: str, total: int, free: int) -> bool:
    found = summary(tracker)
    if found is None:
        return False
    queue = found["queue_info"].get(key, {})
    return queue.get("total") == total and queue.get("free") == free


def farm_status(tracker: Tuple[str, int]) -> str:
    """``farm status --wide``: the tracker's own totals (TVM's layout counts a proxied board under the proxy's key)."""
    result = subprocess.run(
        [sys.executable, "-m", "farm", "status", "--wide", "--tracker", "%s:%d" % tracker],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=30,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def queue_line(status: str, key: str, total: int, free: int, pending: int = 0) -> bool:
    """Whether ``farm status`` printed the Queue Status row ``KEY TOTAL FREE PENDING``."""
    row = re.compile(r"^%s\s+%d\s+%d\s+%d\s*$" % (re.escape(key), total, free, pending), re.M)
    return bool(row.search(status))


def session_names(tracker: Tuple[str, int], key: str, count: int) -> Set[str]:
    """Hold ``count`` sessions of ``key`` at once (so each is on a different board), ping each: the boards' names."""
    with ExitStack() as stack:
        client = stack.enter_context(farm.connect_tracker(*tracker))
        names = set()
        for _ in range(count):
            session = stack.enter_context(client.request(key, wait=20.0))
            session.ping()
            names.add(session.system_info()["name"])
        return names


def restart_line(up: FarmUp, label: str, number: int) -> Optional[int]:
    """The pid in ``farm up``'s "LABEL restarted (restart NUMBER, pid P)" log line, if it has logged it."""
    match = re.search(r"%s restarted \(restart %d, pid (\d+)\)" % (re.escape(label), number), up.stderr)
    return int(match.group(1)) if match else None


def exit_line(up: FarmUp, label: str, code: int, delay: float) -> bool:
    pattern = r"%s exited with code %d after [0-9.]+ s; restarting it in %.1f s" % (re.escape(label), code, delay)
    return re.search(pattern, up.stderr) is not None


def log_has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def registered_since_restart(up: FarmUp, board: str, number: int) -> bool:
    """Whether the board's log, after the launcher's marker of restart ``number``, says it registered again."""
    log = (up.log_dir / ("%s.log" % board)).read_text(errors="replace")
    marker = "---- restarted by the launcher (restart %d) ----" % number
    return marker in log and "registered with the tracker" in log.split(marker, 1)[1]


# --- the tests -------------------------------------------------------------------------------


def test_up_describes_serves_and_stops_on_sigterm(launch: Callable[..., FarmUp], tmp_path: Path) -> None:
    """Up: the description (printed and JSON) names tracker, proxy and both boards, which are exactly the
    daemons farm up started; farm status lists them; clients get sessions on both. SIGTERM: exit 0,
    "stopped", and neither those pids nor any process carrying the run's environment is left."""
    up = launch(write(tmp_path / "pair.yaml", PAIR))
    described = up.wait_up()
    tracker, proxy = address(described["tracker"]), address(described["proxy"])
    assert [(b["name"], b["key"], b["start"], b["proxy"]) for b in described["boards"]] == [
        ("alpha-0", "alpha", "local", False),
        ("alpha-1", "alpha", "local", True),
    ]
    assert described["keys"] == {"alpha": 2} and described["expected"] == {}
    assert described["logs"] == str(up.log_dir)
    text = up.stdout
    assert "tracker  %s:%d" % tracker in text and "proxy    %s:%d" % proxy in text, text
    assert re.search(r"^\s+alpha-0\s+alpha\s+\S+\s+local\s+%d$" % described["boards"][0]["pid"], text, re.M), text
    assert re.search(r"^\s+alpha-1\s+alpha\s+\S+\s+local, via the proxy\s+%d$" % described["boards"][1]["pid"],
                     text, re.M), text  # fmt: skip
    assert "farm status --tracker %s:%d" % tracker in text, text

    board_pids = [board["pid"] for board in described["boards"]]
    daemons = {up.daemon_pid("farm.tracker"), up.daemon_pid("farm.proxy"), *board_pids}
    assert set(up.children()) == daemons, up.children()  # the JSON's pids are the boards farm up runs

    status = farm_status(tracker)
    assert "server:alpha" in status and "%s:%d          server:proxy[alpha]" % proxy in status, status
    assert queue_line(status, "alpha", total=2, free=2), status

    assert session_names(tracker, "alpha", 2) == {"alpha-0", "alpha-1"}  # the listening and the proxied board

    assert up.signal(signal.SIGTERM) == 0, up.outputs()
    assert up.stdout.rstrip().endswith("farm up: stopped"), up.outputs()
    up.assert_stopped_before_exit(daemons)
    up.assert_nothing_left(daemons)


def test_ctrl_c_stops_the_farm(launch: Callable[..., FarmUp], tmp_path: Path) -> None:
    """SIGINT (Ctrl-C), with a session open: exit 0, "stopped", nothing of the farm left (the session's
    process included)."""
    up = launch(write(tmp_path / "pair.yaml", PAIR))
    described = up.wait_up()
    daemons = set(up.children())
    with farm.connect_tracker(*address(described["tracker"])) as client:
        session = client.request("alpha", wait=20.0)
        session.ping()
        assert up.signal(signal.SIGINT) == 0, up.outputs()
        session.close()
    assert up.stdout.rstrip().endswith("farm up: stopped"), up.outputs()
    assert "Traceback" not in up.stderr, up.outputs()
    up.assert_stopped_before_exit(daemons)
    up.assert_nothing_left(daemons)


def test_daemons_die_with_a_killed_farm_up(launch: Callable[..., FarmUp], tmp_path: Path) -> None:
    """SIGKILL of farm up itself (no cleanup runs): its daemons, and a session one of them serves, go too."""
    up = launch(write(tmp_path / "pair.yaml", PAIR))
    described = up.wait_up()
    daemons = set(up.children())
    assert len(daemons) == 4, up.children()
    with farm.connect_tracker(*address(described["tracker"])) as client:
        session = client.request("alpha", wait=20.0)
        session.ping()
        assert len(tagged(up.tag)) > len(daemons) + 1  # farm up, its daemons, and the session process
        assert up.signal(signal.SIGKILL) == -signal.SIGKILL
        up.assert_nothing_left(daemons)
        session.close()


@pytest.mark.slow
def test_dead_daemons_are_restarted(launch: Callable[..., FarmUp], tmp_path: Path) -> None:
    """A killed board is logged and restarted after 0.5 s, registers again and serves; a killed tracker is
    restarted on its port, the boards (direct and proxied) register again and clients are served; a board
    killed again is restart 2, after a doubled delay. Then SIGTERM still stops everything, restarted ones too."""
    up = launch(write(tmp_path / "pair.yaml", PAIR))
    described = up.wait_up()
    tracker = address(described["tracker"])
    first = described["boards"][0]
    assert (first["name"], first["proxy"], first["restarts"]) == ("alpha-0", False, 0)
    label = "board alpha-0 (key alpha)"

    os.kill(first["pid"], signal.SIGKILL)
    up.wait(lambda: exit_line(up, label, -signal.SIGKILL, 0.5), 10, "farm up logged the board's death")
    board_pid = up.wait(lambda: restart_line(up, label, 1), 10, "farm up restarted the board")
    assert board_pid != first["pid"] and up.alive(board_pid)
    up.wait(lambda: registered_since_restart(up, "alpha-0", 1), 10, "the restarted board registered again")
    up.wait(lambda: queue_is(tracker, "alpha", total=2, free=2), 10, "the tracker has both boards free again")
    assert session_names(tracker, "alpha", 2) == {"alpha-0", "alpha-1"}
    # Both boards offered again (no offer in flight: see test_proxy_offers_again_soon_after_a_tracker_restart).
    up.wait(lambda: queue_is(tracker, "alpha", total=2, free=2), 10, "both boards free after their sessions")

    tracker_pid = up.daemon_pid("farm.tracker")
    os.kill(tracker_pid, signal.SIGKILL)
    up.wait(lambda: exit_line(up, "tracker", -signal.SIGKILL, 0.5), 10, "the tracker's death was logged")
    new_tracker = up.wait(lambda: restart_line(up, "tracker", 1), 10, "farm up restarted the tracker")
    assert new_tracker != tracker_pid and up.daemon_pid("farm.tracker") == new_tracker
    # Same host and port: boards and clients find it again without being told anything.
    up.wait(lambda: queue_is(tracker, "alpha", total=2, free=2), 15, "both boards registered with the new tracker")
    assert session_names(tracker, "alpha", 2) == {"alpha-0", "alpha-1"}

    os.kill(board_pid, signal.SIGKILL)  # dies again soon after its restart: the delay doubles
    up.wait(lambda: exit_line(up, label, -signal.SIGKILL, 1.0), 10, "the second death was logged")
    board_pid_2 = up.wait(lambda: restart_line(up, label, 2), 10, "restart 2 of the board")
    up.wait(lambda: registered_since_restart(up, "alpha-0", 2), 10, "the board registered after restart 2")
    up.wait(lambda: queue_is(tracker, "alpha", total=2, free=2), 10, "both boards free after restart 2")

    daemons = set(up.children())
    assert {board_pid_2, new_tracker} <= daemons and not {first["pid"], board_pid, tracker_pid} & daemons
    assert up.signal(signal.SIGTERM) == 0, up.outputs()
    up.assert_stopped_before_exit(daemons | {first["pid"], board_pid, tracker_pid})
    up.assert_nothing_left(daemons | {first["pid"], board_pid, tracker_pid})


def test_proxy_offers_again_soon_after_a_tracker_restart(launch: Callable[..., FarmUp], tmp_path: Path) -> None:
    """The tracker dies while the proxy waits for its answer to an offer (made deterministic by stopping the
    tracker first): once the tracker is back, the proxied board is offered again within a few seconds."""
    up = launch(write(tmp_path / "pair.yaml", PAIR))
    tracker = address(up.wait_up()["tracker"])
    proxy_log = up.log_dir / "proxy.log"
    tracker_pid = up.daemon_pid("farm.tracker")
    with ExitStack() as stack:
        client = stack.enter_context(farm.connect_tracker(*tracker))
        for _ in range(2):  # both boards, so the proxied one is among them
            stack.enter_context(client.request("alpha", wait=20.0)).ping()
        os.kill(tracker_pid, signal.SIGSTOP)  # closing the sessions, the boards offer themselves again: no answer
    up.wait(lambda: proxy_log.read_text().count("waits under key 'alpha'") == 2, 10, "the proxy offers the board")
    os.kill(tracker_pid, signal.SIGKILL)
    up.wait(lambda: restart_line(up, "tracker", 1), 10, "farm up restarted the tracker")
    up.wait(lambda: queue_is(tracker, "alpha", total=2, free=2), 5, "both boards offered to the restarted tracker")
    assert up.signal(signal.SIGTERM) == 0, up.outputs()


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("tracker: {port: 0}\nboards:\n  - {key: alpha, count: two}\n", 3,
         "boards[0].count: expected a number of boards, 1..1024, got 'two'"),
        ("tracker: {port: 0}\nboards:\n  - {key: rasp4, start: external}\n", 1,
         "tracker.port: expected a fixed tracker port that external boards can be given, got 0"),
    ],
    ids=["bad-count", "external-without-tracker-port"],
)  # fmt: skip
def test_a_malformed_inventory_is_one_line_and_exit_2(
    launch: Callable[..., FarmUp], tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path / "bad.yaml", text)
    up = launch(path)
    assert up.wait_exit() == 2, up.outputs()
    assert up.stderr.splitlines() == ["farm up: %s:%d: %s" % (path, line, message)], up.outputs()
    assert up.stdout == "" and not up.json_file.exists()
    up.assert_nothing_left()


def test_missing_external_boards_fail_after_the_timeout(launch: Callable[..., FarmUp], tmp_path: Path) -> None:
    """An external board that never registers: exit 1 after --timeout, naming its key and how to start one;
    the local board and the tracker started meanwhile are stopped."""
    port = free_port()
    up = launch(write(tmp_path / "external.yaml", WITH_EXTERNAL % port), "--timeout", "2")
    board_log = up.log_dir / "alpha-0.log"
    up.wait(lambda: log_has(board_log, "registered with the tracker"), UP_TIMEOUT, "the local board registered")
    daemons = set(up.children())
    assert len(daemons) == 2, up.children()  # the tracker and the local board
    assert up.wait_exit(UP_TIMEOUT) == 1, up.outputs()
    took = time.monotonic() - up.started
    assert 2.0 <= took < 20.0, took
    tracker = "127.0.0.1:%d" % port
    errors = [line for line in up.stderr.splitlines() if line.startswith("farm up:")]
    assert len(errors) == 1, up.outputs()
    assert "did not come up" in errors[0], errors
    assert "the external boards of key rasp4 did not register with the tracker at %s" % tracker in errors[0], errors
    assert errors[0].endswith("start each with: farm server --tracker %s --key rasp4" % tracker), errors
    assert not up.json_file.exists()
    up.assert_stopped_before_exit(daemons)
    up.assert_nothing_left(daemons)


def test_up_once_the_external_board_registers(launch: Callable[..., FarmUp], tmp_path: Path) -> None:
    """The external board, started by hand while farm up waits, lets the farm come up; it is described as
    expected, served, and left running when the farm stops (it is not farm up's)."""
    port = free_port()
    tracker = ("127.0.0.1", port)
    up = launch(write(tmp_path / "external.yaml", WITH_EXTERNAL % port), "--timeout", "30")
    tracker_log = up.log_dir / "tracker.log"
    up.wait(lambda: log_has(tracker_log, "bind to 127.0.0.1:%d" % port), UP_TIMEOUT, "the tracker listens")
    with open(tmp_path / "external-board.log", "wb") as log:
        board = subprocess.Popen(
            [sys.executable, "-m", "farm.server", "--tracker", "%s:%d" % tracker, "--key", "rasp4", "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=python_env(),  # not tagged: someone else's board
            start_new_session=True,
        )
    try:
        described = up.wait_up()
        assert described["expected"] == {"rasp4": 1} and [b["name"] for b in described["boards"]] == ["alpha-0"]
        assert "expected: 1 external board(s) of key rasp4 (farm server --tracker %s:%d --key rasp4)" % tracker in (
            up.stdout
        ), up.outputs()
        status = farm_status(tracker)
        assert queue_line(status, "rasp4", total=1, free=1) and queue_line(status, "alpha", 1, 1), status
        with farm.connect_tracker(*tracker) as client, client.request("rasp4", wait=20.0) as session:
            session.ping()
        daemons = set(up.children())
        assert up.signal(signal.SIGTERM) == 0, up.outputs()
        up.assert_stopped_before_exit(daemons)
        up.assert_nothing_left(daemons)
        assert board.poll() is None, "farm up stopped a board it did not start"
    finally:
        board.terminate()
        try:
            board.wait(GONE_TIMEOUT)
        except subprocess.TimeoutExpired:
            board.kill()
            board.wait()


def test_ctrl_c_while_waiting_for_boards(launch: Callable[..., FarmUp], tmp_path: Path) -> None:
    """Ctrl-C while farm up still waits for a board (here an external one) stops it at once, not at --timeout:
    exit 0, "stopped", nothing left."""
    port = free_port()
    up = launch(write(tmp_path / "external.yaml", WITH_EXTERNAL % port), "--timeout", "60")
    board_log = up.log_dir / "alpha-0.log"
    up.wait(lambda: log_has(board_log, "registered with the tracker"), UP_TIMEOUT, "the local board registered")
    daemons = set(up.children())
    sent = time.monotonic()
    assert up.signal(signal.SIGINT) == 0, up.outputs()
    assert time.monotonic() - sent < 10.0
    assert up.stdout.rstrip().endswith("farm up: stopped"), up.outputs()
    assert not up.json_file.exists()
    up.assert_stopped_before_exit(daemons)
    up.assert_nothing_left(daemons)


def require_emulators() -> None:
    """Fail (not skip: CI installs them first) when qemu-user or a target Python is missing."""
    status = emulators.status()
    missing = [arch for arch in EMULATED if not (status[arch]["installed"] and status[arch]["qemu"])]
    if missing:
        pytest.fail(
            "the emulators of %s are not installed: run `farm emulators install` first (CI does)" % ", ".join(missing)
        )


@pytest.mark.slow
def test_the_emulated_farm(launch: Callable[..., FarmUp]) -> None:
    """``farm up emulated``: local boards plus an aarch64 board and an armhf one behind the proxy, each the
    board server in that architecture's Python under qemu-user; sessions report the emulated machine."""
    require_emulators()
    up = launch("emulated", "--timeout", "90")
    described = up.wait_up(EMULATED_UP_TIMEOUT)
    boards = {board["name"]: board for board in described["boards"]}
    assert (boards["aarch64-0"]["start"], boards["aarch64-0"]["proxy"]) == ("emulated", False)
    assert (boards["armhf-0"]["start"], boards["armhf-0"]["proxy"]) == ("emulated", True)
    text = up.stdout
    assert re.search(r"^\s+aarch64-0\s+aarch64\s+aarch64\s+emulated\s+%d$" % boards["aarch64-0"]["pid"], text, re.M)
    assert re.search(r"^\s+armhf-0\s+armhf\s+armhf\s+emulated, via the proxy\s+%d$" % boards["armhf-0"]["pid"],
                     text, re.M), text  # fmt: skip
    daemons = set(up.children())
    assert {board["pid"] for board in described["boards"]} <= daemons

    with farm.connect_tracker(*address(described["tracker"])) as client:
        for key, machine in (("aarch64", "aarch64"), ("armhf", "armv7l")):
            with client.request(key, wait=30.0) as session:
                info = session.system_info()
                assert (info["machine"], info["name"]) == (machine, key + "-0"), info
    assert up.signal(signal.SIGTERM) == 0, up.outputs()
    assert up.stdout.rstrip().endswith("farm up: stopped"), up.outputs()
    up.assert_stopped_before_exit(daemons)
    up.assert_nothing_left(daemons)


@pytest.mark.slow
def test_emulated_boards_die_with_a_killed_farm_up(launch: Callable[..., FarmUp]) -> None:
    """SIGKILL of ``farm up emulated``: the boards under qemu-user go too (the target Python's
    PR_SET_PDEATHSIG passes through qemu-user), with everything else."""
    require_emulators()
    up = launch("emulated", "--timeout", "90")
    described = up.wait_up(EMULATED_UP_TIMEOUT)
    daemons = up.children()
    emulated = {board["pid"] for board in described["boards"] if board["start"] == "emulated"}
    assert len(emulated) == 2 and all("qemu-" in daemons[pid] for pid in emulated), daemons
    assert up.signal(signal.SIGKILL) == -signal.SIGKILL
    up.assert_nothing_left(daemons)
