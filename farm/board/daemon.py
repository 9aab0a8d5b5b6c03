"""The board daemon: ``python -m farm.server --host 127.0.0.1 --port 9090 --key rasp4``.

One process listens and does handshakes; each accepted session runs in a
process of its own, with its own process group, working directory and
unprivileged user, forked by the session spawner (:mod:`farm.board.spawner`), which
the daemon forks before it reads any secret. The daemon outlives whatever the
session's code does: when the session process dies (a segfault, an abort,
``os._exit``, a kill, the session timeout) the daemon tells the client how,
removes the session directory, and accepts the next client. Standard library
only, Python >= 3.8.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import select
import selectors
import shutil
import signal
import socket
import struct
import sys
import tempfile
import termios
import time
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

from ..errors import ProtocolError
from ..lifetime import become_subreaper, die_with_launcher, kill_children
from ..logs import configure_logging
from ..net.gate import Gate, Limits, LogThrottle, Ticket, add_admission_arguments, address_key
from ..net.secret import add_secret_argument, daemon_secret
from ..net.sockets import bind_first_free, parse_address, recv_nowait
from ..net.tls import Handshake, TlsConfig, TlsError, add_tls_arguments, daemon_tls
from ..net.transport import send_buffers, tune
from ..protocol.auth import Acceptor, AuthError
from ..protocol.framing import DEFAULT_MAX_PAYLOAD, encode_frame
from ..protocol.handshake import CODE_BUSY, CODE_MISMATCH, CODE_SUCCESS, Hello, HelloReader, encode_reply, parse_key
from ..protocol.ops import Op
from ..protocol.peers import looks_like_tls, spoke
from . import confine
from .registration import ProxyDialer, TrackerLink
from .relay import SessionRelay
from .sandbox import DEFAULT_SESSION_USER, not_dumpable, session_user, warn_about
from .session import (
    DEFAULT_SESSION_QUOTA_FILES,
    DEFAULT_SESSION_QUOTA_MB,
    MB,
    SessionStatus,
    directory_usage,
    megabytes,
    over_files_message,
    over_quota_message,
)
from .spawner import ENDED, FAILED, STARTED, SessionOrder, Spawner, SpawnerGone, report_numbers

logger = logging.getLogger("farm.server")

#: Connections still in their handshake at once (``--max-unproven``); more are closed at accept.
MAX_PENDING_HANDSHAKES = 64
#: Of those, from one address (``--max-unproven-per-address``): silent peers of one address leave the others room.
MAX_PENDING_PER_ADDRESS = 16
#: Seconds between two checks of the running session's directory against the quota.
QUOTA_CHECK_PERIOD = 1.0
#: Seconds the daemon tries to tell a client how its session ended.
NOTIFY_TIMEOUT = 2.0
#: Longest a session may last by default, in seconds (the board's ``--max-session-time``).
DEFAULT_MAX_SESSION_TIME = 3600.0
#: Seconds a stopping daemon waits for the spawner to report the end of the session it killed.
STOP_TIMEOUT = 10.0


class _Pending:
    def __init__(self, sock: socket.socket, peer: str, ticket: Ticket, secret: Optional[bytes]) -> None:
        self.sock = sock
        self.peer = peer
        self.ticket = ticket  # counts against the bounds on unproven connections until the peer proves itself
        self.deadline = ticket.deadline
        self.tls: Optional[Handshake] = None  # with TLS: its handshake, first of all
        self.auth = Acceptor(secret) if secret is not None else None  # then the proof of the farm secret
        self.sent = 0  # bytes sent before the handshake's reply
        self.reader = HelloReader()


class _Active:
    """The session being served: its process, connection and directory."""

    def __init__(self, sock: socket.socket, peer: str, directory: str, timeout: Optional[float],
                 status: SessionStatus, relay: Optional[SessionRelay] = None,
                 cgroup: Optional[confine.SessionCgroup] = None, timeout_reason: str = "") -> None:  # fmt: skip
        self.pid = 0  # once the spawner reported it
        self.cgroup = cgroup  # the session's own cgroup, where the board has one
        self.sock = sock
        self.relay = relay  # under TLS: the daemon relays between the client and the session process
        self.sent_before = 0  # bytes sent on the connection before the session process took over
        self.peer = peer
        self.directory = directory
        self.status = status  # shared with the session process; one session at a time
        self.status.state = SessionStatus.IDLE
        self.started = time.monotonic()
        self.started_at = time.time()  # the board's clock, reported to the client at the end
        self.timeout = timeout
        self.timeout_reason = timeout_reason  # which limit the timeout is, for the client: see _session_time
        self.deadline = self.started + timeout if timeout else None
        self.timed_out = False
        self.abandoned = False  # the client hung up while the session ran code
        self.start_failure = ""  # why the spawner could not start the session process
        self.over_quota = 0  # the directory's size once found over the quota
        self.over_files = False  # the directory was found to hold more entries than its quota
        self.oom_kills = 0  # processes of the session the kernel killed over its memory limit
        self.next_quota_check = self.started + QUOTA_CHECK_PERIOD


def describe_exit(wait_status: int) -> Tuple[str, Optional[int], Optional[int]]:
    """``("was killed by signal 11 (SIGSEGV)", 11, None)`` or ``("exited with code 3", None, 3)``."""
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        return "was killed by signal %d (%s)" % (number, name), number, None
    code = os.WEXITSTATUS(wait_status)
    return "exited with code %d" % code, None, code


class BoardServer:
    """Serves one session at a time on ``host:port``; see the module docstring.

    ``spawner`` starts the sessions: make it (:class:`farm.board.spawner.Spawner`) before reading any secret.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9090,
        port_end: int = 9199,
        key: str = "",
        work_dir: Optional[str] = None,
        max_message_size: int = DEFAULT_MAX_PAYLOAD,
        handshake_timeout: float = 10.0,
        tracker: Optional[Tuple[str, int]] = None,
        custom_addr: Optional[str] = None,
        through_proxy: bool = False,
        name: str = "",
        secret: Optional[bytes] = None,
        session_quota: int = DEFAULT_SESSION_QUOTA_MB * MB,
        tls: Optional[TlsConfig] = None,
        max_session_time: float = DEFAULT_MAX_SESSION_TIME,
        session_quota_files: int = DEFAULT_SESSION_QUOTA_FILES,
        max_pending: int = MAX_PENDING_HANDSHAKES,
        max_pending_per_address: int = MAX_PENDING_PER_ADDRESS,
        *,
        spawner: Spawner,
        confinement: Optional[confine.Confinement] = None,
    ) -> None:
        self.host = host
        self._spawner = spawner  # what starts the sessions: forked before the caller read any secret
        self._confinement = confinement  # the sessions' cgroups, where the board has them
        self.limits = spawner.limits  # processes, open files and memory of each session
        self.key = key
        self.secret = secret
        self.tls = tls
        self.session_quota = session_quota  # bytes a session's directory may hold (0: no limit)
        self.session_quota_files = session_quota_files  # files and directories it may hold (0: no limit)
        self.max_session_time = max_session_time  # seconds (0: no limit)
        self.max_message_size = max_message_size
        self.handshake_timeout = handshake_timeout
        # Through a proxy the board dials out (host and port are the proxy's) and listens nowhere.
        self._listener = None if through_proxy else bind_first_free(host, port, port_end)
        self.port = port if self._listener is None else self._listener.getsockname()[1]
        self.name = name or default_name(self.port if self._listener is not None else None)
        self._own_work_dir = work_dir is None
        self.work_dir = tempfile.mkdtemp(prefix="farm-board-") if work_dir is None else work_dir
        os.makedirs(self.work_dir, exist_ok=True)
        if self._own_work_dir:
            os.chmod(self.work_dir, 0o711)  # the session user reaches its own directory in it, and lists nothing
        self._selector = selectors.DefaultSelector()
        self._pending: Dict[socket.socket, _Pending] = {}
        self._gate = Gate(Limits(max_pending, max_pending_per_address, handshake_timeout))  # the pending, bounded
        self._log_throttle = LogThrottle(logger)  # refusals and failed accepts: a line per kind and interval
        self._active: Optional[_Active] = None
        self._stopping = False
        self._spawner_alive = True
        self._stop_signal = 0
        self._accept_paused_until = 0.0  # while out of file descriptors
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._link: Optional[Union[TrackerLink, ProxyDialer]] = None  # how clients find the board
        if through_proxy:
            self._link = ProxyDialer((host, port), key, self._selector, self._paired_by_proxy, secret, tls)
        elif tracker is not None:
            self._link = TrackerLink(tracker, key, self.port, self._selector, custom_addr, self.name, secret, tls)

    # --- the daemon loop ----------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until SIGTERM or SIGINT; then end any session and clean up."""
        self._watchdog = Watchdog(self.work_dir if self._own_work_dir else None, self._confinement)
        self._subreaper = become_subreaper()  # what sessions leave behind in sessions of its own comes here
        if self._listener is not None:
            logger.info("bind to %s:%d", self.host, self.port)
            self._listener.setblocking(False)
            self._selector.register(self._listener, selectors.EVENT_READ)
        else:
            logger.info("serving key %r through the proxy at %s:%d", self.key, self.host, self.port)
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ)
        self._selector.register(self._spawner.sock, selectors.EVENT_READ, self._spawner)
        signal.set_wakeup_fd(self._wakeup_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._on_stop_signal)
        try:
            while not self._stopping:
                for key, mask in self._selector.select(self._next_timeout()):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj == self._wakeup_r:
                        self._drain_wakeups()
                    elif key.data is self._spawner:
                        self._on_spawner_report()
                    elif isinstance(key.data, (TrackerLink, ProxyDialer, SessionRelay)):
                        key.data.on_event(mask)
                    else:
                        self._on_handshake_data(key.data)
                self._expire(time.monotonic())
                if self._link is not None:
                    self._link.tick(time.monotonic())
                if self._accept_paused_until and time.monotonic() >= self._accept_paused_until:
                    self._accept_paused_until = 0.0
                    self._selector.register(self._listener, selectors.EVENT_READ)
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
        deadlines = [pending.deadline for pending in self._pending.values()]
        if self._active is not None and self._active.deadline is not None:
            deadlines.append(self._active.deadline)
        if self._accept_paused_until:
            deadlines.append(self._accept_paused_until)
        if self._link is not None:
            deadlines.append(self._link.next_deadline())
        if not deadlines:
            return 1.0
        return max(0.0, min(min(deadlines) - time.monotonic(), 1.0))

    # --- handshakes ---------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, address = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._log_throttle.warning(
                    "accept", time.monotonic(), "cannot accept connections (%s); pausing for a second", exc
                )
                self._selector.unregister(self._listener)  # it would keep reporting ready
                self._accept_paused_until = time.monotonic() + 1.0
            else:
                logger.info("accept failed: %s", exc)
            return
        peer = "%s:%d" % address[:2]
        ticket, displaced = self._gate.enter(address_key(address[0]), time.monotonic())
        if ticket is None:
            kind, why = self._gate.refusal(address_key(address[0]))
            self._log_throttle.warning(kind, time.monotonic(), "refusing %s: %s", peer, why)
            sock.close()
            return
        if displaced is not None:
            ended: _Pending = displaced.data  # type: ignore[assignment]
            why = "it did not finish its handshake, and one from an address with fewer took its place"
            self._log_throttle.warning("displaced", time.monotonic(), "closing %s: %s", ended.peer, why)
            self._drop_pending(ended)
        sock.setblocking(False)
        pending = _Pending(sock, peer, ticket, self.secret)
        ticket.data = pending
        self._pending[sock] = pending
        self._selector.register(sock, selectors.EVENT_READ, pending)

    def _drop_pending(self, pending: _Pending, close: bool = True) -> None:
        self._selector.unregister(pending.sock)
        del self._pending[pending.sock]
        if close:
            self._gate.leave(pending.ticket)
            pending.sock.close()

    def _on_handshake_data(self, pending: _Pending) -> None:
        if self.tls is not None and not (pending.tls is not None and pending.tls.done):
            if not self._advance_tls(pending):
                return
        try:
            data = recv_nowait(pending.sock, 4096)
        except OSError as exc:
            logger.info("handshake from %s failed: %s", pending.peer, exc)
            self._drop_pending(pending)
            return
        if data is None:
            return
        if not data:
            logger.info("%s closed the connection during the handshake", pending.peer)
            self._drop_pending(pending)
            return
        if pending.auth is not None and not pending.auth.done:
            data = self._on_proof_data(pending, data)
            if not data:
                return
        try:
            hello = pending.reader.feed(data)
            if hello is not None:
                hello.timeout  # noqa: B018  (a malformed -timeout is a bad handshake)
        except ProtocolError as exc:
            logger.warning("bad handshake from %s: %s; closing", pending.peer, exc)
            self._drop_pending(pending)
            return
        if hello is not None:
            self._drop_pending(pending, close=False)
            self._gate.leave(pending.ticket)
            self._admit(pending, hello)

    def _advance_tls(self, pending: _Pending) -> bool:
        """Take the TLS handshake a step on; whether it is done (and bytes may follow)."""
        assert self.tls is not None
        if pending.tls is None:  # refuse a peer that does not start TLS, naming what it spoke
            try:
                first = pending.sock.recv(5, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                first = b""
                logger.info("handshake from %s failed: %s", pending.peer, exc)
            if not looks_like_tls(first):
                if first:
                    logger.warning("refused %s: it spoke %s, not TLS", pending.peer, spoke(first))
                self._drop_pending(pending)
                return False
            self._drop_pending(pending, close=False)  # wrapping detaches the socket
            try:
                pending.tls = Handshake(pending.sock, self.tls, server_side=True)
            except TlsError as exc:
                logger.info("refused %s: %s", pending.peer, exc)
                self._gate.leave(pending.ticket)
                return False
            pending.sock = pending.tls.sock
            self._pending[pending.sock] = pending
            self._selector.register(pending.sock, selectors.EVENT_READ, pending)
        try:
            events = pending.tls.step()
        except TlsError as exc:
            logger.warning("refused %s: TLS handshake failed: %s", pending.peer, exc)
            self._drop_pending(pending)
            return False
        self._selector.modify(pending.sock, events or selectors.EVENT_READ, pending)
        return pending.tls.done

    def _on_proof_data(self, pending: _Pending, data: bytes) -> bytes:
        """Feed the farm-secret exchange; the bytes after it once it succeeded (b"" while it goes on or failed)."""
        auth = pending.auth
        assert auth is not None
        try:
            auth.feed(data)
        except AuthError as exc:
            logger.warning("refused %s: %s", pending.peer, exc)
            _send_now(pending.sock, auth.data_to_send())  # the refusal, if it got that far
            self._drop_pending(pending)
            return b""
        outgoing = auth.data_to_send()
        if not _send_now(pending.sock, outgoing):
            logger.info("%s stopped reading during authentication; closing", pending.peer)
            self._drop_pending(pending)
            return b""
        pending.sent += len(outgoing)
        if auth.done:
            logger.debug("%s proved it holds the farm secret", pending.peer)
            self._gate.leave(pending.ticket)
        return auth.leftover()

    def _key_matches(self, hello: Hello) -> bool:
        if hello.role != "client":
            return False
        if self._link is not None:  # only the client the tracker handed the board to
            return self._link.accepts(hello.key)
        return not hello.key or not self.key or hello.key == self.key

    def _admit(self, pending: _Pending, hello: Hello) -> None:
        sock, peer, leftover = pending.sock, pending.peer, pending.reader.leftover()
        accepted = False
        if not self._key_matches(hello):
            logger.warning("key mismatch from %s: %s:%s (this board: %r)", peer, hello.role, hello.key, self.key)
            reply = encode_reply(CODE_MISMATCH)
        elif self._active is not None:
            logger.info("refusing %s: busy", peer)
            reply = encode_reply(CODE_BUSY, self._busy_reason())
        else:
            reply = encode_reply(CODE_SUCCESS, "server:" + self.key)
            accepted = True
        sock.setblocking(True)
        sock.settimeout(5.0)
        try:
            sock.sendall(reply)
        except OSError as exc:
            logger.info("handshake reply to %s failed: %s", peer, exc)
            sock.close()
            return
        if not accepted:
            sock.close()
            return
        sock.settimeout(None)
        tune(sock)
        self._start_session(sock, peer, hello.timeout, leftover, pending.sent + len(reply))

    def _paired_by_proxy(self, sock: socket.socket, client_key: str, leftover: bytes, bytes_sent: int) -> None:
        """The proxy paired a client with this board: its key text carries the client's options."""
        try:
            timeout = parse_key(client_key).timeout
        except ProtocolError as exc:
            logger.warning("the proxy passed on a bad client key %r: %s", client_key, exc)
            sock.close()
            self._link.session_ended()  # type: ignore[union-attr]  # dial again
            return
        tune(sock)
        self._start_session(sock, "a client of the proxy", timeout, leftover, bytes_sent)

    def _busy_reason(self) -> str:
        active = self._active
        assert active is not None
        return "board %r at %s:%d is busy: it serves a session from %s since %.1f s" % (
            self.key,
            self.host,
            self.port,
            active.peer,
            time.monotonic() - active.started,
        )

    # --- sessions -----------------------------------------------------------

    def _start_session(
        self, sock: socket.socket, peer: str, timeout: Optional[float], leftover: bytes, bytes_sent: int
    ) -> None:
        try:
            directory = self._session_directory()
        except OSError as exc:
            logger.error("cannot make a session directory for %s: %s", peer, exc)
            sock.close()
            return
        try:
            cgroup = self._confinement.session() if self._confinement is not None else None
        except OSError as exc:
            logger.error("cannot make a cgroup for the session of %s: %s", peer, exc)
            shutil.rmtree(directory, ignore_errors=True)
            sock.close()
            return
        relay = SessionRelay(sock, self._selector) if self.tls is not None else None
        timeout, timeout_reason = self._session_time(timeout)
        active = _Active(sock, peer, directory, timeout, self._spawner.status, relay, cgroup, timeout_reason)
        active.sent_before = bytes_sent
        order = SessionOrder(
            directory,
            leftover,
            bytes_sent,
            self.key,
            self.name,
            self.session_quota,
            self.max_message_size,
            cgroup.name if cgroup is not None else "",
        )
        self._active = active
        try:
            self._spawner.start(order, relay.child_end if relay is not None else sock)
        except SpawnerGone as exc:
            self._spawner_gone(exc)
            return
        finally:
            if relay is not None:
                relay.child_end.close()  # the session process has its own copy now
        if relay is not None:
            relay.register()
        if self._link is not None:
            self._link.session_started()

    def _session_time(self, asked: Optional[float]) -> Tuple[Optional[float], str]:
        """The session's timeout: what the client asked for, at most --max-session-time; and which limit it is."""
        limit = self.max_session_time
        if asked and (not limit or asked <= limit):
            return asked, "the session timeout of %g s" % asked
        if not limit:
            return None, ""
        wanted = "asked for %g s" % asked if asked else "asked for none"
        return limit, "the board's maximum session time of %g s (--max-session-time; the client %s)" % (limit, wanted)

    def _session_directory(self) -> str:
        """A new session directory, mode 700, owned by the session user."""
        directory = tempfile.mkdtemp(prefix="session-", dir=self.work_dir)
        user = self._spawner.user
        if user.switch:
            try:
                os.chown(directory, user.uid, user.gid)
            except OSError:
                os.rmdir(directory)
                raise
        return directory

    def _on_spawner_report(self) -> None:
        try:
            kind, body = self._spawner.receive()
        except SpawnerGone as exc:
            self._spawner_gone(exc)
            return
        active = self._active
        if active is None:
            logger.error("the session spawner reported %r with no session running; ignored", kind)
        elif kind == STARTED:
            active.pid = report_numbers(body)[0]
            self._watchdog.watch(active.pid, active.directory)
            logger.info(
                "session from %s started (pid %d%s)",
                active.peer,
                active.pid,
                ", timeout %g s" % active.timeout if active.timeout else "",
            )
        elif kind == ENDED:
            self._watchdog.watch(0)
            self._remove_cgroup(active)
            self._end_session(active, report_numbers(body)[1])
        elif kind == FAILED:
            active.start_failure = body.decode("utf-8", "replace")
            self._remove_cgroup(active)
            self._end_session(active, 0)
        else:
            logger.error("the session spawner sent an unknown report %r; ignored", kind)

    def abandon(self) -> None:
        """Give up before serving: close the listener, remove the daemon's own work directory."""
        if self._listener is not None:
            self._listener.close()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    @property
    def spawner_alive(self) -> bool:
        """False once the session spawner died: the daemon then stops (exit code 1)."""
        return self._spawner_alive

    def _spawner_gone(self, exc: SpawnerGone) -> None:
        """No session can start any more: stop (a supervisor restarts the daemon), and say so."""
        if not self._stopping:
            logger.error("%s; the board daemon stops, since it cannot start sessions any more", exc)
        self._stopping = True
        self._spawner_alive = False

    def _kill_strays(self) -> None:
        """Kill and reap what a session left behind that came to the daemon, a subreaper: with the spawner
        gone, its orphans come here. The daemon's other children are the watchdog and the spawner."""
        if self._subreaper:
            kill_children(keep=(self._watchdog.pid, self._spawner.pid))

    def _kill_session(self, active: _Active) -> None:
        """SIGKILL every process of the session: its cgroup where it has one, and its process group (by the
        spawner, which kills only a session it has not reaped yet, and reports the end)."""
        if active.cgroup is not None:
            active.cgroup.kill()
        try:
            self._spawner.kill()
        except SpawnerGone as exc:
            self._spawner_gone(exc)

    def _remove_cgroup(self, active: _Active) -> None:
        """Once the session process is reaped: note what the cgroup saw, kill what is left in it, remove it."""
        cgroup = active.cgroup
        if cgroup is None:
            return
        active.oom_kills = cgroup.oom_kills()
        refused = cgroup.refused_forks()
        if refused:
            logger.warning("session from %s: the process limit of %d refused %d fork(s)", active.peer,
                           self.limits.processes, refused)  # fmt: skip
        if not cgroup.remove():
            logger.error("the cgroup of the session from %s could not be emptied and removed", active.peer)

    def _expire(self, now: float) -> None:
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            logger.warning("handshake from %s timed out after %g s; closing", pending.peer, self.handshake_timeout)
            self._drop_pending(pending)
        active = self._active
        if active is not None and active.deadline is not None and now >= active.deadline and not active.timed_out:
            logger.warning("session from %s reached its timeout of %g s; killing it", active.peer, active.timeout)
            active.timed_out = True
            self._kill_session(active)
        checked = active is not None and (self.session_quota or self.session_quota_files)
        if checked and now >= active.next_quota_check and not (active.over_quota or active.over_files):
            self._check_quota(active, now)
        if active is not None and not active.abandoned and _hung_up_while_running(active):
            logger.warning("client %s left while %s; killing the session", active.peer, active.status.activity)
            active.abandoned = True
            self._kill_session(active)

    def _check_quota(self, active: _Active, now: float) -> None:
        """End the session if its directory holds more than its quotas (RLIMIT_FSIZE bounds each file, not the sum).

        Counting stops past the quota of entries, so a directory of millions of files costs no more to check.
        """
        active.next_quota_check = now + QUOTA_CHECK_PERIOD
        usage = directory_usage(active.directory, self.session_quota_files)
        if self.session_quota_files and usage.entries > self.session_quota_files:
            active.over_files = True
            message = over_files_message(self.session_quota_files)
        elif self.session_quota and usage.size > self.session_quota:
            active.over_quota = usage.size
            message = over_quota_message(usage.size, self.session_quota)
        else:
            return
        logger.warning("session from %s: %s; killing it", active.peer, message)
        self._kill_session(active)

    def _end_session(self, active: _Active, wait_status: int, reason: str = "") -> None:
        """Tell the client how the (reaped) session process ended and when it ran (board clock); clean up."""
        self._active = None
        if self._link is not None and not reason:
            self._link.session_ended()
        how, signal_number, exit_code = describe_exit(wait_status)
        state = active.status.state
        activity = active.status.activity
        if reason:
            message = reason
        elif active.start_failure:
            message = "the board could not start a session process: %s" % active.start_failure
        elif active.over_quota:
            message = "%s; the board ended the session while %s" % (
                over_quota_message(active.over_quota, self.session_quota),
                activity,
            )
        elif active.over_files:
            message = "%s; the board ended the session while %s" % (
                over_files_message(self.session_quota_files),
                activity,
            )
        elif active.abandoned:
            message = "the client left while %s; the board ended the session" % activity
        elif active.timed_out:
            message = "%s expired while %s; the board ended the session" % (active.timeout_reason, activity)
        elif signal_number is None and exit_code == 0 and state == SessionStatus.FINISHED:
            message = ""
        elif active.oom_kills:
            message = (
                "the session went over its memory limit of %s MB (--session-memory): the kernel killed %d of its "
                "processes, and the board's session process %s while %s"
                % (megabytes(self.limits.memory), active.oom_kills, how, activity)
            )
        else:
            message = "the board's session process %s while %s" % (how, activity)
        elapsed = time.monotonic() - active.started
        if message:
            logger.warning("session from %s ended after %.1f s: %s", active.peer, elapsed, message)
        else:
            logger.info("session from %s ended after %.1f s", active.peer, elapsed)
        shutil.rmtree(active.directory, ignore_errors=True)  # before the client sees the end of the stream
        if active.relay is not None:
            active.relay.drain_child()
        notice = None
        if not self._reply_cut_short(active):  # else no frame can follow on the connection
            notice = {
                "message": message,
                "signal": signal_number,
                "exit_code": exit_code,
                "timed_out": active.timed_out,
                "board": self.name,
                "started": active.started_at,
                "ended": time.time(),
            }
        if active.relay is not None:
            active.relay.finish(b"".join(encode_frame(Op.SESSION_END, 0, notice)) if notice else b"", NOTIFY_TIMEOUT)
        else:
            if notice is not None:
                self._notify(active.sock, notice)
            active.sock.close()

    def _reply_cut_short(self, active: _Active) -> bool:
        """Whether the dead session process left a reply half sent."""
        if active.status.state != SessionStatus.SENDING:
            return False
        if active.relay is not None:  # what it wrote to the relay reaches the client before anything else
            written: Optional[int] = active.sent_before + active.relay.from_child
        else:
            written = bytes_written(active.sock)
        return written is None or written < active.status.reply_end

    def _notify(self, sock: socket.socket, notice: dict) -> None:
        try:
            sock.settimeout(NOTIFY_TIMEOUT)
            send_buffers(sock, encode_frame(Op.SESSION_END, 0, notice))
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            logger.info("could not tell the client: %s", exc)

    def _shutdown(self) -> None:
        signal.set_wakeup_fd(-1)
        active = self._active
        if active is not None:
            wait_status = self._stop_session(active)
            self._remove_cgroup(active)
            self._end_session(active, wait_status, "the board daemon shut down")
        self._spawner.close()
        self._kill_strays()
        for pending in list(self._pending.values()):
            self._drop_pending(pending)
        self._watchdog.stop()
        if self._confinement is not None:
            self._confinement.destroy()
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

    def _stop_session(self, active: _Active) -> int:
        """Kill the running session and wait for the spawner to report its end: its wait status.

        With the spawner gone, the session died with it (its parent-death signal): SIGKILL.
        """
        if active.cgroup is not None:
            active.cgroup.kill()
        if self._spawner_alive:
            try:
                self._spawner.kill()
                self._spawner.sock.settimeout(STOP_TIMEOUT)
                while True:
                    kind, body = self._spawner.receive()
                    if kind == ENDED:
                        self._watchdog.watch(0)
                        return report_numbers(body)[1]
            except SpawnerGone:
                pass
        self._watchdog.watch(0)
        self._kill_strays()
        return signal.SIGKILL


def _send_now(sock: socket.socket, data: bytes) -> bool:
    """Send a few bytes on a non-blocking socket at once; False if they did not all go."""
    if not data:
        return True
    try:
        return sock.send(data) == len(data)
    except OSError:
        return False


def _hung_up_while_running(active: _Active) -> bool:
    """Whether the client closed its end while the session process runs code (and so cannot notice).

    An idle session process sees the end of the stream itself; one running a
    long call would keep the board until the call returned. Linux only
    (``POLLRDHUP``); elsewhere such a session runs to the end of its call.
    """
    hangup = getattr(select, "POLLRDHUP", 0)
    if not hangup or active.status.state != SessionStatus.RUNNING:
        return False
    poller = select.poll()
    poller.register(active.sock, hangup)
    return bool(poller.poll(0))


def default_name(port: Optional[int]) -> str:
    """``HOSTNAME:PORT`` of a listening board; ``HOSTNAME/PID`` of one that dials a proxy."""
    host = socket.gethostname()
    return "%s:%d" % (host, port) if port is not None else "%s/%d" % (host, os.getpid())


def bytes_written(sock: socket.socket) -> Optional[int]:
    """Bytes written to a TCP socket so far by anyone holding it: acknowledged plus queued (Linux)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        queued = struct.unpack("=i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, AttributeError):
        return None
    if len(info) < 128:
        return None
    return struct.unpack_from("=Q", info, 120)[0] + queued  # tcpi_bytes_acked


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


# --- command line -------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The board server's options, shared by ``python -m farm.server`` and ``farm server``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9090, help="first port to try; 0 lets the system pick")
    parser.add_argument("--port-end", type=int, default=9199, help="end of the port range, exclusive")
    parser.add_argument("--key", default="", help="the board's key, e.g. rasp4")
    parser.add_argument("--work-dir", help="where session directories go (default: a fresh temporary directory)")
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=DEFAULT_MAX_PAYLOAD,
        help="largest payload of one message, in bytes (default: %d)" % DEFAULT_MAX_PAYLOAD,
    )
    parser.add_argument(
        "--session-quota",
        metavar="MB",
        type=_megabytes,
        default=DEFAULT_SESSION_QUOTA_MB,
        help="most a session's directory may hold, in MB: larger uploads are refused, files written past it "
        "fail (EFBIG), and a session whose directory outgrows it is ended; 0: no limit (default: %d)"
        % DEFAULT_SESSION_QUOTA_MB,
    )
    parser.add_argument(
        "--session-quota-files",
        metavar="N",
        type=_count,
        default=DEFAULT_SESSION_QUOTA_FILES,
        help="most files and directories a session's directory may hold: a session found with more is ended; "
        "0: no limit (default: %d)" % DEFAULT_SESSION_QUOTA_FILES,
    )
    parser.add_argument(
        "--max-session-time",
        metavar="SECONDS",
        type=_seconds,
        default=DEFAULT_MAX_SESSION_TIME,
        help="longest a session may last: a client may ask for a shorter session timeout, never a longer one, "
        "and one that asks for none gets this; 0: no limit (default: %g)" % DEFAULT_MAX_SESSION_TIME,
    )
    parser.add_argument(
        "--session-memory",
        metavar="MB",
        type=_megabytes,
        default=None,
        help="most memory a session's processes may use together, in MB (each process's private memory where "
        "the board has no memory cgroup); 0: no limit (default: half of the board's memory)",
    )
    parser.add_argument(
        "--session-processes",
        metavar="N",
        type=_count,
        default=confine.DEFAULT_PROCESSES,
        help="most processes and threads a session may run at once (with no pids cgroup: RLIMIT_NPROC, at what "
        "the session's user runs already plus N); 0: no limit (default: %d)" % confine.DEFAULT_PROCESSES,
    )
    parser.add_argument(
        "--session-open-files",
        metavar="N",
        type=_count,
        default=confine.DEFAULT_OPEN_FILES,
        help="most files each process of a session may hold open (RLIMIT_NOFILE); 0: the daemon's own limit "
        "(default: %d)" % confine.DEFAULT_OPEN_FILES,
    )
    parser.add_argument(
        "--handshake-timeout", type=float, default=10.0, help="seconds a new connection has to say hello"
    )
    parser.add_argument(
        "--tracker",
        metavar="HOST:PORT",
        type=parse_address,
        help="register with this tracker; clients come through it",
    )
    parser.add_argument("--name", default="", help="the board's name in reports (default: HOSTNAME:PORT)")
    parser.add_argument("--custom-addr", metavar="ADDR", help="the address the tracker gives clients (default: ours)")
    parser.add_argument(
        "--through-proxy",
        action="store_true",
        help="dial out to the proxy at --host:--port instead of listening (for boards behind NAT)",
    )
    parser.add_argument(
        "--session-user",
        metavar="NAME",
        help="the user a daemon started as root runs sessions as (default: %s; better a user of its own that owns "
        "nothing); a daemon that is not root runs them as itself" % DEFAULT_SESSION_USER,
    )
    add_secret_argument(parser)
    add_tls_arguments(parser)
    add_admission_arguments(parser, Limits(MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_ADDRESS, 0.0), with_timeout=False)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _whole(what: str) -> Callable[[str], int]:
    """An argparse type for a whole number of ``what`` (0 or more)."""

    def parse(text: str) -> int:
        if not text.isdigit():
            raise argparse.ArgumentTypeError("%r is not %s (0 or more)" % (text, what))
        return int(text)

    return parse


_megabytes, _count = _whole("a number of MB"), _whole("a whole number")


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError("%r is not a number of seconds (0 or more)" % text)
    return seconds


def run(args: argparse.Namespace) -> int:
    die_with_launcher()
    configure_logging(args.log_level)
    try:
        user = session_user(args.session_user)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    limits = confine.Limits(
        processes=args.session_processes,
        open_files=args.session_open_files,
        memory=confine.default_memory() if args.session_memory is None else args.session_memory * MB,
    )
    # The sessions' cgroups first: on cgroup v2 the daemon may move into a leaf of its own, and so must the spawner.
    confinement = confine.Confinement.create(limits)
    spawner = Spawner(user, limits, confinement)  # before any secret is read: sessions are forked from it
    not_dumpable()  # nor may a session of the daemon's own user read its memory through /proc
    warn_about(user)
    secret = daemon_secret(args.secret_file, None if args.through_proxy else args.host, "board server")
    tls = daemon_tls(args, listens=not args.through_proxy, dials=args.through_proxy or args.tracker is not None)
    try:
        server = BoardServer(
            args.host,
            args.port,
            args.port_end,
            args.key,
            args.work_dir,
            args.max_message_size,
            args.handshake_timeout,
            args.tracker,
            args.custom_addr,
            args.through_proxy,
            args.name,
            secret,
            session_quota=args.session_quota * MB,
            tls=tls,
            max_pending=args.max_unproven,
            max_pending_per_address=args.max_unproven_per_address,
            max_session_time=args.max_session_time,
            session_quota_files=args.session_quota_files,
            spawner=spawner,
            confinement=confinement,
        )
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
