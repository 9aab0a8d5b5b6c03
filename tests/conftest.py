"""Fixtures shared by the tests: compiled kernels, real board server processes, bare board Pythons."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy  # noqa: F401  (see below)
import pytest
from farm_certs import TlsFiles, make_tls_files

import farm
from farm.ops.processes import DaemonProcess, start_board
from farm.ops.toolchain import compile_shared

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


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so would every
    process it starts; the tests that press Ctrl-C need it delivered. Caught here, SIGINT is the default again in
    every program this process (and each xdist worker) starts, since exec resets a caught signal."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
def board_factory(tmp_path: Path) -> Iterator[BoardFactory]:
    """Start board server processes for one test; all are stopped at teardown.

    ``board_factory(key="k", extra=["--max-message-size", "1024"], python=..., env=..., cwd=...)``
    """
    started: List[DaemonProcess] = []

    def start(key: str = "test", **kwargs: object) -> DaemonProcess:
        log = tmp_path / ("board-%d.log" % len(started))
        kwargs.setdefault("env", python_env())
        daemon = start_board(str(log), key=key, **kwargs)  # type: ignore[arg-type]
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="module")
def shared_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One board server for a whole test module; each test opens its own session on it."""
    log = tmp_path_factory.mktemp("board") / "board.log"
    daemon = start_board(str(log), key="test", env=python_env())
    yield daemon
    daemon.stop()


@pytest.fixture
def remote(shared_board: DaemonProcess) -> Iterator[farm.RemoteSession]:
    """A session on the module's board, closed after the test."""
    host, port = shared_board.address
    with farm.connect(host, port, key="test") as session:
        yield session


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
