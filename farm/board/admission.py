"""The board daemon's admission of clients: accepting connections, the handshake of each, the gate on them.

A new connection is pending until it has done its handshake: TLS first where
the farm has it, then its opening (:mod:`farm.protocol.opening`): the proof of
the farm secret where it has one, then TVM's hello. The gate (:mod:`farm.net.gate`) bounds the pending connections,
in all and per address, and the time each has. A client whose hello names this
board is admitted: the supervisor starts its session, or, with one running,
it is told the board is busy. Standard library only, Python >= 3.8.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
from typing import Dict, List, Optional, Union

from ..errors import ProtocolError
from ..net.gate import Gate, LogThrottle, Ticket, address_key
from ..net.sockets import recv_nowait
from ..net.tls import Handshake, TlsError
from ..net.transport import tune
from ..protocol.auth import AuthError
from ..protocol.handshake import CODE_BUSY, CODE_MISMATCH, CODE_SUCCESS, Hello, parse_key
from ..protocol.opening import Acceptor, Event, HelloReceived, Kind, Opened, Proven
from ..protocol.peers import looks_like_tls, spoke
from .config import BoardConfig
from .registration import ProxyDialer, TrackerLink
from .supervisor import ActiveSession, Supervisor

logger = logging.getLogger("farm.server")

#: Seconds the daemon stops accepting while it is out of file descriptors (or buffers).
ACCEPT_PAUSE = 1.0


class _Pending:
    def __init__(self, sock: socket.socket, peer: str, ticket: Ticket, secret: Optional[bytes]) -> None:
        self.sock = sock
        self.peer = peer
        self.ticket = ticket  # counts against the bounds on unproven connections until the peer proves itself
        self.deadline = ticket.deadline
        self.tls: Optional[Handshake] = None  # with TLS: its handshake, first of all
        self.opening = Acceptor(Kind.DATA, secret)  # then the proof of the farm secret (with one) and the hello
        self.sent = 0  # bytes sent before the handshake's reply


def busy_reason(key: str, host: str, port: int, active: ActiveSession, now: float) -> str:
    """What a client is told when the board already serves ``active``."""
    return "board %r at %s:%d is busy: it serves a session from %s since %.1f s" % (
        key,
        host,
        port,
        active.peer,
        now - active.started,
    )


class Admission:
    """Admits clients on ``listener`` (None: the board dials a proxy and listens nowhere) to ``supervisor``.

    The daemon's selector loop calls :meth:`accept` when the listener is
    ready, :meth:`on_handshake_data` with the :class:`_Pending` it registered
    for a connection, and :meth:`tick` on every turn.
    """

    def __init__(
        self,
        config: BoardConfig,
        port: int,
        listener: Optional[socket.socket],
        selector: selectors.BaseSelector,
        link: Optional[Union[TrackerLink, ProxyDialer]],
        supervisor: Supervisor,
    ) -> None:
        self.host = config.host
        self.port = port
        self.key = config.key
        self.secret = config.credentials.secret
        self.tls = config.credentials.tls
        self.handshake_timeout = config.handshake_timeout
        self._listener = listener
        self._selector = selector
        self._link = link  # with one, only the client the tracker or proxy handed the board to
        self._supervisor = supervisor
        self._pending: Dict[socket.socket, _Pending] = {}
        self._gate = Gate(config.unproven)  # the pending, bounded
        self._log_throttle = LogThrottle(logger)  # refusals and failed accepts: a line per kind and interval
        self._accept_paused_until = 0.0  # while out of file descriptors

    def listen(self) -> None:
        """Start accepting connections."""
        assert self._listener is not None
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)

    def next_deadline(self) -> Optional[float]:
        """The earliest of the pending handshakes' deadlines and the end of a pause in accepting."""
        deadlines: List[float] = [pending.deadline for pending in self._pending.values()]
        if self._accept_paused_until:
            deadlines.append(self._accept_paused_until)
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> None:
        """Close the handshakes that ran out of time at ``now``; accept again once a pause is over."""
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            logger.warning("handshake from %s timed out after %g s; closing", pending.peer, self.handshake_timeout)
            self._drop_pending(pending)
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self.listen()

    def close(self) -> None:
        """Close every pending connection."""
        for pending in list(self._pending.values()):
            self._drop_pending(pending)

    # --- handshakes ---------------------------------------------------------

    def accept(self) -> None:
        """Accept a connection, if the gate lets it wait for its handshake."""
        assert self._listener is not None
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
                self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
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

    def on_handshake_data(self, pending: _Pending) -> None:
        """Take the handshake of ``pending`` on with what arrived; admit the client once it said hello."""
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
        event = self._on_proof_data(pending, data)
        if isinstance(event, HelloReceived):
            self._drop_pending(pending, close=False)
            self._gate.leave(pending.ticket)
            self._admit(pending, event.hello)

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

    def _on_proof_data(self, pending: _Pending, data: bytes) -> Optional[Event]:
        """Feed the opening (the proof of the farm secret, then the hello) and send what it answers; its event, or
        None once the connection is dropped. A malformed hello (a bad -timeout too) is a bad handshake."""
        opening = pending.opening
        try:
            opening.receive_data(data)
        except AuthError as exc:
            logger.warning("refused %s: %s", pending.peer, exc)
            _send_now(pending.sock, opening.data_to_send())  # the refusal, if it got that far
            self._drop_pending(pending)
            return None
        except ProtocolError as exc:
            logger.warning("bad handshake from %s: %s; closing", pending.peer, exc)
            self._drop_pending(pending)
            return None
        outgoing = opening.data_to_send()
        if not _send_now(pending.sock, outgoing):
            logger.info("%s stopped reading during authentication; closing", pending.peer)
            self._drop_pending(pending)
            return None
        pending.sent += len(outgoing)
        event = opening.next_event()
        if isinstance(event, Proven):
            logger.debug("%s proved it holds the farm secret", pending.peer)
            self._gate.leave(pending.ticket)
            event = opening.next_event()
        return event

    def _key_matches(self, hello: Hello) -> bool:
        if hello.role != "client":
            return False
        if self._link is not None:  # only the client the tracker handed the board to
            return self._link.accepts(hello.key)
        return not hello.key or not self.key or hello.key == self.key

    def _admit(self, pending: _Pending, hello: Hello) -> None:
        sock, peer, opening = pending.sock, pending.peer, pending.opening
        active = self._supervisor.active
        if not self._key_matches(hello):
            logger.warning("key mismatch from %s: %s:%s (this board: %r)", peer, hello.role, hello.key, self.key)
            opening.answer(CODE_MISMATCH)
        elif active is not None:
            logger.info("refusing %s: busy", peer)
            opening.answer(CODE_BUSY, busy_reason(self.key, self.host, self.port, active, time.monotonic()))
        else:
            opening.answer(CODE_SUCCESS, "server:" + self.key)
        reply, opened = opening.data_to_send(), opening.next_event()
        sock.setblocking(True)
        sock.settimeout(5.0)
        try:
            sock.sendall(reply)
        except OSError as exc:
            logger.info("handshake reply to %s failed: %s", peer, exc)
            sock.close()
            return
        if not isinstance(opened, Opened):
            sock.close()
            return
        sock.settimeout(None)
        tune(sock)
        self._supervisor.start(sock, peer, hello.timeout, opened.leftover, pending.sent + len(reply))

    def paired_by_proxy(self, sock: socket.socket, client_key: str, leftover: bytes, bytes_sent: int) -> None:
        """The proxy paired a client with this board: its key text carries the client's options."""
        try:
            timeout = parse_key(client_key).timeout
        except ProtocolError as exc:
            logger.warning("the proxy passed on a bad client key %r: %s", client_key, exc)
            sock.close()
            assert self._link is not None, "only a proxy dialer pairs clients"
            self._link.session_ended()  # dial again
            return
        tune(sock)
        self._supervisor.start(sock, "a client of the proxy", timeout, leftover, bytes_sent)


def _send_now(sock: socket.socket, data: bytes) -> bool:
    """Send a few bytes on a non-blocking socket at once; False if they did not all go."""
    if not data:
        return True
    try:
        return sock.send(data) == len(data)
    except OSError:
        return False
