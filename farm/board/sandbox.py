"""What a session process gives up before it runs a client's code (board side; standard library only).

A board daemon started as root runs each session as an unprivileged user
(``--session-user``, default :data:`DEFAULT_SESSION_USER`); one that is not
root runs them as its own user. Either way a session gets a clean
environment and an import path without the daemon's start directory, ``''``,
or any directory its user can write, so nothing a session leaves on disk is
imported by a later one.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Dict, Iterable, List, NamedTuple, Optional

logger = logging.getLogger("farm.sandbox")

#: The user a root daemon runs sessions as unless told otherwise.
DEFAULT_SESSION_USER = "nobody"
#: The search path of a session's environment.
SESSION_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Variables a session keeps from the daemon's environment: the locale and the terminal, nothing of the farm's.
KEPT_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")
_PR_SET_DUMPABLE = 4


class SessionUser(NamedTuple):
    """Who sessions run as: a user to switch to (``switch``), or the daemon's own user."""

    name: str
    uid: int
    gid: int
    switch: bool  # whether the session process changes user (the daemon is root)


def session_user(name: Optional[str]) -> SessionUser:
    """The user sessions run as; ValueError naming the problem.

    Root switches to ``name`` (default :data:`DEFAULT_SESSION_USER`); any other
    user can only run sessions as itself.
    """
    import pwd  # Unix only, like the rest of the board daemon

    if os.geteuid() != 0:
        try:
            own = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:  # a user without an entry in the password database
            own = str(os.geteuid())
        if name not in (None, own):
            raise ValueError("--session-user %s needs a daemon started as root; this one runs as %s" % (name, own))
        return SessionUser(own, os.geteuid(), os.getegid(), False)
    wanted = name or DEFAULT_SESSION_USER
    try:
        entry = pwd.getpwnam(wanted)
    except KeyError:
        raise ValueError(
            "the session user %r does not exist on this board: create it (e.g. `useradd --system --no-create-home "
            "farm-session`) or name another with --session-user" % wanted
        ) from None
    return SessionUser(entry.pw_name, entry.pw_uid, entry.pw_gid, True)


def warn_about(user: SessionUser) -> None:
    """Log, once at the daemon's start, what sessions run as when that leaves them the daemon's powers."""
    if not user.switch:
        logger.warning(
            "this daemon is not root, so sessions run as its own user %s: a session can read and write whatever "
            "that user can, the farm secret and TLS key files included; start the daemon as root to run sessions "
            "as an unprivileged --session-user (see docs/security.md)",
            user.name,
        )
    elif user.uid == 0:
        logger.warning(
            "sessions run as root (--session-user %s): a session can rewrite the board's Python and read the farm "
            "secret and the TLS key, so any tenant can take the board and impersonate the farm",
            user.name,
        )


def become(user: SessionUser) -> None:
    """Switch this process to ``user`` for good: supplementary groups, then group, then user."""
    if user.switch:
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)


def not_dumpable() -> None:
    """Keep processes of the same user out of this one (``/proc/PID/mem``, ``environ``, ptrace); Linux only."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0)
    except (OSError, AttributeError):
        pass


def session_environment(user: SessionUser, home: str, inherited: Dict[str, str]) -> Dict[str, str]:
    """A session's whole environment: its user, its directory as home and temporary directory, the locale."""
    environment = {name: inherited[name] for name in KEPT_VARIABLES if name in inherited}
    environment.update(PATH=SESSION_PATH, HOME=home, TMPDIR=home, USER=user.name, LOGNAME=user.name)
    return environment


def unsafe_import_paths(paths: Iterable[str], start_directory: str) -> List[str]:
    """The entries of ``paths`` a session must not import from: ``''``, the daemon's start directory, and any
    this process (already the session's user) can write, unless it is root, who can write them all."""
    unsafe = []
    check_writable = os.geteuid() != 0
    for entry in paths:
        target = entry or "."
        if not entry or os.path.abspath(target) == start_directory or (check_writable and os.access(target, os.W_OK)):
            unsafe.append(entry)
    return unsafe


def clean_import_path(start_directory: str) -> None:
    """Drop :func:`unsafe_import_paths` from ``sys.path`` (and their cached finders), each with a debug line."""
    for entry in unsafe_import_paths(sys.path, start_directory):
        logger.debug("sessions do not import from %r: it is the daemon's start directory or writable", entry)
        while entry in sys.path:
            sys.path.remove(entry)
        sys.path_importer_cache.pop(entry, None)


def preload() -> None:
    """Import, in the process sessions are forked from, what a session needs, so that no session reads the
    interpreter's files for it later (its user may not be able to, and they may have changed)."""
    import resource  # noqa: F401  (the session's file size limit)

    from . import session  # noqa: F401  (and with it everything it imports)

    try:
        import cloudpickle  # noqa: F401  (run() unpickles functions with it)
    except ImportError:
        pass
