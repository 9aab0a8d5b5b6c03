"""The board daemon: ``python -m farm.server --host 127.0.0.1 --port 9090 --key rasp4``.

One process listens and does handshakes; each accepted session runs in a
process of its own, with its own process group, working directory and
unprivileged user, forked by the session spawner (:mod:`farm.board.spawner`), which
the daemon forks before it reads any secret. The daemon outlives whatever the
session's code does: when the session process dies (a segfault, an abort,
``os._exit``, a kill, the session timeout) the daemon tells the client how,
removes the session directory, and accepts the next client.

The daemon is made of parts, one job each: :mod:`~farm.board.config` (the
options and :class:`~farm.board.config.BoardConfig`), :mod:`~farm.board.admission`
(accepting connections and their handshakes), :mod:`~farm.board.supervisor`
(the session: start, limits, end) and :mod:`~farm.board.watchdog`. This module
ties them, and the link to a tracker or proxy, in one selector loop. Standard
library only, Python >= 3.8.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Optional, Sequence, Union

from ..lifetime import die_with_launcher
from ..logs import configure_logging
from ..net.credentials import Credentials
from ..net.secret import daemon_secret
from ..net.sockets import bind_first_free
from ..net.tls import daemon_tls
from . import confine
from .admission import Admission
from .config import BoardConfig, add_arguments, board_config, session_limits
from .registration import ProxyDialer, TrackerLink
from .relay import SessionRelay
from .sandbox import not_dumpable, session_user, warn_about
from .spawner import Spawner, SpawnerGone
from .supervisor import Supervisor

logger = logging.getLogger("farm.server")


class BoardServer:
    """Serves one session at a time as ``config`` says; see the module docstring.

    ``spawner`` starts the sessions: make it (:class:`farm.board.spawner.Spawner`) before reading any secret.
    The :class:`~farm.board.admission.Admission` admits clients, the :class:`~farm.board.supervisor.Supervisor`
    runs their sessions; this class ties them, the link to a tracker or proxy and the signals in one loop.
    """

    def __init__(
        self, config: BoardConfig, *, spawner: Spawner, confinement: Optional[confine.Confinement] = None
    ) -> None:
        self.host = config.host
        self.key = config.key
        # Through a proxy the board dials out (host and port are the proxy's) and listens nowhere.
        self._listener = None if config.through_proxy else bind_first_free(config.host, config.port, config.port_end)
        self.port = config.port if self._listener is None else self._listener.getsockname()[1]
        self.name = config.name or default_name(self.port if self._listener is not None else None)
        self._own_work_dir = config.work_dir is None
        self.work_dir = tempfile.mkdtemp(prefix="farm-board-") if config.work_dir is None else config.work_dir
        os.makedirs(self.work_dir, exist_ok=True)
        if self._own_work_dir:
            os.chmod(self.work_dir, 0o711)  # the session user reaches its own directory in it, and lists nothing
        self._selector = selectors.DefaultSelector()
        self._stopping = False
        self._stop_signal = 0
        self._wakeup_r, self._wakeup_w = os.pipe()
        credentials = config.credentials
        self._link: Optional[Union[TrackerLink, ProxyDialer]] = None  # how clients find the board
        if config.through_proxy:
            address = (config.host, config.port)
            self._link = ProxyDialer(address, config.key, self._selector, self._paired_by_proxy, credentials)
        elif config.tracker is not None:
            self._link = TrackerLink(
                config.tracker, config.key, self.port, self._selector, config.custom_addr, self.name, credentials
            )
        self._supervisor = Supervisor(
            config, self.name, self.work_dir, spawner, confinement, self._selector, self._link, self._spawner_gone
        )
        self._admission = Admission(config, self.port, self._listener, self._selector, self._link, self._supervisor)

    # --- the daemon loop ----------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until SIGTERM or SIGINT; then end any session and clean up."""
        self._supervisor.begin(self.work_dir if self._own_work_dir else None)
        if self._listener is not None:
            logger.info("bind to %s:%d", self.host, self.port)
            self._admission.listen()
        else:
            logger.info("serving key %r through the proxy at %s:%d", self.key, self.host, self.port)
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ)
        signal.set_wakeup_fd(self._wakeup_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._on_stop_signal)
        try:
            while not self._stopping:
                for key, mask in self._selector.select(self._next_timeout()):
                    if key.fileobj is self._listener:
                        self._admission.accept()
                    elif key.fileobj == self._wakeup_r:
                        self._drain_wakeups()
                    elif key.data is self._supervisor:
                        self._supervisor.on_report()
                    elif isinstance(key.data, (TrackerLink, ProxyDialer, SessionRelay)):
                        key.data.on_event(mask)
                    else:
                        self._admission.on_handshake_data(key.data)
                now = time.monotonic()
                self._admission.tick(now)
                self._supervisor.tick(now)
                if self._link is not None:
                    self._link.tick(time.monotonic())
        finally:
            if self._stop_signal:
                logger.info("received %s, shutting down", signal.Signals(self._stop_signal).name)
            self._shutdown()

    def _on_stop_signal(self, number: int, _frame: object) -> None:
        self._stopping = True
        self._stop_signal = number

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    def _next_timeout(self) -> float:
        deadlines = [self._admission.next_deadline(), self._supervisor.next_deadline()]
        if self._link is not None:
            deadlines.append(self._link.next_deadline())
        known = [deadline for deadline in deadlines if deadline is not None]
        if not known:
            return 1.0
        return max(0.0, min(min(known) - time.monotonic(), 1.0))

    def _paired_by_proxy(self, sock: socket.socket, client_key: str, leftover: bytes, bytes_sent: int) -> None:
        self._admission.paired_by_proxy(sock, client_key, leftover, bytes_sent)

    def abandon(self) -> None:
        """Give up before serving: close the listener, remove the daemon's own work directory."""
        if self._listener is not None:
            self._listener.close()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    @property
    def spawner_alive(self) -> bool:
        """False once the session spawner died: the daemon then stops (exit code 1)."""
        return self._supervisor.spawner_alive

    def _spawner_gone(self, exc: SpawnerGone) -> None:
        """No session can start any more: stop (a supervisor restarts the daemon), and say so."""
        if not self._stopping:
            logger.error("%s; the board daemon stops, since it cannot start sessions any more", exc)
        self._stopping = True

    def _shutdown(self) -> None:
        signal.set_wakeup_fd(-1)
        self._supervisor.close()
        self._admission.close()
        if self._link is not None:
            self._link.close()
        self._selector.close()
        if self._listener is not None:
            self._listener.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        logger.info("board server stopped")


def default_name(port: Optional[int]) -> str:
    """``HOSTNAME:PORT`` of a listening board; ``HOSTNAME/PID`` of one that dials a proxy."""
    host = socket.gethostname()
    return "%s:%d" % (host, port) if port is not None else "%s/%d" % (host, os.getpid())


# --- command line -------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    die_with_launcher()
    configure_logging(args.log_level)
    try:
        user = session_user(args.session_user)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    limits = session_limits(args)
    # The sessions' cgroups first: on cgroup v2 the daemon may move into a leaf of its own, and so must the spawner.
    confinement = confine.Confinement.create(limits)
    spawner = Spawner(user, limits, confinement)  # before any secret is read: sessions are forked from it
    not_dumpable()  # nor may a session of the daemon's own user read its memory through /proc
    warn_about(user)
    secret = daemon_secret(args.secret_file, None if args.through_proxy else args.host, "board server")
    tls = daemon_tls(args, listens=not args.through_proxy, dials=args.through_proxy or args.tracker is not None)
    try:
        server = BoardServer(board_config(args, Credentials(secret, tls)), spawner=spawner, confinement=confinement)
    except OSError as exc:
        logger.error("cannot listen: %s", exc)
        return 1
    if not _check_sessions(spawner, server.work_dir, [args.secret_file, tls.key if tls is not None else None]):
        server.abandon()
        if confinement is not None:
            confinement.destroy()
        return 2
    server.serve_forever()
    return 0 if server.spawner_alive else 1


def _check_sessions(spawner: Spawner, work_dir: str, private_files: Sequence[Optional[str]]) -> bool:
    """Whether sessions can work as the session user; log what stops them, and private files it can read."""
    try:
        view = spawner.check(work_dir, [path for path in private_files if path])
    except (SpawnerGone, OSError) as exc:
        logger.error("the session spawner does not answer: %s", exc)
        return False
    for problem in view["problems"]:
        logger.error("%s", problem)
    if spawner.user.switch:
        for path in view["readable"]:
            logger.warning("the session user %s can read %s: chmod 600 it (owned by root)", spawner.user.name, path)
    if view["dropped"]:
        logger.info("sessions do not import from %s: the session user can write there", ", ".join(view["dropped"]))
    return not view["problems"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.server", description="Run a board server.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
