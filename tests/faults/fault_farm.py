"""The fault injection suite's harness: a whole farm of real processes, and the check every scenario ends with.

A :class:`FaultFarm` runs the daemons of an inventory the test writes with
:class:`farm.ops.launcher.FarmStack` (supervised where the test wants killed daemons
restarted: every wait of the harness then calls ``supervise()`` from the test's
thread, which the daemons' parent-death signal is tied to), plus boards the
test starts itself: with options an inventory cannot give, or inside a network
namespace. Every board runs one board server: Python's, or the native one (C), on
x86_64 built with the sanitizers, whose reports fail the test. Everything started
carries ``FARM_FAULT_TAG=<unique>`` in its environment and puts its temporary
files under the test's directory, so what is left behind is found in /proc and
on disk. :func:`assert_farm_whole` is the
verdict of every scenario. Nothing of the package is replaced; waits poll a
condition against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import pytest

import farm
from conftest import (
    BoardServer,
    check_sanitizer_log,
    parent_and_start,
    process_name,
    processes_with_env,
    reachable_temp,
    wait_for,
)
from farm.board.spawner import STANDBY_NAME
from farm.client.tracker import TrackerClient
from farm.lifetime import PARENT_ENV
from farm.ops.inventory import load_inventory
from farm.ops.launcher import FarmStack
from farm.ops.native import SANITIZE_FLAGS
from farm.ops.processes import DaemonProcess, board_command
from farm.ops.targets import host_target
from farm.ops.toolchain import toolchain_for

logger = logging.getLogger("tests.faults")

TAG_ENV = "FARM_FAULT_TAG"
#: Seconds the farm has to come up, to become whole again after a fault, and to be gone after it stopped.
UP_TIMEOUT, WHOLE_TIMEOUT, GONE_TIMEOUT = 30.0, 15.0, 15.0

#: A client process that holds a board of KEY and blocks in a call: ``python -c HOLDING HOST PORT KEY LIBRARY``.
#: It prints its session's directory, where the call leaves a file named "running".
HOLDING = """
import sys
import farm
host, port, key, library = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
session = farm.connect_tracker(host, port).request(key, session_timeout=60, user="holder")
session.upload(library)
print(session.system_info()["session_dir"], flush=True)
session.load_module("libfaults.so").get_function("mark_and_pause", "void mark_and_pause(void)")()
"""
#: A client process that queues for a board of KEY and prints its place: ``python -c QUEUED HOST PORT KEY``.
QUEUED = """
import sys
import farm
tracker = farm.connect_tracker(sys.argv[1], int(sys.argv[2]))
tracker.request_board(sys.argv[3], user="waiter", on_progress=lambda p: print("queued", p["position"], flush=True))
print("served", flush=True)
"""


def on_server(inventory: str, server: Optional[BoardServer]) -> str:
    """The inventory with every board group running ``server``: the Python board (None, or ``python``: as written),
    the launcher's build of the native one, or for ``native-asan`` the native board built with the sanitizers,
    through a toolchain entry for this machine."""
    if server is None or not server.native:
        return inventory
    text = inventory.replace("- {key: ", "- {server: native, key: ")
    assert text != inventory, "an inventory of board groups written as {key: ...}: %r" % inventory
    if server.name == "native-asan":
        toolchain = toolchain_for(host_target())
        spec = {"compiler": toolchain.compiler, "flags": [*toolchain.flags, *SANITIZE_FLAGS]}
        text += "toolchains:\n  %s: %s\n" % (toolchain.target.name, json.dumps(spec))  # JSON: YAML's flow style
    return text


def pause_in_call(session: Any, kernels: Dict[str, Path]) -> Future:
    """Call ``mark_and_pause()`` on the board in the background; returns once the board runs it."""
    session.upload(kernels["libfaults.so"])
    pause = session.load_module("libfaults.so").get_function("mark_and_pause", "void mark_and_pause(void)")
    marker = Path(session.system_info()["session_dir"]) / "running"
    call = in_background(pause)
    wait_for(lambda: marker.exists() or call.done(), 10, "the board runs mark_and_pause()")
    assert not call.done(), "the call returned: %r" % call.exception()
    return call


def in_background(function: Callable[..., Any], *args: Any) -> Future:
    """``function(*args)`` in a daemon thread (one stuck for good cannot hold up the end of the run)."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # handed to the test through the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


class FaultFarm:
    """The daemons of one inventory, the boards, clients and client processes a scenario adds; see the module."""

    def __init__(
        self, directory: Path, inventory: str, tag: str, temp: Path, supervised: bool, server: Optional[BoardServer]
    ) -> None:
        directory.mkdir(parents=True)
        (directory / "farm.yaml").write_text(on_server(inventory, server))
        self.directory = directory
        self.server = server  # None: the Python board
        self.tag = tag
        self.temp = temp  # the boards' TMPDIR: their work directories, with the session directories
        self.supervised = supervised
        self.inventory = load_inventory(str(directory / "farm.yaml"))
        self.stack = FarmStack(self.inventory, str(directory / "logs"))
        self.extra: List[Tuple[str, DaemonProcess]] = []  # (key, daemon) of the boards the test started
        self.sessions: List[Any] = []
        self.clients: List[TrackerClient] = []
        self.processes: List[subprocess.Popen] = []

    # --- the farm ---------------------------------------------------------------------

    @property
    def tracker(self) -> Tuple[str, int]:
        return self.stack.tracker_address

    def board(self, name: str) -> DaemonProcess:
        """The running daemon of the board called ``name`` (its latest, if it was restarted)."""
        for daemon in self.stack.boards:
            if daemon.name == name:
                return daemon.process
        raise KeyError(name)

    def keys(self) -> Dict[str, int]:
        """Boards per key: the inventory's and the test's own."""
        counts = dict(self.inventory.board_counts())
        for key, _ in self.extra:
            counts[key] = counts.get(key, 0) + 1
        return counts

    def board_pids(self) -> List[int]:
        return [daemon.process.pid for daemon in self.stack.boards] + [daemon.pid for _, daemon in self.extra]

    def daemon_pids(self) -> List[int]:
        return [daemon.process.pid for daemon in self.stack.daemons] + [daemon.pid for _, daemon in self.extra]

    def add_board(
        self, key: str, extra: Sequence[str] = (), prefix: Sequence[str] = (), host: str = "127.0.0.1"
    ) -> DaemonProcess:
        """A board of ``key`` the test starts (``prefix`` before its command, ``extra`` options after), registered."""
        name = "%s-extra-%d" % (key, len(self.extra))
        work_dir = self.temp / name
        options = ["--tracker", "%s:%d" % self.tracker, "--name", name, "--work-dir", str(work_dir), *extra]
        program = [self.server.program] if self.server is not None and self.server.program else None
        argv = [*prefix, *board_command(key, host, 0, sys.executable, options, server=program)]
        env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})  # it dies with this process, as the stack's do
        daemon = DaemonProcess(argv, str(self.directory / ("%s.log" % name)), env)
        self.extra.append((key, daemon))
        daemon.wait_for_bind()
        self.wait(lambda: self.state(key).get("free", 0) >= 1, 10, "board %s registers" % name)
        return daemon

    def supervise(self) -> None:
        if self.supervised:
            self.stack.supervise()

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """:func:`wait_for`, restarting dead daemons meanwhile if the farm is supervised."""

        def check() -> Any:
            self.supervise()
            return condition()

        return wait_for(check, timeout, what)

    # --- clients ----------------------------------------------------------------------

    def client(self) -> TrackerClient:
        client = farm.connect_tracker(*self.tracker)
        self.clients.append(client)
        return client

    def request(self, key: str, session_timeout: float = 30.0, wait: float = 10.0) -> Any:
        """A session on a board of ``key`` through the tracker, closed at the end if the test does not."""
        session = self.client().request(key, session_timeout=session_timeout, wait=wait)
        self.sessions.append(session)
        return session

    def spawn(self, script: str, *args: str) -> Tuple[subprocess.Popen, Path]:
        """A client process ``python -c SCRIPT TRACKER_HOST TRACKER_PORT ARGS...`` and the file its output goes to."""
        output = self.directory / ("client-%d.out" % len(self.processes))
        with open(output, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", script, self.tracker[0], str(self.tracker[1]), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process, output

    # --- what the farm looks like ------------------------------------------------------

    def summary(self) -> Optional[Dict[str, Any]]:
        """The tracker's summary; None while it cannot be reached (being restarted)."""
        try:
            with farm.connect_tracker(*self.tracker, timeout=2.0) as client:
                return client.summary()
        except farm.TrackerError:
            return None

    def pool(self) -> Optional[Dict[str, Dict[str, int]]]:
        """``{key: {"total", "free", "pending"}}`` for every key the tracker or the farm knows; None without one."""
        summary = self.summary()
        if summary is None:
            return None
        queues = summary["queue_info"]
        fields = ("total", "free", "pending")
        return {key: {name: queues.get(key, {}).get(name, 0) for name in fields} for key in {*queues, *self.keys()}}

    def state(self, key: str) -> Dict[str, int]:
        """``{"total", "free", "pending"}`` of ``key``; empty while the tracker cannot be reached."""
        return (self.pool() or {}).get(key, {})

    def strays(self) -> Dict[int, str]:
        """Processes of this test that are neither the farm's daemons nor a board's own helpers: its children, the
        session spawner and (on the Python board) the watchdog, and the spawner's one standby session process, if
        any (:data:`~farm.board.spawner.STANDBY_NAME`). Sessions, and what they leave behind, are the spawner's."""
        daemons, boards = set(self.daemon_pids()), set(self.board_pids())
        found = processes_with_env(TAG_ENV, self.tag)
        helpers = {pid for pid in found if parent_and_start(pid)[0] in boards}
        standbys = {}  # by spawner
        for pid in found:
            parent = parent_and_start(pid)[0]
            if parent in helpers and process_name(pid) == STANDBY_NAME and parent not in standbys:
                standbys[parent] = pid
        kept = daemons | helpers | set(standbys.values())
        return {pid: command for pid, command in found.items() if pid not in kept}

    def leftover_directories(self) -> List[str]:
        """Session directories on disk, and work directories of board daemons that are gone."""
        left = session_directories(self.temp)
        owned = sorted(self.temp.glob("farm-board-*"))  # each running board of the stack owns one
        if len(owned) > len(self.stack.boards):
            left += [str(path) for path in owned]
        return left

    def logs(self) -> str:
        """The tail of every daemon's log, for failure messages."""
        daemons = [(d.name, d.process) for d in self.stack.daemons] + [(str(p.pid), p) for _, p in self.extra]
        return "".join("\n---- %s:\n%s" % (name, process.log_text()[-2000:]) for name, process in daemons)

    # --- the end -------------------------------------------------------------------------

    def stop(self) -> None:
        for session in self.sessions:
            with contextlib.suppress(farm.FarmError, OSError):
                session.close()
        for client in self.clients:
            client.close()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        self.stack.stop()
        for _, daemon in self.extra:
            daemon.stop()

    def check_sanitizers(self) -> None:
        """Fail if the sanitizers reported anything in a board's log (its session processes write there too)."""
        for daemon in [board.process for board in self.stack.boards] + [daemon for _, daemon in self.extra]:
            check_sanitizer_log(daemon)


def assert_farm_whole(
    faulty: FaultFarm,
    error: Optional[BaseException] = None,
    expected: Optional[Type[BaseException]] = None,
    says: Sequence[str] = (),
    restarted: Sequence[str] = (),
    timeout: float = WHOLE_TIMEOUT,
) -> None:
    """The farm came through the fault whole, and the affected client was told what happened.

    ``error`` is what the client got: an ``expected`` instance whose text matches each regular
    expression of ``says``. Within ``timeout``: every board of every key is registered and free,
    no request is queued, no process of the test is left but the daemons and their watchdogs,
    and no session directory (nor the work directory of a dead daemon) is left on disk. Every
    daemon runs, and only those named in ``restarted`` were restarted by the launcher.
    """
    if expected is not None:
        logger.info("the client was told: %s: %s", type(error).__name__, error)
        assert isinstance(error, expected), "expected %s, the client got %r" % (expected.__name__, error)
        for pattern in says:
            assert re.search(pattern, str(error)), "the client was not told %r: %s" % (pattern, error)
    expected_pool = {key: {"total": count, "free": count, "pending": 0} for key, count in faulty.keys().items()}
    seen: Dict[str, Any] = {}

    def whole() -> bool:
        pool = seen["pool"] = faulty.pool() or {}
        seen["strays"], seen["directories"] = faulty.strays(), faulty.leftover_directories()
        queued = {key: state["pending"] for key, state in pool.items() if state["pending"]}
        in_pool = all(pool.get(key) == state for key, state in expected_pool.items())
        return in_pool and not queued and not seen["strays"] and not seen["directories"]

    try:
        faulty.wait(whole, timeout, "the farm is whole")
    except pytest.fail.Exception:
        found = (seen.get("pool"), expected_pool, seen.get("strays"), seen.get("directories"))
        pytest.fail(
            "the farm is not whole %g s after the fault\n  pool: %r (expected %r)\n  stray processes: %r\n"
            "  left on disk: %r%s" % (timeout, *found, faulty.logs())
        )
    dead = [daemon.label for daemon in faulty.stack.daemons if daemon.exited() is not None]
    dead += ["board pid %d" % daemon.pid for _, daemon in faulty.extra if daemon.process.poll() is not None]
    assert not dead, "daemons not running: %r%s" % (dead, faulty.logs())
    restarts = sorted(daemon.name for daemon in faulty.stack.daemons if daemon.restarts)
    assert restarts == sorted(restarted), "restarted by the launcher: %r, expected %r" % (restarts, list(restarted))


def session_directories(temp: Path) -> List[str]:
    """The session directories in the board directories under ``temp``. A board directory removed while it is
    listed (its daemon is stopping) has none: a glob would raise FileNotFoundError there."""
    found = []
    for board in temp.iterdir():
        try:
            found += [str(path) for path in board.iterdir() if path.name.startswith("session-")]
        except (FileNotFoundError, NotADirectoryError, PermissionError):  # as a glob skips what it cannot read
            continue
    return found


def assert_nothing_left(tag: str, temp: Path) -> None:
    """After the farm stopped: no process of the test and no session directory within GONE_TIMEOUT."""
    left: Dict[str, Any] = {}

    def gone() -> bool:
        left["processes"] = processes_with_env(TAG_ENV, tag)
        left["directories"] = session_directories(temp) + [str(path) for path in temp.glob("farm-board-*")]
        return not left["processes"] and not left["directories"]

    try:
        wait_for(gone, GONE_TIMEOUT, "nothing of the farm is left")
    except pytest.fail.Exception:
        pytest.fail("left %g s after the farm stopped: %r" % (GONE_TIMEOUT, left))


@contextlib.contextmanager
def fault_farms(
    directory: Path, monkeypatch: pytest.MonkeyPatch, server: Optional[BoardServer] = None
) -> Iterator[Callable[..., FaultFarm]]:
    """``start(inventory, supervised=False)`` brings a farm up; at the end every farm stops, and nothing is left.

    The boards run ``server`` (default: the Python board; see :func:`on_server`). Their work directories go to a
    directory their sessions (run as nobody) can enter.
    """
    tag = uuid.uuid4().hex
    started: List[FaultFarm] = []
    with reachable_temp() as temp:
        monkeypatch.setenv(TAG_ENV, tag)  # inherited by everything the test starts
        monkeypatch.setenv("TMPDIR", str(temp))
        for name, value in (server.env if server is not None else {}).items():  # the sanitizers' options
            monkeypatch.setenv(name, value)

        def start(inventory: str, supervised: bool = False) -> FaultFarm:
            faulty = FaultFarm(directory / ("farm-%d" % len(started)), inventory, tag, temp, supervised, server)
            started.append(faulty)
            began = time.monotonic()
            faulty.stack.start(UP_TIMEOUT)
            logger.info(
                "farm %d up in %.2f s: tracker at %s:%d", len(started), time.monotonic() - began, *faulty.tracker
            )
            return faulty

        try:
            yield start
        finally:
            for faulty in started:
                faulty.stop()
            try:
                assert_nothing_left(tag, temp)
                for faulty in started:
                    faulty.check_sanitizers()
            finally:
                for pid in processes_with_env(TAG_ENV, tag):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
