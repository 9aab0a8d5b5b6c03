"""Blocking socket I/O for data-plane frames, shared by the board and the client.

Frames go out with one ``sendmsg`` over the header and the payload's
memoryview, and come in with ``recv_into`` straight into the buffer
:class:`~farm.protocol.framing.FrameReader` names, so array bytes are
never copied in user space (over TLS, whose records copy anyway, the
parts go one after the other). Standard library only.
"""

from __future__ import annotations

import socket
from typing import List, Optional

from ..protocol.framing import Buffer, Frame, FrameReader, encode_frame
from .sockets import is_tls

#: Over TLS, a frame smaller than this goes out in one piece (one record) rather than part by part.
_JOIN_BELOW = 64 * 1024


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (``partial`` if it did so mid-frame)."""

    def __init__(self, partial: bool) -> None:
        super().__init__("connection closed mid-frame" if partial else "connection closed")
        self.partial = partial


def send_buffers(sock: socket.socket, parts: List[Buffer]) -> None:
    """Send every byte of ``parts`` with as few ``sendmsg`` calls as the kernel allows."""
    views = [memoryview(part).cast("B") for part in parts]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def tune(sock: socket.socket) -> None:
    """Options every data-plane socket wants: no Nagle delay, keepalive."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class FramedSocket:
    """A connected socket that sends and receives whole frames."""

    def __init__(self, sock: socket.socket, reader: Optional[FrameReader] = None, initial: bytes = b"") -> None:
        self.sock = sock
        self._gather = not is_tls(sock)  # TLS sockets have no sendmsg
        self.reader = reader or FrameReader()
        if initial:
            self.reader.push(initial)

    def send(self, op: int, request_id: int, meta: Optional[dict] = None, payload: Buffer = b"") -> None:
        self.send_parts(encode_frame(op, request_id, meta, payload))

    def send_parts(self, parts: List[Buffer]) -> None:
        """Send a frame already encoded by :func:`~farm.protocol.framing.encode_frame`."""
        if len(parts) == 1:
            self.sock.sendall(parts[0])
        elif self._gather:
            send_buffers(self.sock, parts)
        elif sum(memoryview(part).nbytes for part in parts) < _JOIN_BELOW:
            self.sock.sendall(b"".join(parts))
        else:
            for part in parts:
                self.sock.sendall(part)

    def recv(self) -> Frame:
        """The next frame; raises :class:`ConnectionClosed` at end of stream."""
        frame = self.reader.read_frame(self.sock.recv_into)
        if frame is None:
            raise ConnectionClosed(self.reader.pending)
        return frame

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
