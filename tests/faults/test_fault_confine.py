"""Sessions that try to outlive their board or exhaust it: detached processes, fork bombs, floods of memory, open
files and files, sessions longer than the board allows.

Each scenario runs a whole farm (tests/faults/fault_farm.py) whose board runs
code from tests/kernels/confine.c, and ends with :func:`assert_farm_whole`: the
board is free again, no process of the session is left, nor its directory.
Where the board has cgroups (root on Linux), each session's cgroup is gone too.

The scenarios run on the native board as well (``board_servers``), but for the daemon's watchdog, which only
the Python board has (the native board's spawner does its part, and has a scenario of its own): the launcher's
build for a farm's own boards, and the sanitized build where the test starts the board itself, but where a memory
limit is set, which AddressSanitizer's reserved address space would exceed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
from fault_farm import FaultFarm, assert_farm_whole, fault_farms

import farm
from conftest import NATIVE_CHECKED, BoardServer, parent_and_start, process_name, standby_of, wait_for
from farm.board import confine
from farm.board.spawner import STANDBY_NAME
from farm.ops.processes import DaemonProcess
from farm.ops.toolchain import compile_shared

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TESTS = Path(__file__).resolve().parent.parent
ONE_BOARD = "tracker: {port: 0}\nboards:\n  - {key: k, count: 1}\n"
#: A board whose sessions run as root, as its daemon does: the only kind whose session may kill its daemon.
ROOT_SESSIONS = "tracker: {port: 0}\nboards:\n  - {key: k, count: 1, session_user: root}\n"
CONFINED = "sessions are confined in cgroups"
#: A user id no other process runs as (RLIMIT_NPROC counts every process of the user).
LONE_UID = 61234
MAXIMUM = r"the board's maximum session time of 2 s \(--max-session-time; the client "


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/kernels/confine.c, built with the system C compiler."""
    out = tmp_path_factory.mktemp("confine-kernels") / "libconfine.so"
    return Path(compile_shared([TESTS / "kernels" / "confine.c"], out))


@pytest.fixture
def start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, board_server: BoardServer
) -> Iterator[Callable[..., FaultFarm]]:
    with fault_farms(tmp_path, monkeypatch, board_server) as starter:
        yield starter


def require_cgroups(daemon: DaemonProcess) -> None:
    """Skip where the board found no cgroup it can use (not root, no delegated subtree): it says so at start."""
    daemon.wait_for_log(re.compile("sessions are confined"))
    if CONFINED not in daemon.log_text():
        pytest.skip("this board confines sessions by resource limits only (no writable cgroup: not root?)")


def session_cgroups(pid: int) -> List[str]:
    """The cgroup directories of process ``pid`` that are a session's (``.../farm-board-*/session-N``)."""
    return [path for _, _, path in confine.process_cgroups(str(pid)) if "/farm-board-" in path]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_removed(cgroups: List[str]) -> None:
    wait_for(lambda: not any(os.path.exists(path) for path in cgroups), 5, "the session's cgroups are removed")


# --- nothing outlives its session ---------------------------------------------------------


@pytest.mark.board_servers("python", "native")
@pytest.mark.parametrize("killer", ["session", "operator"])
def test_detached_process_dies_when_the_daemon_is_killed(
    start: Callable[..., FaultFarm], library: Path, killer: str
) -> None:
    """A session daemonises a process (fork, setsid, fork, the middle one exits), then the board daemon is
    killed with SIGKILL, by the session itself (on a board whose sessions run as root: others may not, see
    tests/integration/test_session_sandbox.py) or from outside: the detached process dies too, and the
    restarted board is free, with no cgroup of the dead daemon's session left."""
    faulty = start(ROOT_SESSIONS if killer == "session" else ONE_BOARD, supervised=True)
    require_cgroups(faulty.board("k-0"))  # without, what left the process group survives (docs/security.md)
    session = faulty.request("k")
    info = session.system_info()
    daemon = faulty.board(info["name"])
    session.upload(library)
    module = session.load_module("libconfine.so")
    detached = module.get_function("spawn_detached", "int spawn_detached(void)")()
    assert detached > 0 and alive(detached) and detached in faulty.strays()
    cgroups = session_cgroups(detached)
    if killer == "session":
        try:
            kill_process = module.get_function("kill_process", "int kill_process(int)")
            assert kill_process(daemon.pid) == 0  # the reply beat the signal
        except farm.SessionLostError:
            pass  # the signal beat the reply: the ping below says the same
    else:
        os.kill(daemon.pid, signal.SIGKILL)
    wait_for(lambda: not alive(daemon.pid), 5, "the board daemon is dead")
    # the session follows the daemon a moment later: killed by its spawner, which the daemon's death wakes
    wait_for(lambda: not alive(info["pid"]), 5, "the session process dies with the daemon")
    with pytest.raises(farm.SessionLostError) as caught:
        session.ping()
    wait_for(lambda: not alive(detached), 5, "the detached process %d dies with the daemon" % detached)
    assert_removed(cgroups)
    says = r"connection to board 'k' at 127\.0\.0\.1:%d lost" % session.port
    assert_farm_whole(faulty, caught.value, farm.SessionLostError, [says], restarted=[info["name"]])


def children_of(pid: int) -> List[int]:
    with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
        return [int(child) for child in handle.read().split()]


def test_detached_process_dies_when_the_daemon_and_its_watchdog_are_killed(
    start: Callable[..., FaultFarm], library: Path
) -> None:
    """SIGKILL to the watchdog, then to the daemon: nothing of the dead daemon is left to clean up, so the board
    the launcher starts in its place kills what is left in the dead daemon's cgroups and removes them (or any
    other board that starts below the same cgroups first)."""
    faulty = start(ONE_BOARD, supervised=True)
    daemon = faulty.board("k-0")
    require_cgroups(daemon)
    # Before any session the daemon's children are its session spawner and its watchdog, which takes a
    # process group of its own.
    (watchdog,) = wait_for(lambda: [c for c in children_of(daemon.pid) if os.getpgid(c) == c], 10, "the watchdog")
    session = faulty.request("k")
    work_dir = os.path.dirname(session.system_info()["session_dir"])
    session.upload(library)
    detached = session.load_module("libconfine.so").get_function("spawn_detached", "int spawn_detached(void)")()
    cgroups = session_cgroups(detached)
    os.kill(watchdog, signal.SIGKILL)
    wait_for(lambda: not alive(watchdog), 5, "the watchdog is dead")
    os.kill(daemon.pid, signal.SIGKILL)
    assert_swept_by_the_next_board(faulty, daemon, session, detached, cgroups, work_dir)


def assert_swept_by_the_next_board(
    faulty: FaultFarm, daemon: DaemonProcess, session: Any, detached: int, cgroups: List[str], work_dir: str
) -> None:
    """The launcher restarts the killed board ``daemon``, which kills the ``detached`` process left in the dead
    daemon's ``cgroups`` and removes them, and (a native board) the dead daemon's work directory: the Python
    board's are removed here (nobody was left to); the client lost its session, and the farm is whole again."""
    faulty.wait(lambda: faulty.board("k-0") is not daemon, 10, "the launcher restarts the board")
    faulty.wait(lambda: not alive(detached), 5, "the detached process %d is killed" % detached)
    assert_removed(cgroups)
    if faulty.server is not None and faulty.server.native:
        faulty.wait(lambda: not os.path.exists(work_dir), 10, "the next board removes %s" % work_dir)
    else:
        shutil.rmtree(work_dir)
    with pytest.raises(farm.SessionLostError) as caught:
        session.ping()
    says = r"connection to board 'k' at 127\.0\.0\.1:%d lost" % session.port
    assert_farm_whole(faulty, caught.value, farm.SessionLostError, [says], restarted=["k-0"])


@pytest.mark.board_servers("native")
def test_detached_process_dies_when_the_daemon_and_its_spawner_are_killed(
    start: Callable[..., FaultFarm], library: Path
) -> None:
    """The native board has no watchdog: its session spawner cleans up after a dead daemon. With both killed (the
    daemon stopped first, so that it cannot end the session when its spawner dies), the board the launcher starts
    in its place kills what is left in the dead daemon's cgroups and removes them (or any other board that starts
    below the same cgroups first), and the dead daemon's work directory."""
    faulty = start(ONE_BOARD, supervised=True)
    daemon = faulty.board("k-0")
    require_cgroups(daemon)
    session = faulty.request("k")
    info = session.system_info()
    spawner = parent_and_start(info["pid"])[0]
    assert parent_and_start(spawner)[0] == daemon.pid
    session.upload(library)
    detached = session.load_module("libconfine.so").get_function("spawn_detached", "int spawn_detached(void)")()
    cgroups = session_cgroups(detached)
    assert cgroups and alive(detached)
    os.kill(daemon.pid, signal.SIGSTOP)
    os.kill(spawner, signal.SIGKILL)
    wait_for(lambda: not alive(spawner), 5, "the spawner is dead")
    os.kill(daemon.pid, signal.SIGKILL)
    assert_swept_by_the_next_board(faulty, daemon, session, detached, cgroups, os.path.dirname(info["session_dir"]))
    # the dead daemon's own cgroups (farm-board-PID) go too: swept by the restarted board, or by any board of
    # another test that starts below the same cgroups first (its log says so, not the restarted board's)
    farm_cgroups = sorted({os.path.dirname(path) for path in cgroups})
    assert all(os.path.basename(path) == "farm-board-%d" % daemon.pid for path in farm_cgroups), farm_cgroups
    wait_for(
        lambda: not any(os.path.exists(path) for path in farm_cgroups), 5, "the dead daemon's cgroups are removed"
    )


@pytest.mark.board_servers("python", "native")
def test_detached_process_dies_at_the_end_of_the_session(start: Callable[..., FaultFarm], library: Path) -> None:
    faulty = start(ONE_BOARD)
    session = faulty.request("k")
    session.upload(library)
    detached = session.load_module("libconfine.so").get_function("spawn_detached", "int spawn_detached(void)")()
    assert detached > 0 and alive(detached)
    cgroups = session_cgroups(detached)
    session.close()
    wait_for(lambda: not alive(detached), 5, "the detached process %d dies with the session" % detached)
    assert_removed(cgroups)
    assert_farm_whole(faulty)


@pytest.mark.board_servers("python", "native")
def test_each_session_has_its_own_cgroup_removed_at_its_end(start: Callable[..., FaultFarm], library: Path) -> None:
    """Each session's processes are in a cgroup of their own below the board's, which holds no session's
    cgroup once the session ended (only the next session's, with its standby process in it), and is gone once
    the board stopped."""
    faulty = start(ONE_BOARD)
    daemon = faulty.board("k-0")
    require_cgroups(daemon)
    farm_cgroups = set()
    for _ in range(2):
        session = faulty.request("k")
        cgroups = session_cgroups(session.system_info()["pid"])
        assert cgroups, "the session process is in no cgroup of its own"
        assert all(os.path.basename(path).startswith("session-") for path in cgroups), cgroups
        farm_cgroups |= {os.path.dirname(path) for path in cgroups}
        session.close()
        assert_removed(cgroups)
        assert_farm_whole(faulty)
    for path in farm_cgroups:
        ahead = [os.path.join(path, name) for name in os.listdir(path) if name.startswith("session-")]
        assert len(ahead) <= 1, ahead
        pids = [int(pid) for cgroup in ahead for pid in Path(cgroup, "cgroup.procs").read_text().split()]
        waiting = [process_name(pid) for pid in pids]
        assert waiting in ([], [STANDBY_NAME]), "the next session's cgroup holds %s" % waiting
    faulty.stack.stop()
    wait_for(lambda: not any(os.path.exists(path) for path in farm_cgroups), 10, "the board's cgroups are removed")


@pytest.mark.board_servers("python", "native")
def test_the_next_session_process_waits_in_its_cgroup_before_its_client_comes(
    start: Callable[..., FaultFarm], library: Path
) -> None:
    """A free board forks its next session's process ahead of the client, so that the slow move into a cgroup is
    not on the request's path: it waits, named ``farm-standby``, in a session cgroup of its own, and the next
    session runs in it. One killed meanwhile costs only that head start: the session is forked when it starts."""
    faulty = start(ONE_BOARD)
    daemon = faulty.board("k-0")
    require_cgroups(daemon)
    standby = wait_for(lambda: standby_of(daemon.pid), 10, "a standby session process")
    waiting_in = session_cgroups(standby)
    assert waiting_in and all(os.path.basename(path).startswith("session-") for path in waiting_in), waiting_in
    session = faulty.request("k")
    assert session.system_info()["pid"] == standby
    assert session_cgroups(standby) == waiting_in
    session.close()
    assert_farm_whole(faulty)
    second = wait_for(lambda: standby_of(daemon.pid), 10, "the next standby session process")
    assert second != standby
    os.kill(second, signal.SIGKILL)
    wait_for(lambda: not alive(second), 5, "the standby is gone")
    session = faulty.request("k")
    pid = session.system_info()["pid"]
    assert pid not in (standby, second) and session_cgroups(pid)
    session.close()
    assert_farm_whole(faulty)


# --- bounded resources ----------------------------------------------------------------------


def board_with(faulty: FaultFarm, *options: str) -> DaemonProcess:
    daemon = faulty.add_board("c", extra=list(options))
    require_cgroups(daemon)
    return daemon


@pytest.mark.board_servers("python", NATIVE_CHECKED)
def test_fork_bomb_is_bounded_by_the_process_limit(start: Callable[..., FaultFarm], library: Path) -> None:
    """A fork bomb (2^8 processes unbounded) stops at --session-processes; the session goes on, and when it
    ends everything it forked goes with it."""
    faulty = start(ONE_BOARD)
    daemon = board_with(faulty, "--session-processes", "32")
    session = faulty.request("c")
    session.upload(library)
    failed = session.load_module("libconfine.so").get_function("fork_bomb", "long fork_bomb(int)")(8)
    assert failed > 0, "every fork of the bomb succeeded"  # counted once every process of the bomb has forked
    running = len(faulty.strays())  # the session process and what the bomb forked
    assert running <= 32, running
    session.ping()
    session.close()
    assert_farm_whole(faulty)
    assert "the process limit of 32 refused" in daemon.log_text()


@pytest.mark.board_servers("python", NATIVE_CHECKED)
def test_open_files_flood_stops_at_the_limit(start: Callable[..., FaultFarm], library: Path) -> None:
    faulty = start(ONE_BOARD)
    faulty.add_board("c", extra=["--session-open-files", "64"])
    session = faulty.request("c")
    session.upload(library)
    opened = session.load_module("libconfine.so").get_function("open_many", "long open_many(long)")(5000)
    assert 0 < opened < 64, "opened %d files before EMFILE" % opened
    session.ping()
    session.close()
    assert_farm_whole(faulty)


@pytest.mark.board_servers("python", "native")
def test_memory_over_the_limit_ends_the_session(start: Callable[..., FaultFarm], library: Path) -> None:
    """A session that takes 512 MB on a board that allows 64: the kernel kills it, and the client is told why."""
    faulty = start(ONE_BOARD)
    board_with(faulty, "--session-memory", "64")
    session = faulty.request("c")
    session.upload(library)
    hog = session.load_module("libconfine.so").get_function("hog_memory", "long hog_memory(long)")
    with pytest.raises(farm.SessionLostError) as caught:
        hog(512)
    says = [
        r"session on board 'c' \(c-extra-0\) at 127\.0\.0\.1:%d ended: " % session.port,
        r"the session went over its memory limit of 64 MB \(--session-memory\): the kernel killed \d+ of its "
        r"processes, and the board's session process was killed by signal 9 \(SIGKILL\) while running "
        r"hog_memory\(\) from libconfine\.so",
    ]
    assert_farm_whole(faulty, caught.value, farm.SessionLostError, says)


@pytest.mark.board_servers("python", NATIVE_CHECKED)
def test_files_flood_is_stopped_by_the_files_quota(start: Callable[..., FaultFarm], library: Path) -> None:
    """A session that creates 20,000 empty files on a board that allows 1,000: the board ends it."""
    faulty = start(ONE_BOARD)
    faulty.add_board("c", extra=["--session-quota-files", "1000"])
    session = faulty.request("c", session_timeout=30)
    session.upload(library)
    module = session.load_module("libconfine.so")
    flood = module.get_function("make_files_and_pause", "long make_files_and_pause(long)")
    began = time.monotonic()
    with pytest.raises(farm.SessionLostError) as caught:
        flood(20000)
    assert time.monotonic() - began < 15
    says = [
        r"the session's directory holds more than its quota of 1000 files and directories; the board ended the "
        r"session while running make_files_and_pause\(\) from libconfine\.so"
    ]
    assert_farm_whole(faulty, caught.value, farm.SessionLostError, says)


@pytest.mark.board_servers("python", NATIVE_CHECKED)
@pytest.mark.parametrize(
    "asked, says",
    [
        pytest.param(30.0, MAXIMUM + r"asked for 30 s\)", id="longer"),
        pytest.param(None, MAXIMUM + r"asked for none\)", id="none"),
        pytest.param(1.0, r"the session timeout of 1 s", id="shorter"),
    ],
)  # fmt: skip
def test_session_time_is_bounded_by_the_board(
    start: Callable[..., FaultFarm], kernels: Dict[str, Path], asked: float, says: str
) -> None:
    """A client asks for a longer session than --max-session-time allows, or for none: the board ends it at its
    maximum, and says so; one that asks for less gets what it asked for."""
    faulty = start(ONE_BOARD)
    faulty.add_board("c", extra=["--max-session-time", "2"])
    session = faulty.request("c", session_timeout=asked)  # type: ignore[arg-type]
    session.upload(kernels["libfaults.so"])
    pause = session.load_module("libfaults.so").get_function("mark_and_pause", "void mark_and_pause(void)")
    began = time.monotonic()
    with pytest.raises(farm.SessionLostError) as caught:
        pause()
    assert time.monotonic() - began < 10
    expired = says + r" expired while running mark_and_pause\(\) from libfaults\.so; the board ended the session"
    assert_farm_whole(faulty, caught.value, farm.SessionLostError, [expired])
    assert caught.value.timed_out


# --- without cgroups ------------------------------------------------------------------------


def limits_of(pid: int) -> Dict[str, str]:
    """``{"Max processes": "16", ...}``: the soft limits of ``pid`` from /proc."""
    with open("/proc/%d/limits" % pid) as handle:
        return {line[:26].strip(): line[26:47].strip() for line in list(handle)[1:]}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory any user may write, outside the test's own (which only root may enter); removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="farm-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(str(path), ignore_errors=True)


@pytest.mark.board_servers("python", "native")
def test_a_board_that_is_not_root_falls_back_to_resource_limits(
    start: Callable[..., FaultFarm], library: Path, shared_dir: Path
) -> None:
    """A board run as an unprivileged user of its own, with no cgroup it may divide, says it confines sessions by
    resource limits only, and they hold: processes per user (RLIMIT_NPROC, 16 more than the user ran when the
    session started), private memory per process
    (RLIMIT_DATA: malloc fails, the session goes on), open files; everything goes at the end of the session."""
    if os.geteuid() != 0:
        pytest.skip("the test starts its board as another user, which needs root")
    faulty = start(ONE_BOARD)
    limits = ["--session-processes", "16", "--session-open-files", "64", "--session-memory", "64"]
    unprivileged = ["setpriv", "--reuid=%d" % LONE_UID, "--regid=%d" % LONE_UID, "--clear-groups"]
    daemon = faulty.add_board("c", prefix=unprivileged, extra=["--work-dir", str(shared_dir), *limits])
    assert "sessions are confined by resource limits only" in daemon.log_text()
    session = faulty.request("c")
    found = limits_of(session.system_info()["pid"])
    assert (found["Max open files"], found["Max core file size"]) == ("64", "0")
    assert 16 < int(found["Max processes"]) <= 16 + 5  # 16 more than the user ran then: the daemon, its spawner...
    assert found["Max data size"] == str(64 << 20)
    session.upload(library)
    module = session.load_module("libconfine.so")
    assert module.get_function("fork_bomb", "long fork_bomb(int)")(8) > 0
    assert len(faulty.strays()) <= 1 + 16  # the session process, and the 16 more it may start
    assert 0 < module.get_function("open_many", "long open_many(long)")(5000) < 64
    assert module.get_function("hog_memory", "long hog_memory(long)")(512) < 0  # malloc failed before 512 MB
    session.ping()
    session.close()
    assert_farm_whole(faulty)
    wait_for(lambda: not list(shared_dir.glob("session-*")), 5, "the session's directory is removed")


@pytest.mark.board_servers("python", "native")
def test_an_inventorys_limits_reach_its_boards(start: Callable[..., FaultFarm], kernels: Dict[str, Path]) -> None:
    """A board group's ``limits`` in the inventory become its boards' options: here its maximum session time."""
    faulty = start("tracker: {port: 0}\nboards:\n  - {key: k, limits: {max_session_time: 2, open_files: 100}}\n")
    assert "--max-session-time 2 --session-open-files 100" in " ".join(faulty.stack.boards[0].argv)
    session = faulty.request("k", session_timeout=30)
    session.upload(kernels["libfaults.so"])
    pause = session.load_module("libfaults.so").get_function("mark_and_pause", "void mark_and_pause(void)")
    with pytest.raises(farm.SessionLostError) as caught:
        pause()
    assert_farm_whole(faulty, caught.value, farm.SessionLostError, [MAXIMUM + r"asked for 30 s\) expired"])
