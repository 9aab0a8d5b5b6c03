"""farm.confine: parsing /proc's cgroup files, and sessions' cgroups on the machine's real cgroup filesystem.

The cgroup tests make real cgroups below this process's own (root, or a delegated subtree, is needed; they skip
elsewhere and say why) and run real processes in them; each cleans up after itself.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import time
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from conftest import wait_for
from farm.board import confine
from farm.board.confine import Confinement, Limits, SessionCgroup

MB = 1 << 20

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/0123
2:cpu,cpuacct:/
0::/
"""


def test_mounts_of_a_hybrid_layout() -> None:
    assert confine.mounts(HYBRID_MOUNTINFO) == [
        (1, ("memory",), "/", "/sys/fs/cgroup/memory"),
        (1, ("pids",), "/", "/sys/fs/cgroup/pids"),
        (2, (), "/", "/sys/fs/cgroup/unified"),
    ]
    assert confine.memberships(HYBRID_CGROUP) == {
        "name=systemd": "/",
        "pids": "/",
        "memory": "/process_api/0123",
        "cpu": "/",
        "cpuacct": "/",
        "": "/",
    }


def test_a_hierarchy_mounted_twice_is_used_once(tmp_path: Path) -> None:
    for name in ("first", "again", "pids", "pids/farm"):
        (tmp_path / name).mkdir()
    mountinfo = (
        "41 31 0:38 / %s/first rw - cgroup2 cgroup2 rw\n"
        "39 31 0:36 / %s/pids rw - cgroup cgroup rw,pids\n"
        "99 1 0:38 / %s/again rw - cgroup2 cgroup2 rw\n" % (tmp_path, tmp_path, tmp_path)
    )
    assert confine.cgroup_directories(mountinfo, "8:pids:/farm\n0::/\n") == [
        (2, (), str(tmp_path / "first")),
        (1, ("pids",), str(tmp_path / "pids" / "farm")),
    ]


def test_mount_of_part_of_a_hierarchy_with_an_escaped_path() -> None:
    """A container sees only its part of the hierarchy, mounted where its /proc/self/mountinfo says."""
    mountinfo = "29 22 0:26 /system.slice/my\\040board /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
    ((version, controllers, root, point),) = confine.mounts(mountinfo)
    assert (version, controllers, root, point) == (2, (), "/system.slice/my board", "/sys/fs/cgroup")
    assert confine.in_mount(root, point, "/system.slice/my board/farm") == "/sys/fs/cgroup/farm"
    assert (
        confine.in_mount("/", "/sys/fs/cgroup", "/system.slice/x.service") == "/sys/fs/cgroup/system.slice/x.service"
    )
    assert confine.in_mount(root, point, "/") == "/sys/fs/cgroup"  # a cgroup namespace's root


# --- on the real cgroup filesystem -------------------------------------------------------


@pytest.fixture
def make_confinement() -> Iterator[Callable[[Limits], Confinement]]:
    """Confinement.create for the test; skips where it returns None; destroys what it made at the end."""
    made: List[Confinement] = []

    def make(limits: Limits) -> Confinement:
        confinement = Confinement.create(limits)
        if confinement is None:
            pytest.skip("no cgroup can be made here (cgroups need root or a delegated subtree)")
        made.append(confinement)
        return confinement

    yield make
    for confinement in made:
        confinement.destroy()


def in_session(cgroup: SessionCgroup, limits: Limits, body: Callable[[], None]) -> int:
    """Fork a process that enters ``cgroup`` and runs ``body`` (then waits until killed); its pid, once it entered."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            confine.enter(cgroup, limits)
            body()
            os.write(ready_w, b"x")
            while True:
                signal.pause()
        finally:
            os._exit(1)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x", "the session process failed"
    os.close(ready_r)
    return pid


def detach() -> None:
    """Daemonise a process (fork, setsid, fork, the middle one exits) that waits until killed."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                signal.pause()
        os._exit(0)
    os.wait()


def procs(path: str) -> List[int]:
    with open(os.path.join(path, "cgroup.procs")) as handle:
        return [int(pid) for pid in handle.read().split()]


def running(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def exit_status(pid: int, timeout: float = 5.0) -> int:
    """The wait status of child ``pid`` once it exits; fails the test after ``timeout`` s."""
    return wait_for(lambda: os.waitpid(pid, os.WNOHANG)[1] or None, timeout, "process %d exits" % pid)


def limit_of(pid: int, name: str) -> str:
    with open("/proc/%d/limits" % pid) as handle:
        return next(line[26:47].strip() for line in handle if line.startswith(name))


def test_session_cgroup_holds_everything_and_is_removed(make_confinement: Callable[[Limits], Confinement]) -> None:
    limits = Limits(processes=16, open_files=64, memory=64 * MB)
    confinement = make_confinement(limits)
    names = {os.path.basename(h.path) for h in confinement.hierarchies}
    assert names == {"farm-board-%d" % os.getpid()}
    cgroup = confinement.session()
    assert all(os.path.isdir(path) for path in cgroup.paths)
    for path in cgroup.paths:
        if os.path.exists(os.path.join(path, "pids.max")):
            assert open(os.path.join(path, "pids.max")).read().strip() == "16"
        for name in ("memory.max", "memory.limit_in_bytes"):
            if os.path.exists(os.path.join(path, name)):
                assert int(open(os.path.join(path, name)).read()) == 64 * MB
    session = in_session(cgroup, limits, detach)
    members = wait_for(lambda: len(procs(cgroup.paths[0])) == 2 and procs(cgroup.paths[0]), 5, "both processes")
    detached = next(pid for pid in members if pid != session)
    assert os.getsid(detached) != os.getsid(session), "the grandchild is in a session of its own"
    assert limit_of(session, "Max open files") == "64"
    assert limit_of(session, "Max core file size") == "0"
    began = time.monotonic()
    assert cgroup.remove()
    assert time.monotonic() - began < 1.0
    assert exit_status(session) == signal.SIGKILL
    wait_for(lambda: not running(detached), 5, "the detached process is dead")
    assert not any(os.path.exists(path) for path in cgroup.paths)


def test_destroy_kills_every_session_and_removes_the_farms_cgroup(
    make_confinement: Callable[[Limits], Confinement],
) -> None:
    limits = Limits(processes=16, open_files=64, memory=64 * MB)
    confinement = make_confinement(limits)
    sessions = [in_session(confinement.session(), limits, detach) for _ in range(2)]
    confinement.destroy()
    for pid in sessions:
        assert exit_status(pid) == signal.SIGKILL
    assert not any(os.path.exists(h.path) for h in confinement.hierarchies)


def test_a_dead_daemons_cgroup_is_swept_by_the_next(make_confinement: Callable[[Limits], Confinement]) -> None:
    """A daemon killed together with its watchdog leaves its sessions' cgroups behind: the next daemon started
    below the same cgroup kills what runs there and removes them."""
    limits = Limits(processes=16, open_files=64, memory=64 * MB)
    first = make_confinement(limits)
    gone = os.fork()  # the dead daemon: alive while its cgroups are made, so that no board sweeps them before
    if gone == 0:
        signal.pause()
        os._exit(0)
    dead = Confinement([h._replace(path=os.path.join(os.path.dirname(h.path), "farm-board-%d" % gone))
                        for h in first.hierarchies], limits)  # fmt: skip
    for hierarchy in dead.hierarchies:
        os.mkdir(hierarchy.path)
    try:
        left = in_session(dead.session(), limits, detach)
        os.kill(gone, signal.SIGKILL)
        assert exit_status(gone) == signal.SIGKILL
        first.destroy()
        make_confinement(limits)
        assert exit_status(left) == signal.SIGKILL
        assert not any(os.path.exists(h.path) for h in dead.hierarchies)
    finally:
        dead.destroy()


def test_process_limit_refuses_forks(make_confinement: Callable[[Limits], Confinement]) -> None:
    limits = Limits(processes=4, open_files=64, memory=0)
    confinement = make_confinement(limits)
    cgroup = confinement.session()
    if not cgroup.controls("pids"):
        pytest.skip("no pids controller here")

    def fork_many() -> None:
        for _ in range(10):
            try:
                if os.fork() == 0:
                    signal.pause()
            except BlockingIOError:  # EAGAIN: the pids limit
                return
        raise AssertionError("every fork succeeded")

    in_session(cgroup, limits, fork_many)
    assert len(procs(next(cgroup._each("pids")))) == 4
    assert cgroup.refused_forks() >= 1
    assert cgroup.remove()


def test_memory_limit_kills_and_is_counted(make_confinement: Callable[[Limits], Confinement]) -> None:
    limits = Limits(processes=16, open_files=64, memory=32 * MB)
    confinement = make_confinement(limits)
    cgroup = confinement.session()
    if not cgroup.controls("memory"):
        pytest.skip("no memory controller here")
    pid = os.fork()
    if pid == 0:
        try:
            confine.enter(cgroup, limits)
            bytearray(256 * MB)  # zero-filled: every page touched
        finally:
            os._exit(0)
    assert exit_status(pid) == signal.SIGKILL
    assert cgroup.oom_kills() == 1
    assert cgroup.remove()


def test_without_a_cgroup_resource_limits_bound_processes_and_memory() -> None:
    """No cgroup: RLIMIT_NPROC and RLIMIT_DATA stand in for pids and memory (per user and per process)."""
    limits = Limits(processes=4000, open_files=64, memory=512 * MB)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            confine.enter(None, limits)
            found = [resource.getrlimit(which) for which in (resource.RLIMIT_NPROC, resource.RLIMIT_DATA)]
            found += [resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_CORE)]
            os.write(write_fd, repr(found).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    found = os.read(read_fd, 4096).decode()
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert found == repr([(4000, 4000), (512 * MB, 512 * MB), (64, 64), (0, 0)])


def test_the_start_up_line_names_what_falls_back_to_resource_limits(tmp_path: Path) -> None:
    """A cgroup v2 without controllers (and without cgroup.kill): membership only, the rest by resource limits."""
    only_v2 = Confinement([confine._Hierarchy(2, str(tmp_path), ())], Limits(processes=8, memory=MB))
    assert only_v2.describe() == "cgroup v2 %s (membership); processes and memory bounded per process by resource " \
        "limits only" % tmp_path  # fmt: skip
    (tmp_path / "cgroup.kill").touch()
    with_pids = Confinement([confine._Hierarchy(2, str(tmp_path), ("pids",))], Limits(processes=8, memory=0))
    assert with_pids.describe() == "cgroup v2 %s (kill, pids)" % tmp_path


def test_without_cgroup_kill_every_process_listed_is_killed_until_none_is_left(
    make_confinement: Callable[[Limits], Confinement],
) -> None:
    """cgroup v1 alone has no cgroup.kill: the processes listed are killed round after round, even those that
    keep forking, until the cgroup is empty (its process limit bounds how many there can be)."""
    limits = Limits(processes=32, open_files=64, memory=64 * MB)
    v1_only = [h for h in make_confinement(limits).hierarchies if h.version == 1]
    if not v1_only:
        pytest.skip("no cgroup v1 hierarchy here")
    cgroup = Confinement(v1_only, limits).session()
    assert not any(os.path.exists(os.path.join(path, "cgroup.kill")) for path in cgroup.paths)

    def keep_forking() -> None:
        for _ in range(4):
            if os.fork() == 0:
                os.setsid()
                while True:  # each generation forks the next and goes on running
                    try:
                        if os.fork() == 0:
                            continue
                    except BlockingIOError:
                        pass
                    time.sleep(0.01)

    session = in_session(cgroup, limits, keep_forking)
    wait_for(lambda: len(procs(cgroup.paths[0])) > 8, 5, "the forks run")
    assert cgroup.remove()
    assert exit_status(session) == signal.SIGKILL
    assert not any(os.path.exists(path) for path in cgroup.paths)


# --- cgroup v2 with controllers, on a stand-in tree ------------------------------------------
# The machine the tests run on has no cgroup v2 controllers (they are cgroup v1's), so the "no internal processes"
# path runs on a tree of plain files where a write to the daemon's cgroup's subtree_control fails with EBUSY, as
# the kernel's does, until the daemon has moved out of it.


@pytest.fixture
def v2_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``base`` (the daemon's cgroup, offering memory and pids, holding the daemon) with ``base/farm`` in it."""
    base = tmp_path / "base"
    (base / "farm").mkdir(parents=True)
    (base / "cgroup.controllers").write_text("cpu io memory pids\n")
    for path in (base, base / "farm"):
        (path / "cgroup.subtree_control").write_text("")
    (base / "cgroup.procs").write_text("%d\n" % os.getpid())
    write = confine._write

    def kernel_write(path: str, value: str) -> None:
        if path.endswith("/cgroup.procs"):  # a move: out of the cgroup it was in, into this one
            for other in tmp_path.rglob("cgroup.procs"):
                other.write_text(other.read_text().replace(value + "\n", ""))
            value = Path(path).read_text() + value + "\n" if os.path.exists(path) else value + "\n"
        if path == str(base / "cgroup.subtree_control") and (base / "cgroup.procs").read_text().strip():
            raise OSError(errno.EBUSY, "Device or resource busy")
        write(path, value)

    monkeypatch.setattr(confine, "_write", kernel_write)
    return base


def test_v2_daemon_moves_into_a_leaf_to_enable_controllers(v2_tree: Path) -> None:
    assert confine._enable_v2(str(v2_tree), str(v2_tree / "farm"), ["memory", "pids"]) == ["memory", "pids"]
    assert (v2_tree / "farm" / "daemon" / "cgroup.procs").read_text() == "%d\n" % os.getpid()
    assert (v2_tree / "cgroup.procs").read_text() == ""
    assert (v2_tree / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (v2_tree / "farm" / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_v2_daemon_goes_back_when_others_still_hold_its_cgroup(v2_tree: Path) -> None:
    """Another process left in the daemon's cgroup keeps it from handing out controllers: the daemon moves back
    (its leaf would be left behind) and confines sessions by membership and resource limits."""
    (v2_tree / "cgroup.procs").write_text("%d\n1\n" % os.getpid())
    assert confine._enable_v2(str(v2_tree), str(v2_tree / "farm"), ["memory", "pids"]) == []
    assert (v2_tree / "cgroup.procs").read_text() == "1\n%d\n" % os.getpid()
    assert (v2_tree / "farm" / "daemon" / "cgroup.procs").read_text() == ""  # (the kernel's rmdir removes it)
    assert (v2_tree / "cgroup.subtree_control").read_text() == ""


def test_v2_controllers_the_daemons_cgroup_does_not_offer_are_not_asked_for(v2_tree: Path) -> None:
    (v2_tree / "cgroup.controllers").write_text("cpu io\n")
    assert confine._enable_v2(str(v2_tree), str(v2_tree / "farm"), ["memory", "pids"]) == []
    assert (v2_tree / "cgroup.procs").read_text() == "%d\n" % os.getpid()
