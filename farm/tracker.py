"""The tracker: ``python -m farm.tracker --host 127.0.0.1 --port 9190 --port-end 9199``.

Boards register under a key (PUT a match key, UPDATE_INFO about themselves);
clients REQUEST a key and wait until a board of that key is free: highest
priority first, first come first served within a priority. It speaks TVM's
tracker protocol (:mod:`farm.protocol.tracker`), so TVM's boards, clients and
query tool work with it, plus extensions only this project's peers use.

A connection is its peer's lease: when it closes, the peer's queued requests
and its boards' offers go with it. With ``--tls-cert`` and ``--tls-key`` it
speaks only TLS (:mod:`farm.aio`). asyncio, standard library, one process.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import signal
import socket
import ssl
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .admission import Limits, add_admission_arguments, limits_from
from .aio import DEFAULT_LIMITS, proven, start_listener
from .auth import AUTH_TIMEOUT, add_secret_argument, admit_on_stream, daemon_secret
from .errors import ProtocolError
from .lifetime import die_with_launcher
from .logs import configure_logging
from .net import bind_first_free
from .protocol.auth import AuthError
from .protocol.tracker import FARM_PROTOCOL, TVM_PROTOCOL, Code, MessageReader, encode_magic, encode_message
from .tls import TlsConfig, add_tls_arguments, daemon_tls

logger = logging.getLogger("farm.tracker")

#: Seconds between two position reports to one waiter (the first place is reported at once).
REPORT_PERIOD = 0.25
#: Largest a peer's UPDATE_INFO may make its info, as JSON; a summary holds one per board.
MAX_INFO = 64 << 10
#: Most waiting requests a summary lists per key (``pending`` counts them all).
MAX_LISTED_WAITERS = 256
#: Seconds a new connection may stay silent before its magic; after it, an idle connection is its peer's lease.
MAGIC_TIMEOUT = 10.0
#: Seconds after which a free board of this farm that has said nothing is taken for hung and not handed out until
#: it speaks again: a free board asks for its pending match keys every second (registration.POLL_PERIOD).
SILENT_AFTER = 5.0


class Offer:
    """A board's PUT: one free slot under a key, claimed with its match key."""

    def __init__(self, peer: Peer, key: str, host: str, port: int, matchkey: str, protocol: str) -> None:
        self.peer = peer
        self.key = key
        self.host = host
        self.port = port
        self.matchkey = matchkey
        self.protocol = protocol


class Waiter:
    """A queued REQUEST."""

    def __init__(self, peer: Peer, key: str, user: str, priority: int, seq: int, options: Dict[str, Any]) -> None:
        self.peer = peer
        self.key = key
        self.user = user
        self.priority = priority
        self.seq = seq
        self.protocols = tuple(options.get("protocols") or (TVM_PROTOCOL,))
        self.extended = bool(options)  # this project's client: its reply also names the board's protocol
        self.progress = bool(options.get("progress"))
        self.wait = options.get("wait")
        self.since = time.monotonic()
        self.position: Optional[int] = None
        self.reported = 0.0  # when its position was last sent
        self.timer: Optional[asyncio.TimerHandle] = None

    @property
    def order(self) -> Tuple[int, int]:
        return (-self.priority, self.seq)


class Peer:
    """One connection to the tracker: a board, a client, or a query tool."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        address = writer.get_extra_info("peername") or ("?", 0)
        self.host = address[0]
        self.name = "%s:%s" % address[:2]
        self.info: Dict[str, Any] = {}  # from UPDATE_INFO
        self.keys: Dict[str, Set[str]] = {}  # every key this peer offered boards under -> their protocols
        self.pending_matchkeys: Set[str] = set()  # offered and not yet handed out
        self.offers: List[Offer] = []
        self.waiters: List[Waiter] = []
        self.held_by: Optional[str] = None  # the user its last handed-out offer went to
        self.held_since: Optional[float] = None
        self.last_heard = time.monotonic()
        self.silence_logged = False  # its silence was logged (once per silence)
        self.closed = False

    @property
    def protocol(self) -> str:
        return self.info.get("protocol", TVM_PROTOCOL)

    def silent(self, now: float) -> bool:
        """Whether this is a board of this farm, free, that has said nothing for SILENT_AFTER seconds (hung:
        stopped, or its machine frozen). TVM's boards poll at their own pace and are never taken for hung."""
        return bool(self.offers) and self.protocol == FARM_PROTOCOL and now - self.last_heard > SILENT_AFTER

    def send(self, value: Any) -> None:
        if not self.closed:
            self.writer.write(encode_message(value))


class KeyQueue:
    """The free boards and the waiting requests of one key."""

    def __init__(self) -> None:
        self.offers: List[Offer] = []  # first in, first out
        self.waiters: List[Waiter] = []  # kept in (-priority, arrival) order

    def add_waiter(self, waiter: Waiter) -> None:
        index = 0
        while index < len(self.waiters) and self.waiters[index].order < waiter.order:
            index += 1
        self.waiters.insert(index, waiter)

    def usable(self, now: float) -> List[Offer]:
        """The offers that may be handed out now: not those of silent boards."""
        return [offer for offer in self.offers if not offer.peer.silent(now)]

    def matches(self, now: float) -> List[Tuple[Waiter, Offer]]:
        """Pair waiters with offers they can use, best waiter first, and remove the pairs."""
        pairs = []
        offers = self.usable(now)
        for waiter in list(self.waiters):
            offer = next((o for o in offers if o.protocol in waiter.protocols), None)
            if offer is None:
                continue
            self.waiters.remove(waiter)
            self.offers.remove(offer)
            offers.remove(offer)
            pairs.append((waiter, offer))
        return pairs


async def _before_magic(reader: asyncio.StreamReader) -> bytes:
    """The next bytes of a connection that has not sent its magic yet; ProtocolError after MAGIC_TIMEOUT without."""
    try:
        return await asyncio.wait_for(reader.read(65536), MAGIC_TIMEOUT)
    except asyncio.TimeoutError:
        raise ProtocolError("no tracker magic within %g s" % MAGIC_TIMEOUT) from None


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise ProtocolError(what)


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


class Tracker:
    """The queue of boards per key; see the module docstring."""

    def __init__(self, stop_key: Optional[str] = None, secret: Optional[bytes] = None) -> None:
        self.stop_key = stop_key
        self.secret = secret
        self.queues: Dict[str, KeyQueue] = {}
        self.peers: Set[Peer] = set()
        self._seq = itertools.count()
        self._reports_due: Set[str] = set()  # keys whose waiters get their positions a little later
        self.stopped = asyncio.Event()
        self.tasks: Set[asyncio.Task[None]] = set()  # one per connection

    # --- connections ----------------------------------------------------------

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(writer)
        messages = MessageReader(expect_magic=True)
        self.peers.add(peer)
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            data = await self._admit(peer, reader, writer) if self.secret is not None else b""
            while data or not reader.at_eof():
                self._receive(peer, messages, data)
                if messages.magic_seen:
                    proven()  # (with a secret, done already)
                await writer.drain()
                data = await reader.read(65536) if messages.magic_seen else await _before_magic(reader)
        except AuthError as exc:
            logger.warning("refused %s: %s", peer.name, exc)
        except asyncio.TimeoutError:
            logger.warning("refused %s: no proof of the farm secret within %g s", peer.name, AUTH_TIMEOUT)
        except ProtocolError as exc:
            logger.warning("closing the connection from %s: %s", peer.name, exc)
        except (ConnectionError, ssl.SSLError) as exc:  # SSLError: a TLS record that does not check out
            logger.info("connection from %s broke: %s", peer.name, exc)
        except Exception:
            logger.exception("closing the connection from %s after an internal error", peer.name)
        finally:
            self._drop(peer)
            writer.close()
            self.tasks.discard(asyncio.current_task())  # type: ignore[arg-type]

    def _receive(self, peer: Peer, messages: MessageReader, data: bytes) -> None:
        """Bytes from a peer: answer its magic, then act on each whole message."""
        magic_was_seen = messages.magic_seen
        received = messages.feed(data)
        if not magic_was_seen and messages.magic_seen:
            peer.writer.write(encode_magic())
        now = time.monotonic()
        was_silent = peer.silent(now)
        if was_silent:
            logger.warning(
                "board %s speaks again after %.0f s; it is handed out again", peer.name, now - peer.last_heard
            )
        peer.last_heard = now
        peer.silence_logged = False
        for message in received:
            self._dispatch(peer, message)
        if was_silent:
            for key in {offer.key for offer in peer.offers}:
                self._schedule(key)

    async def _admit(self, peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """The peer proves it holds the farm secret; the bytes it sent after the proof."""
        assert self.secret is not None
        leftover = await admit_on_stream(reader, writer, self.secret)
        logger.debug("%s proved it holds the farm secret", peer.name)
        proven()
        return leftover

    def _drop(self, peer: Peer) -> None:
        """A closed connection takes its queued requests and its boards' offers along."""
        peer.closed = True
        self.peers.discard(peer)
        keys = set()
        for waiter in peer.waiters:
            self._remove_waiter(waiter)
            keys.add(waiter.key)
        for offer in peer.offers:
            queue = self.queues.get(offer.key)
            if queue is not None and offer in queue.offers:
                queue.offers.remove(offer)
            keys.add(offer.key)
        if peer.keys:
            logger.info("board %s (%s) left", peer.name, ", ".join(sorted(peer.keys)))
        for key in keys:
            self._schedule(key)

    # --- messages ---------------------------------------------------------------

    def _dispatch(self, peer: Peer, message: Any) -> None:
        _expect(isinstance(message, list) and message and type(message[0]) is int, "a request is not [code, ...]")
        code = message[0]
        if code == Code.PING:
            peer.send(Code.SUCCESS)
        elif code == Code.PUT:
            self._put(peer, message)
        elif code == Code.REQUEST:
            self._request(peer, message)
        elif code == Code.UPDATE_INFO:
            self._update_info(peer, message)
        elif code == Code.SUMMARY:
            try:
                peer.send([Code.SUCCESS, self.summary()])
            except ProtocolError as exc:  # not the asker's fault: say so instead of dropping it
                peer.send([Code.FAIL, "the summary is too large to send: %s" % exc])
        elif code == Code.GET_PENDING_MATCHKEYS:
            peer.send(sorted(peer.pending_matchkeys))
        elif code == Code.STOP:
            if self.stop_key is not None and message[1:2] == [self.stop_key]:
                peer.send(Code.SUCCESS)
                self.stopped.set()
            else:
                peer.send(Code.FAIL)
        else:
            raise ProtocolError("unknown tracker code %r" % code)

    def _put(self, peer: Peer, message: list) -> None:
        _expect(len(message) >= 3 and isinstance(message[1], str), "PUT is not [3, key, [port, matchkey], host]")
        key, slot = message[1], message[2]
        _expect(isinstance(slot, list) and len(slot) == 2, "PUT's second argument is not [port, matchkey]")
        port, matchkey = slot
        if isinstance(port, str) and port.isdigit():
            port = int(port)  # TVM's C++ and Java boards send the port as a string
        _expect(type(port) is int and 0 < port < 65536, "PUT's port %r is not a port number" % (port,))
        _expect(isinstance(matchkey, str), "PUT's match key is not a string")
        host = message[3] if len(message) > 3 and message[3] is not None else peer.host
        _expect(isinstance(host, str), "PUT's address is not a string")
        options = message[4] if len(message) > 4 and isinstance(message[4], dict) else {}
        protocol = str(options.get("protocol") or peer.protocol)  # a proxy says it per board
        offer = Offer(peer, key, host, port, matchkey, protocol)
        if key not in peer.keys:
            logger.info("board %s offers key %r at %s:%d", peer.name, key, host, port)
        peer.keys.setdefault(key, set()).add(protocol)
        peer.offers.append(offer)
        peer.pending_matchkeys.add(matchkey)
        peer.held_by = peer.held_since = None
        self.queues.setdefault(key, KeyQueue()).offers.append(offer)
        peer.send(Code.SUCCESS)
        self._schedule(key)

    def _update_info(self, peer: Peer, message: list) -> None:
        _expect(len(message) >= 2 and isinstance(message[1], dict), "UPDATE_INFO is not [5, {...}]")
        info = dict(message[1])
        still_offered = info.pop("offers", None)  # this project's proxy: the match keys it still offers
        addr = info.get("addr")
        _expect(isinstance(addr, list) and len(addr) == 2, "UPDATE_INFO's addr is not [host, port]")
        protocol = info.get("protocol", TVM_PROTOCOL)  # summaries join the protocols of every board
        _expect(isinstance(protocol, str), "UPDATE_INFO's protocol %r is not a name" % (protocol,))
        if addr[0] is None:
            addr = [peer.host, addr[1]]
        info["addr"] = addr
        merged = dict(peer.info, **info)
        _expect(len(json.dumps(merged)) <= MAX_INFO, "UPDATE_INFO grows the peer's info beyond %d bytes" % MAX_INFO)
        peer.info = merged
        board_key = str(merged.get("key", ""))[len("server:") :]
        if str(merged.get("key")).startswith("server:") and board_key and "[" not in board_key:
            # A board serves its key from now on, even while it is in a session and offers nothing (as after a
            # tracker restart): requests for the key queue instead of being refused. A proxy says so per PUT.
            if board_key not in peer.keys:
                logger.info("board %s serves key %r", peer.name, board_key)
            peer.keys.setdefault(board_key, set()).add(peer.protocol)
        if still_offered is not None:
            _expect(
                isinstance(still_offered, list) and all(isinstance(m, str) for m in still_offered),
                "UPDATE_INFO's offers %r are not a list of match keys" % (still_offered,),
            )
            self._withdraw(peer, set(still_offered))
        peer.send(Code.SUCCESS)

    def _withdraw(self, peer: Peer, still_offered: Set[str]) -> None:
        """Drop the peer's offers it no longer makes: a board that left a proxy before a client came for it."""
        for offer in [offer for offer in peer.offers if offer.matchkey not in still_offered]:
            peer.offers.remove(offer)
            peer.pending_matchkeys.discard(offer.matchkey)
            queue = self.queues.get(offer.key)
            if queue is not None and offer in queue.offers:
                queue.offers.remove(offer)
            logger.info("%s withdrew its offer of a board of key %r", peer.name, offer.key)

    def _request(self, peer: Peer, message: list) -> None:
        _expect(len(message) >= 4 and isinstance(message[1], str), "REQUEST is not [4, key, user, priority]")
        key, user, priority = message[1], message[2], message[3]
        _expect(_finite(priority), "REQUEST's priority %r is not a finite number" % (priority,))
        options = message[4] if len(message) > 4 and isinstance(message[4], dict) else {}
        protocols = options.get("protocols", [TVM_PROTOCOL])
        _expect(
            isinstance(protocols, list) and all(isinstance(p, str) for p in protocols),
            "REQUEST's protocols %r are not a list of names" % (protocols,),
        )
        wait = options.get("wait")
        _expect(wait is None or _finite(wait) and wait >= 0, "REQUEST's wait %r is not a number of seconds" % (wait,))
        waiter = Waiter(peer, key, str(user or ""), int(priority), next(self._seq), options)
        refusal = self._refusal(waiter, options)
        if refusal:
            peer.send([Code.FAIL, refusal])
            return
        peer.waiters.append(waiter)
        self.queues.setdefault(key, KeyQueue()).add_waiter(waiter)
        if waiter.wait is not None:
            waiter.timer = asyncio.get_running_loop().call_later(waiter.wait, self._expire, waiter)
        self._schedule(key)

    def _refusal(self, waiter: Waiter, options: Dict[str, Any]) -> str:
        """Why a request cannot ever be served right now ("" if it can wait)."""
        if options.get("wait_for_key"):
            return ""
        boards = self._boards_of(waiter.key)
        if not boards:
            keys = sorted({key for peer in self.peers for key in peer.keys})
            return "no board serves key %r (keys served: %s)" % (waiter.key, ", ".join(keys) or "none")
        spoken = sorted(set().union(*(peer.keys[waiter.key] for peer in boards)))
        if not any(protocol in waiter.protocols for protocol in spoken):
            return "the boards of key %r speak %s, and this client speaks %s" % (
                waiter.key,
                " and ".join(spoken),
                " and ".join(waiter.protocols),
            )
        return ""

    def _boards_of(self, key: str) -> List[Peer]:
        return [peer for peer in self.peers if key in peer.keys]

    def _board_count(self, key: str) -> int:
        """Boards of ``key``: one per board peer, or what a proxy says it has (``"boards": {key: n}``)."""
        total = 0
        for peer in self._boards_of(key):
            counts = peer.info.get("boards")
            if not isinstance(counts, dict):
                total += 1  # a board
                continue
            count = counts.get(key, 0)  # a proxy without boards of the key now has none
            total += count if type(count) is int and count >= 0 else 1
        return total

    # --- scheduling ---------------------------------------------------------------

    def _schedule(self, key: str) -> None:
        queue = self.queues.get(key)
        if queue is None:
            return
        now = time.monotonic()
        for offer in queue.offers:
            if offer.peer.silent(now) and not offer.peer.silence_logged:
                offer.peer.silence_logged = True
                logger.warning(
                    "board %s of key %r has said nothing for %.0f s (hung?): not handed out until it speaks",
                    offer.peer.name,
                    key,
                    now - offer.peer.last_heard,
                )
        for waiter, offer in queue.matches(now):
            self._forget_waiter(waiter)
            offer.peer.offers.remove(offer)
            offer.peer.pending_matchkeys.discard(offer.matchkey)
            offer.peer.held_by, offer.peer.held_since = waiter.user, time.time()
            assignment = [offer.host, offer.port, offer.matchkey]
            if waiter.extended:
                assignment.append(offer.protocol)  # a TVM client would not unpack a fourth element
            waiter.peer.send([Code.SUCCESS, assignment])
            logger.info(
                "board %s:%d of key %r to %s%s after %.2f s",
                offer.host,
                offer.port,
                key,
                waiter.peer.name,
                " (%s)" % waiter.user if waiter.user else "",
                time.monotonic() - waiter.since,
            )
        self._report_positions(queue)
        if not queue.offers and not queue.waiters and not self._boards_of(key):
            del self.queues[key]

    def _report_positions(self, queue: KeyQueue) -> None:
        """Tell waiters that asked for it their new place in the queue, each at most every REPORT_PERIOD."""
        boards = self._board_count(queue.waiters[0].key) if queue.waiters else 0
        now = time.monotonic()
        for position, waiter in enumerate(queue.waiters):
            if waiter.progress and waiter.position != position:
                if now - waiter.reported < REPORT_PERIOD and position:
                    self._report_later(waiter.key)
                    continue
                waiter.position, waiter.reported = position, now
                state = {"position": position, "ahead": position, "boards": boards, "free": len(queue.offers)}
                waiter.peer.send([Code.WAITING, state])

    def _report_later(self, key: str) -> None:
        if key not in self._reports_due:
            self._reports_due.add(key)
            asyncio.get_running_loop().call_later(REPORT_PERIOD, self._report_due, key)

    def _report_due(self, key: str) -> None:
        self._reports_due.discard(key)
        queue = self.queues.get(key)
        if queue is not None and queue.waiters:
            self._report_positions(queue)

    def _expire(self, waiter: Waiter) -> None:
        queue = self.queues.get(waiter.key)
        if queue is None or waiter not in queue.waiters:
            return
        ahead = queue.waiters.index(waiter)
        self._remove_waiter(waiter)
        waiter.peer.send(
            [
                Code.FAIL,
                "no board of key %r freed within %g s (%d request%s ahead)"
                % (waiter.key, waiter.wait, ahead, "" if ahead == 1 else "s"),
            ]
        )
        self._schedule(waiter.key)

    def _forget_waiter(self, waiter: Waiter) -> None:
        if waiter in waiter.peer.waiters:
            waiter.peer.waiters.remove(waiter)
        if waiter.timer is not None:
            waiter.timer.cancel()

    def _remove_waiter(self, waiter: Waiter) -> None:
        queue = self.queues.get(waiter.key)
        if queue is not None and waiter in queue.waiters:
            queue.waiters.remove(waiter)
        self._forget_waiter(waiter)

    # --- summary ------------------------------------------------------------------

    def summary(self) -> Dict[str, Any]:
        """TVM's summary (``queue_info``, ``server_info``) with who holds each board and since when.

        Beyond TVM's ``free`` and ``pending``, each key's entry has ``total``
        (its boards), ``silent`` (free boards taken for hung, not in ``free``)
        and ``waiters``: the first requests in queue order, each with its
        user, priority and seconds waited so far.
        """
        queue_info = {}
        now = time.monotonic()
        served = {key for peer in self.peers for key in peer.keys}  # also keys whose boards are all in sessions
        for key in sorted(served.union(self.queues)):
            queue = self.queues.get(key) or KeyQueue()
            waiters = [
                {"user": w.user, "priority": w.priority, "waited": round(now - w.since, 3)}
                for w in queue.waiters[:MAX_LISTED_WAITERS]
            ]
            usable = len(queue.usable(now))
            queue_info[key] = {
                "free": usable,
                "silent": len(queue.offers) - usable,
                "pending": len(queue.waiters),
                "total": self._board_count(key),
                "waiters": waiters,
            }
        server_info = []
        for peer in sorted(self.peers, key=lambda p: p.name):
            if not str(peer.info.get("key", "")).startswith("server"):
                continue
            entry = dict(peer.info)
            offered = set().union(*peer.keys.values()) if peer.keys else {peer.protocol}
            entry["protocol"] = "/".join(sorted(offered))  # a proxy may offer boards of both kinds
            entry["free"] = bool(peer.offers)
            entry["state"] = "held" if peer.held_by is not None else "busy"
            if peer.offers:
                entry["state"] = "silent" if peer.silent(now) else "free"
            entry["held_by"] = peer.held_by
            entry["since"] = peer.held_since
            server_info.append(entry)
        return {"queue_info": queue_info, "server_info": server_info}


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


async def serve(
    sock: socket.socket,
    stop_key: Optional[str] = None,
    secret: Optional[bytes] = None,
    tls: Optional[TlsConfig] = None,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Serve on the listening ``sock`` (over TLS with ``tls``) until SIGTERM, SIGINT or an authorised STOP;
    ``limits`` bound the connections that have proven nothing yet (:mod:`farm.admission`)."""
    tracker = Tracker(stop_key, secret)
    server = await start_listener(sock, tracker.handle_connection, tls, "tracker", limits)
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, tracker.stopped.set)
    host, port = sock.getsockname()[:2]
    logger.info("bind to %s:%d", host, port)
    async with server:
        await tracker.stopped.wait()
        server.close()
        for peer in list(tracker.peers):
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
    asyncio.run(serve(sock, secret=secret, tls=tls, limits=limits_from(args)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.tracker", description="Run a tracker.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
