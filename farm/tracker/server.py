"""The tracker: ``python -m farm.tracker --host 127.0.0.1 --port 9190 --port-end 9199``.

Boards register under a key (PUT a match key, UPDATE_INFO about themselves);
clients REQUEST a key and wait until a board of that key is free: highest
priority first, first come first served within a priority. It speaks TVM's
tracker protocol (:mod:`farm.protocol.tracker`), so TVM's boards, clients and
query tool work with it, plus extensions only this project's peers use.

A connection is its peer's lease: when it closes, the peer's queued requests
and its boards' offers go with it. With ``--tls-cert`` and ``--tls-key`` it
speaks only TLS (:mod:`farm.net.aio`). asyncio, standard library, one process.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import logging
import math
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

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
from ..protocol.handshake import MAX_KEY_LENGTH
from ..protocol.opening import Acceptor, Kind, Opened
from ..protocol.tracker import (
    FARM_PROTOCOL,
    MAX_MESSAGE,
    OMITTED,
    PROTOCOLS,
    TVM_PROTOCOL,
    Code,
    MessageReader,
    encode_message,
)
from .queues import KeyQueue, Offer, Waiter

logger = logging.getLogger("farm.tracker")

#: Seconds between two position reports to one waiter (the first place is reported at once).
REPORT_PERIOD = 0.25
#: Largest a peer's UPDATE_INFO may make its info, as JSON; a summary holds one per board.
MAX_INFO = 64 << 10
#: Most waiting requests a summary lists per key (``pending`` counts them all).
MAX_LISTED_WAITERS = 256
#: Characters of a request's user string the tracker keeps.
MAX_USER = 256
#: Bytes of JSON a summary may take (half for ``queue_info``, half for ``server_info``): below MAX_MESSAGE.
SUMMARY_BUDGET = MAX_MESSAGE - (64 << 10)
#: Bytes of JSON a board's entry in the summary may take with its own fields; a larger one is cut short.
MAX_SERVER_ENTRY = 4 << 10
#: Characters of a field shown in a cut-short entry or an error message.
MAX_SHOWN = 256
#: Keys a refusal names ("keys served: ...").
MAX_NAMED_KEYS = 20
#: Seconds a new connection may take over its opening (the proof of the secret, with one, and the magic); after it,
#: an idle connection is its peer's lease.
MAGIC_TIMEOUT = 10.0
#: Seconds after which a free board of this farm that has said nothing is taken for hung and not handed out until
#: it speaks again: a free board asks for its pending match keys every second (registration.POLL_PERIOD).
SILENT_AFTER = 5.0


@dataclass(frozen=True)
class Limits:
    """What one peer may ask of the tracker, and how requests are ordered (the tracker's options)."""

    max_priority: int = 100  # priorities beyond +-max_priority are clamped to it
    fair_after: float = 300.0  # seconds after which a request is overdue: see tracker_queue
    max_offers: int = 256  # free boards one connection offers at once
    max_waiters: int = 256  # requests one connection has queued at once
    max_keys: int = 64  # keys one connection serves
    max_output: int = 2 * MAX_MESSAGE  # bytes of replies queued for a peer that does not read them


class Peer:
    """One connection to the tracker: a board, a client, or a query tool."""

    def __init__(self, writer: asyncio.StreamWriter, max_output: int = Limits.max_output) -> None:
        self.writer = writer
        self.max_output = max_output
        address = writer.get_extra_info("peername") or ("?", 0)
        self.host = address[0]
        self.name = "%s:%s" % address[:2]
        self.info: Dict[str, Any] = {}  # from UPDATE_INFO
        self.keys: Dict[str, Set[str]] = {}  # every key this peer offered boards under -> their protocols
        self.pending_matchkeys: Set[str] = set()  # offered and not yet handed out
        self.offers: Dict[Offer, None] = {}
        self.waiters: Dict[Waiter, None] = {}
        self.held_by: Optional[str] = None  # the user its last handed-out offer went to
        self.held_since: Optional[float] = None
        self.last_heard = time.monotonic()
        self.silence_logged = False  # its silence was logged (once per silence)
        self.clamp_logged = False  # a clamped priority of it was logged
        self.closed = False

    @property
    def protocol(self) -> str:
        return self.info.get("protocol", TVM_PROTOCOL)

    def silent(self, now: float) -> bool:
        """Whether this is a board of this farm, free, that has said nothing for SILENT_AFTER seconds (hung:
        stopped, or its machine frozen). TVM's boards poll at their own pace and are never taken for hung."""
        return bool(self.offers) and self.protocol == FARM_PROTOCOL and now - self.last_heard > SILENT_AFTER

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

    def release(self) -> None:
        """Forget what the peer offered, asked and said, once it left: nothing of it stays reachable through the
        offers and waiters that point back at it."""
        self.offers.clear()
        self.waiters.clear()
        self.keys.clear()
        self.pending_matchkeys.clear()
        self.info = {}


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise ProtocolError(what)


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


class Tracker:
    """The queue of boards per key; see the module docstring."""

    def __init__(
        self, stop_key: Optional[str] = None, secret: Optional[bytes] = None, limits: Limits = Limits()
    ) -> None:
        self.stop_key = stop_key
        self.secret = secret
        self.limits = limits
        self.queues: Dict[str, KeyQueue] = {}
        self.peers: Set[Peer] = set()
        self.servers: Dict[str, Set[Peer]] = {}  # key -> the peers serving it
        self._seq = itertools.count()
        self._reports_due: Set[str] = set()  # keys whose waiters get their positions a little later
        self.stopped = asyncio.Event()
        self.tasks: Set[asyncio.Task[None]] = set()  # one per connection

    # --- connections ----------------------------------------------------------

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(writer, self.limits.max_output)
        messages = MessageReader(expect_magic=False)  # (the opening takes the magic)
        self.peers.add(peer)
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            data = await self._open(peer, reader, writer)
            while data or not reader.at_eof():
                self._receive(peer, messages, data)
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
            self._drop(peer)
            writer.close()
            self.tasks.discard(asyncio.current_task())

    def _receive(self, peer: Peer, messages: MessageReader, data: bytes) -> None:
        """Bytes from a peer after its opening: act on each whole message."""
        received = messages.feed(data)
        now = time.monotonic()
        was_silent = peer.silent(now)
        if was_silent:
            logger.warning(
                "board %s speaks again after %.0f s; it is handed out again", peer.name, now - peer.last_heard
            )
        peer.last_heard = now
        peer.silence_logged = False
        if was_silent:
            for offer in peer.offers:
                self.queues[offer.key].unpark(offer)
        for message in received:
            if peer.closed:
                break  # dropped meanwhile: it does not read its replies
            self._dispatch(peer, message)
        if was_silent:
            for key in {offer.key for offer in peer.offers}:
                self._schedule(key)

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

    def _drop(self, peer: Peer) -> None:
        """A closed connection takes its queued requests and its boards' offers along."""
        peer.closed = True
        self.peers.discard(peer)
        keys = set(peer.keys)
        for waiter in list(peer.waiters):
            self._remove_waiter(waiter)
            keys.add(waiter.key)
        for offer in peer.offers:
            queue = self.queues.get(offer.key)
            if queue is not None:
                queue.remove_offer(offer)
            keys.add(offer.key)
        if peer.keys:
            logger.info("board %s (%s) left", peer.name, ", ".join(sorted(peer.keys)))
        for key in list(peer.keys):
            self._unserve(peer, key)
        peer.release()
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
            peer.send([Code.SUCCESS, self.summary()])
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
        refusal = (
            _too_long("PUT's key", key)
            or _too_long("PUT's match key", matchkey)
            or _too_long("PUT's address", host)
            or _unknown_protocol("PUT", protocol)
            or self._over_keys(peer, key)
        )
        if not refusal and len(peer.offers) >= self.limits.max_offers:
            refusal = "this connection already offers %d boards, the most one may (--max-offers-per-peer)" % len(
                peer.offers
            )
        if refusal:
            peer.send([Code.FAIL, refusal])
            return
        offer = Offer(peer, key, host, port, matchkey, protocol, next(self._seq))
        if key not in peer.keys:
            logger.info("board %s offers key %r at %s:%d", peer.name, key, host, port)
        self._serve(peer, key, protocol)
        peer.offers[offer] = None
        peer.pending_matchkeys.add(matchkey)
        peer.held_by = peer.held_since = None
        self._queue(key).add_offer(offer)
        peer.send(Code.SUCCESS)
        self._schedule(key)

    def _over_keys(self, peer: Peer, key: str) -> str:
        """Why the peer may not serve one more key ("" if it may)."""
        if key in peer.keys or len(peer.keys) < self.limits.max_keys:
            return ""
        return "this connection already serves %d keys, the most one may (--max-keys-per-peer)" % len(peer.keys)

    def _serve(self, peer: Peer, key: str, protocol: str) -> None:
        peer.keys.setdefault(key, set()).add(protocol)
        self.servers.setdefault(key, set()).add(peer)

    def _unserve(self, peer: Peer, key: str) -> None:
        del peer.keys[key]
        serving = self.servers.get(key, set())
        serving.discard(peer)
        if not serving:
            self.servers.pop(key, None)

    def _queue(self, key: str) -> KeyQueue:
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = KeyQueue(key, self.limits.fair_after)
        return queue

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
        board_key = str(merged.get("key", ""))[len("server:") :]
        serves = str(merged.get("key")).startswith("server:") and board_key and "[" not in board_key
        refusal = _unknown_protocol("UPDATE_INFO", protocol) or (
            serves and (_too_long("UPDATE_INFO's key", board_key) or self._over_keys(peer, board_key))
        )
        if refusal:
            peer.send([Code.FAIL, refusal])
            return
        peer.info = merged
        if serves:
            # A board serves its key from now on, even while it is in a session and offers nothing (as after a
            # tracker restart): requests for the key queue instead of being refused. A proxy says so per PUT.
            if board_key not in peer.keys:
                logger.info("board %s serves key %r", peer.name, board_key)
            self._serve(peer, board_key, peer.protocol)
        if still_offered is not None:
            _expect(
                isinstance(still_offered, list) and all(isinstance(m, str) for m in still_offered),
                "UPDATE_INFO's offers %r are not a list of match keys" % (still_offered,),
            )
            self._withdraw(peer, set(still_offered))
        counts = merged.get("boards")
        if isinstance(counts, dict):  # a proxy: it no longer serves the keys it has no board of
            offered = {offer.key for offer in peer.offers}
            for key in [key for key in peer.keys if key not in offered and not counts.get(key)]:
                self._unserve(peer, key)
                self._schedule(key)
        peer.send(Code.SUCCESS)

    def _withdraw(self, peer: Peer, still_offered: Set[str]) -> None:
        """Drop the peer's offers it no longer makes: a board that left a proxy before a client came for it."""
        for offer in [offer for offer in peer.offers if offer.matchkey not in still_offered]:
            del peer.offers[offer]
            peer.pending_matchkeys.discard(offer.matchkey)
            queue = self.queues.get(offer.key)
            if queue is not None:
                queue.remove_offer(offer)
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
        refusal = _too_long("REQUEST's key", key)
        spoken = frozenset(p for p in protocols if p in PROTOCOLS)
        if not refusal and not spoken:
            refusal = "REQUEST's protocols %s name none this tracker knows (%s)" % (
                _shortened(protocols),
                ", ".join(PROTOCOLS),
            )
        if not refusal and len(peer.waiters) >= self.limits.max_waiters:
            refusal = (
                "this connection already has %d requests queued, the most one may (--max-waiters-per-peer)"
                % len(peer.waiters)
            )
        if refusal:
            peer.send([Code.FAIL, refusal])
            return
        waiter = Waiter(peer, key, str(user or "")[:MAX_USER], self._clamp(peer, priority), next(self._seq), spoken,
                        options)  # fmt: skip
        refusal = self._refusal(waiter, options)
        if refusal:
            peer.send([Code.FAIL, refusal])
            return
        peer.waiters[waiter] = None
        self._queue(key).add_waiter(waiter, time.monotonic())
        if waiter.wait is not None:
            waiter.timer = asyncio.get_running_loop().call_later(waiter.wait, self._expire, waiter)
        self._schedule(key)

    def _clamp(self, peer: Peer, priority: float) -> int:
        """The priority within +-max_priority (logged once per connection when it was not)."""
        bound = self.limits.max_priority
        clamped = max(-bound, min(bound, int(priority)))
        if clamped != int(priority) and not peer.clamp_logged:
            peer.clamp_logged = True
            logger.info(
                "%s asked for priority %s; it gets %d (--max-priority %d)", peer.name, priority, clamped, bound
            )
        return clamped

    def _refusal(self, waiter: Waiter, options: Dict[str, Any]) -> str:
        """Why a request cannot ever be served right now ("" if it can wait)."""
        if options.get("wait_for_key"):
            return ""
        boards = self.servers.get(waiter.key)
        if not boards:
            keys = heapq.nsmallest(MAX_NAMED_KEYS + 1, self.servers)
            named = ", ".join(keys[:MAX_NAMED_KEYS]) + (", ..." if len(keys) > MAX_NAMED_KEYS else "")
            return "no board serves key %r (keys served: %s)" % (waiter.key, named or "none")
        spoken = sorted(set().union(*(peer.keys[waiter.key] for peer in boards)))
        if not any(protocol in waiter.protocols for protocol in spoken):
            return "the boards of key %r speak %s, and this client speaks %s" % (
                waiter.key,
                " and ".join(spoken),
                " and ".join(sorted(waiter.protocols)),
            )
        return ""

    def _board_count(self, key: str) -> int:
        """Boards of ``key``: one per board peer, or what a proxy says it has (``"boards": {key: n}``)."""
        total = 0
        for peer in self.servers.get(key, ()):
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
        pairs, parked = queue.matches(now, lambda offer: offer.peer.silent(now))
        for offer in parked:
            if not offer.peer.silence_logged:
                offer.peer.silence_logged = True
                logger.warning(
                    "board %s of key %r has said nothing for %.0f s (hung?): not handed out until it speaks",
                    offer.peer.name,
                    key,
                    now - offer.peer.last_heard,
                )
        for waiter, offer in pairs:
            self._forget_waiter(waiter)
            del offer.peer.offers[offer]
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
                now - waiter.since,
            )
        if queue.progress:
            self._report_soon(queue, now)
        if queue.empty() and key not in self.servers:
            del self.queues[key]

    def _report_soon(self, queue: KeyQueue, now: float) -> None:
        """Tell the waiters that asked for it their places: at once, or REPORT_PERIOD after the last report."""
        if queue.key not in self._reports_due:
            self._reports_due.add(queue.key)
            delay = max(0.0, queue.reported + REPORT_PERIOD - now)
            asyncio.get_running_loop().call_later(delay, self._report_positions, queue.key)

    def _report_positions(self, key: str) -> None:
        """Send each waiter that asked for it its place in the queue, if it changed (one pass over the queue)."""
        self._reports_due.discard(key)
        queue = self.queues.get(key)
        if queue is None or not queue.progress:
            return
        now = queue.reported = time.monotonic()
        state = {"boards": self._board_count(key), "free": queue.offer_count()}
        for position, waiter in enumerate(queue.ordered(now)):
            if waiter.progress and waiter.position != position:
                waiter.position = position
                waiter.peer.send([Code.WAITING, dict(state, position=position, ahead=position)])

    def _expire(self, waiter: Waiter) -> None:
        queue = self.queues.get(waiter.key)
        if queue is None or not waiter.live:
            return
        ahead, more = queue.ahead(waiter, time.monotonic())
        self._remove_waiter(waiter)
        waiter.peer.send(
            [
                Code.FAIL,
                "no board of key %r freed within %g s (%s%d request%s ahead)"
                % (waiter.key, waiter.wait, "at least " if more else "", ahead, "" if ahead == 1 else "s"),
            ]
        )
        self._schedule(waiter.key)

    def _forget_waiter(self, waiter: Waiter) -> None:
        waiter.peer.waiters.pop(waiter, None)
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None

    def _remove_waiter(self, waiter: Waiter) -> None:
        queue = self.queues.get(waiter.key)
        if queue is not None:
            queue.remove_waiter(waiter)
        self._forget_waiter(waiter)

    # --- summary ------------------------------------------------------------------

    def summary(self) -> Dict[str, Any]:
        """TVM's summary (``queue_info``, ``server_info``) with who holds each board and since when.

        Beyond TVM's ``free`` and ``pending``, each key's entry has ``total``
        (its boards), ``silent`` (free boards taken for hung, not in ``free``)
        and ``waiters``: the first requests in queue order, each with its
        user, priority and seconds waited so far. Whatever peers send, it
        stays within :data:`SUMMARY_BUDGET` bytes: what does not fit is left
        out and counted under ``omitted`` (see :func:`farm.client.query.format_summary`).
        """
        now = time.monotonic()
        # keys boards serve first, then keys only waited for (wait_for_key); each part by name
        keys = [(key, self.queues.get(key) or KeyQueue(key, 0.0)) for key in sorted(self.servers)]
        keys += sorted((key, queue) for key, queue in self.queues.items() if key not in self.servers)
        queue_info = _within(SUMMARY_BUDGET // 2, ((key, self._queue_entry(queue, now)) for key, queue in keys))
        boards = sorted((p for p in self.peers if str(p.info.get("key", "")).startswith("server")), key=_by_name)
        server_info = _within(SUMMARY_BUDGET // 2, ((None, self._server_entry(peer, now)) for peer in boards))
        summary: Dict[str, Any] = {"queue_info": dict(queue_info), "server_info": [entry for _, entry in server_info]}
        omitted = {"queue_info": len(keys) - len(queue_info), "server_info": len(boards) - len(server_info)}
        if any(omitted.values()):
            summary[OMITTED] = omitted
        return summary

    def _queue_entry(self, queue: KeyQueue, now: float) -> Dict[str, Any]:
        offers = queue.all_offers()
        usable = sum(1 for offer in offers if not offer.peer.silent(now))
        waiters = []
        for waiter in queue.ordered(now, MAX_LISTED_WAITERS):
            waiters.append({"user": waiter.user, "priority": waiter.priority, "waited": round(now - waiter.since, 3)})
        return {
            "free": usable,
            "silent": len(offers) - usable,
            "pending": queue.waiting,
            "total": self._board_count(queue.key),
            "waiters": waiters,
        }

    def _server_entry(self, peer: Peer, now: float) -> Dict[str, Any]:
        entry = dict(peer.info)
        if len(json.dumps(entry)) > MAX_SERVER_ENTRY:  # its own fields, cut short and marked
            entry = {name: _shortened(entry.get(name)) for name in ("key", "addr", "name") if name in entry}
            entry["truncated"] = True
        offered = set().union(*peer.keys.values()) if peer.keys else {peer.protocol}
        entry["protocol"] = "/".join(sorted(offered))  # a proxy may offer boards of both kinds
        entry["free"] = bool(peer.offers)
        entry["state"] = "held" if peer.held_by is not None else "busy"
        if peer.offers:
            entry["state"] = "silent" if peer.silent(now) else "free"
        entry["held_by"] = peer.held_by
        entry["since"] = peer.held_since
        return entry


def _by_name(peer: Peer) -> str:
    return peer.name


def _within(budget: int, items: Iterable[Tuple[Any, Any]]) -> List[Tuple[Any, Any]]:
    """The first ``items`` whose JSON fits in ``budget`` bytes."""
    kept = []
    for item in items:
        budget -= len(json.dumps(item, separators=(",", ":")))
        if budget < 0:
            break
        kept.append(item)
    return kept


def _shortened(value: Any) -> Any:
    """``value`` if its JSON is short, else the start of its text and "..."."""
    text = value if isinstance(value, str) else json.dumps(value)
    return value if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def _too_long(what: str, text: str) -> str:
    """Why ``text`` is too long for the tracker ("" if it is not): as long as a handshake key may be, at most."""
    size = len(text.encode("utf-8", "surrogatepass"))
    return "%s is %d bytes long, more than %d" % (what, size, MAX_KEY_LENGTH) if size > MAX_KEY_LENGTH else ""


def _unknown_protocol(what: str, protocol: str) -> str:
    if protocol in PROTOCOLS:
        return ""
    return "%s names protocol %r; this tracker knows %s" % (what, protocol[:MAX_SHOWN], ", ".join(PROTOCOLS))


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
    limits: Limits = Limits(),
    gate: admission.Limits = DEFAULT_LIMITS,
) -> None:
    """Serve on the listening ``sock`` until SIGTERM, SIGINT or an authorised STOP, over TLS with the
    ``credentials``' and asking each peer for their secret.

    ``limits`` bound what each peer may ask of the queue; ``gate`` bounds the connections that have
    proven nothing yet (:mod:`farm.net.gate`).
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
    credentials = Credentials(secret, tls)
    asyncio.run(serve(sock, credentials=credentials, limits=limits_from(args), gate=admission.limits_from(args)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.tracker", description="Run a tracker.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
