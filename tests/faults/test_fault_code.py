"""Faults of uploaded code: crashes, a spin past the session timeout, forked children, a session directory filled.

Each scenario runs a whole farm (tests/faults/fault_farm.py), has the board run
code that misbehaves (tests/kernels/misbehave.c and faults.c), and ends with
:func:`assert_farm_whole`, whose process check also proves the child the
session forked first died with it.
"""

from __future__ import annotations

import errno
import signal
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

import pytest
from fault_farm import FaultFarm, assert_farm_whole, fault_farms

import farm
from conftest import NATIVE_CHECKED, board_server_named, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ONE_BOARD = "tracker: {port: 0}\nboards:\n  - {key: k, count: 1}\n"
#: The quota of the board the quota scenarios add, in MB.
QUOTA = 2
MB = 1 << 20


@pytest.fixture(params=["python", NATIVE_CHECKED])
def start(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native_builds: Dict[bool, str]
) -> Iterator[Callable[..., FaultFarm]]:
    """Each scenario on a farm of Python boards and on one of native boards."""
    with fault_farms(tmp_path, monkeypatch, board_server_named(request.param, native_builds)) as starter:
        yield starter


@pytest.fixture
def quota_farm(start: Callable[..., FaultFarm]) -> FaultFarm:
    """A farm with a board of key ``q`` whose sessions may hold QUOTA MB."""
    faulty = start(ONE_BOARD)
    faulty.add_board("q", extra=["--session-quota", str(QUOTA)])
    return faulty


MISDEEDS = [
    pytest.param(
        "segfault", None, signal.SIGSEGV, r"killed by signal 11 \(SIGSEGV\) while running segfault\(\)", id="segfault"
    ),
    pytest.param(
        "do_abort", None, signal.SIGABRT, r"killed by signal 6 \(SIGABRT\) while running do_abort\(\)", id="abort"
    ),
    pytest.param(
        "spin_forever",
        1.0,
        signal.SIGKILL,
        r"session timeout of 1 s expired while running spin_forever\(\)",
        id="spin",
    ),
    pytest.param(None, None, None, "", id="normal-end"),
]
#: How the session forks first: a child in its process group, or one that leaves it (setsid) and forks again.
FORKS = [
    pytest.param("libmisbehave.so", "fork_sleeper", id="child"),
    pytest.param("libfaults.so", "fork_detached", id="detached-children"),
]


@pytest.mark.parametrize("library, fork", FORKS)
@pytest.mark.parametrize("function, session_timeout, signum, says", MISDEEDS)
def test_misbehaving_code_after_a_fork(
    start: Callable[..., FaultFarm],
    kernels: Dict[str, Path],
    library: str,
    fork: str,
    function: Optional[str],
    session_timeout: Optional[float],
    signum: Optional[int],
    says: str,
) -> None:
    """The session forks children that would outlive it, then its code crashes or spins past the session timeout
    (or the session just ends): the client is told how, naming the board and the call; the children die with
    the session, the directory goes, and the board is back in the pool."""
    faulty = start(ONE_BOARD)
    session = faulty.request("k", session_timeout=session_timeout or 30)
    for name in ("libmisbehave.so", "libfaults.so"):
        session.upload(kernels[name])
    child = session.load_module(library).get_function(fork, "int %s(void)" % fork)()
    forked = 2 if fork == "fork_detached" else 1  # the child, and the grandchild of a detached one
    session_process = session.system_info()["pid"]  # the other process of the test that is not a daemon
    wait_for(lambda: len(set(faulty.strays()) - {session_process}) == forked, 5, "the forked processes run")
    assert child in faulty.strays()
    if function is None:
        session.close()
        assert_farm_whole(faulty)
        return
    with pytest.raises(farm.SessionLostError) as caught:
        session.load_module("libmisbehave.so").get_function(function, "void %s(void)" % function)()
    where = r"session on board 'k' \(k-0\) at 127\.0\.0\.1:%d ended: " % session.port
    assert_farm_whole(faulty, caught.value, farm.SessionLostError, [where, says + " from libmisbehave.so"])
    assert (caught.value.signal, caught.value.timed_out) == (signum, session_timeout is not None)


def test_upload_over_the_quota_is_refused_and_the_session_goes_on(quota_farm: FaultFarm) -> None:
    session = quota_farm.request("q")
    session.upload(b"1" * MB, "one.bin")
    with pytest.raises(farm.RemoteError) as refused:
        session.upload(b"2" * (3 * MB // 2), "two.bin")
    assert not isinstance(refused.value, farm.SessionLostError)
    assert refused.value.remote_type == "QuotaError"
    assert session.listdir() == ["one.bin"], "the refused upload left something behind"
    session.upload(b"3" * (2 * MB), "one.bin")  # replacing a file: only the new size counts
    assert session.download("one.bin") == b"3" * (2 * MB)
    session.close()
    says = [r"uploading 'two\.bin' \(1572864 bytes\) would take the session's directory to 2\.5 MB",
            r"over its quota of 2 MB"]  # fmt: skip
    assert_farm_whole(quota_farm, refused.value, farm.RemoteError, says)


def test_a_file_written_past_the_quota_fails_with_efbig(quota_farm: FaultFarm, kernels: Dict[str, Path]) -> None:
    """No file may grow past the quota (RLIMIT_FSIZE): the write fails, the code goes on, so does the session."""
    session = quota_farm.request("q")
    session.upload(kernels["libfaults.so"])
    write_files = session.load_module("libfaults.so").get_function("write_files", "long write_files(int, long)")
    assert write_files(1, 3 * MB) == -errno.EFBIG
    session.remove("libfaults.so")  # the directory now holds exactly the quota: the file, cut at 2 MB
    assert session.listdir() == ["fill-0.bin"]
    assert len(session.download("fill-0.bin")) == QUOTA * MB
    session.ping()
    session.close()
    assert_farm_whole(quota_farm)


def test_a_directory_that_outgrows_the_quota_ends_the_session(quota_farm: FaultFarm, kernels: Dict[str, Path]) -> None:
    """Files each below the quota, together above it: the board ends the session and says why."""
    session = quota_farm.request("q")
    session.upload(kernels["libfaults.so"])
    module = session.load_module("libfaults.so")
    write_and_pause = module.get_function("write_files_and_pause", "long write_files_and_pause(int, long)")
    with pytest.raises(farm.SessionLostError) as caught:
        write_and_pause(3, MB)
    says = [
        r"session on board 'q' \(q-extra-0\) at 127\.0\.0\.1:%d ended: " % session.port,
        r"the session's directory holds 3\.\d MB, over its quota of 2 MB; the board ended the session while "
        r"running write_files_and_pause\(\) from libfaults\.so",
    ]
    assert_farm_whole(quota_farm, caught.value, farm.SessionLostError, says)
