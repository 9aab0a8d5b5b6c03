"""Tie a process's life to its parent's (Linux ``PR_SET_PDEATHSIG``), and name it for ``ps``; standard library only.

A launcher that starts daemons sets ``FARM_PARENT_PID`` in their environment;
each daemon calls :func:`die_with_launcher` first thing, so it goes when the
launcher goes, even when the launcher is killed with SIGKILL or leaves through
``os._exit`` without running its cleanup.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import signal
from typing import Callable, List, NoReturn, Sequence

logger = logging.getLogger("farm.lifetime")

#: The environment variable a launcher sets to its own pid.
PARENT_ENV = "FARM_PARENT_PID"
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NAME, _PR_GET_NAME = 15, 16


def die_with_parent(parent_pid: int, signal_number: int = signal.SIGKILL) -> None:
    """Have Linux send ``signal_number`` to this process when its parent dies.

    Exits at once if the parent (``parent_pid``) is already gone. Linux sends
    the signal when the parent *thread* that started us ends, so a launcher
    starts its daemons from a thread that lives as long as they should.
    Elsewhere than Linux this does nothing.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal_number)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def die_with_launcher() -> None:
    """:func:`die_with_parent` (SIGTERM, so the daemon cleans up) if a launcher asked for it.

    The variable is removed, so what this process starts does not inherit it.
    """
    value = os.environ.pop(PARENT_ENV, "")
    if value.isdigit():
        die_with_parent(int(value), signal.SIGTERM)


def become_subreaper() -> bool:
    """Have Linux hand this process the orphans among its descendants, instead of init.

    What a child started and left behind, even in a session of its own
    (``setsid``), then shows in :func:`child_pids`. False where it is not
    available (not Linux, or a kernel before 3.4).
    """
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0
    except (OSError, AttributeError):
        return False


def rename_process(name: str) -> str:
    """Set the name ``ps`` shows for this process (Linux: at most 15 bytes); the name it had ("" elsewhere)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return ""
    previous = ctypes.create_string_buffer(16)
    if prctl(_PR_GET_NAME, previous) != 0:
        return ""
    prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))
    return previous.value.decode(errors="replace")


def child_pids() -> List[int]:
    """The pids of this process's children, zombies included (Linux's /proc; empty elsewhere)."""
    me = os.getpid()
    found: List[int] = []
    listings = glob.glob("/proc/%d/task/*/children" % me)
    for listing in listings:
        found += [int(pid) for pid in _read(listing).split()]
    if not listings and os.path.isdir("/proc"):  # a kernel without CONFIG_PROC_CHILDREN: each process's parent
        for entry in filter(str.isdigit, os.listdir("/proc")):
            fields = _read("/proc/%s/stat" % entry).rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1] == str(me):
                found.append(int(entry))
    return sorted(set(found))


def run_then_exit(body: Callable[[], object], log: logging.Logger, what: str) -> NoReturn:
    """In a forked child: run ``body``, then leave through ``os._exit`` (0, or 1 if it raised), so that
    nothing of the parent's cleanup runs; a failure is logged as ``what`` failed, and the logs are flushed."""
    code = 1
    try:
        body()
        code = 0
    except BaseException:
        log.exception("%s failed", what)
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(code)


def kill_group(pgid: int) -> None:
    """SIGKILL process group ``pgid``, if it is still there."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_children(keep: Sequence[int] = ()) -> None:
    """SIGKILL and reap every child of this process but ``keep`` (and the group each leads), round after round:
    a subreaper's children include the orphans of those it kills."""
    for _ in range(100):
        strays = [pid for pid in child_pids() if pid not in keep]
        if not strays:
            return
        logger.warning("killing %d process(es) a session left behind: %s", len(strays), strays)
        for pid in strays:
            kill_group(pid)  # the group it made itself, if it did
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _read(path: str) -> str:
    """The text of a /proc file; "" if its process or thread ended meanwhile."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""
