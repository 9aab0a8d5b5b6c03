"""The board runs on the standard library alone, and on Python 3.8.

Boards here start with ``python -S`` from a directory holding nothing but a copy of the
``farm`` package, with an environment that names no site-packages, so numpy, cloudpickle
and this checkout's installed copy are all out of reach of the board.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest
from farm_certs import TlsFiles

import farm
from conftest import bare_env, python_version, run_bare
from farm.net.tls import TlsConfig
from farm.ops.processes import DaemonProcess

PROJECT = Path(__file__).resolve().parents[2]
KEY = "bare"
VADD_SIG = "void vadd(const float *a, const float *b, float *c, int64_t n)"
BOARD_MODULES_SCRIPT = (
    "import json, sys, farm.server\n"
    "names = sorted(n for n in sys.modules if n == 'farm' or n.startswith('farm.'))\n"
    "print(json.dumps([sys.modules[n].__file__ for n in names]))\n"
)


# --- the bare environment ------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only a copy of the ``farm`` package."""
    root = tmp_path_factory.mktemp("bare-board")
    shutil.copytree(PROJECT / "farm", root / "farm", ignore=shutil.ignore_patterns("__pycache__"))
    assert os.listdir(root) == ["farm"]
    return root


def start_bare_board(
    board_factory: Callable[..., DaemonProcess], bare_root: Path, interpreter: str, tmp_path: Path, **env: str
) -> DaemonProcess:
    """``INTERPRETER -S -m farm.server`` run from ``bare_root`` (board_factory runs ``PYTHON -m farm.server``),
    with ``env`` on top of the bare environment."""
    wrapper = tmp_path / "python-without-site"
    wrapper.write_text('#!/bin/sh\nexec %s -S "$@"\n' % shlex.quote(interpreter))
    wrapper.chmod(0o755)
    return board_factory(key=KEY, python=str(wrapper), env=dict(bare_env(bare_root), **env), cwd=str(bare_root))


@pytest.fixture
def bare_board(
    board_factory: Callable[..., DaemonProcess], bare_root: Path, interpreter: str, tmp_path: Path
) -> DaemonProcess:
    return start_bare_board(board_factory, bare_root, interpreter, tmp_path)


def proc_text(pid: int, name: str) -> str:
    with open("/proc/%d/%s" % (pid, name), "rb") as handle:
        return handle.read().replace(b"\0", b"\n").decode("utf-8", "replace")


# --- tests ------------------------------------------------------------------------------


def test_numpy_is_out_of_reach_of_the_bare_copy(bare_root: Path) -> None:
    no_numpy = run_bare(bare_root, sys.executable, "-c", "import numpy")
    assert no_numpy.returncode != 0
    assert "ModuleNotFoundError" in no_numpy.stderr and "numpy" in no_numpy.stderr, no_numpy.stderr
    no_cloudpickle = run_bare(bare_root, sys.executable, "-c", "import cloudpickle")
    assert no_cloudpickle.returncode != 0 and "ModuleNotFoundError" in no_cloudpickle.stderr
    copy = run_bare(bare_root, sys.executable, "-c", "import farm.server; print(farm.server.__file__)")
    assert copy.returncode == 0, copy.stderr
    assert Path(copy.stdout.strip()) == bare_root / "farm" / "server.py"


def test_bare_board_runs_vadd(bare_board: DaemonProcess, interpreter: str, kernels: dict, bare_root: Path) -> None:
    daemon_argv = proc_text(bare_board.pid, "cmdline").split("\n")
    assert daemon_argv[1:4] == ["-S", "-m", "farm.server"], daemon_argv
    assert os.path.realpath("/proc/%d/cwd" % bare_board.pid) == os.path.realpath(bare_root)
    daemon_env = proc_text(bare_board.pid, "environ")
    assert "PYTHONPATH=%s\n" % bare_root in daemon_env + "\n"
    assert "site-packages" not in daemon_env

    x = np.linspace(-4, 4, 1001, dtype=np.float32)
    y = np.cos(x).astype(np.float32)
    with farm.connect(*bare_board.address, key=KEY) as session:
        info = session.system_info()
        expected = python_version(interpreter, bare_root)
        assert expected and info["python"].startswith(expected + ".")
        session.upload(kernels["libvadd.so"])
        vadd = session.load_module("libvadd.so").get_function("vadd", VADD_SIG)
        a, b = session.array(x), session.array(y)
        c = session.empty(x.shape, "float32")
        vadd(a, b, c, x.size)
        np.testing.assert_array_equal(c.numpy(), x + y)
        for pid in (bare_board.pid, info["pid"]):  # nothing from site-packages is mapped in the board
            assert "site-packages" not in proc_text(pid, "maps")


def test_run_on_a_bare_board_needs_cloudpickle(bare_board: DaemonProcess) -> None:
    with farm.connect(*bare_board.address, key=KEY) as session:
        with pytest.raises(farm.RemoteError) as caught:
            session.run(os.getpid)
        assert not isinstance(caught.value, farm.SessionLostError)
        assert "cloudpickle" in str(caught.value)
        assert "needs cloudpickle on the board" in str(caught.value)
        session.ping()  # the session stays usable


def test_bare_board_survives_a_segfault(bare_board: DaemonProcess, kernels: dict) -> None:
    with farm.connect(*bare_board.address, key=KEY) as session:
        session.upload(kernels["libmisbehave.so"])
        segfault = session.load_module("libmisbehave.so").get_function("segfault", "void segfault(void)")
        with pytest.raises(farm.SessionLostError) as caught:
            segfault()
    assert caught.value.signal == signal.SIGSEGV and "SIGSEGV" in str(caught.value)
    assert bare_board.process.poll() is None
    with farm.connect(*bare_board.address, key=KEY) as session:
        session.ping()


def test_bare_board_speaks_tls(
    board_factory: Callable[..., DaemonProcess],
    bare_root: Path,
    interpreter: str,
    tmp_path: Path,
    tls_files: TlsFiles,
    kernels: dict,
) -> None:
    """The board's TLS is the standard library's too, on Python 3.8 as well; the session's bytes go through the
    daemon's relay."""
    board = start_bare_board(board_factory, bare_root, interpreter, tmp_path, **tls_files.daemon().as_env())
    x = np.arange(100_000, dtype=np.float32)
    with farm.connect(*board.address, key=KEY, tls=tls_files.client()) as session:
        assert session._conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        session.upload(kernels["libvadd.so"])
        vadd = session.load_module("libvadd.so").get_function("vadd", VADD_SIG)
        c = session.empty(x.shape, "float32")
        vadd(session.array(x), session.array(x), c, x.size)
        np.testing.assert_array_equal(c.numpy(), 2 * x)
    with pytest.raises(farm.HandshakeError):
        farm.connect(*board.address, key=KEY, tls=TlsConfig())


def test_a_board_without_tls_does_not_load_ssl(bare_root: Path) -> None:
    """TLS costs nothing to a board that does not use it: ``ssl`` is imported only when TLS is on."""
    result = run_bare(bare_root, sys.executable, "-c", "import sys, farm.server; print('ssl' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def board_side_modules(root: Path) -> List[str]:
    """The files of every ``farm`` module that ``import farm.server`` loads, relative to ``root``."""
    result = run_bare(root, sys.executable, "-c", BOARD_MODULES_SCRIPT)
    assert result.returncode == 0, result.stderr
    return sorted(Path(path).resolve().relative_to(root.resolve()).as_posix() for path in json.loads(result.stdout))


def test_board_side_modules_are_python38_compatible(bare_root: Path) -> None:
    modules = board_side_modules(bare_root)
    for needed in ("farm/board/daemon.py", "farm/board/session.py", "farm/protocol/framing.py"):
        assert needed in modules, modules
    assert "farm/client/session.py" not in modules, modules
    vermin = Path(sys.executable).with_name("vermin")
    command = [str(vermin) if vermin.exists() else shutil.which("vermin") or "vermin"]
    command += ["--no-tips", "--violations", "-t=3.8-", *(str(bare_root / module) for module in modules)]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert result.returncode == 0, "vermin found code that needs more than Python 3.8:\n" + result.stdout
