"""asyncio listeners and connections with optional TLS, for the tracker and the proxy.

Without TLS a listener is ``asyncio.start_server``: plain TCP, as TVM speaks
it. With TLS it runs an accept loop of its own, because asyncio's TLS server
logs a failed handshake only in debug mode: here each refusal is a warning
that names the peer and why (it spoke TVM's protocol, not TLS; it refused the
certificate; it said nothing in time). Handshakes are bounded in number and
time, and an accept that fails (out of file descriptors) pauses the loop
instead of ending it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
from typing import Awaitable, Callable, Optional, Set, Tuple

from .protocol.peers import looks_like_tls, spoke
from .tls import HANDSHAKE_TIMEOUT, TlsConfig, TlsError, describe_failure

logger = logging.getLogger("farm.aio")

#: What a listener calls with each connection's streams, as ``asyncio.start_server`` does.
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Streams = Tuple[asyncio.StreamReader, asyncio.StreamWriter]

#: Connections in their TLS handshake at once (as the board's ``MAX_PENDING_HANDSHAKES``); more are closed at accept.
MAX_PENDING_HANDSHAKES = 64
#: Seconds the accept loop pauses after an accept failed (out of file descriptors, memory or buffers).
ACCEPT_PAUSE = 1.0
#: Bytes looked at (and left unread) before the handshake: a TLS record header, or another protocol's magic.
_PEEK_SIZE = 4
#: A failed handshake leaves a reference cycle (asyncio's future, its exception, the traceback's frames) holding
#: OpenSSL's buffers, some 100 KB that Python's collector does not count: collect after this many failures, or a
#: stream of bad handshakes grows the daemon by megabytes before the collector runs on its own.
COLLECT_AFTER_FAILURES = 16


async def start_listener(
    sock: socket.socket, handler: Handler, tls: Optional[TlsConfig], what: str
) -> asyncio.AbstractServer:
    """Serve each connection to the listening ``sock`` with ``handler(reader, writer)``; with ``tls``, over TLS.

    ``what`` (``"tracker"``) names the daemon in log lines. The result closes
    like asyncio's server, and works as ``async with``.
    """
    if tls is None:
        return await asyncio.start_server(handler, sock=sock)
    logger.info("the %s speaks TLS only, with the certificate %s", what, tls.cert)
    return TlsListener(sock, handler, tls.server_context(), what)


async def open_connection(host: str, port: int, tls: Optional[TlsConfig]) -> Streams:
    """Connect to ``host:port``; with ``tls``, check its certificate (TlsError naming why it was refused)."""
    if tls is None:
        return await asyncio.open_connection(host, port)
    try:
        return await asyncio.open_connection(
            host,
            port,
            ssl=tls.client_context(),
            server_hostname=tls.server_hostname(host),
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )
    except ssl.SSLError as exc:
        why = describe_failure(exc)
    except ConnectionAbortedError:  # asyncio gave up after ssl_handshake_timeout
        why = "no answer within %g s (does it use TLS?)" % HANDSHAKE_TIMEOUT
    except ConnectionResetError:  # (a refused connection is not about TLS: it is not caught here)
        why = "it closed the connection (does it use TLS, with this farm's CA?)"
    raise TlsError("TLS handshake with %s:%d failed: %s" % (host, port, why))


class TlsListener(asyncio.AbstractServer):
    """Accepts TLS connections on a listening socket and hands each one's streams to a handler."""

    def __init__(self, sock: socket.socket, handler: Handler, context: ssl.SSLContext, what: str) -> None:
        self._sock = sock
        self._handler = handler
        self._context = context
        self._what = what
        self._loop = asyncio.get_running_loop()
        self._connections: Set[asyncio.Future[None]] = set()  # strong references, from accept to the handler's end
        self._handshaking: Set[asyncio.Future[None]] = set()  # those before their handler
        self._failures = 0  # handshakes that failed since the last garbage collection
        sock.setblocking(False)
        self._accepting = asyncio.ensure_future(self._accept_loop())

    def close(self) -> None:
        """Stop accepting (connections being served go on, as with asyncio's server)."""
        self._accepting.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._accepting, return_exceptions=True)

    def is_serving(self) -> bool:
        return not self._accepting.done()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def _accept_loop(self) -> None:
        try:
            while True:
                try:
                    conn, address = await self._loop.sock_accept(self._sock)
                except ConnectionAbortedError:
                    continue  # the peer gave up before we accepted
                except OSError as exc:  # EMFILE and the like: the listener stays readable, so pause
                    logger.warning(
                        "the %s cannot accept connections (%s); pausing for %g s", self._what, exc, ACCEPT_PAUSE
                    )
                    await asyncio.sleep(ACCEPT_PAUSE)
                    continue
                peer = "%s:%s" % address[:2]
                if len(self._handshaking) >= MAX_PENDING_HANDSHAKES:
                    logger.warning("refused %s: %d TLS handshakes are pending already", peer, len(self._handshaking))
                    conn.close()
                else:
                    connection = asyncio.ensure_future(self._serve(conn, peer))
                    for tasks in (self._connections, self._handshaking):
                        tasks.add(connection)
                        connection.add_done_callback(tasks.discard)
                await asyncio.sleep(0)  # accepting returns at once while connections wait: let the others run
        finally:
            self._loop.remove_reader(self._sock.fileno())  # a cancelled sock_accept may leave it registered
            self._sock.close()

    async def _serve(self, conn: socket.socket, peer: str) -> None:
        streams = None
        failed = True  # the TLS handshake was tried and failed (not: the peer spoke something else)
        try:
            streams = await asyncio.wait_for(self._handshake(conn, peer), HANDSHAKE_TIMEOUT)
            failed = False
        except asyncio.TimeoutError:
            logger.warning("refused %s: no TLS handshake within %g s", peer, HANDSHAKE_TIMEOUT)
        except ssl.SSLError as exc:
            logger.warning("refused %s: TLS handshake failed: %s", peer, describe_failure(exc))
        except OSError as exc:  # no TLS alert said why; asyncio's TLS client closes without one
            logger.warning(
                "refused %s: it ended the connection during the TLS handshake (%s; does it trust this certificate?)",
                peer,
                exc.strerror or "closed",
            )
        finally:
            self._handshaking.discard(asyncio.current_task())  # type: ignore[arg-type]
            if streams is None:
                conn.close()  # also when cancelled; the transport, if any, closed it already
        if failed:
            self._collect_after_failure()
        if streams is None:
            return
        reader, writer = streams
        try:
            await self._handler(reader, writer)
        except Exception:
            logger.exception("the %s failed serving %s", self._what, peer)
            writer.close()

    def _collect_after_failure(self) -> None:
        self._failures += 1
        if self._failures >= COLLECT_AFTER_FAILURES:
            self._failures = 0
            gc.collect()

    async def _handshake(self, conn: socket.socket, peer: str) -> Optional[Streams]:
        """The connection's streams once its TLS handshake succeeded; None (logged) if it spoke something else."""
        first = await _peek(conn, _PEEK_SIZE)
        if not first:
            logger.info("%s closed the connection before its TLS handshake", peer)
            return None
        if not looks_like_tls(first):
            # Closing with its bytes unread resets the connection, which a client without TLS reports as such.
            logger.warning("refused %s: it spoke %s, not TLS", peer, spoke(first))
            return None
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await self._loop.connect_accepted_socket(lambda: protocol, conn, ssl=self._context)
        return reader, asyncio.StreamWriter(transport, protocol, reader, self._loop)


async def _peek(conn: socket.socket, size: int) -> bytes:
    """The first bytes the non-blocking ``conn`` receives, left unread (``b""``: it closed)."""
    while True:
        try:
            return conn.recv(size, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(conn)


async def _readable(conn: socket.socket) -> None:
    """Wait until ``conn`` has bytes to read, or has closed."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(conn.fileno(), _set_once, ready)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
