"""The board daemon's watchdog: a process that cleans up after a daemon that died (standard library only)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import struct
from typing import Optional

from . import confine

logger = logging.getLogger("farm.server")


class Watchdog:
    """A helper process that kills the session's process group if the daemon dies, and cleans up after it.

    ``PR_SET_PDEATHSIG`` takes the spawner, and with it the session process,
    along with a killed daemon, but not what the session's code forked. The
    watchdog learns each session's process group and directory through a pipe
    only the daemon writes to; when
    the daemon dies the pipe closes, and the watchdog kills that group, kills
    every process in the sessions' cgroups (``confinement``, where the board
    has them: that takes what left the process group too) and removes them,
    removes that directory and ``work_dir`` (the daemon's own temporary one),
    and exits.
    """

    _RECORD = struct.Struct("<iH")  # process group, length of the directory's path that follows

    def __init__(self, work_dir: Optional[str] = None, confinement: Optional[confine.Confinement] = None) -> None:
        self._work_dir = work_dir
        self._confinement = confinement
        read_fd, self._write_fd = os.pipe()
        self._alive = True
        self.pid = os.fork()
        if self.pid == 0:
            self._run(read_fd)
        os.close(read_fd)

    def watch(self, pgid: int, directory: str = "") -> None:
        """Watch process group ``pgid`` (0: none) and session directory ``directory`` from now on."""
        path = os.fsencode(directory)
        if self._alive:
            try:
                os.write(self._write_fd, self._RECORD.pack(pgid, len(path)) + path)  # atomic: below PIPE_BUF
            except OSError as exc:
                self._alive = False
                logger.warning("the watchdog process is gone (%s); a killed daemon may leave session processes", exc)

    def close(self) -> None:
        """Drop this process's end of the pipe (the session process must not hold it)."""
        os.close(self._write_fd)

    def stop(self) -> None:
        self.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def _run(self, read_fd: int) -> None:
        try:
            os.closerange(3, read_fd)
            os.closerange(read_fd + 1, os.sysconf("SC_OPEN_MAX"))
            signal.set_wakeup_fd(-1)
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, signal.SIG_IGN)  # it ends when the daemon's end of the pipe closes
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setpgid(0, 0)  # a launcher that kills the dead daemon's group must not cut the cleanup short
            pgid, directory = 0, b""
            while True:
                record = os.read(read_fd, self._RECORD.size)
                if len(record) < self._RECORD.size:
                    break
                pgid, length = self._RECORD.unpack(record)
                directory = os.read(read_fd, length) if length else b""
            if pgid:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self._confinement is not None:
                self._confinement.destroy()
            for path in (directory, self._work_dir):
                if path:
                    shutil.rmtree(path, ignore_errors=True)
        except BaseException:
            pass
        os._exit(0)
