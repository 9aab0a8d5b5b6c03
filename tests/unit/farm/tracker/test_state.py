"""The tracker's state (farm.tracker.state) driven with a clock of the test's own: no sockets, no waiting.

Deadlines, silence, fairness and position reports are checked at the exact instants they turn, in
milliseconds of real time.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import weakref
from collections import defaultdict
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.protocol.handshake import MAX_KEY_LENGTH
from farm.protocol.tracker import FARM_PROTOCOL, MAX_MESSAGE, OMITTED, TVM_PROTOCOL, Code, encode_message
from farm.tracker.state import (
    MAX_SERVER_ENTRY,
    REPORT_PERIOD,
    SILENT_AFTER,
    Close,
    Limits,
    Send,
    Stop,
    TrackerState,
)

KEY = "k"
START = 1000.0


class Farm:
    """A TrackerState, peers known by name, and the clock: what the state sends each peer is kept per peer."""

    def __init__(self, limits: Optional[Limits] = None, stop_key: Optional[str] = None, wall_offset: float = 0):
        self.state = TrackerState(limits or Limits(), stop_key, wall_offset)
        self.now = START
        self.ids: Dict[str, int] = {}
        self.inbox: Dict[int, List[Any]] = defaultdict(list)
        self.closed: Dict[int, str] = {}
        self.stopped = False
        self.offers = itertools.count()  # numbers the match keys

    def connect(self, name: str, host: str = "127.0.0.1") -> str:
        self.ids[name] = len(self.ids) + 1
        self.state.connected(self.ids[name], (host, 50000 + self.ids[name]), self.now)
        return name

    def _take(self, actions: List[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.inbox[action.peer].append(json.loads(json.dumps(action.message)))  # as it goes on the wire
            elif isinstance(action, Close):
                self.closed[action.peer] = action.reason
            else:
                assert isinstance(action, Stop)
                self.stopped = True

    def send(self, name: str, *message: Any) -> List[Any]:
        """``name`` sends ``message`` now (as it comes off the wire); what the state sent it since it last looked."""
        self._take(self.state.receive(self.ids[name], json.loads(json.dumps(message)), self.now))
        return self.take(name)

    def take(self, name: str) -> List[Any]:
        messages, self.inbox[self.ids[name]] = self.inbox[self.ids[name]], []
        return messages

    def leave(self, name: str) -> None:
        self._take(self.state.disconnected(self.ids[name], self.now))

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, ticking the state at each of its deadlines on the way, as the server does."""
        target = self.now + seconds
        for _ in range(10_000):
            deadline = self.state.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self._take(self.state.tick(self.now))
        self.now = target

    def board(self, name: str, key: str = KEY, port: int = 9000, protocol: str = FARM_PROTOCOL) -> str:
        """A board that registers as this farm's boards (or TVM's) do and offers itself; its match key."""
        self.connect(name)
        assert self.send(name, Code.UPDATE_INFO, {"key": "server:" + key, "addr": [None, port], "protocol": protocol})
        return self.offer(name, key, port)

    def offer(self, name: str, key: str = KEY, port: int = 9000) -> str:
        matchkey = "%s:%s-%d" % (key, name, next(self.offers))
        assert self.send(name, Code.PUT, key, [port, matchkey], None) == [Code.SUCCESS]
        return matchkey

    def request(self, name: str, key: str = KEY, priority: int = 0, **options: Any) -> List[Any]:
        if name not in self.ids:
            self.connect(name)
        options.setdefault("protocols", [FARM_PROTOCOL])
        return self.send(name, Code.REQUEST, key, name, priority, options)

    def summary(self) -> Dict[str, Any]:
        return self.state.summary(self.now)

    def queue(self, key: str = KEY) -> Dict[str, Any]:
        return self.summary()["queue_info"][key]

    def entry(self, port: int) -> Dict[str, Any]:
        (entry,) = [e for e in self.summary()["server_info"] if e["addr"][1] == port]
        return entry


def assigned(messages: List[Any]) -> Optional[str]:
    """The match key of the board handed out in ``messages`` (None if none was)."""
    hand_outs = [m[1][2] for m in messages if isinstance(m, list) and m[0] == Code.SUCCESS]
    assert len(hand_outs) <= 1, messages
    return hand_outs[0] if hand_outs else None


# --- messages ---------------------------------------------------------------------------


def test_each_reply_goes_to_the_peer_that_asked() -> None:
    farm = Farm()
    matchkey = farm.board("board")
    farm.connect("query")
    assert farm.send("query", Code.PING) == [Code.SUCCESS]
    assert farm.send("board", Code.GET_PENDING_MATCHKEYS) == [[matchkey]]
    ((code, summary),) = farm.send("query", Code.SUMMARY)
    assert code == Code.SUCCESS and summary["queue_info"][KEY]["free"] == 1
    assert farm.take("board") == []


def test_a_tvm_client_gets_three_elements_and_ours_also_the_boards_protocol() -> None:
    farm = Farm()
    tvm_key = farm.board("tvm-board", "tk", 9001, TVM_PROTOCOL)
    farm.connect("tvm-client")
    assert farm.send("tvm-client", Code.REQUEST, "tk", "", 0) == [[Code.SUCCESS, ["127.0.0.1", 9001, tvm_key]]]
    ours = farm.board("farm-board", KEY, 9002)
    assert farm.request("client") == [[Code.SUCCESS, ["127.0.0.1", 9002, ours, FARM_PROTOCOL]]]
    assert farm.send("tvm-board", Code.GET_PENDING_MATCHKEYS) == [[]]


def test_a_request_fails_at_its_deadline_naming_the_key_the_time_and_the_requests_ahead() -> None:
    farm = Farm()
    farm.board("board")
    assert assigned(farm.request("holder"))
    assert farm.request("late", wait=0.5) == []
    assert farm.state.next_deadline() == START + 0.5
    farm.advance(0.49)
    assert farm.take("late") == [] and farm.queue()["pending"] == 1
    farm.advance(0.02)  # the state is ticked at its deadline on the way
    assert farm.take("late") == [[Code.FAIL, "no board of key %r freed within 0.5 s (0 requests ahead)" % KEY]]
    assert farm.queue()["pending"] == 0 and farm.state.next_deadline() is None

    assert farm.request("now-or-never", wait=0) == []  # only a board free right now would do
    farm.advance(0)
    assert farm.take("now-or-never") == [[Code.FAIL, "no board of key %r freed within 0 s (0 requests ahead)" % KEY]]

    farm.request("patient", priority=1)
    farm.request("hasty", wait=0.25)
    farm.advance(0.25)
    assert farm.take("hasty") == [[Code.FAIL, "no board of key %r freed within 0.25 s (1 request ahead)" % KEY]]
    assert farm.queue()["pending"] == 1 and farm.take("patient") == []


def test_a_request_served_before_its_deadline_is_not_failed_later() -> None:
    farm = Farm()
    farm.board("board")
    farm.request("holder")
    assert farm.request("next", wait=10) == []
    farm.advance(1)
    matchkey = farm.offer("board")  # the holder's session ended: the board offers itself again
    assert assigned(farm.take("next")) == matchkey
    farm.advance(20)
    assert farm.take("next") == [] and farm.state.next_deadline() is None


def test_deadlines_of_requests_served_early_do_not_pile_up() -> None:
    farm = Farm(Limits(max_waiters=10_000))
    farm.board("board")
    farm.connect("client")
    for _ in range(1000):
        assert assigned(farm.request("client", wait=1e6))
        farm.offer("board")
    assert len(farm.state._deadlines) <= 64 + 1  # compacted beyond twice the live ones (none) and some slack
    assert farm.state.next_deadline() is None


def test_a_free_board_of_this_farm_that_goes_silent_is_not_handed_out_until_it_speaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Boards of this farm ask for their pending match keys every second; one that stops (hung) is shown silent
    after SILENT_AFTER and skipped; it is handed out again once it speaks. TVM's boards are never taken for hung."""
    farm = Farm()
    farm.board("hung", port=9001)
    farm.board("live", port=9002)
    farm.board("tvm", "tk", 9003, TVM_PROTOCOL)
    caplog.set_level(logging.INFO, logger="farm.tracker")
    for _ in range(int(SILENT_AFTER)):
        farm.advance(1)
        farm.send("live", Code.GET_PENDING_MATCHKEYS)
    assert farm.entry(9001)["state"] == "free"  # exactly SILENT_AFTER: not yet
    farm.advance(0.001)
    assert (farm.entry(9001)["state"], farm.entry(9002)["state"], farm.entry(9003)["state"]) == (
        "silent",
        "free",
        "free",
    )
    queue = farm.queue()
    assert (queue["free"], queue["silent"], queue["total"]) == (1, 1, 2)

    for number in range(3):  # more requests than live boards: a FIFO of offers would reach the hung one
        reply = farm.request("client-%d" % number)
        assert assigned(reply) and assigned(reply).startswith(KEY + ":live"), reply  # type: ignore[union-attr]
        farm.offer("live", port=9002)
    assert "board 127.0.0.1:50001 of key 'k' has said nothing for 5 s (hung?)" in caplog.text
    assert caplog.text.count("has said nothing") == 1  # once per silence

    farm.request("client-3")
    farm.request("client-4")  # both waiting: the live board got client-3
    farm.send("hung", Code.GET_PENDING_MATCHKEYS)
    assert "board 127.0.0.1:50001 speaks again after 5 s" in caplog.text
    assert assigned(farm.take("client-4")).startswith(KEY + ":hung")  # type: ignore[union-attr]
    assert farm.entry(9001)["state"] == "held"


def test_an_unknown_key_is_refused_at_once_unless_the_client_waits_for_it() -> None:
    farm = Farm()
    farm.board("board")
    assert farm.request("client", "absent") == [[Code.FAIL, "no board serves key 'absent' (keys served: %s)" % KEY]]
    assert farm.request("client", "late", wait_for_key=True) == []
    assert farm.queue("late")["pending"] == 1
    matchkey = farm.board("late-board", "late", 9100)
    assert assigned(farm.take("client")) == matchkey


def test_the_boards_protocol_must_be_one_the_client_speaks() -> None:
    farm = Farm()
    farm.board("board")
    farm.connect("tvm-client")
    ((code, why),) = farm.send("tvm-client", Code.REQUEST, KEY, "", 0)
    assert code == Code.FAIL and why == "the boards of key 'k' speak farm, and this client speaks tvm"
    assert farm.queue()["free"] == 1


def test_what_a_key_speaks_and_the_keys_served_follow_boards_as_they_come_and_go() -> None:
    """A request is checked against counts kept as boards come and go, so that a refused one costs the same with
    10 boards or 10,000; the keys a refusal names follow the boards too."""
    farm = Farm()
    farm.board("tvm", port=9000, protocol=TVM_PROTOCOL)
    farm.board("farm-1", port=9001)
    farm.board("farm-2", port=9002)
    assert farm.state.spoken == {KEY: {TVM_PROTOCOL: 1, FARM_PROTOCOL: 2}}
    assert farm.request("absent-client", "absent")[0][1] == "no board serves key 'absent' (keys served: k)"
    farm.board("other", "other", 9003)
    assert farm.request("absent-client-2", "absent")[0][1] == "no board serves key 'absent' (keys served: k, other)"
    farm.leave("farm-1")
    assert farm.state.spoken[KEY] == {TVM_PROTOCOL: 1, FARM_PROTOCOL: 1}
    farm.leave("farm-2")
    assert farm.state.spoken[KEY] == {TVM_PROTOCOL: 1}
    ((code, why),) = farm.request("farm-client")
    assert code == Code.FAIL and why == "the boards of key 'k' speak tvm, and this client speaks farm"
    farm.leave("tvm")
    assert KEY not in farm.state.spoken
    assert farm.request("k-client")[0][1] == "no board serves key 'k' (keys served: other)"


def test_a_client_waits_if_any_board_of_the_key_speaks_one_of_its_protocols() -> None:
    farm = Farm()
    for number in range(3):
        farm.board("tvm-%d" % number, port=9000 + number, protocol=TVM_PROTOCOL)
    farm.board("farm", port=9010)
    for number in range(4):  # every board taken, whatever it speaks
        assert assigned(farm.request("both-%d" % number, protocols=[FARM_PROTOCOL, TVM_PROTOCOL]))
    assert farm.request("farm-client") == []  # queued: one board of the key speaks farm
    farm.connect("tvm-client")
    assert farm.send("tvm-client", Code.REQUEST, KEY, "", 0) == []  # and three speak tvm
    assert farm.queue()["pending"] == 2
    farm.leave("farm")
    ((code, why),) = farm.request("late-farm-client")
    assert code == Code.FAIL and why == "the boards of key 'k' speak tvm, and this client speaks farm"


def test_priorities_are_clamped_to_max_priority(caplog: pytest.LogCaptureFixture) -> None:
    farm = Farm(Limits(max_priority=10))
    farm.board("board")
    farm.request("holder")
    caplog.set_level(logging.INFO, logger="farm.tracker")
    farm.request("first", priority=10)
    farm.request("greedy", priority=1000)  # clamped to 10: it does not pass the earlier request of 10
    farm.request("greedy", priority=2000)
    farm.request("meek", priority=-1000)
    assert [(w["user"], w["priority"]) for w in farm.queue()["waiters"]] == [
        ("first", 10),
        ("greedy", 10),
        ("greedy", 10),
        ("meek", -10),
    ]
    assert caplog.text.count("asked for priority") == 2  # once per connection
    assert "127.0.0.1:50004 asked for priority 1000; it gets 10 (--max-priority 10)" in caplog.text


def test_requests_overdue_after_fair_after_go_first_and_take_turns_by_address() -> None:
    farm = Farm(Limits(fair_after=60))
    farm.board("board")
    farm.request("holder")
    for number in range(3):  # one address, three connections, the highest priority
        farm.connect("a%d" % number, host="10.0.0.66")
        farm.request("a%d" % number, priority=100)
        farm.advance(0.1)
    farm.connect("victim", host="10.0.0.7")
    farm.request("victim")
    farm.advance(30)
    assert [w["user"] for w in farm.queue()["waiters"]] == ["a0", "a1", "a2", "victim"]
    farm.advance(30)  # all of them overdue now: one per address per round
    assert [w["user"] for w in farm.queue()["waiters"]] == ["a0", "victim", "a1", "a2"]
    served = []
    for _ in range(4):
        matchkey = farm.offer("board")
        served += [name for name in ("a0", "a1", "a2", "victim") if assigned(farm.take(name)) == matchkey]
    assert served == ["a0", "victim", "a1", "a2"]


@pytest.mark.parametrize(
    "limits, flag",
    [
        (Limits(max_offers=2), "--max-offers-per-peer"),
        (Limits(max_waiters=2), "--max-waiters-per-peer"),
        (Limits(max_keys=2), "--max-keys-per-peer"),
    ],
)
def test_what_one_connection_may_ask_is_bounded(limits: Limits, flag: str) -> None:
    farm = Farm(limits)
    farm.connect("peer")
    if flag == "--max-waiters-per-peer":
        farm.board("board")
        farm.request("holder")
        replies = [farm.request("peer", wait_for_key=True) for _ in range(3)]
    else:
        key_of = (lambda n: KEY) if flag == "--max-offers-per-peer" else (lambda n: "key%d" % n)
        replies = [farm.send("peer", Code.PUT, key_of(n), [9000 + n, "m%d" % n], None) for n in range(3)]
    assert replies[:2] in ([[], []], [[Code.SUCCESS], [Code.SUCCESS]])
    ((code, why),) = replies[2]
    assert code == Code.FAIL and why.endswith("the most one may (%s)" % flag), why


def test_the_summary_stays_within_its_budget_and_says_what_it_left_out() -> None:
    farm = Farm(Limits(max_keys=1000, max_offers=1000))
    farm.connect("proxy")
    keys = ["%04d" % n + "k" * (MAX_KEY_LENGTH - 4) for n in range(300)]  # 1.2 MB of keys: more than fits
    for port, key in enumerate(keys, 1):
        assert farm.send("proxy", Code.PUT, key, [port, key[:4]], None) == [Code.SUCCESS]
    farm.connect("big")
    info = {"key": "server:big", "addr": [None, 1], "name": "n" * 1000, "pad": "x" * MAX_SERVER_ENTRY}
    assert farm.send("big", Code.UPDATE_INFO, info) == [Code.SUCCESS]
    summary = farm.summary()
    shown = len(summary["queue_info"])
    assert 0 < shown < 301 and summary[OMITTED] == {"queue_info": 301 - shown, "server_info": 0}
    (entry,) = summary["server_info"]
    assert entry["truncated"] and "pad" not in entry and entry["name"] == "n" * 256 + "..."
    assert len(encode_message([Code.SUCCESS, summary])) <= 4 + MAX_MESSAGE


def test_waiters_that_ask_hear_their_places_at_once_then_at_most_every_report_period() -> None:
    farm = Farm()
    farm.board("board")
    farm.request("holder")
    farm.request("first", progress=True)
    assert farm.state.next_deadline() == START  # at the next tick: a burst of requests costs one pass
    farm.advance(0)
    assert farm.take("first") == [[Code.WAITING, {"position": 0, "ahead": 0, "boards": 1, "free": 0}]]
    farm.advance(0.01)
    farm.request("second", progress=True)
    assert farm.state.next_deadline() == START + REPORT_PERIOD
    farm.advance(REPORT_PERIOD - 0.02)
    assert farm.take("second") == []
    farm.advance(0.02)
    assert farm.take("second") == [[Code.WAITING, {"position": 1, "ahead": 1, "boards": 1, "free": 0}]]
    assert farm.take("first") == []  # its place did not change
    farm.leave("first")
    farm.advance(REPORT_PERIOD)
    assert farm.take("second") == [[Code.WAITING, {"position": 0, "ahead": 0, "boards": 1, "free": 0}]]
    assert farm.state.next_deadline() is None


def test_a_peer_that_leaves_takes_its_requests_and_its_offers_along(caplog: pytest.LogCaptureFixture) -> None:
    farm = Farm()
    caplog.set_level(logging.INFO, logger="farm.tracker")
    farm.board("board")
    farm.request("holder")
    farm.request("client", wait=30)
    farm.leave("client")
    assert farm.queue()["pending"] == 0 and farm.state.next_deadline() is None
    farm.leave("board")
    assert farm.summary() == {"queue_info": {}, "server_info": []}
    assert "board 127.0.0.1:50001 (k) left" in caplog.text


def test_a_malformed_message_closes_that_peer_only() -> None:
    farm = Farm()
    matchkey = farm.board("board")
    farm.connect("rogue")
    farm.send("rogue", Code.REQUEST, "other", "", 0, {"protocols": ["farm"], "wait_for_key": True})
    assert farm.queue("other")["pending"] == 1
    assert farm.send("rogue", Code.PUT, KEY, [70000, "x"], None) == []
    assert farm.closed == {farm.ids["rogue"]: "PUT's port 70000 is not a port number"}
    assert list(farm.summary()["queue_info"]) == [KEY]  # its request went with it
    assert farm.send("rogue", Code.PING) == []  # a closed peer is heard no more
    assert assigned(farm.request("client")) == matchkey


def test_stop_needs_the_stop_key() -> None:
    farm = Farm(stop_key="s3cret")
    farm.connect("peer")
    assert farm.send("peer", Code.STOP, "guess") == [Code.FAIL] and not farm.stopped
    assert farm.send("peer", Code.STOP, "s3cret") == [Code.SUCCESS] and farm.stopped
    keyless = Farm()
    keyless.connect("peer")
    assert keyless.send("peer", Code.STOP, None) == [Code.FAIL] and not keyless.stopped


def test_who_holds_a_board_and_since_when_on_the_wall_clock() -> None:
    farm = Farm(wall_offset=1.7e9)
    farm.board("board")
    entry = farm.entry(9000)
    assert (entry["state"], entry["held_by"], entry["since"], entry["free"]) == ("free", None, None, True)
    farm.advance(2)
    farm.request("nightly")
    entry = farm.entry(9000)
    assert (entry["state"], entry["held_by"], entry["since"]) == ("held", "nightly", START + 2 + 1.7e9)
    farm.offer("board")
    assert (farm.entry(9000)["state"], farm.entry(9000)["held_by"]) == ("free", None)


def test_a_peer_that_left_is_freed_at_once_without_the_garbage_collector() -> None:
    """Nothing the state keeps points back at a peer: once it left, it goes with its keys without a collection."""
    farm = Farm()
    farm.connect("peer")
    farm.send("peer", Code.PUT, "k" * 4000, [9000, "k:1"], None)
    farm.send("peer", Code.REQUEST, "other", "", 0, {"wait_for_key": True, "wait": 60})
    peer = weakref.ref(farm.state.peers[farm.ids["peer"]])
    gc.disable()
    try:
        farm.leave("peer")
        assert peer() is None
    finally:
        gc.enable()


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.integers(0, 2), st.just(0.0)),  # board n offers itself (once more)
        st.tuples(st.just("request"), st.integers(0, 2), st.floats(0, 5)),  # a new client, priority n, wait
        st.tuples(st.just("advance"), st.integers(0, 0), st.floats(0, 3)),
        st.tuples(st.just("leave"), st.integers(0, 30), st.just(0.0)),  # the client of an earlier request leaves
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps=STEPS)
def test_every_request_gets_one_answer_by_its_deadline_and_no_board_goes_twice(steps: List[Any]) -> None:
    farm = Farm()
    offered = {farm.board("board%d" % board, port=9000 + board) for board in range(3)}
    requests: Dict[str, Tuple[float, float]] = {}  # client -> (asked at, wait)
    answers: Dict[str, List[Tuple[float, Any]]] = defaultdict(list)
    gone: Set[str] = set()
    for kind, number, seconds in steps:
        if kind == "offer":
            offered.add(farm.offer("board%d" % number, port=9000 + number))
        elif kind == "request":
            client = "client%d" % len(requests)
            requests[client] = (farm.now, seconds)
            answers[client] += [(farm.now, message) for message in farm.request(client, priority=number, wait=seconds)]
        elif kind == "advance":
            farm.advance(seconds)
        elif requests:
            client = sorted(requests)[number % len(requests)]
            farm.leave(client)
            gone.add(client)
        for client in set(requests) - gone:
            answers[client] += [(farm.now, message) for message in farm.take(client)]
    farm.advance(10)
    handed = []
    for client in set(requests) - gone:
        asked, wait = requests[client]
        final = answers[client] + [(farm.now, message) for message in farm.take(client)]
        assert len(final) == 1, (client, final)
        (when, (code, value)) = final[0]
        if code == Code.SUCCESS:
            assert when <= asked + wait
            handed.append(value[2])
        else:
            assert code == Code.FAIL and value.startswith("no board of key") and when >= asked + wait
    assert len(handed) == len(set(handed)) and set(handed) <= offered
