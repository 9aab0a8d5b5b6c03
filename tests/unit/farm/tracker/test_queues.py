"""The tracker's queue of one key (farm.tracker.queues): order, fairness, protocols, parked offers; pure."""

from __future__ import annotations

from typing import List, Optional, Tuple

from farm.protocol.tracker import FARM_PROTOCOL, TVM_PROTOCOL, random_matchkey
from farm.tracker.queues import KeyQueue, Offer, Waiter

_ports = iter(range(20000, 30000))
_seq = iter(range(1_000_000))
FAIR_AFTER = 60.0


def board(protocol: str = FARM_PROTOCOL, key: str = "k") -> Offer:
    """A board's offer (its peer's id is its port); the tracker takes its protocol from the PUT, else from the
    board's UPDATE_INFO."""
    port = next(_ports)
    return Offer(port, key, "127.0.0.1", port, random_matchkey(key), protocol, next(_seq))


def waiter(
    priority: int = 0, protocols: Optional[List[str]] = None, user: str = "", host: str = "127.0.0.1"
) -> Waiter:
    options = {} if protocols is None else {"protocols": protocols}
    return Waiter(next(_ports), host, "k", user, priority, next(_seq), frozenset(protocols or [TVM_PROTOCOL]), options)


def never_silent(offer: Offer) -> bool:
    return False


def users(queue: KeyQueue, now: float) -> List[str]:
    return [w.user for w in queue.ordered(now)]


def hand_out(queue: KeyQueue, now: float, protocol: str = TVM_PROTOCOL) -> List[Tuple[Waiter, Offer]]:
    """One board of ``protocol`` offered, and what it is matched with."""
    queue.add_offer(board(protocol))
    return queue.matches(now, never_silent)[0]


def test_waiter_options() -> None:
    assert waiter().protocols == frozenset([TVM_PROTOCOL]) and not waiter().extended
    ours = Waiter(1, "127.0.0.1", "k", "", 0, 0, frozenset(["farm"]), {"progress": True, "wait": 2.5})
    assert ours.extended and ours.progress and ours.wait == 2.5


def test_priority_first_then_first_come_first_served() -> None:
    queue, now = KeyQueue("k", FAIR_AFTER), 1000.0
    for w in (waiter(0, user="p0"), waiter(5, user="p5a"), waiter(5, user="p5b"), waiter(1, user="p1")):
        queue.add_waiter(w, now)
    assert users(queue, now) == ["p5a", "p5b", "p1", "p0"]
    queue.add_waiter(waiter(5, user="p5c"), now)
    queue.add_waiter(waiter(-3, user="n"), now)
    assert users(queue, now) == ["p5a", "p5b", "p5c", "p1", "p0", "n"]
    order = []
    for _ in range(6):
        (pair,) = hand_out(queue, now)
        order.append(pair[0].user)
    assert order == ["p5a", "p5b", "p5c", "p1", "p0", "n"]
    assert queue.waiting == 0 and queue.empty()


def test_a_request_waiting_fair_after_goes_before_later_ones_whatever_their_priority() -> None:
    queue, start = KeyQueue("k", FAIR_AFTER), 1000.0
    queue.add_waiter(waiter(0, user="low"), start)
    queue.add_waiter(waiter(100, user="high-early"), start + 1)
    for second in range(2, 70):
        queue.add_waiter(waiter(100, user="high-%d" % second), start + second)
    assert users(queue, start + FAIR_AFTER - 1)[-1] == "low"
    now = start + FAIR_AFTER
    assert users(queue, now)[0] == "low"
    assert [pair[0].user for pair in hand_out(queue, now)] == ["low"]
    assert [pair[0].user for pair in hand_out(queue, now)] == ["high-early"]  # overdue too by now


def test_overdue_requests_take_turns_by_address() -> None:
    queue, start = KeyQueue("k", FAIR_AFTER), 1000.0
    for number in range(5):  # the attacker queued five first, from one address
        queue.add_waiter(waiter(100, user="a%d" % number, host="10.0.0.66"), start + number * 0.1)
    queue.add_waiter(waiter(0, user="victim", host="10.0.0.7"), start + 1)
    queue.add_waiter(waiter(0, user="other", host="10.0.0.8"), start + 2)
    now = start + FAIR_AFTER + 2
    served = [hand_out(queue, now)[0][0].user for _ in range(7)]
    assert served == ["a0", "victim", "other", "a1", "a2", "a3", "a4"]


def test_an_address_served_in_a_round_waits_for_the_next_one() -> None:
    queue, start = KeyQueue("k", FAIR_AFTER), 1000.0
    queue.add_waiter(waiter(0, user="a0", host="10.0.0.66"), start)
    queue.add_waiter(waiter(0, user="victim", host="10.0.0.7"), start + 1)
    now = start + FAIR_AFTER + 1
    assert hand_out(queue, now)[0][0].user == "a0"
    # the attacker asks again under a new connection; once overdue it is still behind the victim's round
    queue.add_waiter(waiter(100, user="a1", host="10.0.0.66"), start + 1.5)
    assert users(queue, start + FAIR_AFTER + 2) == ["victim", "a1"]


def test_offers_are_first_in_first_out_and_matches_remove_the_pairs() -> None:
    queue, now = KeyQueue("k", FAIR_AFTER), 1000.0
    offers = [board(), board(), board()]
    for offer in offers:
        queue.add_offer(offer)
    high, low = waiter(2, ["farm"]), waiter(1, ["farm"])
    queue.add_waiter(low, now)
    queue.add_waiter(high, now)
    assert queue.matches(now, never_silent) == ([(high, offers[0]), (low, offers[1])], [])
    assert queue.all_offers() == [offers[2]] and queue.waiting == 0
    assert queue.matches(now, never_silent) == ([], [])


def test_a_tvm_client_never_gets_a_farm_board() -> None:
    queue, now = KeyQueue("k", FAIR_AFTER), 1000.0
    tvm_only, tvm_default, ours = waiter(10, ["tvm"]), waiter(9), waiter(0, ["farm"])
    for w in (tvm_only, tvm_default, ours):
        queue.add_waiter(w, now)
    # the lower-priority farm client gets it; the TVM clients keep their places
    assert [pair[0] for pair in hand_out(queue, now, FARM_PROTOCOL)] == [ours]
    assert queue.ordered(now) == [tvm_only, tvm_default]
    assert hand_out(queue, now, FARM_PROTOCOL) == []
    assert [pair[0] for pair in hand_out(queue, now, TVM_PROTOCOL)] == [tvm_only]
    assert queue.ordered(now) == [tvm_default] and queue.offer_count() == 1


def test_a_client_speaking_both_takes_the_first_compatible_offer() -> None:
    queue, now = KeyQueue("k", FAIR_AFTER), 1000.0
    tvm_board, farm_board = board(TVM_PROTOCOL), board(FARM_PROTOCOL)
    queue.add_offer(tvm_board)
    queue.add_offer(farm_board)
    farm_only, both = waiter(5, ["farm"]), waiter(1, ["farm", "tvm"])
    queue.add_waiter(both, now)
    queue.add_waiter(farm_only, now)
    # the farm-only client skips the TVM board; the one speaking both takes what is left
    assert queue.matches(now, never_silent)[0] == [(farm_only, farm_board), (both, tvm_board)]


def test_offers_of_silent_boards_are_parked_until_they_speak() -> None:
    queue, now = KeyQueue("k", FAIR_AFTER), 1000.0
    hung, live = board(FARM_PROTOCOL), board(FARM_PROTOCOL)
    for offer in (hung, live):
        queue.add_offer(offer)
    silent = {hung.peer}
    first, second = waiter(0, ["farm"]), waiter(0, ["farm"])
    queue.add_waiter(first, now)
    queue.add_waiter(second, now)
    assert queue.matches(now, lambda offer: offer.peer in silent) == ([(first, live)], [hung])
    assert queue.ordered(now) == [second] and list(queue.parked) == [hung]
    assert queue.offer_count() == 0 and queue.all_offers() == [hung]
    silent.clear()  # it spoke
    queue.unpark(hung)
    assert queue.matches(now, lambda offer: offer.peer in silent) == ([(second, hung)], [])


def test_removed_waiters_are_compacted_away_and_counts_ahead_stay_exact() -> None:
    queue, now = KeyQueue("k", FAIR_AFTER), 1000.0
    waiters = [waiter(number % 7, user=str(number)) for number in range(2000)]
    for w in waiters:
        queue.add_waiter(w, now)
    for w in waiters[::2]:
        queue.remove_waiter(w)
    (line,) = queue.lines.values()
    assert len(line.ranked) + len(line.arrivals) <= 2 * 2 * 1000 + 64
    order = queue.ordered(now)
    for position in (0, 1, 10, 500, 999):
        assert queue.ahead(order[position], now) == (position, False)
    assert queue.ahead(order[999], now, budget=100)[1]  # stopped short: "at least"
