"""asyncio listeners and connections with optional TLS, for the tracker and the proxy.

A listener runs an accept loop of its own, plain or TLS. Connections whose
peers have proven nothing yet are bounded in number, per source address and
in time (:class:`farm.net.gate.Gate`); a handler calls :func:`proven` once its
peer has (the farm secret, or the protocol's opening), and its connection no
longer counts. Refusals, and accepts that fail (out of file descriptors: the
loop pauses instead of ending), are logged once per kind and interval, with
the number of those not logged. Under TLS each failed handshake is a warning
that names the peer and why (it spoke TVM's protocol, not TLS; it refused the
certificate; it said nothing in time), which asyncio's own TLS server logs
only in debug mode.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import socket
import ssl
from typing import Awaitable, Callable, Dict, Optional, Set, Tuple

from ..errors import ProtocolError
from ..protocol.opening import Acceptor, Event, NeedData, Proven
from ..protocol.peers import looks_like_tls, spoke
from .gate import Gate, Limits, LogThrottle, Ticket, address_key
from .opening import Opening, closed_during
from .tls import HANDSHAKE_TIMEOUT, TlsConfig, TlsError, describe_failure

logger = logging.getLogger("farm.aio")

#: What a listener calls with each connection's streams, as ``asyncio.start_server`` does.
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Streams = Tuple[asyncio.StreamReader, asyncio.StreamWriter]

#: The tracker's and the proxy's bounds on connections that have proven nothing yet. The time covers the whole
#: way from accept (TLS handshake, proof of the secret, the protocol's opening); each step's own timeout (10 s)
#: comes first and names what was missing.
DEFAULT_LIMITS = Limits(total=512, per_address=64, seconds=12.0)
#: Seconds the accept loop pauses after an accept failed (out of file descriptors, memory or buffers).
ACCEPT_PAUSE = 1.0
#: Bytes looked at (and left unread) before the handshake: a TLS record header, or another protocol's magic.
_PEEK_SIZE = 4
#: A failed handshake leaves a reference cycle (asyncio's future, its exception, the traceback's frames) holding
#: OpenSSL's buffers, some 100 KB that Python's collector does not count: collect after this many failures, or a
#: stream of bad handshakes grows the daemon by megabytes before the collector runs on its own.
COLLECT_AFTER_FAILURES = 16

#: The ticket of the connection the current task serves, until its peer has proven itself.
_TICKET: contextvars.ContextVar[Optional[Tuple[Gate, Ticket]]] = contextvars.ContextVar(
    "farm_aio_ticket", default=None
)


def proven() -> None:
    """Say that the peer of the connection this task serves has proven itself: from now on its connection counts
    against none of the listener's bounds (nothing outside a listener's handler)."""
    held = _TICKET.get()
    if held is not None:
        gate, ticket = held
        gate.leave(ticket)
        _TICKET.set(None)


async def open_stream(opening: Opening, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Event:
    """Run ``opening`` on asyncio streams until it ends (Opened, Refused) or, on an acceptor, a hello awaits an
    answer (HelloReceived): that event. Exceptions as :func:`farm.net.opening.open_socket`'s, without a timeout
    (the caller's ``asyncio.wait_for`` keeps it). An acceptor's peer counts as :func:`proven` once it proved the
    farm secret, else once its opening ended or its hello came.
    """
    while True:
        outgoing = opening.data_to_send()
        if outgoing:
            writer.write(outgoing)
            await writer.drain()
        event = opening.next_event()
        if isinstance(event, Proven) or (isinstance(opening, Acceptor) and not isinstance(event, NeedData)):
            proven()
        if isinstance(event, Proven):
            continue
        if not isinstance(event, NeedData):
            return event
        data = await reader.read(65536)
        if not data:
            raise closed_during(opening)
        try:
            opening.receive_data(data)
        except ProtocolError:
            writer.write(opening.data_to_send())  # the refusal, if it got that far: sent as the caller closes
            raise


async def start_listener(
    sock: socket.socket, handler: Handler, tls: Optional[TlsConfig], what: str, limits: Limits = DEFAULT_LIMITS
) -> asyncio.AbstractServer:
    """Serve each connection to the listening ``sock`` with ``handler(reader, writer)``; with ``tls``, over TLS.

    ``what`` (``"tracker"``) names the daemon in log lines; ``limits`` bound the
    connections that have proven nothing yet. The result closes like asyncio's
    server, and works as ``async with``.
    """
    if tls is not None:
        logger.info("the %s speaks TLS only, with the certificate %s", what, tls.cert)
    context = tls.server_context() if tls is not None else None
    return Listener(sock, handler, context, what, limits)  # type: ignore[abstract]  # it serves from the start


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


class Listener(asyncio.AbstractServer):
    """Accepts connections on a listening socket (over TLS with ``context``) and hands each one's streams to a
    handler, within the bounds of a :class:`farm.net.gate.Gate`."""

    def __init__(
        self, sock: socket.socket, handler: Handler, context: Optional[ssl.SSLContext], what: str, limits: Limits
    ) -> None:
        self._sock = sock
        self._handler = handler
        self._context = context
        self._what = what
        self._loop = asyncio.get_running_loop()
        self._gate = Gate(limits)
        self._throttle = LogThrottle(logger)
        self._sweep: Optional[asyncio.TimerHandle] = None  # ends the connections whose time is up
        self._ended: Dict[asyncio.Future[None], Tuple[str, str]] = {}  # connections cancelled here: kind, why
        self._connections: Set[asyncio.Future[None]] = set()  # strong references, from accept to the handler's end
        self._failures = 0  # handshakes that failed since the last garbage collection
        sock.setblocking(False)
        self._accepting = asyncio.ensure_future(self._accept_loop())

    def close(self) -> None:
        """Stop accepting (connections being served go on, as with asyncio's server)."""
        self._accepting.cancel()
        if self._sweep is not None:
            self._sweep.cancel()

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
                    what = "the %s cannot accept connections (%s); pausing for %g s"
                    self._throttle.warning("accept", self._loop.time(), what, self._what, exc, ACCEPT_PAUSE)
                    await asyncio.sleep(ACCEPT_PAUSE)
                    continue
                self._admit(conn, address)
                await asyncio.sleep(0)  # accepting returns at once while connections wait: let the others run
        finally:
            self._loop.remove_reader(self._sock.fileno())  # a cancelled sock_accept may leave it registered
            self._sock.close()

    def _admit(self, conn: socket.socket, address: Tuple) -> None:
        peer = "%s:%s" % address[:2]
        ticket, displaced = self._gate.enter(address_key(address[0]), self._loop.time())
        if ticket is None:
            kind, why = self._gate.refusal(address_key(address[0]))
            self._throttle.warning(kind, self._loop.time(), "refused %s: %s", peer, why)
            conn.close()
            return
        if displaced is not None:
            why = "it proved nothing, and a connection from an address with fewer took its place (--max-unproven)"
            self._end(displaced, "displaced", why)
        connection = asyncio.ensure_future(self._serve(conn, peer, ticket))
        ticket.data = connection
        self._connections.add(connection)
        connection.add_done_callback(self._connections.discard)
        if self._sweep is None:
            self._sweep = self._loop.call_at(ticket.deadline, self._end_expired)

    def _end(self, ticket: Ticket, kind: str, why: str) -> None:
        """Cancel the connection of a ticket taken out of the gate; its task logs ``why``."""
        if ticket.data.cancel():  # type: ignore[attr-defined]
            self._ended[ticket.data] = (kind, why)  # type: ignore[index]

    def _end_expired(self) -> None:
        """Cancel the connections that have proven nothing in time."""
        self._sweep = None
        for ticket in self._gate.expired(self._loop.time()):
            self._end(ticket, "expired", "it proved nothing within %g s" % self._gate.limits.seconds)
        deadline = self._gate.next_deadline()
        if deadline is not None:
            self._sweep = self._loop.call_at(deadline, self._end_expired)

    async def _serve(self, conn: socket.socket, peer: str, ticket: Ticket) -> None:
        _TICKET.set((self._gate, ticket))  # this task's context: its handler calls proven()
        writer = None
        try:
            streams = await self._tls_streams(conn, peer) if self._context is not None else await self._streams(conn)
            if streams is None:
                conn.close()
                return
            reader, writer = streams
            await self._handler(reader, writer)  # (the handler closes the connection, or hands it on)
        except asyncio.CancelledError:
            ended = self._ended.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if ended is None:
                raise
            kind, why = ended
            self._throttle.warning(kind, self._loop.time(), "refused %s: %s", peer, why)
            self._close(conn, writer)
        except Exception:
            logger.exception("the %s failed serving %s", self._what, peer)
            self._close(conn, writer)
        finally:
            self._gate.leave(ticket)
            self._ended.pop(asyncio.current_task(), None)  # type: ignore[arg-type]  # cancelled as it ended

    @staticmethod
    def _close(conn: socket.socket, writer: Optional[asyncio.StreamWriter]) -> None:
        if writer is not None:
            writer.close()
        else:
            conn.close()  # (a transport that failed to start closed it already)

    async def _streams(self, conn: socket.socket, context: Optional[ssl.SSLContext] = None) -> Streams:
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await self._loop.connect_accepted_socket(lambda: protocol, conn, ssl=context)
        return reader, asyncio.StreamWriter(transport, protocol, reader, self._loop)

    async def _tls_streams(self, conn: socket.socket, peer: str) -> Optional[Streams]:
        """The connection's streams once its TLS handshake succeeded; None (logged) if it did not."""
        failed = True  # the TLS handshake was tried and failed (not: the peer spoke something else)
        try:
            streams = await asyncio.wait_for(self._handshake(conn, peer), HANDSHAKE_TIMEOUT)
            failed = False
            return streams
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
            if failed:
                self._collect_after_failure()
        return None

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
        return await self._streams(conn, self._context)


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
