"""The board daemon's relay between a client's TLS connection and the session process (standard library only).

Under TLS the session process does not get the client's connection: the TLS
state (keys, sequence numbers) would then live in a process that may die
mid-record, and the daemon could no longer write a byte to the client, not
even to say how the session ended. The daemon keeps the TLS connection and
carries plain bytes to and from the session process over a socket pair,
driven by its selector loop, with a bounded buffer each way.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from typing import Dict

from ..net.sockets import recv_nowait, send_nowait

logger = logging.getLogger("farm.relay")

#: Most bytes held for either side before the relay stops reading from the other.
BUFFER_LIMIT = 4 << 20
_CHUNK = 256 * 1024


class SessionRelay:
    """Carries one session's bytes between ``outer`` (the client's TLS connection) and the session process.

    The session process gets :attr:`child_end`; the daemon closes its copy
    after forking, registers the relay (:meth:`register`) and calls
    :meth:`on_event` for the events of either socket.
    """

    def __init__(self, outer: socket.socket, selector: selectors.BaseSelector) -> None:
        self.outer = outer
        self.inner, self.child_end = socket.socketpair()
        for sock in (self.inner, self.child_end):  # fewer wakeups of either process per array (capped by the system)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_LIMIT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_LIMIT)
        self._selector = selector
        self._to_child = bytearray()
        self._to_client = bytearray()
        self.from_child = 0  # bytes the session process wrote, in all
        self.client_gone = False  # the client closed its end, or the connection broke
        self._child_done = False  # the session process closed its end
        self._inner_shut = False
        self._events: Dict[socket.socket, int] = {}  # what each socket is registered for now
        outer.setblocking(False)
        self.inner.setblocking(False)

    def register(self) -> None:
        """Start relaying: from now on the daemon's selector reports the relay's events."""
        self.on_event()

    def on_event(self, _mask: int = 0) -> None:
        """Move whatever can move now, in both directions; then wait for what is needed next."""
        while self._pump_once():
            pass
        self._wait_for(self.outer, _events(self._reads_client(), self._writes_client()))
        self._wait_for(self.inner, _events(self._reads_child(), self._writes_child()))

    def drain_child(self) -> None:
        """Take everything the (ended) session process left in the socket pair."""
        while not self._child_done:
            data = recv_nowait(self.inner, _CHUNK)
            if not data:  # the end, or nothing more: its writers are gone
                self._child_done = True
                break
            self._take_from_child(data)

    def finish(self, last: bytes, timeout: float) -> None:
        """Send what is still held for the client, then ``last`` (may be empty), within ``timeout``; close."""
        self._to_client += last
        deadline = time.monotonic() + timeout
        try:
            while self._to_client and not self.client_gone:
                self.outer.settimeout(max(0.01, deadline - time.monotonic()))
                sent = self.outer.send(self._to_client)
                del self._to_client[:sent]
        except OSError as exc:
            logger.info("could not tell the client: %s", exc)
        self.close()

    def close(self) -> None:
        for sock in (self.outer, self.inner):
            self._wait_for(sock, 0)
        for sock in (self.outer, self.inner, self.child_end):
            sock.close()

    def _wait_for(self, sock: socket.socket, events: int) -> None:
        """Register ``sock`` for ``events`` (0: for nothing) with the selector."""
        registered = self._events.get(sock, 0)
        if events == registered:
            return
        if not events:
            self._selector.unregister(sock)
        elif not registered:
            self._selector.register(sock, events, self)
        else:
            self._selector.modify(sock, events, self)
        self._events[sock] = events

    def _pump_once(self) -> bool:
        """One round of the four moves, each reading all there is (up to the limit) before writing it on, so
        that the session process is woken once per batch, not per TLS record; whether any of them moved bytes."""
        moved_in = self._pump_to_child()
        moved_out = self._pump_to_client()
        return moved_in or moved_out

    def _pump_to_child(self) -> bool:
        """Read the client, write the session process, and end its stream once the client's has ended."""
        moved = False
        while self._reads_client():
            try:
                data = recv_nowait(self.outer, _CHUNK)
            except OSError as exc:
                logger.info("the client's connection broke: %s", exc)
                data = b""
            if data is None:
                break
            moved = True
            if not data:
                self.client_gone = True
            self._to_child += data
        if self._writes_child():
            try:
                sent = send_nowait(self.inner, self._to_child)
            except OSError:  # the session process is gone: what it did not read is lost with it
                sent = len(self._to_child)
            del self._to_child[:sent]
            moved = moved or sent > 0
        if self.client_gone and not self._to_child and not self._inner_shut:
            self._inner_shut = True  # the session process sees the end of the stream
            try:
                self.inner.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return moved

    def _pump_to_client(self) -> bool:
        """Read the session process and write the client."""
        moved = False
        while self._reads_child():
            data = recv_nowait(self.inner, _CHUNK)
            if data is None:
                break
            moved = True
            if not data:
                self._child_done = True
            self._take_from_child(data)
        if self._writes_client():
            try:
                sent = send_nowait(self.outer, self._to_client)
            except OSError as exc:
                logger.info("the client's connection broke: %s", exc)
                self.client_gone = True
                self._to_client.clear()
                return True
            del self._to_client[:sent]
            moved = moved or sent > 0
        return moved

    def _take_from_child(self, data: bytes) -> None:
        self.from_child += len(data)
        if not self.client_gone:
            self._to_client += data

    # What each side may do now: the pump's moves and the events waited for follow from these.

    def _reads_client(self) -> bool:
        return not self.client_gone and len(self._to_child) < BUFFER_LIMIT

    def _writes_client(self) -> bool:
        return bool(self._to_client) and not self.client_gone

    def _reads_child(self) -> bool:
        return not self._child_done and len(self._to_client) < BUFFER_LIMIT

    def _writes_child(self) -> bool:
        return bool(self._to_child) and not self._inner_shut


def _events(readable: bool, writable: bool) -> int:
    return (selectors.EVENT_READ if readable else 0) | (selectors.EVENT_WRITE if writable else 0)
