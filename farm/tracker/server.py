"""The tracker: ``python -m farm.tracker --host 127.0.0.1 --port 9190 --port-end 9199``.

Boards register under a key; clients request a key and wait until a board of that key is free
(highest priority first, first come first served within a priority). It speaks TVM's tracker
protocol (:mod:`farm.protocol.tracker`), so TVM's boards, clients and query tool work with it, plus
extensions only this project's peers use.

This module is the asyncio side only: it accepts connections (:mod:`farm.net.aio`), checks their
opening, decodes messages, and hands them to :class:`farm.tracker.state.TrackerState` with the time,
which decides; it then writes what the state returns and wakes the state when its next deadline
comes. A connection is its peer's lease: when it closes, the state forgets the peer's requests and
offers. With ``--tls-cert`` and ``--tls-key`` it speaks only TLS. Standard library, one process.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import socket
import ssl
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Set

from ..cli_types import count, positive_count, seconds, whole
from ..errors import ProtocolError
from ..lifetime import die_with_launcher
from ..logs import configure_logging
from ..net import gate as admission
from ..net.aio import DEFAULT_LIMITS, open_stream, start_listener
from ..net.credentials import PLAIN, Credentials
from ..net.gate import add_admission_arguments
from ..net.secret import add_secret_argument, daemon_secret
from ..net.sockets import bind_first_free
from ..net.tls import add_tls_arguments, daemon_tls
from ..protocol.auth import AuthError
from ..protocol.opening import Acceptor, Kind, Opened
from ..protocol.tracker import MAX_MESSAGE, MessageReader, encode_message
from .state import Action, Close, Limits, Send, Stop, TrackerState

logger = logging.getLogger("farm.tracker")

#: Seconds a new connection may take over its opening (the proof of the secret, with one, and the magic); after it,
#: an idle connection is its peer's lease.
MAGIC_TIMEOUT = 10.0


class Peer:
    """One connection to the tracker: its id in the tracker's state, and the writer its replies go to."""

    def __init__(self, peer_id: int, writer: asyncio.StreamWriter, max_output: int = Limits.max_output) -> None:
        self.id = peer_id
        self.writer = writer
        self.max_output = max_output
        self.address = writer.get_extra_info("peername") or ("?", 0)
        self.name = "%s:%s" % self.address[:2]
        self.closed = False

    def send(self, value: Any) -> None:
        """Queue a message for the peer; a peer whose unread replies pass ``max_output`` bytes is dropped."""
        if self.closed:
            return
        self.writer.write(encode_message(value))
        queued = self.writer.transport.get_write_buffer_size()
        if queued > self.max_output:
            logger.warning(
                "closing the connection from %s: it does not read its replies (%d bytes queued, limit %d)",
                self.name,
                queued,
                self.max_output,
            )
            self.closed = True
            self.writer.transport.abort()


class Tracker:
    """Connections in, messages to the state, its actions out; see the module docstring."""

    def __init__(
        self, stop_key: Optional[str] = None, secret: Optional[bytes] = None, limits: Optional[Limits] = None
    ) -> None:
        limits = limits or Limits()
        self.secret = secret
        self.limits = limits
        self.state = TrackerState(limits, stop_key, wall_offset=time.time() - time.monotonic())
        self.peers: Dict[int, Peer] = {}
        self._ids = itertools.count(1)
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at: Optional[float] = None  # the state's deadline the timer is set for
        self.stopped = asyncio.Event()
        self.tasks: Set[asyncio.Task[None]] = set()  # one per connection

    # --- connections ----------------------------------------------------------

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(next(self._ids), writer, self.limits.max_output)
        messages = MessageReader(expect_magic=False)  # (the opening takes the magic)
        self.peers[peer.id] = peer
        self.state.connected(peer.id, peer.address, time.monotonic())
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            data = await self._open(peer, reader, writer)
            while data or not reader.at_eof():
                self._receive(peer, messages, data)
                if peer.closed:
                    break  # the state closed it (it sent something malformed), or it does not read its replies
                await writer.drain()
                data = await reader.read(65536)
        except AuthError as exc:
            logger.warning("refused %s: %s", peer.name, exc)
        except ProtocolError as exc:
            logger.warning("closing the connection from %s: %s", peer.name, exc)
        except (ConnectionError, ssl.SSLError) as exc:  # SSLError: a TLS record that does not check out
            logger.info("connection from %s broke: %s", peer.name, exc)
        except Exception:
            logger.exception("closing the connection from %s after an internal error", peer.name)
        finally:
            peer.closed = True
            del self.peers[peer.id]
            self._apply(self.state.disconnected(peer.id, time.monotonic()))
            writer.close()
            self.tasks.discard(asyncio.current_task())

    def _receive(self, peer: Peer, messages: MessageReader, data: bytes) -> None:
        """Bytes from a peer after its opening: hand each whole message to the state."""
        for message in messages.feed(data):
            if peer.closed:
                break  # dropped meanwhile: it does not read its replies, or sent something malformed
            self._apply(self.state.receive(peer.id, message, time.monotonic()))

    async def _open(self, peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """The peer's opening (its proof of the farm secret, with one, then its magic, echoed); the bytes it sent
        after it. AuthError or ProtocolError naming what it did not send within MAGIC_TIMEOUT."""
        opening = Acceptor(Kind.TRACKER, self.secret)
        try:
            opened = await asyncio.wait_for(open_stream(opening, reader, writer), MAGIC_TIMEOUT)
        except asyncio.TimeoutError:
            error = AuthError if opening.proving else ProtocolError
            raise error("no %s within %g s" % (opening.waiting_for(), MAGIC_TIMEOUT)) from None
        if self.secret is not None:
            logger.debug("%s proved it holds the farm secret", peer.name)
        assert isinstance(opened, Opened)  # (a tracker's opening opens, or raises)
        return opened.leftover

    # --- the state's actions ----------------------------------------------------

    def _apply(self, actions: List[Action]) -> None:
        """Do what the state asked, then wake it at its next deadline."""
        for action in actions:
            if isinstance(action, Send):
                peer = self.peers.get(action.peer)
                if peer is not None:
                    peer.send(action.message)
            elif isinstance(action, Close):
                peer = self.peers.get(action.peer)
                if peer is not None and not peer.closed:
                    logger.warning("closing the connection from %s: %s", peer.name, action.reason)
                    peer.closed = True
                    peer.writer.close()
            elif isinstance(action, Stop):
                self.stopped.set()
        self._set_timer()

    def _set_timer(self) -> None:
        """One timer, set for the state's next deadline."""
        deadline = self.state.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, deadline
        if deadline is not None:
            delay = max(0.0, deadline - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        self._apply(self.state.tick(time.monotonic()))


# --- command line -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tracker's options, shared by ``python -m farm.tracker`` and ``farm tracker``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9190, help="first port to try; 0 lets the system pick")
    parser.add_argument("--port-end", type=int, default=9199, help="end of the port range, exclusive")
    add_secret_argument(parser)
    add_tls_arguments(parser)
    add_admission_arguments(parser, DEFAULT_LIMITS)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    limits = parser.add_argument_group("limits (docs/tracker.md)")
    default = Limits()
    limits.add_argument("--max-priority", type=count, default=default.max_priority, metavar="N",
                        help="a request's priority is clamped to -N..N (default: %(default)s)")  # fmt: skip
    limits.add_argument("--fair-after", type=seconds(), default=default.fair_after, metavar="SECONDS",
                        help="a request waiting this long goes before all later ones, whatever their priority; "
                        "such requests take turns by address (default: %(default)s)")  # fmt: skip
    limits.add_argument("--max-offers-per-peer", type=positive_count, default=default.max_offers, metavar="N",
                        help="free boards one connection may offer at once (default: %(default)s)")  # fmt: skip
    limits.add_argument("--max-waiters-per-peer", type=positive_count, default=default.max_waiters, metavar="N",
                        help="requests one connection may have queued at once (default: %(default)s)")  # fmt: skip
    limits.add_argument("--max-keys-per-peer", type=positive_count, default=default.max_keys, metavar="N",
                        help="keys one connection may serve (default: %(default)s)")  # fmt: skip
    limits.add_argument("--max-peer-output", type=whole(MAX_MESSAGE, "a number of bytes"), default=default.max_output,
                        metavar="BYTES", help="replies queued for a peer that does not read them before it is "
                        "dropped (default: %(default)s)")  # fmt: skip


def limits_from(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` the tracker's options ask for."""
    return Limits(
        max_priority=args.max_priority,
        fair_after=args.fair_after,
        max_offers=args.max_offers_per_peer,
        max_waiters=args.max_waiters_per_peer,
        max_keys=args.max_keys_per_peer,
        max_output=args.max_peer_output,
    )


async def serve(
    sock: socket.socket,
    stop_key: Optional[str] = None,
    credentials: Credentials = PLAIN,
    limits: Optional[Limits] = None,
    gate: admission.Limits = DEFAULT_LIMITS,
) -> None:
    """Serve on the listening ``sock`` until SIGTERM, SIGINT or an authorised STOP, over TLS with the
    ``credentials``' and asking each peer for their secret.

    ``limits`` bound what each peer may ask of the queue (default: :class:`Limits`); ``gate`` bounds the
    connections that have proven nothing yet (:mod:`farm.net.gate`).
    """
    tracker = Tracker(stop_key, credentials.secret, limits)
    server = await start_listener(sock, tracker.handle_connection, credentials.tls, "tracker", gate)
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, tracker.stopped.set)
    host, port = sock.getsockname()[:2]
    logger.info("bind to %s:%d", host, port)
    async with server:
        await tracker.stopped.wait()
        server.close()
        for peer in list(tracker.peers.values()):
            peer.writer.close()  # each connection's task then sees the end of its stream
        if tracker.tasks:
            await asyncio.wait(list(tracker.tasks), timeout=5)
    logger.info("tracker stopped")


def run(args: argparse.Namespace) -> int:
    die_with_launcher()
    configure_logging(args.log_level)
    secret = daemon_secret(args.secret_file, args.host, "tracker")
    tls = daemon_tls(args, listens=True, dials=False)
    try:
        sock = bind_first_free(args.host, args.port, args.port_end)
    except OSError as exc:
        logger.error("cannot listen: %s", exc)
        return 1
    credentials = Credentials(secret, tls)
    asyncio.run(serve(sock, credentials=credentials, limits=limits_from(args), gate=admission.limits_from(args)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.tracker", description="Run a tracker.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
