"""Small network helpers shared by the daemons and the command line (standard library only)."""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Optional, Tuple, Union

#: TCP keepalive on every connection of the farm: a peer that vanished (power cut, cable pulled) is noticed
#: after about IDLE + INTERVAL * COUNT seconds, and its requests and offers leave the tracker's queues.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 10, 3


def keep_alive(sock: socket.socket) -> None:
    """Turn on TCP keepalive with the farm's timings (Linux's default waits two hours before the first probe)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                        ("TCP_KEEPCNT", KEEPALIVE_COUNT)):  # fmt: skip
        option = getattr(socket, name, None)
        if option is not None:  # not on every platform
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def bind_first_free(host: str, port: int, port_end: int) -> socket.socket:
    """A listening socket on the first port of ``port..port_end-1`` that binds (``port`` 0: any)."""
    if not 0 <= port <= 65535:
        raise OSError("port %d is outside 0..65535" % port)
    ports = range(port, min(port_end, 65536)) if port and port_end > port else [port]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error: Optional[OSError] = None
    for candidate in ports:
        # Naming TCP lets asyncio turn Nagle's algorithm off on the accepted connections.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        keep_alive(sock)  # accepted connections inherit it
        sock.listen(128)
        return sock
    raise OSError("no free port in %d..%d on %s (last error: %s)" % (ports[0], ports[-1], host, last_error))


def start_connect(address: Tuple[str, int]) -> socket.socket:
    """A non-blocking socket on its way to ``address``; OSError if the attempt failed at once."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    keep_alive(sock)
    sock.setblocking(False)
    error = sock.connect_ex(address)
    if error not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(error, os.strerror(error))
    return sock


def parse_address(text: str, default_port: Optional[int] = None) -> Tuple[str, int]:
    """``HOST:PORT`` (or ``[V6]:PORT``) -> ``(host, port)``; ValueError naming the problem."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError("%r is not HOST:PORT" % text)
        host, port = text.strip(), str(default_port)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("%r is not HOST:PORT with a port in 1..65535" % text)
    return host, int(port)


def is_tls(sock: socket.socket) -> bool:
    """Whether ``sock`` is a TLS socket."""
    ssl = sys.modules.get("ssl")  # a TLS socket exists only once ssl was imported; a board without TLS never does
    return ssl is not None and isinstance(sock, ssl.SSLSocket)


def would_block(exc: OSError) -> bool:
    """Whether a call on a non-blocking socket, plain or TLS, failed only because it has to wait."""
    if isinstance(exc, (BlockingIOError, InterruptedError)):
        return True
    ssl = sys.modules.get("ssl")  # a TLS socket exists only once ssl was imported; a board without TLS never does
    return ssl is not None and isinstance(exc, (ssl.SSLWantReadError, ssl.SSLWantWriteError))


def recv_nowait(sock: socket.socket, size: int) -> Optional[bytes]:
    """What a non-blocking socket, plain or TLS, holds now: bytes, ``b""`` at the end of the stream, None if nothing.

    The rest of a TLS record read in part stays inside the TLS layer, where a
    selector cannot see it: it is read too.
    """
    try:
        data = sock.recv(size)
        pending = getattr(sock, "pending", None)  # only TLS sockets have it
        while data and pending is not None and pending():
            data += sock.recv(pending())
    except OSError as exc:
        if would_block(exc):
            return None
        raise
    return data


class PeerGone(ConnectionError):
    """The peer of a non-blocking socket is gone; the message says how, naming the peer."""


def recv_from_peer(sock: socket.socket, size: int, peer: str) -> Optional[bytes]:
    """:func:`recv_nowait`, with a lost or closed connection raised as :class:`PeerGone` naming ``peer``."""
    try:
        data = recv_nowait(sock, size)
    except OSError as exc:
        raise PeerGone("lost the %s: %s" % (peer, exc)) from exc
    if data == b"":
        raise PeerGone("the %s closed the connection" % peer)
    return data


def send_nowait(sock: socket.socket, data: Union[bytes, bytearray, memoryview]) -> int:
    """How many bytes of ``data`` a non-blocking socket, plain or TLS, took now (0: wait until writable).

    A TLS socket takes all or nothing, and after nothing wants the same bytes
    (or more, starting with them) next time.
    """
    try:
        return sock.send(data)
    except OSError as exc:
        if would_block(exc):
            return 0
        raise
