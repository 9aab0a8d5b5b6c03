"""Start board daemons as child processes and wait until they listen (host side).

The daemon binds its own port (port 0 or a range) and logs ``bind to HOST:PORT``;
the caller reads the address from that line instead of probing for a free port.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from typing import IO, List, Mapping, Match, Optional, Pattern, Sequence, Tuple

logger = logging.getLogger("farm.processes")

_BIND = re.compile(r"bind to (\S+):(\d+)")


class DaemonError(RuntimeError):
    """A daemon exited or did not start listening in time."""


class DaemonProcess:
    """A daemon in its own process group, logging to a file."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: str,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        append: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.address: Optional[Tuple[str, int]] = None
        self._log: IO[bytes] = open(log_path, "ab" if append else "wb")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def wait_for_bind(self, timeout: float = 15.0) -> Tuple[str, int]:
        """Wait for the ``bind to HOST:PORT`` line and return that address."""
        match = self.wait_for_log(_BIND, timeout)
        self.address = (match.group(1), int(match.group(2)))
        return self.address

    def wait_for_log(self, pattern: Pattern[str], timeout: float = 15.0) -> Match[str]:
        """Wait until the log has a line matching ``pattern``; DaemonError if the daemon exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.log_text())
            if match:
                return match
            if self.process.poll() is not None:
                raise DaemonError(
                    "%s exited with code %s before logging %r:\n%s"
                    % (" ".join(self.argv), self.process.returncode, pattern.pattern, self.log_text()[-4000:])
                )
            if time.monotonic() > deadline:
                raise DaemonError(
                    "%s did not log %r within %g s:\n%s"
                    % (" ".join(self.argv), pattern.pattern, timeout, self.log_text()[-4000:])
                )
            time.sleep(0.02)

    def terminate(self) -> None:
        """SIGTERM the daemon's process group without waiting (:meth:`stop` waits)."""
        if self.process.returncode is None and not self._exited():
            self._signal_group(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM, then SIGKILL to the whole process group after ``timeout``; returns the exit code.

        The group is killed before the daemon is reaped, while its process
        group id cannot yet belong to anyone else.
        """
        if self.process.returncode is None:
            if not self._exited():
                self._signal_group(signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while not self._exited() and time.monotonic() < deadline:
                    time.sleep(0.01)
                if not self._exited():
                    logger.warning("%s did not stop within %g s; killing it", self.argv[0], timeout)
            self._signal_group(signal.SIGKILL)  # whatever else is left in its group
        self.process.wait()
        self._log.close()
        return self.process.returncode

    def _exited(self) -> bool:
        """Whether the daemon has exited, without reaping it."""
        try:
            return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _signal_group(self, number: int) -> None:
        try:
            os.killpg(self.process.pid, number)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def board_command(
    key: str = "",
    host: str = "127.0.0.1",
    port: int = 0,
    python: str = sys.executable,
    extra: Sequence[str] = (),
    server: Optional[Sequence[str]] = None,
) -> List[str]:
    """The command line of a board server: ``server`` (default ``PYTHON -m farm.server``) and its options."""
    program = list(server) if server is not None else [python, "-m", "farm.server"]
    return [*program, "--host", host, "--port", str(port), "--key", key, *extra]


def start_board(
    log_path: str,
    key: str = "",
    host: str = "127.0.0.1",
    port: int = 0,
    python: str = sys.executable,
    extra: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    timeout: float = 15.0,
    server: str = "python",
    program: Optional[str] = None,
) -> DaemonProcess:
    """Start a board server and return it once it listens.

    ``server`` is ``python`` (``python -m farm.server``) or ``native`` (the C daemon, built for this machine and
    cached; ``program`` names another build of it, such as the sanitized one).
    """
    command = None
    if server == "native":
        from .native import host_server  # builds with a C compiler: host side only

        command = [program or host_server()]
    elif server != "python":
        raise ValueError("unknown board server %r: python or native" % server)
    daemon = DaemonProcess(board_command(key, host, port, python, extra, command), log_path, env, cwd)
    try:
        daemon.wait_for_bind(timeout)
    except BaseException:
        daemon.stop()
        raise
    return daemon
