"""Fixtures shared by the tests: compiled kernels, real board server processes, bare board Pythons."""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy  # noqa: F401  (see below)
import pytest
from farm_certs import TlsFiles, make_tls_files

import farm
from farm.board.spawner import STANDBY_NAME
from farm.client import callpath
from farm.ops.emulators import EmulatorError, python_command
from farm.ops.native import host_server
from farm.ops.processes import DaemonProcess, start_board
from farm.ops.targets import EMULATED
from farm.ops.toolchain import BuildError, compile_shared

TESTS = Path(__file__).resolve().parent
PROJECT = TESTS.parent
KERNEL_SOURCES = {
    "libvadd.so": [PROJECT / "farm" / "ops" / "kernels" / "vadd.c"],
    "liblinalg.so": [TESTS / "kernels" / "linalg.c"],
    "libmisbehave.so": [TESTS / "kernels" / "misbehave.c"],
    "libfaults.so": [TESTS / "kernels" / "faults.c"],
    "libtimed.so": [TESTS / "kernels" / "timed.c"],
}
#: The benchmark and attack scripts' smoke tests: each runs a script end to end, all of them slow.
BENCHMARK_SMOKE_TESTS = TESTS / "benchmarks"


#: The board servers a test marked ``board_servers(...)`` runs against: the Python board, the native one (C), and
#: the native one built with AddressSanitizer and UBSan (on x86_64; elsewhere the sanitized run is not made).
NATIVE_SERVERS = ("native", "native-asan") if platform.machine() == "x86_64" else ("native",)
BOARD_SERVERS = ("python", *NATIVE_SERVERS)
#: Any report of the sanitizers is fatal: the process aborts, and the log is checked when the board stops. The
#: signals of code that crashes on purpose (the tests' misbehaving kernels) are left to the board to report. Freed
#: memory waits in a quarantine of 8 MB (not 256), so that a daemon's resident memory still tells a leak.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "halt_on_error=1:abort_on_error=1:detect_leaks=1:handle_segv=0:handle_sigbus=0:handle_sigfpe=0:"
    "handle_sigill=0:handle_abort=0:quarantine_size_mb=8",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}
SANITIZER_REPORT = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: UndefinedBehaviorSanitizer")
#: The native build the board tests run: the sanitized one where it is made (it is the plain build's code, at the
#: same optimisation, with every report fatal); the plain build runs tests/integration/test_native_board.py, the
#: example suite on native boards of every architecture, and the benchmarks.
NATIVE_CHECKED = NATIVE_SERVERS[-1]
#: Marks a test (or with ``pytestmark``, a module) to run against both board servers: Python's and the native one.
every_board_server = pytest.mark.board_servers("python", NATIVE_CHECKED)
#: Marks a test (or a module) to run on the Python board alone: it needs what only that board has.
python_board_only = pytest.mark.board_servers("python")


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so would every
    process it starts; the tests that press Ctrl-C need it delivered. Caught here, SIGINT is the default again in
    every program this process (and each xdist worker) starts, since exec resets a caught signal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``board_servers`` runs once per board server its fixtures start; others on the Python board."""
    marker = metafunc.definition.get_closest_marker("board_servers")
    if marker is None or "board_server" not in metafunc.fixturenames:
        return
    names = [name for name in marker.args if name in BOARD_SERVERS]
    metafunc.parametrize("board_server", names, indirect=True, scope="module")


class BoardServer(NamedTuple):
    """Which board server the fixtures start: ``program`` is the native daemon's executable (None: Python's)."""

    name: str
    program: Optional[str] = None
    env: Dict[str, str] = {}

    @property
    def native(self) -> bool:
        return self.program is not None

    def start_options(self) -> Dict[str, Any]:
        """What :func:`farm.ops.processes.start_board` takes to start it."""
        return {"server": "native" if self.native else "python", "program": self.program}


def check_sanitizer_log(daemon: DaemonProcess) -> None:
    """Fail if a sanitizer reported anything in a board's log (its session processes write there too)."""
    assert SANITIZER_REPORT.search(daemon.log_text()) is None, "sanitizers reported:\n%s" % daemon.log_text()[-6000:]


@pytest.fixture(scope="session")
def native_builds() -> Dict[bool, str]:
    """The native daemon's executables built in this test session, by whether they are sanitized."""
    return {}


def board_server_named(name: str, native_builds: Dict[bool, str]) -> BoardServer:
    """The board server ``name`` (one of BOARD_SERVERS); the native one is built once per test session.

    A machine without a C compiler or libffi fails the tests that need it, saying so: they never skip.
    """
    if name == "python":
        return BoardServer(name)
    sanitize = name == "native-asan"
    if sanitize not in native_builds:
        try:
            native_builds[sanitize] = host_server(sanitize)
        except BuildError as exc:
            pytest.fail("the native board server cannot be built on this machine: %s" % exc)
    return BoardServer(name, native_builds[sanitize], SANITIZER_ENV if sanitize else {})


@pytest.fixture(scope="module")
def board_server(request: pytest.FixtureRequest, native_builds: Dict[bool, str]) -> BoardServer:
    """The board server this module's boards run (see the ``board_servers`` marker; default: Python's)."""
    return board_server_named(getattr(request, "param", "python"), native_builds)


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    for item in items:
        if BENCHMARK_SMOKE_TESTS in item.path.parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Shared libraries built from tests/kernels with the system C compiler: name -> path."""
    out = tmp_path_factory.mktemp("kernels")
    return {name: Path(compile_shared(sources, out / name)) for name, sources in KERNEL_SOURCES.items()}


#: The system's temporary directory, whatever a test later sets TMPDIR to.
SYSTEM_TEMP = tempfile.gettempdir()


@contextlib.contextmanager
def reachable_temp(prefix: str = "remotedev-test-") -> Iterator[Path]:
    """A new directory that board sessions can reach, removed afterwards: for boards' work directories and TMPDIR.

    A board daemon started as root (as the tests are) runs sessions as nobody, who cannot enter pytest's
    ``tmp_path`` (its ancestors are private to root), so a board's work directory must lie elsewhere.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=SYSTEM_TEMP))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def base_temp_fixed_first(tmp_path_factory: pytest.TempPathFactory) -> None:
    """pytest finds its base temporary directory from TMPDIR the first time it is asked (unless xdist set it): ask
    before any test points TMPDIR at a directory of its own, which is gone by the time the next test asks."""
    tmp_path_factory.getbasetemp()


@pytest.fixture(params=["compiled", "python"])
def client_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The client's call path for the functions a test looks up after it: the compiled one (which must be built:
    the test fails, never skips, without it) or the pure-Python one."""
    if request.param == "compiled":
        assert callpath.available(), "the compiled call path (farm.client._callpath) is not built"
    else:
        monkeypatch.setenv(callpath.ENV, "0")
    return str(request.param)


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """:func:`reachable_temp` for one test."""
    with reachable_temp() as path:
        yield path


@pytest.fixture
def drop_box(reachable_tmp: Path) -> Path:
    """A directory board sessions (run as nobody) may write to: where a session leaves a sign for the test."""
    path = reachable_tmp / "drop-box"
    path.mkdir()
    path.chmod(0o777)
    return path


BoardFactory = Callable[..., DaemonProcess]


@pytest.fixture
def board_factory(tmp_path: Path, board_server: BoardServer) -> Iterator[BoardFactory]:
    """Start board server processes (of ``board_server``) for one test; all are stopped at teardown.

    ``board_factory(key="k", extra=["--max-message-size", "1024"], python=..., env=..., cwd=...)``
    """
    started: List[DaemonProcess] = []

    def start(key: str = "test", **kwargs: Any) -> DaemonProcess:
        log = tmp_path / ("board-%d.log" % len(started))
        kwargs["env"] = {**(kwargs.get("env") or python_env()), **board_server.env}
        daemon = start_board(str(log), key=key, **{**board_server.start_options(), **kwargs})
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
    for daemon in started:
        check_sanitizer_log(daemon)


@pytest.fixture(scope="module")
def shared_board(tmp_path_factory: pytest.TempPathFactory, board_server: BoardServer) -> Iterator[DaemonProcess]:
    """One board server for a whole test module; each test opens its own session on it."""
    log = tmp_path_factory.mktemp("board") / "board.log"
    daemon = start_board(str(log), key="test", env=python_env(**board_server.env), **board_server.start_options())
    yield daemon
    daemon.stop()
    check_sanitizer_log(daemon)


@pytest.fixture
def remote(shared_board: DaemonProcess) -> Iterator[farm.RemoteSession]:
    """A session on the module's board, closed after the test."""
    host, port = shared_board.address
    with farm.connect(host, port, key="test") as session:
        yield session


def require_emulators(what: str) -> None:
    """Fail, saying so, unless the emulators are installed (``farm emulators install``): ``what`` needs them."""
    for arch in EMULATED:
        try:
            python_command(arch)
        except EmulatorError as exc:
            pytest.fail("%s need the emulators: %s" % (what, exc), pytrace=False)


def python_env(**extra: str) -> Dict[str, str]:
    """The environment for a child Python that imports this checkout's ``farm``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %g s waiting until %s" % (timeout, what))
        time.sleep(0.02)


def in_thread(function: Callable[[], Any], timeout: float, what: str) -> Any:
    """``function()`` in a daemon thread: its result, or its exception raised here; fail after ``timeout`` s.

    A call that never returns stays blocked until the fixtures stop the processes it talks to.
    """
    outcome: Dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = function()
        except BaseException as exc:  # handed to the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail("%s did not return within %g s" % (what, timeout))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the peer sends until it closes; fails if it stays open for ``timeout`` seconds."""
    sock.settimeout(timeout)
    received = bytearray()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail("the board kept the connection open for %g s" % timeout)
    finally:
        sock.close()
    return bytes(received)


# --- bare board Pythons: the standard library alone -------------------------------


def bare_env(root: Path) -> Dict[str, str]:
    """PATH, HOME and LANG from here, and PYTHONPATH naming only ``root``: no site-packages."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", str(root)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PYTHONPATH": str(root),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    assert not any("site-packages" in value or "dist-packages" in value for value in env.values()), env
    return env


def run_bare(root: Path, interpreter: str, *args: str) -> subprocess.CompletedProcess:
    """``INTERPRETER -S ARGS...`` in ``root`` with :func:`bare_env`, output captured."""
    return subprocess.run(
        [interpreter, "-S", *args],
        env=bare_env(root),
        cwd=str(root),
        capture_output=True,
        text=True,
        timeout=60,
    )


def python_version(interpreter: str, root: Path) -> Optional[str]:
    """``"3.8"`` and the like for a working interpreter, else None."""
    try:
        result = run_bare(root, interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


#: Names the Python 3.8 that bare boards run; the tests that need one fail, not skip, when it does not work.
PYTHON38_ENV = "REMOTEDEV_PYTHON38"


def find_python38(root: Path) -> Optional[str]:
    """A Python 3.8 interpreter: ``python3.8`` on PATH, else one under ~/.pyenv/versions/3.8*."""
    candidates: List[str] = []
    on_path = shutil.which("python3.8")
    if on_path:
        candidates.append(on_path)
    pattern = str(Path.home() / ".pyenv" / "versions" / "3.8*" / "bin" / "python3.8")
    candidates += sorted(glob.glob(pattern), reverse=True)
    for candidate in candidates:  # a pyenv shim is on PATH even when it cannot run 3.8
        if python_version(candidate, root) == "3.8":
            return candidate
    return None


@pytest.fixture(scope="module", params=["this-python", "python3.8"])
def interpreter(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Python a bare board runs: this one, and a Python 3.8 (skipped when there is none, unless
    ``$REMOTEDEV_PYTHON38`` names the one to use: CI sets it, so that these tests cannot skip there)."""
    if request.param == "this-python":
        return sys.executable
    probe = tmp_path_factory.mktemp("probe")
    named = os.environ.get(PYTHON38_ENV)
    if named:
        assert python_version(named, probe) == "3.8", "$%s=%s does not run Python 3.8" % (PYTHON38_ENV, named)
        return named
    found = find_python38(probe)
    if found is None:
        pytest.skip("no Python 3.8 interpreter was found (python3.8 on PATH or ~/.pyenv/versions/3.8*)")
    return found


def fd_count(pid: int) -> int:
    """Open file descriptors of the process."""
    return len(os.listdir("/proc/%d/fd" % pid))


def rss(pid: int) -> int:
    """Resident memory of the process in bytes (VmRSS)."""
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS for process %d" % pid)


def process_name(pid: int) -> str:
    """The name ``ps`` shows for ``pid`` (``/proc/PID/comm``); "" if it is gone."""
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().rstrip("\n")
    except OSError:
        return ""


def parent_and_start(pid: int) -> Tuple[int, int]:
    """The parent pid and the start time (clock ticks since boot) of ``pid``; (0, 0) if it is gone."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # the command may hold spaces and parentheses
    except OSError:
        return 0, 0
    return int(fields[1]), int(fields[19])


def parent_of(pid: int) -> int:
    """The parent pid of ``pid``; 0 if it is gone."""
    return parent_and_start(pid)[0]


def standby_of(daemon: int) -> Optional[int]:
    """The standby session process of board daemon ``daemon`` (a child of its spawner, named ``farm-standby``:
    the next session's process, forked ahead of it), or None."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        parent = parent_of(int(entry))
        if parent and process_name(int(entry)) == STANDBY_NAME and parent_of(parent) == daemon:
            return int(entry)
    return None


def processes_with_env(name: str, value: str) -> Dict[int, str]:
    """Live processes whose environment has ``NAME=VALUE``: pid -> command line.

    A test tags what it starts with a unique value in the environment, which
    every child inherits, and finds whatever is left with this. Processes
    this user cannot read are left out, and so are zombies (their environment
    reads empty). Self-contained, so a test can copy its source into an inner
    run's conftest.
    """
    import os

    needle = ("%s=%s" % (name, value)).encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                environ = handle.read().split(b"\0")
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if needle in environ:
            found[int(entry)] = cmdline
    return found


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A farm CA, the farm's certificate (127.0.0.1, localhost, farm.test) and key, and a stranger CA's."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))
