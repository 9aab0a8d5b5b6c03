"""The packed board server: one zipapp that a Python with nothing but its standard library runs.

Each board here is ``INTERPRETER -S -I farm-server.pyz ...`` started in an empty directory
with an environment that names no site-packages, so the archive is all it has of ``farm``
and cloudpickle.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import numpy as np
import pytest

import farm
from conftest import PROJECT, bare_env, python_env, run_bare
from farm.ops.cli import main as farm_main
from farm.ops.pack import INTERPRETER, ZIP_EPOCH, pack_server
from farm.ops.processes import DaemonProcess

KEY = "packed"
VADD_SIG = "void vadd(const float *a, const float *b, float *c, int64_t n)"
HOST_ONLY = (
    "farm/client/session.py",
    "farm/ops/launcher.py",
    "farm/ops/inventory.py",
    "farm/ops/toolchain.py",
    "farm/ops/cli.py",
)
REGISTERED = re.compile(r"registered with the tracker at")

Start = Callable[..., DaemonProcess]


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packed server, with cloudpickle."""
    return Path(pack_server(str(tmp_path_factory.mktemp("pack") / "farm-server.pyz")))


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Start]:
    """``start(argv, env, cwd=None)``: a daemon logging to the test's directory; all are stopped at teardown."""
    started: List[DaemonProcess] = []

    def start(argv: List[str], env: Dict[str, str], cwd: Path = PROJECT) -> DaemonProcess:
        daemon = DaemonProcess(argv, str(tmp_path / ("daemon-%d.log" % len(started))), env, str(cwd))
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "board"
    directory.mkdir()
    return directory


def start_packed(start: Start, interpreter: str, pyz: Path, cwd: Path, *extra: str) -> DaemonProcess:
    """``INTERPRETER -S -I PYZ --key KEY --port 0 EXTRA...`` in ``cwd``, once it listens."""
    argv = [interpreter, "-S", "-I", str(pyz), "--host", "127.0.0.1", "--port", "0", "--key", KEY, *extra]
    board = start(argv, bare_env(cwd), cwd)
    board.wait_for_bind()
    return board


def check_vadd(session: farm.RemoteSession, kernels: dict) -> None:
    """Upload libvadd.so, call it on the board and compare with numpy."""
    session.upload(kernels["libvadd.so"])
    vadd = session.load_module("libvadd.so").get_function("vadd", VADD_SIG)
    x = np.linspace(-3, 3, 513, dtype=np.float32)
    a, b, c = session.array(x), session.array(x * 2), session.empty(x.shape, "float32")
    vadd(a, b, c, x.size)
    np.testing.assert_array_equal(c.numpy(), x + x * 2)


# --- the archive -------------------------------------------------------------------------


def test_archive_holds_the_board_side_modules_and_cloudpickle(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        for name in names:
            assert name == "__main__.py" or name.startswith(("farm/", "cloudpickle/")), name
            assert archive.getinfo(name).date_time == ZIP_EPOCH
            if name.startswith("farm/"):
                assert archive.read(name) == (PROJECT / name).read_bytes(), name
    for needed in (
        "__main__.py",
        "farm/__init__.py",
        "farm/board/daemon.py",
        "farm/board/session.py",
        "cloudpickle/__init__.py",
    ):
        assert needed in names, names
    protocol = sorted("farm/protocol/" + path.name for path in (PROJECT / "farm" / "protocol").glob("*.py"))
    assert [name for name in names if name.startswith("farm/protocol/")] == protocol
    for host_only in HOST_ONLY:
        assert host_only not in names
    assert not [name for name in names if name.split("/")[0] in ("numpy", "yaml")], names
    assert pyz.read_bytes().startswith(("#!%s\n" % INTERPRETER).encode())
    assert pyz.stat().st_mode & stat.S_IXUSR


def test_packing_is_deterministic(pyz: Path, tmp_path: Path) -> None:
    again = pack_server(str(tmp_path / "again.pyz"))
    assert Path(again).read_bytes() == pyz.read_bytes()


def test_cli_packs_without_cloudpickle(pyz: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "lean.pyz"
    assert farm_main(["pack-server", "-o", str(output), "--no-cloudpickle"]) == 0
    assert capsys.readouterr().out == "%s (%d bytes)\n" % (output, output.stat().st_size)
    with zipfile.ZipFile(pyz) as full, zipfile.ZipFile(output) as lean:
        assert lean.namelist() == [name for name in full.namelist() if not name.startswith("cloudpickle/")]


# --- boards running it ------------------------------------------------------------------


def test_the_bare_python_has_neither_farm_nor_cloudpickle(interpreter: str, empty_dir: Path) -> None:
    for module in ("farm", "cloudpickle", "numpy"):
        result = run_bare(empty_dir, interpreter, "-I", "-c", "import " + module)
        assert "ModuleNotFoundError" in result.stderr, (module, result.stderr)


def test_packed_board_runs_a_kernel_and_python(
    daemons: Start, interpreter: str, pyz: Path, empty_dir: Path, kernels: dict
) -> None:
    board = start_packed(daemons, interpreter, pyz, empty_dir)
    with farm.connect(*board.address, key=KEY) as session:
        info = session.system_info()
        assert info["key"] == KEY
        check_vadd(session, kernels)
        assert session.run(os.getpid) == info["pid"]  # cloudpickle from the archive unpickles it


def test_run_sends_functions_by_value(daemons: Start, pyz: Path, empty_dir: Path) -> None:
    def where_python_finds_things() -> Dict[str, object]:  # defined here, so cloudpickle sends it by value
        return {"path": list(sys.path), "cloudpickle": sys.modules["cloudpickle"].__file__}

    board = start_packed(daemons, sys.executable, pyz, empty_dir)
    with farm.connect(*board.address, key=KEY) as session:
        found = session.run(where_python_finds_things)
    assert found["path"][0] == str(pyz)
    assert not [entry for entry in found["path"] if "site-packages" in entry or "dist-packages" in entry]
    assert found["cloudpickle"] == str(pyz / "cloudpickle" / "__init__.py")


def test_packed_board_serves_through_a_tracker(
    daemons: Start, interpreter: str, pyz: Path, empty_dir: Path, kernels: dict
) -> None:
    tracker = daemons([sys.executable, "-m", "farm.tracker", "--host", "127.0.0.1", "--port", "0"], python_env())
    host, port = tracker.wait_for_bind()
    board = start_packed(daemons, interpreter, pyz, empty_dir, "--tracker", "%s:%d" % (host, port))
    board.wait_for_log(REGISTERED)  # the tracker took its connection; its offer may still be on the way
    with farm.connect_tracker(host, port) as client, client.request(KEY, wait=30, wait_for_key=True) as session:
        assert session.system_info()["key"] == KEY
        check_vadd(session, kernels)
        session.run(os.getpid)
