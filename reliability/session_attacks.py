"""Sessions that attack their board: ``python reliability/session_attacks.py [--source DIR] [-- OPTIONS]``.

Each attack runs on a fresh board daemon (``python -m farm.server`` from
``--source``, default this checkout, with the board OPTIONS after ``--``),
through this checkout's client, with code from tests/kernels/confine.c:

- ``detached_killed``: a daemonised process (fork, setsid, fork), then SIGKILL to the daemon;
- ``detached_ended``: the same, then the session ends normally;
- ``fork_bomb``: 2^9 processes if nothing stops them;
- ``memory``: 1024 MB taken and touched;
- ``open_files``: 100,000 opens of /dev/null;
- ``files``: 200,000 empty files in the session's directory (the session asked for a timeout of 20 s);
- ``long_session``: a call that never returns, in a session that asked for a timeout of 3600 s.

Compare the code before and after a change by pointing ``--source`` at each.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # the shared harness

import harness  # noqa: E402
from harness import PROJECT, Option, Scenario, Tool  # noqa: E402

import farm
from farm.ops.processes import DaemonProcess, board_command
from farm.ops.toolchain import compile_shared

logger = logging.getLogger("reliability.session_attacks")

KERNELS = PROJECT / "tests" / "kernels" / "confine.c"
#: Seconds a process left behind is given to die before it counts as a survivor.
GRACE = 5.0


def running(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def group_size(pgid: int) -> int:
    """Processes (not zombies) in process group ``pgid``."""
    count = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/stat" % entry) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        count += fields[0] != "Z" and int(fields[2]) == pgid
    return count


def outlives(pid: int, seconds: float = GRACE) -> bool:
    """Whether ``pid`` still runs ``seconds`` from now (it is killed then, so as not to stay)."""
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = running(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    return alive


class Board:
    """A board daemon of the measured code, and sessions on it."""

    def __init__(self, source: Path, options: List[str], library: Path, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(source))
        self.daemon = DaemonProcess(board_command("attack", extra=options), str(log), env)
        self.address = self.daemon.wait_for_bind()
        self.library = library

    def session(self, timeout: Optional[float] = None) -> Any:
        return farm.connect(*self.address, key="attack", session_timeout=timeout)

    def function(self, session: Any, name: str, signature: str) -> Any:
        session.upload(self.library)
        return session.load_module(self.library.name).get_function(name, signature)

    def serves(self) -> float:
        """Seconds until a new session opens and answers (the board is usable again); -1 after 30 s."""
        began = time.monotonic()
        while time.monotonic() - began < 30:
            try:
                with self.session() as session:
                    session.ping()
                    return time.monotonic() - began
            except (farm.BoardBusyError, OSError, farm.FarmError):
                time.sleep(0.05)
        return -1.0


def detached(board: Board, kill_daemon: bool) -> Dict[str, Any]:
    session = board.session()
    pid = board.function(session, "spawn_detached", "int spawn_detached(void)")()
    if kill_daemon:
        os.kill(board.daemon.pid, signal.SIGKILL)
    else:
        session.close()
    return {"survivor_alive_after_s": GRACE if outlives(pid) else None}


def fork_bomb(board: Board) -> Dict[str, Any]:
    session = board.session()
    failed = board.function(session, "fork_bomb", "long fork_bomb(int)")(9)  # once every process has forked
    processes = group_size(session.system_info()["pid"])
    session.close()
    return {"processes": processes, "failed_forks": failed, "board_serves_again_s": board.serves()}


def ended(call: Callable[[], Any]) -> Dict[str, Any]:
    """Run a call that should end the session; what came of it, and when."""
    began = time.monotonic()
    try:
        result: Dict[str, Any] = {"returned": call()}
    except farm.SessionLostError as exc:
        result = {"session_ended": str(exc).split(" ended: ", 1)[-1]}
    result["after_s"] = round(time.monotonic() - began, 2)
    return result


def memory(board: Board) -> Dict[str, Any]:
    session = board.session()
    hog = board.function(session, "hog_memory", "long hog_memory(long)")
    result = ended(lambda: hog(1024))
    session.close()
    result["board_serves_again_s"] = board.serves()
    return result


def open_files(board: Board) -> Dict[str, Any]:
    with board.session() as session:
        return {"opened": board.function(session, "open_many", "long open_many(long)")(100000)}


def files(board: Board) -> Dict[str, Any]:
    session = board.session(timeout=20)
    flood = board.function(session, "make_files_and_pause", "long make_files_and_pause(long)")
    directory = session.system_info()["session_dir"]
    most = [0]
    stop = threading.Event()

    def count() -> None:  # the directory goes with the session: watch it while it fills
        while not stop.is_set():
            try:
                most[0] = max(most[0], len(os.listdir(directory)))
            except OSError:
                pass
            stop.wait(0.1)

    watcher = threading.Thread(target=count, daemon=True)
    watcher.start()
    result = ended(lambda: flood(200000))
    stop.set()
    watcher.join()
    session.close()
    result["most_files_seen"] = most[0]
    result["board_serves_again_s"] = board.serves()
    return result


def long_session(board: Board) -> Dict[str, Any]:
    """The call runs in a thread: under a board that does not end the session it never returns (the daemon's stop
    ends it)."""
    session = board.session(timeout=3600)
    pause = board.function(session, "make_files_and_pause", "long make_files_and_pause(long)")
    outcome: Dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(ended(lambda: pause(0))), daemon=True)
    thread.start()
    thread.join(15)
    return outcome or {"still_running_after_s": 15}


def scenario(name: str, attack: Callable[[Board], Dict[str, Any]]) -> Scenario:
    """The attack ``name`` on a fresh board of ``--source`` with the board options after ``--``."""

    def measure(workdir: str, args: Any) -> Dict[str, Any]:
        library = Path(workdir, "libconfine.so")
        if not library.exists():
            compile_shared([str(KERNELS)], str(library))
        board = Board(Path(args.source).resolve(), args.extra, library, Path(workdir, name + ".log"))
        try:
            return attack(board)
        finally:
            board.daemon.stop()

    def report(figures: Dict[str, Any], args: Any) -> List[str]:
        return ["- %s: %s" % (name, ", ".join("%s %s" % item for item in figures.items()))]

    return Scenario(name, measure, report)


TOOL = Tool(
    name="session_attacks",
    description=__doc__.split("\n\n")[0],
    rounds=None,
    pin="none",
    options={"source": Option(str(PROJECT), str(PROJECT), "the checkout whose board is attacked", str)},
    scenarios=[
        scenario("detached_killed", lambda board: detached(board, kill_daemon=True)),
        scenario("detached_ended", lambda board: detached(board, kill_daemon=False)),
        scenario("fork_bomb", fork_bomb),
        scenario("memory", memory),
        scenario("open_files", open_files),
        scenario("files", files),
        scenario("long_session", long_session),
    ],
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
