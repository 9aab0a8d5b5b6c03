"""``farm emulators`` with the real apt-get, dpkg-deb, qemu-user and cross compilers.

The sysroots are downloaded from the system's apt sources into temporary directories
(about 15 MB per architecture); the tests that need root or user ``nobody`` run as root
and switch to ``nobody`` with setpriv.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import filelock
import pytest

from conftest import python_env, wait_for
from farm.board.elf import elf_machine
from farm.ops import emulators
from farm.ops.targets import EMULATED, TARGETS
from farm.ops.toolchain import compile_shared

#: Each test runs code under qemu-user or a whole example suite: seconds to minutes.
pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
NOBODY = 65534
AS_NOBODY = [shutil.which("setpriv") or "setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]
MACHINES = {"aarch64": "aarch64", "armhf": "armv7l"}
POINTER_BITS = {"aarch64": 64, "armhf": 32}
INSTALL_TIMEOUT = 120
LIBRARY_SOURCE = """
int add(int a, int b) { return a + b; }
int pointer_bits(void) { return (int)(8 * sizeof(void *)); }
"""
CALL_LIBRARY = "import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); print(lib.add(40, 2), lib.pointer_bits())"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both emulated architectures installed into one temporary directory for the whole module."""
    directory = tmp_path_factory.mktemp("emulators")
    sysroots = emulators.install(EMULATED, str(directory))
    assert sysroots == {arch: str(directory / arch) for arch in EMULATED}
    return directory


def farm_emulators(
    *args: str,
    python: str = sys.executable,
    env: Optional[Dict[str, str]] = None,
    user: Sequence[str] = (),
    cwd: Optional[str] = None,
) -> subprocess.CompletedProcess:
    """Run ``farm emulators ARGS`` (as ``user``, e.g. AS_NOBODY) and return what it did."""
    command = [*user, python, "-m", "farm", "emulators", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=env or python_env(), cwd=cwd, timeout=INSTALL_TIMEOUT
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a failed command (exit code 2)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("farm emulators: error: "), result.stderr
    return lines[0]


def bin_dir(path: Path, commands: List[str]) -> str:
    """A directory holding links to ``commands`` only, to use as PATH."""
    path.mkdir()
    for command in commands:
        found = shutil.which(command)
        assert found, command
        (path / command).symlink_to(found)
    return str(path)


def host_tools() -> List[str]:
    return [command for arch in EMULATED for command in (TARGETS[arch].qemu, TARGETS[arch].compiler)]


# --- installing and running -----------------------------------------------------------------


def test_install_unpacks_each_target_python(installed: Path) -> None:
    report = emulators.status(str(installed))
    for arch in EMULATED:
        info = report[arch]
        assert info["installed"] and info["sysroot"] == str(installed / arch)
        assert info["python_version"].startswith("3."), info
        major_minor = ".".join(info["python_version"].split(".")[:2])
        assert info["python"] == str(installed / arch / "usr" / "bin" / ("python" + major_minor))
        assert info["qemu"] == shutil.which(TARGETS[arch].qemu)
        assert info["compiler"] == shutil.which(TARGETS[arch].compiler)
        command = emulators.python_command(arch, str(installed))
        assert command == [info["qemu"], "-L", info["sysroot"], info["python"]]
        assert elf_machine(info["python"]) == TARGETS[arch].elf
        library = installed / arch / "usr" / "lib" / ("python" + major_minor)
        tag = "cpython-%s" % major_minor.replace(".", "")
        for module in ("socket", "selectors", "json/__init__", "ctypes/__init__"):  # what a board imports
            source = library / (module + ".py")
            compiled = source.parent / "__pycache__" / ("%s.%s.pyc" % (source.stem, tag))
            assert compiled.is_file(), "%s was not byte-compiled at install" % source
    assert not list(installed.glob(".*.partial-*")), "install left its temporary directories"


def test_the_target_python_uses_the_bytecode_compiled_at_install(installed: Path) -> None:
    for arch in EMULATED:
        command = emulators.python_command(arch, str(installed))
        env = dict(python_env(), PYTHONDONTWRITEBYTECODE="1", PYTHONVERBOSE="1")
        result = subprocess.run([*command, "-c", "import json"], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert re.search(r"__pycache__/__init__\.cpython-\d+\.pyc matches .*/json/__init__\.py", result.stderr), arch


@pytest.mark.parametrize("same", [True, False], ids=["host-compiles", "target-compiles"])
def test_the_standard_library_is_compiled_by_the_host_only_for_the_same_bytecode(
    installed: Path, same: bool, caplog: pytest.LogCaptureFixture
) -> None:
    target, root = TARGETS["armhf"], installed / "armhf"
    python = emulators.status(str(installed))["armhf"]["python"]
    compiled = next((root / "usr" / "lib" / Path(python).name / "json" / "__pycache__").glob("scanner.*.pyc"))
    compiled.unlink()
    magic = importlib.util.MAGIC_NUMBER.hex() if same else "00000000"
    with caplog.at_level(logging.INFO, logger="farm.emulators"):
        emulators._compile_stdlib(target, str(root), str(Path(python).relative_to(root)), magic)
    assert compiled.is_file()
    expected = "this host's Python" if same else "its own Python under " + target.qemu
    assert caplog.messages[-1].split(" with ")[-1].startswith(expected), caplog.messages


@pytest.mark.parametrize("arch", EMULATED)
def test_emulated_python_calls_a_cross_compiled_library(installed: Path, arch: str, tmp_path: Path) -> None:
    source = tmp_path / "add.c"
    source.write_text(LIBRARY_SOURCE)
    library = compile_shared([source], tmp_path / "libadd.so", compiler=TARGETS[arch].compiler)
    assert elf_machine(library) == TARGETS[arch].elf
    command = emulators.python_command(arch, str(installed))
    script = "import platform; print(platform.machine()); " + CALL_LIBRARY
    result = subprocess.run([*command, "-c", script, library], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == [MACHINES[arch], "42 %d" % POINTER_BITS[arch], ""]


def test_python_subcommand_runs_the_target_python(installed: Path) -> None:
    code = "import platform, sys; print(platform.machine(), sys.argv[1:])"
    result = farm_emulators("python", "--dir", str(installed), "armhf", "--", "-c", code, "a", "-b")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "armv7l ['a', '-b']\n"


def test_status_command(installed: Path, tmp_path: Path) -> None:
    result = farm_emulators("status", "--dir", str(installed))
    assert result.returncode == 0, result.stderr
    for arch in EMULATED:
        assert "%s: installed, Python 3." % arch in result.stdout
        assert "  qemu:     %s\n" % shutil.which(TARGETS[arch].qemu) in result.stdout
    empty = farm_emulators("status", "--dir", str(tmp_path))
    assert empty.returncode == 0, empty.stderr
    assert (
        "aarch64: not installed in %s (run `farm emulators install --dir %s`)" % (tmp_path, tmp_path) in empty.stdout
    )


# --- idempotence, concurrency, interrupted installs -------------------------------------------


def test_second_install_is_a_no_op(installed: Path, caplog: pytest.LogCaptureFixture) -> None:
    markers = [installed / arch / emulators.MARKER for arch in EMULATED]
    before = [(marker.stat().st_ino, marker.stat().st_mtime_ns) for marker in markers]
    with caplog.at_level(logging.INFO, logger="farm.emulators"):
        assert emulators.install(EMULATED, str(installed)) == {arch: str(installed / arch) for arch in EMULATED}
    assert [(marker.stat().st_ino, marker.stat().st_mtime_ns) for marker in markers] == before
    assert caplog.messages == ["%s: already installed in %s" % (arch, installed / arch) for arch in EMULATED]


def test_concurrent_installs_do_the_work_once(tmp_path: Path) -> None:
    directory = tmp_path / "emulators"
    directory.mkdir()
    command = [sys.executable, "-m", "farm", "emulators", "install", "--arch", "aarch64", "--dir", str(directory)]
    logs = [tmp_path / ("install-%d.log" % index) for index in range(2)]
    with filelock.FileLock(str(directory / emulators.LOCK_FILE)):  # both start, then wait for the lock together
        processes = []
        for log in logs:
            with log.open("w") as stderr:
                processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=python_env()))
        try:
            wait_for(lambda: all("waiting for another" in log.read_text() for log in logs), 30, "both installs wait")
        except BaseException:
            for process in processes:
                process.kill()
            raise
    codes = [process.wait(timeout=INSTALL_TIMEOUT) for process in processes]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts
    assert sum(text.count("aarch64: unpacking") for text in texts) == 1, texts
    assert sum(text.count("aarch64: already installed") for text in texts) == 1, texts
    assert emulators.sysroot("aarch64", str(directory)) == str(directory / "aarch64")
    assert [name for name in os.listdir(directory) if name != emulators.LOCK_FILE] == ["aarch64"]


def test_an_interrupted_install_does_not_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    partial = tmp_path / ".aarch64.partial-crashed" / "sysroot" / "usr" / "bin"
    partial.mkdir(parents=True)
    (partial / "python3.11").write_bytes(b"\x7fELF")
    (tmp_path / "aarch64" / "usr").mkdir(parents=True)  # a sysroot without its marker
    with pytest.raises(emulators.EmulatorError, match="not installed .*run `farm emulators install --dir "):
        emulators.python_command("aarch64", str(tmp_path))
    assert not emulators.status(str(tmp_path))["aarch64"]["installed"]
    with caplog.at_level(logging.INFO, logger="farm.emulators"):
        emulators.install(["aarch64"], str(tmp_path))
    removed = [message for message in caplog.messages if "removing the unfinished install" in message]
    assert len(removed) == 2, caplog.messages
    assert [name for name in os.listdir(tmp_path) if name != emulators.LOCK_FILE] == ["aarch64"]
    assert emulators.status(str(tmp_path))["aarch64"]["installed"]


# --- who may install what -----------------------------------------------------------------------


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A fresh directory that user ``nobody`` owns (pytest's temporary directories are private to root)."""
    if os.geteuid() != 0:
        pytest.skip("switching to user nobody needs root")
    path = Path(tempfile.mkdtemp(prefix="farm-emulators-"))
    os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path)


def nobody_python(cwd: Path) -> Tuple[str, str]:
    """A Python that user ``nobody`` may run, and the PYTHONPATH that gives it this checkout and filelock."""
    paths = os.pathsep.join([str(PROJECT), os.path.dirname(os.path.dirname(filelock.__file__))])
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        probe = [*AS_NOBODY, "env", "PYTHONPATH=" + paths, python, "-c", "import farm.ops.cli, filelock"]
        if subprocess.run(probe, cwd=str(cwd), stderr=subprocess.DEVNULL, timeout=60).returncode == 0:
            return python, paths
    pytest.skip("user nobody may run neither %s nor /usr/bin/python3 here" % sys.executable)


def test_non_root_install_that_needs_apt_asks_for_root(nobody_dir: Path) -> None:
    python, paths = nobody_python(nobody_dir)
    path = bin_dir(nobody_dir / "bin", ["apt-get", "dpkg-deb"])  # no qemu, no cross compilers
    env = {"PATH": path, "PYTHONPATH": paths}
    result = farm_emulators(
        "install", "--dir", str(nobody_dir / "e"), python=python, env=env, user=AS_NOBODY, cwd=str(nobody_dir)
    )
    line = error_line(result)
    assert "must run as root to install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross" in line
    assert "run it with sudo" in line
    assert not (nobody_dir / "e").exists()


def test_non_root_unpacks_when_the_tools_are_installed(nobody_dir: Path) -> None:
    python, paths = nobody_python(nobody_dir)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": paths}
    result = farm_emulators(
        "install",
        "--arch",
        "armhf",
        "--dir",
        str(nobody_dir / "e"),
        python=python,
        env=env,
        user=AS_NOBODY,
        cwd=str(nobody_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "installing host packages" not in result.stderr
    assert result.stdout == "armhf: %s\n" % (nobody_dir / "e" / "armhf")
    assert (nobody_dir / "e" / "armhf" / emulators.MARKER).stat().st_uid == NOBODY


def test_root_install_apt_installs_the_missing_tools(installed: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the install checks that it runs as root before it calls apt-get")
    path = bin_dir(tmp_path / "bin", [])
    calls = tmp_path / "apt-get.calls"
    links = " ".join("%s=%s" % (command, shutil.which(command)) for command in host_tools())
    fake = tmp_path / "bin" / "apt-get"  # logs its arguments; `install` links the real tools into PATH
    fake.write_text(
        '#!/bin/sh\nprintf "%%s\\n" "$*" >> %s\ncase " $* " in *" install "*) ;; *) exit 0 ;; esac\n' % calls
        + 'for link in %s; do %s -s "${link#*=}" "%s/${link%%%%=*}"; done\n' % (links, shutil.which("ln"), path)
    )
    fake.chmod(0o755)
    result = farm_emulators("install", "--dir", str(installed), env=python_env(PATH=path))
    assert result.returncode == 0, result.stderr
    packages = "qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross"
    lock = "-q -o DPkg::Lock::Timeout=%d" % emulators.LOCK_TIMEOUT
    assert calls.read_text() == "%s update\n%s install -y --no-install-recommends %s\n" % (lock, lock, packages)
    assert sorted(os.listdir(path)) == sorted(["apt-get", *host_tools()])


@pytest.mark.parametrize("tools", [True, False], ids=["tools-present", "tools-missing"])
def test_install_without_apt_get_says_it_needs_apt(tools: bool, tmp_path: Path) -> None:
    path = bin_dir(tmp_path / "bin", host_tools() if tools else [])
    line = error_line(farm_emulators("install", "--dir", str(tmp_path / "e"), env=python_env(PATH=path)))
    assert "needs Debian's or Ubuntu's apt-get" in line
    assert ("apt-get and dpkg-deb are not on PATH" if tools else "apt-get is not on PATH") in line
    assert not (tmp_path / "e").exists()


def test_unknown_architecture(tmp_path: Path) -> None:
    line = error_line(farm_emulators("install", "--arch", "aarch64", "--arch", "mips", "--dir", str(tmp_path)))
    assert line == "farm emulators: error: cannot emulate mips: the supported architectures are aarch64, armhf"
    for call in (lambda: emulators.sysroot("x86_64", str(tmp_path)), lambda: emulators.python_command("riscv64")):
        with pytest.raises(emulators.EmulatorError, match="supported architectures are aarch64, armhf"):
            call()
    assert os.listdir(tmp_path) == []
