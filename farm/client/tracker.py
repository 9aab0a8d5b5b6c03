"""Talk to a tracker: request a board of a key, read the summary (standard library only).

tracker = farm.connect_tracker("127.0.0.1", 9190)
with tracker.request("rasp4", priority=1, session_timeout=60, wait=300) as remote:
    ...

With TLS (``tls=``, else ``$REMOTEDEV_TLS_*``) the connection to the tracker
and to the boards it hands out checks their certificates; the farm secret's
exchange then runs inside TLS.
"""

from __future__ import annotations

import importlib.util
import socket
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..errors import FarmError, HandshakeError, ProtocolError
from ..logs import escape_control
from ..net.credentials import Credentials
from ..net.opening import OpeningClosed, open_socket
from ..net.secret import SECRET_ENV, secret_from
from ..net.sockets import keep_alive
from ..net.tls import ENV as TLS_ENV
from ..net.tls import TlsConfig
from ..protocol.auth import AuthError
from ..protocol.opening import Connector, Kind, Opened
from ..protocol.tracker import FARM_PROTOCOL, TVM_PROTOCOL, Code, MessageReader, encode_message

#: How often a request is retried when the board it was handed cannot be reached.
BOARD_CONNECT_ATTEMPTS = 3
#: Seconds past a request's ``wait`` that the client itself gives up (TVM's tracker ignores ``wait``).
WAIT_GRACE = 2.0
#: Most characters of a tracker's text shown in an error.
MAX_SHOWN = 300


class TrackerError(FarmError):
    """The tracker refused or could not serve a request; the message says why."""


class NoBoardError(TrackerError):
    """No board of the key was handed out: none serves it, or none freed in time."""


class Assignment(Tuple[str, int, str, str]):
    """Where the handed-out board listens, the match key to present to it, and the protocol it speaks."""

    @property
    def host(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]

    @property
    def matchkey(self) -> str:
        return self[2]

    @property
    def protocol(self) -> str:
        return self[3]


class _Progress:
    """The progress reports of one request: each WAITING, and every ``every`` seconds when that is given."""

    def __init__(
        self, report: Optional[Callable[[Dict[str, Any]], None]], every: Optional[float], started: float
    ) -> None:
        self.report = report
        self.every = every if report is not None and every else None
        self.started = started
        self.next_tick = None if self.every is None else started + self.every
        self.state: Dict[str, Any] = {}

    def tick(self, now: float) -> None:
        """Report again if ``every`` has passed since the last tick."""
        if self.report is not None and self.every is not None and self.next_tick is not None and now >= self.next_tick:
            self.next_tick = now + self.every
            self.report(dict(self.state, waited=now - self.started))

    def waiting(self, state: Any, now: float) -> None:
        """Report the place in the queue that a WAITING message gave."""
        if self.report is not None and isinstance(state, dict):
            self.state = dict(state)
            self.report(dict(self.state, waited=now - self.started))


class TrackerClient:
    """A connection to a tracker; each call waits for its reply."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 10.0,
        secret: Optional[bytes] = None,
        tls: Optional[TlsConfig] = None,
    ) -> None:
        """``secret``: the farm secret, for the tracker and the boards it hands out (default: the one
        ``$REMOTEDEV_SECRET_FILE`` names, if any). ``tls``: the farm's TLS configuration, for the same
        connections (default: the one ``$REMOTEDEV_TLS_*`` name, if any)."""
        self.host = host
        self.port = port
        tls = tls if tls is not None else TlsConfig.from_env()
        self.credentials = Credentials(secret if secret is not None else secret_from(), tls)
        self._reader = MessageReader(expect_magic=False)  # (the opening takes the magic's echo)
        self._pending: list = []
        #: The board the last ``request()`` opened a session on (a TVM session does not say where it is).
        self.assigned: Optional[Assignment] = None
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise TrackerError("cannot reach the tracker at %s:%d: %s" % (host, port, exc)) from None
        keep_alive(sock)  # a request may wait a long time in the queue
        try:
            self._sock = tls.wrap_client(sock, host) if tls.enabled else sock
        except OSError as exc:  # TlsError, or the handshake timed out
            sock.close()
            raise TrackerError("the tracker at %s:%d: %s" % (host, port, exc)) from None
        try:
            opened = open_socket(self._sock, Connector(Kind.TRACKER, self.credentials.secret), timeout)
            assert isinstance(opened, Opened)  # (a tracker's opening opens, or raises)
            self._pending += self._reader.feed(opened.leftover)
        except OpeningClosed:  # before it echoed the magic
            self._sock.close()
            closed = "the tracker at %s:%d closed the connection" % (host, port)
            raise TrackerError("%s%s" % (closed, self._refusal_hint(closed=True))) from None
        except ConnectionResetError:  # a tracker with TLS resets a connection that does not start with TLS
            self._sock.close()
            raise TrackerError(
                "the tracker at %s:%d reset the connection%s" % (host, port, self._refusal_hint(closed=False))
            ) from None
        except AuthError as exc:
            self._sock.close()
            raise TrackerError("the tracker at %s:%d: %s" % (host, port, exc)) from None
        except (OSError, ProtocolError) as exc:
            self._sock.close()
            raise TrackerError("%s:%d is not a tracker: %s" % (host, port, exc)) from None

    def _refusal_hint(self, closed: bool) -> str:
        """Why a tracker may end a new connection at once, from what this end did not use: the farm secret (when
        it ``closed`` the connection) or TLS (when it closed or reset it)."""
        hints = []
        if closed and self.credentials.secret is None:
            hints.append("a farm with a secret does so: set %s" % SECRET_ENV)
        if not self.credentials.tls_enabled:
            hints.append("does the tracker use TLS? set --tls-ca / %s" % TLS_ENV["ca"])
        return " (%s)" % "; ".join(hints) if hints else ""

    def __enter__(self) -> TrackerClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _recv(self) -> bytes:
        data = self._sock.recv(65536)
        if not data:
            raise TrackerError("the tracker at %s:%d closed the connection" % (self.host, self.port))
        return data

    def _next_message(self, timeout: Optional[float]) -> Any:
        self._sock.settimeout(timeout)
        while not self._pending:
            self._pending += self._reader.feed(self._recv())
        return self._pending.pop(0)

    def call(self, message: list, timeout: Optional[float] = 10.0) -> Any:
        """Send one request and return the tracker's reply."""
        try:
            self._sock.sendall(encode_message(message))
            return self._next_message(timeout)
        except socket.timeout:
            raise TrackerError(
                "no reply from the tracker at %s:%d within %g s" % (self.host, self.port, timeout)  # type: ignore[str-format]  # it timed out: timeout is set
            ) from None
        except (OSError, ProtocolError) as exc:
            raise TrackerError("lost the tracker at %s:%d: %s" % (self.host, self.port, exc)) from None

    def ping(self) -> None:
        if self.call([Code.PING]) != Code.SUCCESS:
            raise TrackerError("the tracker did not answer PING")

    def summary(self) -> Dict[str, Any]:
        """``queue_info`` per key and ``server_info`` per board (with who holds it and since when).

        A summary that would pass the message limit lists only part of them and counts the rest under
        ``omitted`` (:data:`farm.protocol.tracker.OMITTED`)."""
        reply = self.call([Code.SUMMARY])
        if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == Code.SUCCESS):
            raise TrackerError("unexpected SUMMARY reply %s" % _clipped(reply))
        return _checked_summary(reply[1])

    def request_board(
        self,
        key: str,
        priority: int = 0,
        user: str = "",
        wait: Optional[float] = None,
        wait_for_key: bool = False,
        protocols: Sequence[str] = (FARM_PROTOCOL,),
        on_progress: Optional[Callable[[Dict[str, Any]], None]] = None,
        progress_every: Optional[float] = None,
    ) -> Assignment:
        """Queue for a board of ``key`` and return where it is once it is ours.

        ``wait``: give up after that many seconds (:class:`NoBoardError`).
        ``wait_for_key``: queue even if no board serves the key yet.
        ``on_progress`` receives ``{"position", "ahead", "boards", "free", "waited"}``
        whenever the place in the queue changes, and every ``progress_every``
        seconds if that is given.
        """
        options: Dict[str, Any] = {"protocols": list(protocols), "progress": on_progress is not None}
        if wait is not None:
            options["wait"] = wait
        if wait_for_key:
            options["wait_for_key"] = True
        progress = _Progress(on_progress, progress_every, time.monotonic())
        deadline = None if wait is None else progress.started + wait + WAIT_GRACE
        try:
            self._sock.sendall(encode_message([Code.REQUEST, key, user, priority, options]))
            reply = self._await_reply(deadline, progress)
        except socket.timeout:
            self.close()  # the request stays queued at a tracker that ignores wait; closing withdraws it
            raise NoBoardError(
                "no board of key %r was handed out within %g s" % (key, wait)  # type: ignore[str-format]  # it was set
            ) from None
        except (OSError, ProtocolError, TrackerError) as exc:  # TrackerError: it closed the connection
            where = "%s:%d" % (self.host, self.port)
            raise TrackerError(
                "lost the tracker at %s while waiting for a board of %r (the request went with it): %s"
                % (where, key, exc)
            ) from None
        if isinstance(reply, list) and len(reply) == 2 and reply[0] == Code.FAIL:
            raise NoBoardError(escape_control(str(reply[1])[:MAX_SHOWN]))
        if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == Code.SUCCESS and _is_board(reply[1])):
            raise TrackerError("unexpected REQUEST reply %s" % _clipped(reply))
        host, port, matchkey = reply[1][:3]
        protocol = reply[1][3] if len(reply[1]) == 4 else self._protocol_of(host, port)
        return Assignment((host, port, matchkey, protocol))

    def _await_reply(self, deadline: Optional[float], progress: _Progress) -> Any:
        """The reply to a REQUEST that is not WAITING, reporting progress meanwhile; socket.timeout at
        ``deadline``."""
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise socket.timeout()
            progress.tick(now)
            until = min(t for t in (deadline, progress.next_tick, now + 3600.0) if t is not None)
            try:
                reply = self._next_message(max(0.001, until - now))
            except socket.timeout:
                continue
            if isinstance(reply, list) and len(reply) == 2 and reply[0] == Code.WAITING:
                progress.waiting(reply[1], time.monotonic())
                continue
            return reply

    def _protocol_of(self, host: str, port: int) -> str:
        """The protocol of the board at ``host:port`` when the tracker (TVM's) did not name it.

        Our boards' UPDATE_INFO says ``"protocol": "farm"``; TVM's boards say nothing.
        """
        try:
            servers = self.summary().get("server_info", [])
        except TrackerError:
            return FARM_PROTOCOL
        for server in servers:
            if isinstance(server, dict) and server.get("addr") == [host, port]:
                return str(server.get("protocol") or TVM_PROTOCOL)
        return FARM_PROTOCOL

    def request(
        self,
        key: str,
        priority: int = 0,
        session_timeout: Optional[float] = None,
        wait: Optional[float] = None,
        user: str = "",
        wait_for_key: bool = False,
        on_progress: Optional[Callable[[Dict[str, Any]], None]] = None,
        progress_every: Optional[float] = None,
    ) -> Any:
        """A session on a board of ``key``, as TVM's ``TrackerSession.request`` gives one.

        A board that cannot be reached once handed out (it just died) is
        skipped and the request made again, up to a few times.
        """
        deadline = None if wait is None else time.monotonic() + wait
        protocols = (FARM_PROTOCOL, TVM_PROTOCOL) if importlib.util.find_spec("tvm") else (FARM_PROTOCOL,)
        failures = []
        for attempt in range(BOARD_CONNECT_ATTEMPTS):
            remaining = wait if deadline is None or not attempt else max(0.0, deadline - time.monotonic())
            board = self.request_board(
                key, priority, user, remaining, wait_for_key, protocols, on_progress, progress_every
            )
            try:
                session = _open_session(board, session_timeout, self.credentials)
            except (OSError, HandshakeError) as exc:
                failures.append("%s:%d: %s" % (board.host, board.port, exc))
                continue
            self.assigned = board
            return session
        raise TrackerError(
            "the tracker handed out boards of key %r that could not be reached: %s" % (key, "; ".join(failures))
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_board(value: Any) -> bool:
    """Whether a REQUEST reply's value is ``[host, port, matchkey]`` or ``[host, port, matchkey, protocol]``."""
    return (
        isinstance(value, list)
        and len(value) in (3, 4)
        and isinstance(value[0], str)
        and _is_int(value[1])
        and 0 < value[1] < 65536
        and all(isinstance(text, str) for text in value[2:])
    )


def _clipped(value: Any) -> str:
    """A tracker's reply for a message: its start, as a Python literal (which escapes control characters)."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "... (%d characters)" % len(text)


def _checked_summary(summary: Any) -> Dict[str, Any]:
    """``summary`` if it is laid out as a tracker makes one, else :class:`TrackerError` naming what is not.

    The entries of ``server_info`` are the boards' own words (their UPDATE_INFO): only their being objects is
    checked, so that no board's odd entry makes the summary fail for everyone; readers take their fields as text.
    """
    if not isinstance(summary, dict):
        raise TrackerError("the tracker's summary is a JSON %s, not an object" % type(summary).__name__)
    queues, servers = summary.setdefault("queue_info", {}), summary.setdefault("server_info", [])
    if not isinstance(servers, list) or not all(isinstance(server, dict) for server in servers):
        raise TrackerError("the tracker's summary has a server_info that is not a list of objects")
    if not isinstance(queues, dict) or not all(isinstance(queue, dict) for queue in queues.values()):
        raise TrackerError("the tracker's summary has a queue_info that is not an object of objects")
    for key, queue in queues.items():
        where = "the tracker's summary, queue %s" % _clipped(key)
        for field in _QUEUE_COUNTS:
            if field in queue and not _is_int(queue[field]):
                raise TrackerError("%s: %s is %s, not an integer" % (where, field, _clipped(queue[field])))
        waiters = queue.setdefault("waiters", [])
        if not isinstance(waiters, list) or not all(_is_waiter(waiter) for waiter in waiters):
            raise TrackerError("%s: waiters is not a list of {user, priority, waited}" % where)
    return summary


_QUEUE_COUNTS = ("free", "pending", "total", "silent")


def _is_waiter(waiter: Any) -> bool:
    return (
        isinstance(waiter, dict)
        and isinstance(waiter.get("user", ""), str)
        and _is_int(waiter.get("priority", 0))
        and isinstance(waiter.get("waited", 0), (int, float))
    )


def _open_session(board: Assignment, session_timeout: Optional[float], credentials: Credentials) -> Any:
    """A session on the handed-out board: ours, or TVM's for a TVM board (importing TVM only then)."""
    if board.protocol == TVM_PROTOCOL:
        if credentials.tls_enabled:
            raise TrackerError(
                "board %s:%d speaks TVM's RPC, whose client cannot use TLS, and this client uses TLS: serve the "
                "key with this project's board server (farm server), or use a farm without TLS"
                % (board.host, board.port)
            )
        try:
            from tvm import rpc
        except ImportError:
            raise TrackerError(
                "board %s:%d speaks TVM's RPC; install apache-tvm to use it" % (board.host, board.port)
            ) from None
        return rpc.connect(board.host, board.port, key=board.matchkey, session_timeout=session_timeout or 0)
    from .session import connect  # the host client needs numpy; the rest of this module does not

    secret, tls = credentials
    return connect(board.host, board.port, key=board.matchkey, session_timeout=session_timeout, secret=secret, tls=tls)


def connect_tracker(
    host: str, port: int, timeout: float = 10.0, secret: Optional[bytes] = None, tls: Optional[TlsConfig] = None
) -> TrackerClient:
    """Connect to the tracker at ``host:port`` (``secret`` and ``tls``: see :class:`TrackerClient`)."""
    return TrackerClient(host, port, timeout, secret, tls)
