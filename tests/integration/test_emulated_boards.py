"""Emulated boards: the board server in the target architecture's own Python under qemu-user.

One farm of the shipped ``emulated`` inventory (two local boards, an aarch64
board, an armhf board behind the proxy) for the module, started with
:class:`farm.ops.launcher.FarmStack`. Code is cross-compiled here with the
toolchains of :mod:`farm.ops.toolchain`. The emulators must be installed
(``farm emulators install``, which the project's CI runs first): without them
these tests fail, saying so, rather than skip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pytest

import farm
from conftest import require_emulators, wait_for
from farm.board import confine
from farm.ops.inventory import BUILTIN_INVENTORIES, load_inventory
from farm.ops.launcher import FarmStack
from farm.ops.toolchain import build_shared, toolchain_for

#: Each test runs code under qemu-user or a whole example suite: seconds to minutes.
pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
VADD = PROJECT / "farm" / "ops" / "kernels" / "vadd.c"
VADD_SIG = "void vadd(const float *a, const float *b, float *c, int64_t n)"
SIZES = "long sizes(void) { return (long)sizeof(long) * 100 + (long)sizeof(void *); }\n"
MACHINES = {"local": os.uname().machine, "aarch64": "aarch64", "armhf": "armv7l"}


@pytest.fixture(scope="module")
def emulated_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmStack]:
    require_emulators("the emulated boards")
    stack = FarmStack(load_inventory(BUILTIN_INVENTORIES["emulated"]), str(tmp_path_factory.mktemp("farm")))
    stack.start(timeout=60)
    yield stack
    stack.stop()


@pytest.fixture
def sessions(emulated_farm: FarmStack) -> Iterator[Dict[str, farm.RemoteSession]]:
    """One session on a board of each key."""
    tracker = farm.connect_tracker(*emulated_farm.tracker_address)
    opened = {key: tracker.request(key, wait=60) for key in MACHINES}
    yield opened
    for session in opened.values():
        session.close()
    tracker.close()


def test_each_board_runs_its_own_architecture(sessions: Dict[str, farm.RemoteSession]) -> None:
    for key, session in sessions.items():
        info = session.system_info()
        assert info["machine"] == MACHINES[key], (key, info)
        assert info["key"] == key
    assert sessions["armhf"].system_info()["c_type_sizes"]["long"] == 4  # a 32-bit board
    assert sessions["aarch64"].system_info()["c_type_sizes"]["long"] == 8


@pytest.mark.parametrize("key", ["aarch64", "armhf"])
def test_cross_compiled_kernel_runs_on_the_emulated_board(
    sessions: Dict[str, farm.RemoteSession], key: str, tmp_path: Path
) -> None:
    session = sessions[key]
    library = build_shared([VADD], toolchain_for(key), cache_dir=str(tmp_path))
    session.upload(library)
    vadd = session.load_module(os.path.basename(library)).get_function("vadd", VADD_SIG)
    x = np.random.default_rng(5).standard_normal(10_001).astype(np.float32)
    y = np.arange(x.size, dtype=np.float32)
    out = session.empty(x.shape, "float32")
    vadd(session.array(x), session.array(y), out, x.size)
    np.testing.assert_array_equal(out.numpy(), x + y)
    sizes_source = tmp_path / "sizes.c"
    sizes_source.write_text(SIZES)
    sizes = build_shared([sizes_source], toolchain_for(key), cache_dir=str(tmp_path))
    session.upload(sizes)
    expected = 808 if key == "aarch64" else 404  # sizeof(long), sizeof(void *): the target's, not the host's
    assert session.load_module(os.path.basename(sizes)).get_function("sizes", "long sizes(void)")() == expected


@pytest.mark.parametrize(("key", "emulator"), [("aarch64", "qemu-aarch64"), ("armhf", "qemu-arm")])
def test_time_evaluator_on_an_emulated_board_says_its_times_are_qemus(
    sessions: Dict[str, farm.RemoteSession], key: str, emulator: str, tmp_path: Path
) -> None:
    """The timing loop runs in the board's own Python under qemu, its cost calibrated there; the result says that
    qemu's times are not the hardware's."""
    session = sessions[key]
    library = build_shared([PROJECT / "tests" / "kernels" / "timed.c"], toolchain_for(key), cache_dir=str(tmp_path))
    session.upload(library)
    spin = session.load_module(os.path.basename(library)).get_function("spin_ns", "void spin_ns(int64_t ns)")
    result = spin.time_evaluator(number=5, repeat=3)(200_000)
    assert result.emulated == emulator and result.state and result.state["machine"] == MACHINES[key]
    assert "emulated: measured under %s; its times are not the hardware's" % emulator in str(result)
    assert 200e-6 - result.overhead_spread_s <= result.median and result.overhead_s > 0
    assert session.system_info()["state"]["emulator"] == emulator


WRONG_ARCHITECTURE = [("aarch64", "x86_64", "aarch64"), ("armhf", "aarch64", "arm")]  # key, built for, board runs


@pytest.mark.parametrize(("key", "built_for", "board"), WRONG_ARCHITECTURE)
def test_code_for_another_architecture_is_refused_naming_both(
    sessions: Dict[str, farm.RemoteSession], key: str, built_for: str, board: str, tmp_path: Path
) -> None:
    session = sessions[key]
    library = build_shared([VADD], toolchain_for(built_for), cache_dir=str(tmp_path))
    name = session.upload(library)
    with pytest.raises(farm.RemoteError) as info:
        session.load_module(name)
    assert "%s is built for %s, but this board runs %s code" % (name, built_for, board) in str(info.value)
    session.ping()  # the session goes on


@pytest.mark.skipif(os.geteuid() != 0, reason="boards run sessions as another user only when started as root")
def test_every_board_runs_sessions_as_the_session_user(sessions: Dict[str, farm.RemoteSession]) -> None:
    """Started as root, every board, emulated ones too (qemu passes the change of user to the host's kernel),
    runs its sessions as nobody, with no directory on the import path it could write."""

    def who_and_where() -> object:  # defined here, so cloudpickle sends it by value
        import os
        import sys

        return os.getuid(), [entry for entry in sys.path if os.access(entry or ".", os.W_OK)]

    for key, session in sessions.items():
        assert session.run(who_and_where) == (65534, []), key


@pytest.mark.parametrize("key", ["aarch64", "armhf"])
def test_emulated_session_is_confined_in_a_cgroup_of_its_own(
    emulated_farm: FarmStack, key: str, tmp_path: Path
) -> None:
    """Under qemu-user the cgroups are the host kernel's: the session, and a process it daemonised, are in the
    session's cgroup, which goes at the end with everything in it. RLIMIT_NOFILE holds (qemu's own files count)."""
    if os.geteuid() != 0:
        pytest.skip("cgroups for sessions need root or a delegated subtree")
    library = build_shared([PROJECT / "tests" / "kernels" / "confine.c"], toolchain_for(key), cache_dir=str(tmp_path))
    with farm.connect_tracker(*emulated_farm.tracker_address) as tracker, tracker.request(key, wait=60) as session:
        cgroups = session_cgroups(session.system_info()["pid"])
        assert cgroups, "the emulated session is in no cgroup of its own"
        session.upload(library)
        module = session.load_module(os.path.basename(library))
        assert 0 < module.get_function("open_many", "long open_many(long)")(5000) < 1024
        detached = module.get_function("spawn_detached", "int spawn_detached(void)")()
        assert session_cgroups(detached) == cgroups
    wait_for(lambda: not session_cgroups(detached), 5, "the daemonised process %d is gone" % detached)
    wait_for(lambda: not any(os.path.exists(path) for path in cgroups), 5, "the session's cgroups are removed")


def session_cgroups(pid: int) -> List[str]:
    """The cgroup directories of a live process ``pid`` that are a session's; none once it is gone or a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                return []
    except FileNotFoundError:
        return []
    return [path for _, _, path in confine.process_cgroups(str(pid)) if "/farm-board-" in path]
