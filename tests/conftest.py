"""Fixtures shared by the tests: compiled kernels and real board server processes."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

import farm
from farm.processes import DaemonProcess, start_board
from farm.toolchain import compile_shared

TESTS = Path(__file__).resolve().parent
PROJECT = TESTS.parent
KERNEL_SOURCES = {
    "libvadd.so": [PROJECT / "farm" / "kernels" / "vadd.c"],
    "liblinalg.so": [TESTS / "kernels" / "linalg.c"],
    "libmisbehave.so": [TESTS / "kernels" / "misbehave.c"],
}


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Shared libraries built from tests/kernels with the system C compiler: name -> path."""
    out = tmp_path_factory.mktemp("kernels")
    return {name: Path(compile_shared(sources, out / name)) for name, sources in KERNEL_SOURCES.items()}


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
