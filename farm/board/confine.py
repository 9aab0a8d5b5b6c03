"""Confine each session on a board: a cgroup of its own where the board has one, resource limits everywhere.

The daemon makes the farm's cgroup at start (:meth:`Confinement.create`: one
directory per cgroup hierarchy it can use, below its own cgroup) and one child
of it per session (:meth:`Confinement.session`). The session process moves
itself in first thing (:func:`enter`), so everything it starts, even what
leaves its process group or session, stays in that cgroup: at the end of the
session the daemon kills the whole cgroup and removes it
(:meth:`SessionCgroup.remove`), and the daemon's watchdog does the same for
every session when the daemon dies (:meth:`Confinement.destroy`).

Which hierarchies count (found in /proc/self/mountinfo and /proc/self/cgroup):

- cgroup v2 with the ``memory`` and ``pids`` controllers (a board under
  systemd with ``Delegate=yes``): ``memory.max``, ``pids.max`` and
  ``cgroup.kill``. A daemon whose own cgroup holds processes moves itself
  into a leaf (``daemon``) of the farm's cgroup before it enables the
  controllers ("no internal processes").
- hybrid: cgroup v2 without controllers, for ``cgroup.kill`` and its
  ``populated`` state, and the cgroup v1 ``memory`` and ``pids``
  hierarchies for the limits.
- cgroup v1 alone: the same limits; the kill reads ``cgroup.procs`` and
  kills every process in it until it is empty.

Where none can be written (no cgroups, or a daemon that is not root and was
given no delegated subtree) :meth:`Confinement.create` returns None and the
session gets only :func:`apply_rlimits`. Standard library only, Python >= 3.8,
no I/O at import time.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import time
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

logger = logging.getLogger("farm.confine")

#: The per-session bounds' defaults (the board's ``--session-processes``, ``--session-open-files``).
DEFAULT_PROCESSES = 1024
DEFAULT_OPEN_FILES = 1024
#: Seconds :meth:`SessionCgroup.remove` waits for a killed cgroup to empty.
EMPTY_TIMEOUT = 5.0
#: The controllers a session's limits need.
CONTROLLERS = ("memory", "pids")
_FARM_DIR = re.compile(r"^farm-board-(\d+)$")  # the farm's cgroup, named after its daemon's pid
_DAEMON_LEAF = "daemon"
_BOUNDS = (("processes", "pids"), ("memory", "memory"))  # a field of Limits, and the controller that bounds it
_SESSION_PREFIX = "session-"


class Limits(NamedTuple):
    """What one session may use; 0 means no bound."""

    processes: int = DEFAULT_PROCESSES  # processes and threads, together
    open_files: int = DEFAULT_OPEN_FILES  # per process
    memory: int = 0  # bytes


def default_memory() -> int:
    """Half of the board's memory, in bytes (0 where it cannot be told)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 0


class _Hierarchy(NamedTuple):
    """One cgroup hierarchy the farm uses: where the farm's cgroup is in it, and what it gives."""

    version: int  # 1 or 2
    path: str  # the farm's cgroup in this hierarchy
    controllers: Tuple[str, ...]  # of CONTROLLERS, those whose limits are set in this hierarchy


class SessionCgroup:
    """One session's cgroup: a directory in each hierarchy of the farm's cgroup."""

    def __init__(self, hierarchies: List[_Hierarchy], name: str) -> None:
        self._hierarchies = hierarchies
        self.name = name  # the same in every hierarchy of the farm's cgroup
        self.paths = [os.path.join(h.path, name) for h in hierarchies]

    def _each(self, controller: str) -> Iterator[str]:
        for hierarchy, path in zip(self._hierarchies, self.paths):
            if controller in hierarchy.controllers:
                yield path

    def _make(self, limits: Limits) -> None:
        for hierarchy, path in zip(self._hierarchies, self.paths):
            os.mkdir(path)
            for name, value in _limit_files(hierarchy, path, limits):
                _write(os.path.join(path, name), value)

    def enter(self) -> None:
        """Move the calling process into this cgroup (in every hierarchy)."""
        for path in self.paths:
            _write(os.path.join(path, "cgroup.procs"), str(os.getpid()))

    def controls(self, controller: str) -> bool:
        """Whether this cgroup bounds what ``controller`` (``memory``, ``pids``) counts."""
        return any(True for _ in self._each(controller))

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, wherever it moved within it."""
        for path in self.paths:
            _kill_tree(path)

    def remove(self, timeout: float = EMPTY_TIMEOUT) -> bool:
        """Kill everything in the cgroup, wait until it is empty (up to ``timeout`` s), remove it; whether it went."""
        return all([_remove_tree(path, timeout) for path in self.paths])  # each, even after one failed

    def oom_kills(self) -> int:
        """How many processes of the session the kernel killed for going over the memory limit."""
        for path in self._each("memory"):
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                value = _field(os.path.join(path, name), key)
                if value is not None:
                    return value
        return 0

    def refused_forks(self) -> int:
        """How many forks the process limit refused."""
        return sum(_field(os.path.join(path, "pids.events"), "max") or 0 for path in self._each("pids"))


class Confinement:
    """The farm's cgroup of one daemon, with a child cgroup per session; see the module docstring."""

    def __init__(self, hierarchies: List[_Hierarchy], limits: Limits) -> None:
        self.hierarchies = hierarchies
        self.limits = limits
        self._count = 0

    @classmethod
    def create(cls, limits: Limits) -> Optional[Confinement]:
        """The farm's cgroup for this daemon, or None where no cgroup can be made; logs which mechanism holds."""
        hierarchies: List[_Hierarchy] = []
        try:
            hierarchies = _make_farm_cgroups(process_cgroups(), limits)
        except OSError as exc:
            logger.debug("no cgroup for sessions: %s", exc)
        if not hierarchies:
            logger.warning(
                "sessions are confined by resource limits only (no writable cgroup: not root, and no delegated "
                "subtree?): processes that leave their process group can outlive a killed daemon; see "
                "docs/security.md"
            )
            return None
        confinement = cls(hierarchies, limits)
        logger.info("sessions are confined in cgroups: %s", confinement.describe())
        return confinement

    def describe(self) -> str:
        """``cgroup v2 /sys/fs/cgroup/... (kill, memory, pids)`` and so on, for the log."""
        parts = []
        for hierarchy in self.hierarchies:
            gives = (["kill"] if hierarchy.version == 2 and _has_kill(hierarchy.path) else []) + list(
                hierarchy.controllers
            )
            parts.append("cgroup v%d %s (%s)" % (hierarchy.version, hierarchy.path, ", ".join(gives) or "membership"))
        bounded = [h for hierarchy in self.hierarchies for h in hierarchy.controllers]
        fallback = [
            limit for limit, controller in _BOUNDS if getattr(self.limits, limit) and controller not in bounded
        ]
        if fallback:
            parts.append("%s bounded per process by resource limits only" % " and ".join(fallback))
        return "; ".join(parts)

    def session(self) -> SessionCgroup:
        """A new, empty cgroup for the next session, its limits set; OSError if it cannot be made."""
        self._count += 1
        cgroup = SessionCgroup(self.hierarchies, "%s%d" % (_SESSION_PREFIX, self._count))
        try:
            cgroup._make(self.limits)
        except OSError:
            cgroup.remove(0)
            raise
        return cgroup

    def destroy(self, timeout: float = EMPTY_TIMEOUT) -> None:
        """Kill every session's processes and remove their cgroups, then the farm's cgroup.

        The farm's cgroup stays while the daemon's own leaf in it (cgroup v2 with
        controllers) holds a process: the daemon or its watchdog.
        """
        for hierarchy in self.hierarchies:
            for name in _listdir(hierarchy.path):
                if name.startswith(_SESSION_PREFIX):
                    _remove_tree(os.path.join(hierarchy.path, name), timeout)
            for directory in (os.path.join(hierarchy.path, _DAEMON_LEAF), hierarchy.path):
                try:
                    os.rmdir(directory)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                        logger.warning("cannot remove the cgroup %s: %s", directory, exc)


def enter(cgroup: Optional[SessionCgroup], limits: Limits, uid: Optional[int] = None) -> None:
    """What the session process does first: move into ``cgroup`` (if any) and set its resource limits, for
    the user ``uid`` it runs as from then on (default: its own; the session spawner's sessions enter as root,
    then change to the session user)."""
    if cgroup is not None:
        cgroup.enter()
    apply_rlimits(
        limits,
        processes=cgroup is None or not cgroup.controls("pids"),
        memory=cgroup is None or not cgroup.controls("memory"),
        uid=uid,
    )


def apply_rlimits(limits: Limits, processes: bool = True, memory: bool = True, uid: Optional[int] = None) -> None:
    """Bound this process and what it starts: open files, no core dumps, and (where asked) processes and memory.

    ``processes`` sets RLIMIT_NPROC, which counts every process and thread of the user, and none of
    root's: for a user other than root it is set to what the user runs already plus the limit, so a
    session of a user with many processes (a developer's own) can still start some. ``memory`` sets
    RLIMIT_DATA, which bounds each process's private memory, not their sum. Soft and hard limits
    alike, so an unprivileged session cannot raise them again. ``uid``: the user the limits are for
    (default: this process's).
    """
    try:
        import resource
    except ImportError:  # not a Unix
        return
    wanted = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, limits.open_files)]
    if processes and limits.processes:
        uid = os.getuid() if uid is None else uid
        wanted.append((resource.RLIMIT_NPROC, limits.processes + (user_tasks(uid) if uid else 0)))
    if memory:
        wanted.append((resource.RLIMIT_DATA, limits.memory))
    for which, value in wanted:
        if not value and which != resource.RLIMIT_CORE:
            continue
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def user_tasks(uid: int) -> int:
    """How many processes and threads user ``uid`` runs (its real uid), as RLIMIT_NPROC counts them."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = {}
        for line in _read("/proc/%s/status" % entry).splitlines():
            name, _, value = line.partition(":")
            if name in ("Uid", "Threads"):
                fields[name] = value.split()
        if fields.get("Uid", [""])[0] == str(uid) and fields.get("Threads"):
            count += int(fields["Threads"][0])
    return count


# --- finding and making the cgroups ---------------------------------------------------


def _unescape(text: str) -> str:
    """A path field of /proc/self/mountinfo (spaces and the like come as octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mounts(mountinfo: str) -> List[Tuple[int, Tuple[str, ...], str, str]]:
    """The cgroup mounts in ``mountinfo``'s text: (version, v1 controllers, mount root, mount point)."""
    found: List[Tuple[int, Tuple[str, ...], str, str]] = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if tail[0] == "cgroup2":
            found.append((2, (), root, point))
        elif tail[0] == "cgroup":
            options = tuple(option for option in tail[2].split(",") if option in CONTROLLERS)
            if options:
                found.append((1, options, root, point))
    return found


def memberships(proc_cgroup: str) -> Dict[str, str]:
    """``{"": v2 path, "memory": path, "pids": path, ...}`` from /proc/self/cgroup's text."""
    found = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            found[""] = parts[2]
        for controller in parts[1].split(","):
            if controller:
                found[controller] = parts[2]
    return found


def in_mount(root: str, point: str, path: str) -> str:
    """The directory of the cgroup ``path`` (as /proc/PID/cgroup says) in a mount of its hierarchy's ``root`` at
    ``point`` (as /proc/self/mountinfo says: a container may mount only part of the hierarchy)."""
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return os.path.join(point, path.strip("/")) if path.strip("/") else point


def process_cgroups(pid: str = "self") -> List[Tuple[int, Tuple[str, ...], str]]:
    """The cgroup directories of process ``pid`` in each hierarchy that matters: (version, v1 controllers, path).

    One per hierarchy (its first mount, where it is mounted twice); empty where /proc or cgroups are missing.
    """
    try:
        with open("/proc/self/mountinfo") as handle:
            mountinfo = handle.read()
        with open("/proc/%s/cgroup" % pid) as handle:
            proc_cgroup = handle.read()
    except OSError:
        return []
    return cgroup_directories(mountinfo, proc_cgroup)


def cgroup_directories(mountinfo: str, proc_cgroup: str) -> List[Tuple[int, Tuple[str, ...], str]]:
    """:func:`process_cgroups` from the text of /proc/self/mountinfo and of /proc/PID/cgroup."""
    member = memberships(proc_cgroup)
    own: List[Tuple[int, Tuple[str, ...], str]] = []
    for version, controllers, root, point in mounts(mountinfo):
        key = "" if version == 2 else controllers[0]
        if key in member and not any(found[:2] == (version, controllers) for found in own):
            directory = in_mount(root, point, member[key])
            if os.path.isdir(directory):
                own.append((version, controllers, directory))
    return own


def _daemon_alive(pid: int, base: str, farm: str) -> bool:
    """Whether ``pid`` is a live daemon of the farm cgroup ``farm``: a process in ``base`` (or in ``farm``'s own
    leaf) in that hierarchy. A pid reused by a process elsewhere is not, so its cgroup can go. (Not by its start
    time: qemu-user fakes that one for the process it runs.)"""
    if pid == os.getpid():  # a cgroup of this name is a dead daemon's, whose pid came back to this one
        return False
    return any(path == base or path.startswith(farm + os.sep) for _, _, path in process_cgroups(str(pid)))


def _make_farm_cgroups(own: List[Tuple[int, Tuple[str, ...], str]], limits: Limits) -> List[_Hierarchy]:
    """Make the farm's cgroup in each usable hierarchy (v2 first: what it controls, v1 is not asked for)."""
    name = "farm-board-%d" % os.getpid()
    made: List[_Hierarchy] = []
    wanted = [controller for limit, controller in _BOUNDS if getattr(limits, limit)]
    for version, controllers, base in sorted(own, key=lambda entry: -entry[0]):
        offered = [c for c in controllers if c in wanted and not any(c in h.controllers for h in made)]
        if version == 1 and not offered:
            continue
        _sweep_stale(base)
        path = os.path.join(base, name)
        try:
            os.mkdir(path)
        except OSError as exc:
            logger.debug("cannot make %s: %s", path, exc)
            continue
        if version == 2:
            offered = _enable_v2(base, path, wanted)
        made.append(_Hierarchy(version, path, tuple(offered)))
    return made


def _enable_v2(base: str, farm: str, wanted: List[str]) -> List[str]:
    """Enable the ``wanted`` controllers the daemon's cgroup offers for the sessions' cgroups below ``farm``.

    A cgroup that holds processes cannot hand controllers to its children, so
    when the daemon's own cgroup refuses (EBUSY), the daemon first moves itself
    into ``farm/daemon`` (its children then start there too).
    """
    available = _read(os.path.join(base, "cgroup.controllers")).split()
    wanted = [c for c in wanted if c in available]
    if not wanted:
        return []
    control = os.path.join(base, "cgroup.subtree_control")
    try:
        _enable(control, wanted)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            logger.info("cannot enable %s for sessions in %s: %s", " and ".join(wanted), base, exc)
            return []
        leaf = os.path.join(farm, _DAEMON_LEAF)
        try:
            os.mkdir(leaf)
            _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
            _enable(control, wanted)
        except OSError as again:
            logger.info("cannot enable %s in %s, which holds other processes: %s", " and ".join(wanted), base, again)
            try:  # back where it was: the leaf would only be left behind
                _write(os.path.join(base, "cgroup.procs"), str(os.getpid()))
                os.rmdir(leaf)
            except OSError:
                pass
            return []
    try:
        _enable(os.path.join(farm, "cgroup.subtree_control"), wanted)
    except OSError as exc:
        logger.info("cannot enable %s for sessions in %s: %s", " and ".join(wanted), farm, exc)
        return []
    return wanted


def _enable(subtree_control: str, controllers: List[str]) -> None:
    enabled = _read(subtree_control).split()
    missing = [c for c in controllers if c not in enabled]
    if missing:
        _write(subtree_control, " ".join("+" + c for c in missing))


def _limit_files(hierarchy: _Hierarchy, path: str, limits: Limits) -> List[Tuple[str, str]]:
    """The files of the session's cgroup ``path`` that set ``limits``, and what goes in them, in order."""
    files = []
    if "pids" in hierarchy.controllers:
        files.append(("pids.max", str(limits.processes)))
    if "memory" in hierarchy.controllers:
        memory = str(limits.memory)
        if hierarchy.version == 2:
            files += [("memory.max", memory), ("memory.swap.max", "0"), ("memory.oom.group", "1")]
        else:
            files += [("memory.limit_in_bytes", memory), ("memory.memsw.limit_in_bytes", memory)]
    return [(name, value) for name, value in files if os.path.exists(os.path.join(path, name))]


def _sweep_stale(base: str) -> None:
    """Kill and remove the farm cgroups of daemons that are gone (killed along with their watchdog)."""
    for name in _listdir(base):
        match = _FARM_DIR.match(name)
        if match and not _daemon_alive(int(match.group(1)), base, os.path.join(base, name)):
            logger.warning("removing the cgroup of a board daemon that is gone: %s", os.path.join(base, name))
            _remove_tree(os.path.join(base, name), EMPTY_TIMEOUT)


# --- killing and removing ------------------------------------------------------------


def _has_kill(path: str) -> bool:
    return os.path.exists(os.path.join(path, "cgroup.kill"))


def _subtree(path: str) -> List[str]:
    """``path`` and every cgroup below it, deepest first (a session may make cgroups of its own)."""
    found = []
    for directory, _, _ in os.walk(path):
        found.append(directory)
    return sorted(found, key=lambda p: -p.count(os.sep))


def _pids(path: str) -> List[int]:
    return [int(pid) for pid in _read(os.path.join(path, "cgroup.procs")).split()]


def _kill_tree(path: str) -> None:
    if not os.path.isdir(path):
        return
    if _has_kill(path):
        _write(os.path.join(path, "cgroup.kill"), "1")
        return
    for directory in _subtree(path):  # each listed process is killed before it can fork again
        for pid in _pids(directory):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _empty_tree(path: str) -> bool:
    if not os.path.isdir(path):
        return True
    populated = _field(os.path.join(path, "cgroup.events"), "populated")
    if populated is not None:
        return populated == 0
    return not any(_pids(directory) for directory in _subtree(path))


def _remove_tree(path: str, timeout: float) -> bool:
    """Kill what is in the cgroup ``path`` and below until it is empty (up to ``timeout`` s), then remove them all."""
    if not os.path.isdir(path):
        return True
    deadline = time.monotonic() + timeout
    try:
        while True:
            _kill_tree(path)
            if _empty_tree(path):
                break
            if time.monotonic() >= deadline:
                logger.warning("processes are left in %s %g s after they were killed: %s", path, timeout, _pids(path))
                return False
            time.sleep(0.005)
        for directory in _subtree(path):
            os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot remove the cgroup %s: %s", path, exc)
        return False
    return True


# --- cgroup files --------------------------------------------------------------------


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError):  # gone meanwhile
        return ""


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _field(path: str, key: str) -> Optional[int]:
    """The number after ``key`` in a flat-keyed cgroup file (``populated 1``); None if there is none."""
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None
