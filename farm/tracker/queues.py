"""The tracker's queue of one key: free boards (offers) and waiting requests (waiters).

Requests are served by priority, then arrival, until one has waited ``fair_after`` seconds.
From then on it is *overdue* and goes before every request that is not, whatever their
priority. Overdue requests are served in rounds: one request per address per round, and
within an address the oldest first. A peer that asks again each time it is served, under
as many connections as it likes, thus gets one board per round from then on. See
docs/tracker.md ("Scheduling") for the bound this gives.

Each event (a request, an offer, a hand-out, a removal) costs O(log n) in the number of
waiters: heaps and deques with lazy removal, compacted when dead entries outnumber live ones.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from typing import Any, Callable, Deque, Dict, FrozenSet, List, Optional, Tuple

#: Entries of removed waiters a line may keep beyond twice its live ones before it is compacted.
_SLACK = 64


class Offer:
    """A board's PUT: one free slot under a key, claimed with its match key; ``peer`` is the offering peer's id."""

    __slots__ = ("peer", "key", "host", "port", "matchkey", "protocol", "seq")

    def __init__(self, peer: int, key: str, host: str, port: int, matchkey: str, protocol: str, seq: int) -> None:
        self.peer = peer
        self.key = key
        self.host = host
        self.port = port
        self.matchkey = matchkey
        self.protocol = protocol
        self.seq = seq  # offers are handed out first in, first out


class Waiter:
    """A queued REQUEST of peer ``peer`` (its id), which connected from ``address``."""

    __slots__ = (
        "peer", "key", "user", "priority", "seq", "address", "protocols", "extended", "progress", "wait", "since",
        "position", "tag", "live",
    )  # fmt: skip

    def __init__(
        self,
        peer: int,
        address: str,
        key: str,
        user: str,
        priority: int,
        seq: int,
        protocols: FrozenSet[str],
        options: Dict[str, Any],
    ) -> None:
        self.peer = peer
        self.key = key
        self.user = user
        self.priority = priority
        self.seq = seq
        self.address = address  # whose turn it is, among overdue requests
        self.protocols = protocols
        self.extended = bool(options)  # this project's client: its reply also names the board's protocol
        self.progress = bool(options.get("progress"))
        self.wait = options.get("wait")
        self.since = 0.0  # when it was queued
        self.position: Optional[int] = None  # last reported
        self.tag: Optional[int] = None  # its round once overdue
        self.live = False  # queued

    def rank(self) -> Tuple[int, int, int]:
        """Lower goes first: overdue requests by (round, arrival), then the others by (-priority, arrival)."""
        return (0, self.tag, self.seq) if self.tag is not None else (1, -self.priority, self.seq)


class _Line:
    """The waiters of a key that speak the same data protocols."""

    def __init__(self) -> None:
        self.ranked: List[Tuple[int, int, Waiter]] = []  # heap of (-priority, seq, waiter), not yet overdue
        self.arrivals: Deque[Waiter] = deque()  # not yet overdue, oldest first
        self.overdue: List[Tuple[int, int, Waiter]] = []  # heap of (round, seq, waiter)
        self.fresh = 0  # live waiters not yet overdue (each in ranked and in arrivals)
        self.late = 0  # live overdue waiters (each in overdue)

    def head(self) -> Optional[Waiter]:
        """The waiter of this line that goes first."""
        while self.overdue and not self.overdue[0][2].live:
            heapq.heappop(self.overdue)
        if self.overdue:
            return self.overdue[0][2]
        while self.ranked and not (self.ranked[0][2].live and self.ranked[0][2].tag is None):
            heapq.heappop(self.ranked)
        return self.ranked[0][2] if self.ranked else None

    def oldest_fresh(self) -> Optional[Waiter]:
        while self.arrivals and not self.arrivals[0].live:
            self.arrivals.popleft()
        return self.arrivals[0] if self.arrivals else None

    def compact(self) -> None:
        """Drop the entries of waiters that left, once they outnumber the live ones."""
        if len(self.ranked) + len(self.arrivals) + len(self.overdue) <= 2 * (2 * self.fresh + self.late) + _SLACK:
            return
        self.ranked = [entry for entry in self.ranked if entry[2].live and entry[2].tag is None]
        heapq.heapify(self.ranked)
        self.arrivals = deque(waiter for waiter in self.arrivals if waiter.live)
        self.overdue = [entry for entry in self.overdue if entry[2].live]
        heapq.heapify(self.overdue)

    def live(self) -> List[Waiter]:
        overdue = [entry[2] for entry in self.overdue if entry[2].live]
        return overdue + [entry[2] for entry in self.ranked if entry[2].live and entry[2].tag is None]

    def count_ahead(self, rank: Tuple[int, int, int], budget: int) -> Tuple[int, int]:
        """Live waiters of this line that go before ``rank``, and the heap entries looked at (at most ``budget``):
        a walk of the heaps that skips every subtree whose root does not go first."""
        count = looked = 0
        for kind, heap in ((0, self.overdue), (1, self.ranked)):
            stack = [0]
            while stack and looked < budget:
                index = stack.pop()
                if index >= len(heap):
                    continue
                looked += 1
                first, second, waiter = heap[index]
                if (kind, first, second) >= rank:
                    continue
                if waiter.live and (waiter.tag is not None) == (kind == 0):
                    count += 1
                stack += (2 * index + 1, 2 * index + 2)
        return count, looked


class KeyQueue:
    """The free boards and the waiting requests of one key."""

    def __init__(self, key: str, fair_after: float) -> None:
        self.key = key
        self.fair_after = fair_after
        self.offers: Dict[str, OrderedDict[Offer, None]] = {}  # per protocol, first in first out
        self.parked: Dict[Offer, None] = {}  # offers of boards found silent; back in offers when they speak
        self.lines: Dict[FrozenSet[str], _Line] = {}
        self.waiting = 0
        self.progress = 0  # waiters that asked for position reports
        self.reported = float("-inf")  # when positions were last sent
        self._round = 0  # the round of the overdue request served last
        self._next_round: Dict[str, int] = {}  # address -> the round of its next overdue request
        self._late = 0

    # --- offers -------------------------------------------------------------------

    def add_offer(self, offer: Offer) -> None:
        self.offers.setdefault(offer.protocol, OrderedDict())[offer] = None

    def remove_offer(self, offer: Offer) -> None:
        self.offers.get(offer.protocol, {}).pop(offer, None)  # type: ignore[call-overload]
        self.parked.pop(offer, None)

    def unpark(self, offer: Offer) -> None:
        """A silent board spoke again: its offer may be handed out again."""
        if self.parked.pop(offer, False) is None:
            self.add_offer(offer)

    def offer_count(self) -> int:
        """Offers not found silent yet (the summary tells the silent ones apart)."""
        return sum(len(offers) for offers in self.offers.values())

    def all_offers(self) -> List[Offer]:
        return [offer for offers in self.offers.values() for offer in offers] + list(self.parked)

    # --- waiters ------------------------------------------------------------------

    def add_waiter(self, waiter: Waiter, now: float) -> None:
        line = self.lines.get(waiter.protocols)
        if line is None:
            line = self.lines[waiter.protocols] = _Line()
        waiter.since, waiter.live = now, True
        heapq.heappush(line.ranked, (-waiter.priority, waiter.seq, waiter))
        line.arrivals.append(waiter)
        line.fresh += 1
        self.waiting += 1
        self.progress += waiter.progress

    def remove_waiter(self, waiter: Waiter) -> None:
        """Take a waiter out (served, expired or gone); a no-op for one already out."""
        if not waiter.live:
            return
        waiter.live = False
        line = self.lines[waiter.protocols]
        if waiter.tag is None:
            line.fresh -= 1
        else:
            line.late -= 1
            self._late -= 1
        self.waiting -= 1
        self.progress -= waiter.progress
        line.compact()

    def _promote(self, now: float) -> None:
        """Requests that have waited fair_after become overdue, oldest first, each in the next round its address
        has not had a request in."""
        while True:
            oldest: Optional[_Line] = None
            for line in self.lines.values():
                waiter = line.oldest_fresh()
                if waiter is not None and now - waiter.since >= self.fair_after:
                    if oldest is None or waiter.seq < oldest.arrivals[0].seq:
                        oldest = line
            if oldest is None:
                break
            waiter = oldest.arrivals.popleft()
            waiter.tag = max(self._round, self._next_round.get(waiter.address, self._round))
            self._next_round[waiter.address] = waiter.tag + 1
            heapq.heappush(oldest.overdue, (waiter.tag, waiter.seq, waiter))
            oldest.fresh -= 1
            oldest.late += 1
            self._late += 1
        if len(self._next_round) > 2 * self._late + _SLACK:  # addresses whose next round has passed: forget them
            self._next_round = {address: tag for address, tag in self._next_round.items() if tag > self._round}

    # --- scheduling -----------------------------------------------------------------

    def matches(self, now: float, silent: Callable[[Offer], bool]) -> Tuple[List[Tuple[Waiter, Offer]], List[Offer]]:
        """Pair waiters with offers they can use, the waiter that goes first first, and take the pairs out.
        Also the offers of boards found ``silent``, now parked."""
        self._promote(now)
        pairs: List[Tuple[Waiter, Offer]] = []
        parked: List[Offer] = []
        while True:
            best: Optional[Tuple[Tuple[int, int, int], int, Waiter, Offer]] = None
            for protocol, offers in self.offers.items():
                offer = self._first_usable(offers, silent, parked)
                if offer is None:
                    continue
                for protocols, line in self.lines.items():
                    waiter = line.head() if protocol in protocols else None
                    if waiter is not None and (best is None or (waiter.rank(), offer.seq) < best[:2]):
                        best = (waiter.rank(), offer.seq, waiter, offer)
            if best is None:
                return pairs, parked
            _, _, waiter, offer = best
            if waiter.tag is not None:
                self._round = max(self._round, waiter.tag)
            self.remove_waiter(waiter)
            self.offers[offer.protocol].pop(offer)
            pairs.append((waiter, offer))

    def _first_usable(self, offers: OrderedDict[Offer, None], silent: Callable[[Offer], bool], parked: List[Offer]):
        """The first of ``offers`` whose board is not silent; the silent ones before it move to ``self.parked``."""
        while offers:
            offer = next(iter(offers))
            if not silent(offer):
                return offer
            del offers[offer]
            self.parked[offer] = None
            parked.append(offer)
        return None

    def ordered(self, now: float, limit: Optional[int] = None) -> List[Waiter]:
        """The waiters in the order they would be served now (the first ``limit`` of them)."""
        self._promote(now)
        waiters = [waiter for line in self.lines.values() for waiter in line.live()]
        if limit is not None:
            return heapq.nsmallest(limit, waiters, key=Waiter.rank)
        return sorted(waiters, key=Waiter.rank)

    def ahead(self, waiter: Waiter, now: float, budget: int = 4096) -> Tuple[int, bool]:
        """How many waiters go before ``waiter``, and whether the count stopped short (after ``budget`` steps)."""
        self._promote(now)
        count = looked = 0
        for line in self.lines.values():
            counted, steps = line.count_ahead(waiter.rank(), budget - looked)
            count, looked = count + counted, looked + steps
        return count, looked >= budget

    def empty(self) -> bool:
        return not self.waiting and not self.offer_count() and not self.parked
