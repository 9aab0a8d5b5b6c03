"""Emulated boards: the board server in the target architecture's own Python under qemu-user.

One farm of the shipped ``emulated`` inventory (two local boards, an aarch64
board, an armhf board behind the proxy) for the module, started with
:class:`farm.launcher.FarmStack`. Code is cross-compiled here with the
toolchains of :mod:`farm.toolchain`. The emulators must be installed
(``farm emulators install``, which the project's CI runs first): without them
these tests fail, saying so, rather than skip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import pytest

import farm
from farm.emulators import EmulatorError, python_command
from farm.inventory import BUILTIN_INVENTORIES, load_inventory
from farm.launcher import FarmStack
from farm.targets import EMULATED
from farm.toolchain import build_shared, toolchain_for

PROJECT = Path(__file__).resolve().parents[2]
VADD = PROJECT / "farm" / "kernels" / "vadd.c"
VADD_SIG = "void vadd(const float *a, const float *b, float *c, int64_t n)"
SIZES = "long sizes(void) { return (long)sizeof(long) * 100 + (long)sizeof(void *); }\n"
MACHINES = {"local": os.uname().machine, "aarch64": "aarch64", "armhf": "armv7l"}


@pytest.fixture(scope="module")
def emulated_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmStack]:
    for arch in EMULATED:
        try:
            python_command(arch)
        except EmulatorError as exc:
            pytest.fail("the emulated boards need the emulators: %s" % exc, pytrace=False)
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
