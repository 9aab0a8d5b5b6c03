"""The tracker's state: who serves which key, who waits for it, and who holds what. No I/O, no clock.

:class:`TrackerState` is told what happened (a peer connected, sent a message, left; time passed) and
answers with what to do: messages to send to whom, a connection to close, a stop. Every call takes
``now``, seconds on a monotonic clock, and :meth:`TrackerState.next_deadline` says when to call
:meth:`TrackerState.tick` next (a request's deadline, a position report). :mod:`farm.tracker.server`
drives it from asyncio with ``time.monotonic()``; tests drive it with any clock they like.

Boards register under a key (PUT a match key, UPDATE_INFO about themselves); clients REQUEST a key and
wait until a board of that key is free, in the order :mod:`farm.tracker.queues` gives. A peer that leaves
takes its queued requests and its boards' offers along.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

from ..errors import ProtocolError
from ..protocol.handshake import MAX_KEY_LENGTH
from ..protocol.tracker import FARM_PROTOCOL, MAX_MESSAGE, OMITTED, PROTOCOLS, TVM_PROTOCOL, Code
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
#: Seconds after which a free board of this farm that has said nothing is taken for hung and not handed out until
#: it speaks again: a free board asks for its pending match keys every second (registration.POLL_PERIOD).
SILENT_AFTER = 5.0
#: Deadlines of requests that left early a heap may keep beyond twice the live ones before it is compacted.
_SLACK = 64


@dataclass(frozen=True)
class Limits:
    """What one peer may ask of the tracker, and how requests are ordered (the tracker's options)."""

    max_priority: int = 100  # priorities beyond +-max_priority are clamped to it
    fair_after: float = 300.0  # seconds after which a request is overdue: see farm.tracker.queues
    max_offers: int = 256  # free boards one connection offers at once
    max_waiters: int = 256  # requests one connection has queued at once
    max_keys: int = 64  # keys one connection serves
    max_output: int = 2 * MAX_MESSAGE  # bytes of replies queued for a peer that does not read them (the server's)


@dataclass(frozen=True)
class Send:
    """Send ``message`` to peer ``peer``."""

    peer: int
    message: Any


@dataclass(frozen=True)
class Close:
    """Close the connection of peer ``peer``, which sent something malformed; the state forgot it already."""

    peer: int
    reason: str


@dataclass(frozen=True)
class Stop:
    """An authorised STOP: the tracker stops."""


Action = Union[Send, Close, Stop]


class PeerState:
    """What the tracker knows of one connection: a board, a proxy, a client, or a query tool."""

    def __init__(self, peer_id: int, address: Tuple[str, int], now: float) -> None:
        self.id = peer_id
        self.host = address[0]
        self.name = "%s:%s" % address[:2]
        self.info: Dict[str, Any] = {}  # from UPDATE_INFO
        self.keys: Dict[str, Set[str]] = {}  # every key this peer offered boards under -> their protocols
        self.pending_matchkeys: Set[str] = set()  # offered and not yet handed out
        self.offers: Dict[Offer, None] = {}
        self.waiters: Dict[Waiter, None] = {}
        self.held_by: Optional[str] = None  # the user its last handed-out offer went to
        self.held_since: Optional[float] = None  # when, on the wall clock
        self.last_heard = now
        self.silence_logged = False  # its silence was logged (once per silence)
        self.clamp_logged = False  # a clamped priority of it was logged

    @property
    def protocol(self) -> str:
        return self.info.get("protocol", TVM_PROTOCOL)

    def silent(self, now: float) -> bool:
        """Whether this is a board of this farm, free, that has said nothing for SILENT_AFTER seconds (hung:
        stopped, or its machine frozen). TVM's boards poll at their own pace and are never taken for hung."""
        return bool(self.offers) and self.protocol == FARM_PROTOCOL and now - self.last_heard > SILENT_AFTER


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise ProtocolError(what)


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


class TrackerState:
    """The queues of boards per key and the peers that fill them; see the module docstring.

    ``wall_offset`` turns ``now`` into wall-clock time for the summary's ``since`` (``time.time() -
    time.monotonic()`` in the server; 0 in tests, where ``since`` is then on the test's clock).
    """

    def __init__(self, limits: Limits = Limits(), stop_key: Optional[str] = None, wall_offset: float = 0.0) -> None:
        self.limits = limits
        self.stop_key = stop_key
        self.wall_offset = wall_offset
        self.peers: Dict[int, PeerState] = {}
        self.queues: Dict[str, KeyQueue] = {}
        self.servers: Dict[str, Set[int]] = {}  # key -> the ids of the peers serving it
        self.spoken: Dict[str, Dict[str, int]] = {}  # key -> protocol -> how many of its peers speak it
        self._named_keys: Optional[str] = None  # the first keys served, named in refusals; None: to be listed
        self._seq = itertools.count()
        self._deadlines: List[Tuple[float, int, Waiter]] = []  # heap of the requests' deadlines
        self._timed = 0  # live waiters with a deadline (the others in _deadlines left early)
        self._reports: List[Tuple[float, str]] = []  # heap of (when, key): waiters to tell their places
        self._reports_due: Set[str] = set()  # the keys in _reports
        self._out: List[Action] = []

    # --- events -------------------------------------------------------------------

    def connected(self, peer_id: int, address: Tuple[str, int], now: float) -> None:
        """A peer connected from ``address`` (host, port) and may now send messages."""
        self.peers[peer_id] = PeerState(peer_id, address, now)

    def receive(self, peer_id: int, message: Any, now: float) -> List[Action]:
        """One decoded message from a peer; a malformed one makes the state forget the peer and ask to close it."""
        peer = self.peers.get(peer_id)
        if peer is None:
            return []  # closed meanwhile
        was_silent = self._hear(peer, now)
        try:
            self._dispatch(peer, message, now)
        except ProtocolError as exc:
            self._drop(peer, now)
            self._out.append(Close(peer_id, str(exc)))
            return self._flush()
        if was_silent:
            for key in {offer.key for offer in peer.offers}:
                self._schedule(key, now)
        return self._flush()

    def disconnected(self, peer_id: int, now: float) -> List[Action]:
        """A peer's connection closed: its queued requests and its boards' offers go with it."""
        peer = self.peers.get(peer_id)
        if peer is not None:
            self._drop(peer, now)
        return self._flush()

    def tick(self, now: float) -> List[Action]:
        """What is due by ``now``: requests whose deadline passed fail, waiters that asked hear their places."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(self._deadlines)
            self._expire(waiter, now)
        while self._reports and self._reports[0][0] <= now:
            _, key = heapq.heappop(self._reports)
            self._reports_due.discard(key)
            self._report_positions(key, now)
        return self._flush()

    def next_deadline(self) -> Optional[float]:
        """When :meth:`tick` has something to do next (None: nothing until the next event)."""
        while self._deadlines and not self._deadlines[0][2].live:
            heapq.heappop(self._deadlines)
        times = [heap[0][0] for heap in (self._deadlines, self._reports) if heap]
        return min(times) if times else None

    def _flush(self) -> List[Action]:
        out, self._out = self._out, []
        return out

    def _send(self, peer_id: int, message: Any) -> None:
        self._out.append(Send(peer_id, message))

    def _hear(self, peer: PeerState, now: float) -> bool:
        """The peer spoke: a board taken for hung is handed out again. Whether it was taken for hung."""
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
        return was_silent

    def _drop(self, peer: PeerState, now: float) -> None:
        del self.peers[peer.id]
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
        for key in keys:
            self._schedule(key, now)

    # --- messages ---------------------------------------------------------------

    def _dispatch(self, peer: PeerState, message: Any, now: float) -> None:
        is_request = isinstance(message, list) and bool(message) and type(message[0]) is int
        _expect(is_request, "a request is not [code, ...]")
        code = message[0]
        if code == Code.PING:
            self._send(peer.id, Code.SUCCESS)
        elif code == Code.PUT:
            self._put(peer, message, now)
        elif code == Code.REQUEST:
            self._request(peer, message, now)
        elif code == Code.UPDATE_INFO:
            self._update_info(peer, message, now)
        elif code == Code.SUMMARY:
            self._send(peer.id, [Code.SUCCESS, self.summary(now)])
        elif code == Code.GET_PENDING_MATCHKEYS:
            self._send(peer.id, sorted(peer.pending_matchkeys))
        elif code == Code.STOP:
            if self.stop_key is not None and message[1:2] == [self.stop_key]:
                self._send(peer.id, Code.SUCCESS)
                self._out.append(Stop())
            else:
                self._send(peer.id, Code.FAIL)
        else:
            raise ProtocolError("unknown tracker code %r" % code)

    def _put(self, peer: PeerState, message: list, now: float) -> None:
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
            self._send(peer.id, [Code.FAIL, refusal])
            return
        offer = Offer(peer.id, key, host, port, matchkey, protocol, next(self._seq))
        if key not in peer.keys:
            logger.info("board %s offers key %r at %s:%d", peer.name, key, host, port)
        self._serve(peer, key, protocol)
        peer.offers[offer] = None
        peer.pending_matchkeys.add(matchkey)
        peer.held_by = peer.held_since = None
        self._queue(key).add_offer(offer)
        self._send(peer.id, Code.SUCCESS)
        self._schedule(key, now)

    def _over_keys(self, peer: PeerState, key: str) -> str:
        """Why the peer may not serve one more key ("" if it may)."""
        if key in peer.keys or len(peer.keys) < self.limits.max_keys:
            return ""
        return "this connection already serves %d keys, the most one may (--max-keys-per-peer)" % len(peer.keys)

    def _serve(self, peer: PeerState, key: str, protocol: str) -> None:
        protocols = peer.keys.setdefault(key, set())
        if protocol not in protocols:
            protocols.add(protocol)
            spoken = self.spoken.setdefault(key, {})
            spoken[protocol] = spoken.get(protocol, 0) + 1
        if key not in self.servers:
            self._named_keys = None
        self.servers.setdefault(key, set()).add(peer.id)

    def _unserve(self, peer: PeerState, key: str) -> None:
        spoken = self.spoken.get(key, {})
        for protocol in peer.keys.pop(key):
            spoken[protocol] -= 1
            if not spoken[protocol]:
                del spoken[protocol]
        serving = self.servers.get(key, set())
        serving.discard(peer.id)
        if not serving:
            self.servers.pop(key, None)
            self.spoken.pop(key, None)
            self._named_keys = None

    def _queue(self, key: str) -> KeyQueue:
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = KeyQueue(key, self.limits.fair_after)
        return queue

    def _update_info(self, peer: PeerState, message: list, now: float) -> None:
        _expect(len(message) >= 2 and isinstance(message[1], dict), "UPDATE_INFO is not [5, {...}]")
        info = dict(message[1])
        still_offered = info.pop("offers", None)  # this project's proxy: the match keys it still offers
        addr = info.get("addr")
        if not (isinstance(addr, list) and len(addr) == 2):
            raise ProtocolError("UPDATE_INFO's addr is not [host, port]")
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
            self._send(peer.id, [Code.FAIL, refusal])
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
                self._schedule(key, now)
        self._send(peer.id, Code.SUCCESS)

    def _withdraw(self, peer: PeerState, still_offered: Set[str]) -> None:
        """Drop the peer's offers it no longer makes: a board that left a proxy before a client came for it."""
        for offer in [offer for offer in peer.offers if offer.matchkey not in still_offered]:
            del peer.offers[offer]
            peer.pending_matchkeys.discard(offer.matchkey)
            queue = self.queues.get(offer.key)
            if queue is not None:
                queue.remove_offer(offer)
            logger.info("%s withdrew its offer of a board of key %r", peer.name, offer.key)

    def _request(self, peer: PeerState, message: list, now: float) -> None:
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
            self._send(peer.id, [Code.FAIL, refusal])
            return
        waiter = Waiter(peer.id, peer.host, key, str(user or "")[:MAX_USER], self._clamp(peer, priority),
                        next(self._seq), spoken, options)  # fmt: skip
        refusal = self._refusal(waiter, options)
        if refusal:
            self._send(peer.id, [Code.FAIL, refusal])
            return
        peer.waiters[waiter] = None
        self._queue(key).add_waiter(waiter, now)
        if waiter.wait is not None:
            heapq.heappush(self._deadlines, (now + waiter.wait, waiter.seq, waiter))
            self._timed += 1
        self._schedule(key, now)

    def _clamp(self, peer: PeerState, priority: float) -> int:
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
        # Counted as boards come and go, so that a request, refused or not, costs the same with 10 boards or 10,000.
        spoken = self.spoken.get(waiter.key)
        if not spoken:
            return "no board serves key %r (keys served: %s)" % (waiter.key, self._keys_served())
        if not waiter.protocols.isdisjoint(spoken):
            return ""
        return "the boards of key %r speak %s, and this client speaks %s" % (
            waiter.key,
            " and ".join(sorted(spoken)),
            " and ".join(sorted(waiter.protocols)),
        )

    def _keys_served(self) -> str:
        """The first keys served, for a refusal: listed again only after the keys served changed."""
        if self._named_keys is None:
            keys = heapq.nsmallest(MAX_NAMED_KEYS + 1, self.servers)
            named = ", ".join(keys[:MAX_NAMED_KEYS]) + (", ..." if len(keys) > MAX_NAMED_KEYS else "")
            self._named_keys = named or "none"
        return self._named_keys

    def _board_count(self, key: str) -> int:
        """Boards of ``key``: one per board peer, or what a proxy says it has (``"boards": {key: n}``)."""
        total = 0
        for peer_id in self.servers.get(key, ()):
            counts = self.peers[peer_id].info.get("boards")
            if not isinstance(counts, dict):
                total += 1  # a board
                continue
            count = counts.get(key, 0)  # a proxy without boards of the key now has none
            total += count if type(count) is int and count >= 0 else 1
        return total

    # --- scheduling ---------------------------------------------------------------

    def _silent(self, offer: Offer, now: float) -> bool:
        return self.peers[offer.peer].silent(now)

    def _schedule(self, key: str, now: float) -> None:
        queue = self.queues.get(key)
        if queue is None:
            return
        pairs, parked = queue.matches(now, lambda offer: self._silent(offer, now))
        for offer in parked:
            board = self.peers[offer.peer]
            if not board.silence_logged:
                board.silence_logged = True
                logger.warning(
                    "board %s of key %r has said nothing for %.0f s (hung?): not handed out until it speaks",
                    board.name,
                    key,
                    now - board.last_heard,
                )
        for waiter, offer in pairs:
            self._forget_waiter(waiter)
            board = self.peers[offer.peer]
            del board.offers[offer]
            board.pending_matchkeys.discard(offer.matchkey)
            board.held_by, board.held_since = waiter.user, now + self.wall_offset
            assignment = [offer.host, offer.port, offer.matchkey]
            if waiter.extended:
                assignment.append(offer.protocol)  # a TVM client would not unpack a fourth element
            self._send(waiter.peer, [Code.SUCCESS, assignment])
            logger.info(
                "board %s:%d of key %r to %s%s after %.2f s",
                offer.host,
                offer.port,
                key,
                self.peers[waiter.peer].name,
                " (%s)" % waiter.user if waiter.user else "",
                now - waiter.since,
            )
        if queue.progress:
            self._report_soon(queue, now)
        if queue.empty() and key not in self.servers:
            del self.queues[key]

    def _report_soon(self, queue: KeyQueue, now: float) -> None:
        """Tell the waiters that asked for it their places: at the next tick, or REPORT_PERIOD after the last
        report (so a burst of requests costs one pass over the queue)."""
        if queue.key not in self._reports_due:
            self._reports_due.add(queue.key)
            heapq.heappush(self._reports, (max(now, queue.reported + REPORT_PERIOD), queue.key))

    def _report_positions(self, key: str, now: float) -> None:
        """Send each waiter that asked for it its place in the queue, if it changed (one pass over the queue)."""
        queue = self.queues.get(key)
        if queue is None or not queue.progress:
            return
        queue.reported = now
        state = {"boards": self._board_count(key), "free": queue.offer_count()}
        for position, waiter in enumerate(queue.ordered(now)):
            if waiter.progress and waiter.position != position:
                waiter.position = position
                self._send(waiter.peer, [Code.WAITING, dict(state, position=position, ahead=position)])

    def _expire(self, waiter: Waiter, now: float) -> None:
        queue = self.queues.get(waiter.key)
        if queue is None or not waiter.live:
            return
        ahead, more = queue.ahead(waiter, now)
        assert waiter.wait is not None  # only a request that gave a wait has a deadline
        self._remove_waiter(waiter)
        self._send(
            waiter.peer,
            [
                Code.FAIL,
                "no board of key %r freed within %g s (%s%d request%s ahead)"
                % (waiter.key, waiter.wait, "at least " if more else "", ahead, "" if ahead == 1 else "s"),
            ],
        )
        self._schedule(waiter.key, now)

    def _forget_waiter(self, waiter: Waiter) -> None:
        """The waiter is out of its queue: out of its peer's too, and its deadline no longer counts."""
        peer = self.peers.get(waiter.peer)
        if peer is not None:
            peer.waiters.pop(waiter, None)
        if waiter.wait is not None:
            self._timed -= 1
            if len(self._deadlines) > 2 * self._timed + _SLACK:
                self._deadlines = [entry for entry in self._deadlines if entry[2].live]
                heapq.heapify(self._deadlines)

    def _remove_waiter(self, waiter: Waiter) -> None:
        queue = self.queues.get(waiter.key)
        if queue is not None:
            queue.remove_waiter(waiter)
        self._forget_waiter(waiter)

    # --- summary ------------------------------------------------------------------

    def summary(self, now: float) -> Dict[str, Any]:
        """TVM's summary (``queue_info``, ``server_info``) with who holds each board and since when.

        Beyond TVM's ``free`` and ``pending``, each key's entry has ``total``
        (its boards), ``silent`` (free boards taken for hung, not in ``free``)
        and ``waiters``: the first requests in queue order, each with its
        user, priority and seconds waited so far. Whatever peers send, it
        stays within :data:`SUMMARY_BUDGET` bytes: what does not fit is left
        out and counted under ``omitted`` (see :func:`farm.client.query.format_summary`).
        """
        # keys boards serve first, then keys only waited for (wait_for_key); each part by name
        keys = [(key, self.queues.get(key) or KeyQueue(key, 0.0)) for key in sorted(self.servers)]
        keys += sorted((key, queue) for key, queue in self.queues.items() if key not in self.servers)
        queue_info = _within(SUMMARY_BUDGET // 2, ((key, self._queue_entry(queue, now)) for key, queue in keys))
        boards = sorted(
            (peer for peer in self.peers.values() if str(peer.info.get("key", "")).startswith("server")),
            key=_by_name,
        )
        server_info = _within(SUMMARY_BUDGET // 2, ((None, self._server_entry(peer, now)) for peer in boards))
        summary: Dict[str, Any] = {"queue_info": dict(queue_info), "server_info": [entry for _, entry in server_info]}
        omitted = {"queue_info": len(keys) - len(queue_info), "server_info": len(boards) - len(server_info)}
        if any(omitted.values()):
            summary[OMITTED] = omitted
        return summary

    def _queue_entry(self, queue: KeyQueue, now: float) -> Dict[str, Any]:
        offers = queue.all_offers()
        usable = sum(1 for offer in offers if not self._silent(offer, now))
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

    def _server_entry(self, peer: PeerState, now: float) -> Dict[str, Any]:
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


def _by_name(peer: PeerState) -> str:
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
