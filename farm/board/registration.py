"""How a board makes itself known: to a tracker, or through a proxy it dials out to.

Both are driven by the board daemon's selector loop, without blocking it.

A board's registration with a tracker (:class:`TrackerLink`):

The board tells the tracker who it is (UPDATE_INFO, with the data protocol
it speaks) and offers itself under its key with a fresh match key (PUT)
whenever it is free. Only a client presenting that match key gets a session,
so nobody skips the queue. As TVM's boards do, it asks the tracker now and
then which of its match keys are still pending; one that was handed out but
never used is replaced after a while, so a client that vanished after its
request does not keep the board. A lost tracker is reconnected with backoff,
and the board registers again. Standard library only, non-blocking.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
from collections import deque
from typing import Any, Callable, Deque, Optional, Tuple

from ..errors import ProtocolError
from ..net.credentials import PLAIN, Credentials
from ..net.sockets import PeerGone, recv_from_peer, send_nowait, start_connect
from ..net.tls import Handshake, TlsError
from ..protocol.auth import AuthError
from ..protocol.handshake import encode_hello
from ..protocol.opening import Connector, Kind, Opened, Proven, Refused
from ..protocol.tracker import FARM_PROTOCOL, Code, MessageReader, encode_message, random_matchkey

logger = logging.getLogger("farm.registration")

#: Seconds between reconnection attempts: doubling from the first to the last.
RETRY_FIRST, RETRY_LAST = 0.25, 2.0
#: Seconds between checks of the pending match keys while the board is free.
POLL_PERIOD = 1.0
#: A match key handed out but not presented within this many seconds is replaced.
UNUSED_MATCHKEY_TIMEOUT = 5.0


class _Dialler:
    """What both links share: a non-blocking connection of their own, with TLS when the farm uses it."""

    address: Tuple[str, int]
    _sock: Optional[socket.socket]
    _selector: selectors.BaseSelector
    _credentials: Credentials
    _handshake: Optional[Handshake]

    def _start_tls(self) -> None:
        """The TCP connection is up: wrap it and start the TLS handshake (no-op without TLS)."""
        tls = self._credentials.tls
        if tls is None or self._sock is None:
            return
        self._selector.unregister(self._sock)  # wrapping detaches the socket
        try:
            self._handshake = Handshake(self._sock, tls, server_side=False, host=self.address[0])
        except TlsError as exc:
            self._sock = None  # closed
            self._fail("TLS with %s:%d failed: %s" % (self.address[0], self.address[1], exc))
            return
        self._sock = self._handshake.sock
        self._selector.register(self._sock, selectors.EVENT_WRITE, self)

    def _secure(self) -> bool:
        """Whether the connection is ready for the protocol: no TLS, or its handshake done (stepped on here)."""
        handshake = self._handshake
        if handshake is None or handshake.done:
            return True
        assert self._sock is not None
        try:
            events = handshake.step()
        except TlsError as exc:
            self._fail("TLS with %s:%d failed: %s" % (self.address[0], self.address[1], exc))
            return False
        if events:
            self._selector.modify(self._sock, events, self)
        return handshake.done

    def _drop(self) -> None:
        """Close the connection, if any, and take it out of the selector."""
        if self._sock is not None:
            try:
                self._selector.unregister(self._sock)
            except (KeyError, ValueError):
                pass
            self._sock.close()
            self._sock = None

    def _fail(self, why: str) -> None:
        raise NotImplementedError


class UnusedMatchKey:
    """Whether the match key a board offered was handed out and then never used, judged from the tracker's
    answers to the board's polls of its pending keys, with the clock passed in."""

    def __init__(self, timeout: float = UNUSED_MATCHKEY_TIMEOUT) -> None:
        self.timeout = timeout
        self._handed_out_since: Optional[float] = None  # when a poll first found the key gone from the pending list

    def polled(self, still_pending: bool, now: float) -> Optional[float]:
        """One poll's answer: how long ago the key was handed out, once that is more than ``timeout``; else None."""
        if still_pending:
            self._handed_out_since = None
            return None
        if self._handed_out_since is None:
            self._handed_out_since = now
            return None
        unused = now - self._handed_out_since
        return unused if unused > self.timeout else None


class TrackerLink(_Dialler):
    """The board's connection to its tracker (see the module docstring)."""

    def __init__(
        self,
        address: Tuple[str, int],
        key: str,
        port: int,
        selector: selectors.BaseSelector,
        custom_addr: Optional[str] = None,
        name: str = "",
        credentials: Credentials = PLAIN,
    ) -> None:
        self.address = address
        self.key = key
        self._credentials = credentials
        self._handshake = None
        self._opening = Connector(Kind.TRACKER, credentials.secret)  # the proof of the secret (if any), the magic
        self.name = name
        self.port = port
        self.custom_addr = custom_addr
        self.matchkey: Optional[str] = None  # what a client must present now; None while in a session
        self._selector = selector
        self._sock: Optional[socket.socket] = None
        self._connected = False
        self._reader = MessageReader(expect_magic=False)  # (the opening takes the magic's echo)
        self._out = bytearray()
        self._expected: Deque[str] = deque()  # what each outstanding request was
        self._retry_delay = RETRY_FIRST
        self._next_attempt = 0.0
        self._next_poll = 0.0
        self._unused = UnusedMatchKey()
        self._in_session = False

    # --- what the daemon tells it ---------------------------------------------

    def session_started(self) -> None:
        self._in_session = True
        self.matchkey = None

    def session_ended(self) -> None:
        self._in_session = False
        self._offer()

    def accepts(self, client_key: str) -> bool:
        return self.matchkey is not None and client_key == self.matchkey

    def next_deadline(self) -> float:
        if self._sock is None:
            return self._next_attempt
        if self._opening.ended and not self._in_session and not self._expected:
            return self._next_poll
        return float("inf")  # nothing to do until the tracker answers or the session ends

    def close(self) -> None:
        self._disconnect(reconnect=False)

    def forget(self) -> None:
        """Close the connection without touching the selector (in a forked child, whose epoll set is shared)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- the loop's calls -------------------------------------------------------

    def tick(self, now: float) -> None:
        """Reconnect when due; poll the pending match keys when due."""
        if self._sock is None:
            if now >= self._next_attempt:
                self._connect()
            return
        if self._opening.ended and not self._in_session and now >= self._next_poll and not self._expected:
            self._next_poll = now + POLL_PERIOD
            self._send([Code.GET_PENDING_MATCHKEYS], "pending")

    def on_event(self, mask: int) -> None:
        if self._sock is None:
            return
        if not self._connected:
            if not mask & selectors.EVENT_WRITE:
                return
            error = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._lost("cannot reach the tracker: %s" % errno.errorcode.get(error, error))
                return
            self._on_connected()
        if self._sock is None or not self._secure():
            return
        self._flush()
        if self._sock is not None:
            self._receive()

    # --- connection -------------------------------------------------------------

    def _connect(self) -> None:
        try:
            sock = start_connect(self.address)
        except OSError as exc:
            self._schedule_retry("cannot reach the tracker at %s:%d: %s" % (self.address[0], self.address[1], exc))
            return
        self._sock = sock
        self._connected = False
        self._handshake = None
        self._reader = MessageReader(expect_magic=False)
        self._opening = Connector(Kind.TRACKER, self._credentials.secret)
        # The proof of the secret, or the magic alone in its segment (as TVM's tracker wants).
        self._out = bytearray(self._opening.data_to_send())
        self._expected.clear()
        self._selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def _on_connected(self) -> None:
        """The TCP connection is up: TLS first if the farm uses it, then the opening."""
        self._connected = True
        self._start_tls()

    def _on_magic_echoed(self) -> None:
        self._retry_delay = RETRY_FIRST  # only a tracker that took us resets the backoff (not a refusing one)
        logger.info("registered with the tracker at %s:%d", *self.address)
        info = {"key": "server:" + self.key, "addr": [self.custom_addr, self.port], "protocol": FARM_PROTOCOL}
        if self.name:
            info["name"] = self.name
        self._send([Code.UPDATE_INFO, info], "update_info")
        if not self._in_session:
            self._offer()

    def _offer(self) -> None:
        """Offer the board under a new match key (when connected; else on connecting)."""
        self.matchkey = random_matchkey(self.key)
        self._unused = UnusedMatchKey()
        self._next_poll = time.monotonic() + POLL_PERIOD
        if self._opening.ended:
            self._send([Code.PUT, self.key, [self.port, self.matchkey], self.custom_addr], "put")

    def _send(self, message: Any, kind: str) -> None:
        self._out += encode_message(message)
        self._expected.append(kind)
        self._flush()

    def _flush(self) -> None:
        if self._sock is None or (self._handshake is not None and not self._handshake.done):
            return  # the handshake's step chooses the events meanwhile
        sent = 0
        if self._connected and self._out:
            try:
                sent = send_nowait(self._sock, self._out)
            except OSError as exc:
                self._lost("lost the tracker: %s" % exc)
                return
        del self._out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out or not self._connected else 0)
        self._selector.modify(self._sock, events, self)

    def _receive(self) -> None:
        assert self._sock is not None
        try:
            data = recv_from_peer(self._sock, 65536, "tracker")
        except PeerGone as exc:
            self._lost(str(exc))
            return
        if data is None:
            return
        if not self._opening.ended:
            data = self._open(data)
            if not data:
                return
        try:
            replies = self._reader.feed(data)
        except ProtocolError as exc:
            self._lost("the tracker sent nonsense: %s" % exc)
            return
        for reply in replies:
            kind = self._expected.popleft() if self._expected else "unexpected"
            self._on_reply(kind, reply)

    def _open(self, data: bytes) -> bytes:
        """Feed the opening (the proof of the secret, then the magic's echo); once it is over, register and return
        what followed it."""
        problem = feed_opening(self._opening, data, "the tracker at %s:%d" % self.address)
        if problem:
            self._lost(problem)
            return b""
        self._out += self._opening.data_to_send()
        self._flush()
        event = self._opening.next_event()
        if isinstance(event, Proven):
            event = self._opening.next_event()
        if not isinstance(event, Opened) or self._sock is None:
            return b""
        self._on_magic_echoed()
        return event.leftover

    def _on_reply(self, kind: str, reply: Any) -> None:
        if kind == "pending":
            self._check_pending(reply if isinstance(reply, list) else [])
        elif reply != Code.SUCCESS:
            logger.warning("the tracker answered %s with %r", kind, reply)

    def _check_pending(self, pending: list) -> None:
        unused = self._unused.polled(self.matchkey is None or self.matchkey in pending, time.monotonic())
        if unused is not None:
            logger.info("a match key handed out %.0f s ago was never used; offering the board again", unused)
            self._offer()

    def _lost(self, why: str) -> None:
        logger.warning("%s; reconnecting", why)
        self._disconnect(reconnect=True)

    _fail = _lost

    def _disconnect(self, reconnect: bool) -> None:
        self._drop()
        self._connected = False
        if not self._in_session:
            self.matchkey = None  # a new one is offered on reconnecting
        if reconnect:
            self._schedule_retry("")

    def _schedule_retry(self, why: str) -> None:
        if why:
            logger.info("%s; retrying in %.2f s", why, self._retry_delay)
        self._next_attempt = time.monotonic() + self._retry_delay
        self._retry_delay = min(RETRY_LAST, self._retry_delay * 2)


class ProxyDialer(_Dialler):
    """A board behind a proxy: dial out, say ``server:KEY``, and wait for the proxy to pair a client.

    Driven by the board daemon's selector loop, like :class:`TrackerLink`.
    When the proxy answers, ``on_paired(sock, client_key_text, leftover,
    bytes_sent)`` takes the connection over as a session; after the session
    the daemon calls :meth:`session_ended` and the board dials again.
    """

    def __init__(
        self,
        address: Tuple[str, int],
        key: str,
        selector: selectors.BaseSelector,
        on_paired: Callable[[socket.socket, str, bytes, int], None],
        credentials: Credentials = PLAIN,
    ) -> None:
        self.address = address
        self.key = key
        self._selector = selector
        self._on_paired = on_paired
        self._credentials = credentials
        self._handshake = None
        self._greeted = False
        self._hello = encode_hello("server", "%s -protocol=%s" % (key, FARM_PROTOCOL))
        self._opening = Connector(Kind.DATA, credentials.secret, self._hello)  # the proof (if any), the hello
        self._sent = 0  # bytes sent on this connection: the session counts on from there
        self._sock: Optional[socket.socket] = None
        self._connected = False
        self._retry_delay = RETRY_FIRST
        self._next_attempt = 0.0
        self._in_session = False

    def next_deadline(self) -> float:
        return self._next_attempt if self._sock is None and not self._in_session else float("inf")

    def tick(self, now: float) -> None:
        if self._sock is None and not self._in_session and now >= self._next_attempt:
            self._dial()

    def session_started(self) -> None:
        self._in_session = True

    def session_ended(self) -> None:
        self._in_session = False
        self._next_attempt = 0.0

    def accepts(self, client_key: str) -> bool:
        return False  # clients come through the proxy, never straight to the board

    def forget(self) -> None:
        """Close the connection without touching the selector (in a forked child)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        self._drop()

    def _dial(self) -> None:
        try:
            sock = start_connect(self.address)
        except OSError as exc:
            self._retry("cannot reach the proxy: %s" % exc)
            return
        self._sock = sock
        self._connected = False
        self._handshake = None
        self._greeted = False
        self._opening = Connector(Kind.DATA, self._credentials.secret, self._hello)
        self._selector.register(sock, selectors.EVENT_WRITE, self)

    def on_event(self, mask: int) -> None:
        if self._sock is None:
            return
        if not self._connected:
            error = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._retry("cannot reach the proxy: %s" % errno.errorcode.get(error))
                return
            self._connected = True
            self._start_tls()
        if self._sock is None or not self._secure():
            return
        if not self._greeted:
            self._greet()
            return
        try:
            data = recv_from_peer(self._sock, 4096, "proxy")
        except PeerGone as exc:
            self._retry(str(exc))
            return
        if data is not None:
            self._advance_opening(data)

    def _advance_opening(self, data: bytes) -> None:
        """Feed the proxy's bytes to the opening; once a client is paired, hand the connection to the session."""
        assert self._sock is not None
        problem = feed_opening(self._opening, data, "the proxy")
        if problem:
            self._retry(problem)
            return
        if not self._send(self._opening.data_to_send()):
            return
        event = self._opening.next_event()
        if isinstance(event, Proven):
            logger.info("waiting at the proxy %s:%d for a client", *self.address)
            event = self._opening.next_event()
        if isinstance(event, Refused):
            self._retry("the proxy %s" % event.reason)
            return
        if not isinstance(event, Opened):
            return
        assert event.reply is not None
        sock = self._sock
        self._selector.unregister(sock)
        self._sock = None
        self._in_session = True
        self._retry_delay = RETRY_FIRST
        sock.setblocking(True)
        self._on_paired(sock, event.reply.text, event.leftover, self._sent)

    def _greet(self) -> None:
        """Connected (and TLS up, with TLS): the proof of the secret, if the farm has one, or the hello."""
        assert self._sock is not None
        self._greeted = True
        self._sent = 0
        if not self._send(self._opening.data_to_send()):
            return
        self._selector.modify(self._sock, selectors.EVENT_READ, self)
        if self._credentials.secret is None:
            logger.info("waiting at the proxy %s:%d for a client", *self.address)

    def _send(self, data: bytes) -> bool:
        """A few bytes into an almost empty socket buffer; False (and dial again later) if that fails."""
        assert self._sock is not None
        if not data:
            return True
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self._retry("lost the proxy: %s" % exc)
            return False
        self._sent += len(data)
        return True

    def _retry(self, why: str) -> None:
        self._drop()
        logger.info("%s (%s:%d); dialling again in %.2f s", why, self.address[0], self.address[1], self._retry_delay)
        self._next_attempt = time.monotonic() + self._retry_delay
        self._retry_delay = min(RETRY_LAST, self._retry_delay * 2)

    _fail = _retry


def feed_opening(opening: Connector, data: bytes, peer: str) -> str:
    """Feed ``data`` to ``opening``: why to give up on ``peer`` (it refused us, or sent nonsense), else ``""``."""
    try:
        opening.receive_data(data)
    except AuthError as exc:
        return "%s refused us: %s" % (peer, exc)
    except ProtocolError as exc:
        return "%s sent nonsense: %s" % (peer, exc)
    return ""
