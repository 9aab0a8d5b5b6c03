"""Unit tests of the sans-IO tracker protocol and of the tracker's per-key queue (pure logic, no sockets)."""

from __future__ import annotations

import asyncio
import gc
import json
import struct
import time
import weakref
from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.errors import ProtocolError
from farm.protocol.tracker import (
    FARM_PROTOCOL,
    MAX_MESSAGE,
    TRACKER_MAGIC,
    TVM_PROTOCOL,
    Code,
    MessageReader,
    encode_magic,
    encode_message,
    key_of_matchkey,
    random_matchkey,
)
from farm.tracker.server import SILENT_AFTER, KeyQueue, Offer, Peer, Tracker, Waiter

INT32 = struct.Struct("<i")
MAGIC = INT32.pack(TRACKER_MAGIC)


def frame(payload: bytes) -> bytes:
    """A length-prefixed message with ``payload`` as it is, valid or not."""
    return INT32.pack(len(payload)) + payload


def feed_bytewise(reader: MessageReader, data: bytes) -> List[Tuple[int, Any]]:
    """Feed ``data`` one byte at a time; return (index of the completing byte, message) pairs."""
    out = []
    for index in range(len(data)):
        for message in reader.feed(data[index : index + 1]):
            out.append((index, message))
    return out


# --- constants and encoding -----------------------------------------------------------


def test_codes_and_magic_are_tvms() -> None:
    assert TRACKER_MAGIC == 0x2F271
    assert encode_magic() == b"\x71\xf2\x02\x00"
    expected = {
        "FAIL": -1,
        "SUCCESS": 0,
        "PING": 1,
        "STOP": 2,
        "PUT": 3,
        "REQUEST": 4,
        "UPDATE_INFO": 5,
        "SUMMARY": 6,
        "GET_PENDING_MATCHKEYS": 7,
        "WAITING": 100,
    }
    assert {code.name: int(code) for code in Code} == expected


def test_encode_message_is_length_prefixed_compact_json() -> None:
    data = encode_message([Code.REQUEST, "rasp4", "ci", 1])
    assert data == INT32.pack(len(b'[4,"rasp4","ci",1]')) + b'[4,"rasp4","ci",1]'
    assert encode_message(0) == b"\x01\x00\x00\x00" + b"0"


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        [Code.SUCCESS, ["127.0.0.1", 9090, "rasp4:0.25", "farm"]],
        [Code.WAITING, {"position": 2, "ahead": 2, "boards": 1, "free": 0}],
        ["pending", "k\u00e9y \u2603", None, True, 1.5],
        {"queue_info": {}, "server_info": []},
        "x" * 1000,
    ],
)
def test_encode_message_round_trip(value: Any) -> None:
    reader = MessageReader(expect_magic=False)
    assert reader.feed(encode_message(value)) == [json.loads(json.dumps(value))]


def test_encode_message_size_limit() -> None:
    largest = "x" * (MAX_MESSAGE - 2)  # the quotes make it exactly MAX_MESSAGE bytes of JSON
    data = encode_message(largest)
    assert len(data) == 4 + MAX_MESSAGE
    assert MessageReader(expect_magic=False).feed(data) == [largest]
    with pytest.raises(ProtocolError, match=r"%d bytes exceeds the limit of %d" % (MAX_MESSAGE + 1, MAX_MESSAGE)):
        encode_message(largest + "x")


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
            ),
            max_leaves=10,
        ),
        min_size=1,
        max_size=6,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
    with_magic=st.booleans(),
)
def test_any_split_of_a_stream_gives_the_same_messages(messages: List[Any], cuts: List[int], with_magic: bool) -> None:
    stream = (MAGIC if with_magic else b"") + b"".join(encode_message(m) for m in messages)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    reader = MessageReader(expect_magic=with_magic)
    received: List[Any] = []
    for start, end in zip(points, points[1:]):
        received += reader.feed(stream[start:end])
    assert received == messages
    assert reader.magic_seen


# --- MessageReader ----------------------------------------------------------------------


def test_reader_with_magic_fed_byte_by_byte() -> None:
    first, second = encode_message([Code.PING]), encode_message([Code.SUMMARY])
    reader = MessageReader(expect_magic=True)
    assert not reader.magic_seen
    assert reader.feed(MAGIC[:3]) == []
    assert not reader.magic_seen
    assert reader.feed(MAGIC[3:]) == []
    assert reader.magic_seen
    got = feed_bytewise(reader, first + second)
    # each message comes out exactly when its last byte arrives, not before
    assert got == [(len(first) - 1, [1]), (len(first) + len(second) - 1, [6])]


def test_reader_with_magic_all_at_once() -> None:
    reader = MessageReader()
    assert reader.feed(MAGIC + encode_message([Code.PING]) + encode_message(0)) == [[1], 0]
    assert reader.magic_seen


def test_reader_without_magic_byte_by_byte_and_at_once() -> None:
    data = encode_message([Code.SUCCESS, {"position": 0}]) + encode_message(0)
    reader = MessageReader(expect_magic=False)
    assert reader.magic_seen
    assert [m for _, m in feed_bytewise(reader, data)] == [[0, {"position": 0}], 0]
    assert MessageReader(expect_magic=False).feed(data) == [[0, {"position": 0}], 0]


def test_reader_without_magic_takes_the_magic_for_a_length() -> None:
    # 0x2F271 read as a length is within MAX_MESSAGE: the reader waits for that many bytes
    reader = MessageReader(expect_magic=False)
    assert reader.feed(MAGIC + b"[1]") == []


def test_several_messages_in_one_feed_and_a_partial_one() -> None:
    messages = [[Code.PUT, "k", [9090, "k:0.5"], None], [Code.UPDATE_INFO, {"addr": [None, 9090]}], [Code.PING]]
    tail = encode_message([Code.GET_PENDING_MATCHKEYS])
    reader = MessageReader()
    assert reader.feed(MAGIC + b"".join(encode_message(m) for m in messages) + tail[:5]) == messages
    assert reader.feed(tail[5:]) == [[7]]
    assert reader.feed(b"") == []


def test_wrong_magic() -> None:
    reader = MessageReader()
    assert reader.feed(INT32.pack(0xFF271)[:3]) == []  # not judged before four bytes
    with pytest.raises(ProtocolError, match=r"wrong tracker magic 0xFF271 \(expected 0x2F271\)"):
        reader.feed(INT32.pack(0xFF271)[3:])
    with pytest.raises(ProtocolError, match=r"wrong tracker magic 0xFFFFFFFF"):
        MessageReader().feed(INT32.pack(-1))
    with pytest.raises(ProtocolError, match="wrong tracker magic"):
        MessageReader().feed(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize("length", [0, -1, -(2**31), MAX_MESSAGE + 1, 2**31 - 1])
def test_length_outside_the_limits(length: int) -> None:
    reader = MessageReader()
    assert reader.feed(MAGIC) == []
    with pytest.raises(ProtocolError, match=r"length %d is outside 1\.\.%d" % (length, MAX_MESSAGE)):
        reader.feed(INT32.pack(length))  # judged on the length alone, before any payload


def test_custom_limit() -> None:
    reader = MessageReader(expect_magic=False, max_message=8)
    assert reader.feed(frame(b'"123456"')) == ["123456"]
    with pytest.raises(ProtocolError, match=r"length 9 is outside 1\.\.8"):
        reader.feed(frame(b'"1234567"'))


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"[1,", b"\xff\xfe[1]", b"[1] [2]", b"[" * 100_000 + b"]" * 100_000, b"\x00"],
    ids=["garbage", "truncated", "not-utf8", "two-values", "deeply-nested", "nul"],
)
def test_invalid_json(payload: bytes) -> None:
    reader = MessageReader()
    with pytest.raises(ProtocolError, match="not valid JSON"):
        reader.feed(MAGIC + encode_message([1]) + frame(payload))


def test_valid_message_before_an_invalid_one_in_the_same_feed_is_not_returned() -> None:
    # the reader raises for the feed as a whole: the connection is dropped, nothing of it is dispatched
    reader = MessageReader(expect_magic=False)
    with pytest.raises(ProtocolError):
        reader.feed(encode_message([Code.PING]) + INT32.pack(-5))


# --- match keys -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "matchkey, key",
    [("rasp4:0.123", "rasp4"), ("a:b:0.5", "a:b"), ("k:", "k"), ("nocolon", "nocolon"), (":0.1", "")],
)
def test_key_of_matchkey(matchkey: str, key: str) -> None:
    assert key_of_matchkey(matchkey) == key


@pytest.mark.parametrize("key", ["rasp4", "odroid:xu4", "", "k\u00e9y"])
def test_random_matchkey(key: str) -> None:
    keys = {random_matchkey(key) for _ in range(50)}
    assert len(keys) == 50
    for matchkey in keys:
        assert matchkey.startswith(key + ":")
        assert key_of_matchkey(matchkey) == key
        float(matchkey[len(key) + 1 :])  # TVM's form: KEY:random()


# --- KeyQueue --------------------------------------------------------------------------


class StandInWriter:
    """Just enough of a StreamWriter for Peer: its address, a record of what was written, its buffer."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.address = (host, port)
        self.written: List[bytes] = []
        self.transport = self
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.address if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:  # nothing is ever read: everything written stays queued
        return sum(len(data) for data in self.written)

    def abort(self) -> None:
        self.aborted = True


_ports = iter(range(20000, 30000))
_seq = iter(range(1_000_000))
FAIR_AFTER = 60.0


def board(protocol: str = FARM_PROTOCOL, key: str = "k") -> Offer:
    """A board's offer; the tracker takes its protocol from the PUT, else from the board's UPDATE_INFO."""
    port = next(_ports)
    peer = Peer(StandInWriter(port))  # type: ignore[arg-type]
    return Offer(peer, key, "127.0.0.1", port, random_matchkey(key), protocol, next(_seq))


def waiter(
    priority: int = 0, protocols: Optional[List[str]] = None, user: str = "", host: str = "127.0.0.1"
) -> Waiter:
    options = {} if protocols is None else {"protocols": protocols}
    peer = Peer(StandInWriter(next(_ports), host))  # type: ignore[arg-type]
    return Waiter(peer, "k", user, priority, next(_seq), frozenset(protocols or [TVM_PROTOCOL]), options)


def users(queue: KeyQueue, now: float) -> List[str]:
    return [w.user for w in queue.ordered(now)]


def hand_out(queue: KeyQueue, now: float, protocol: str = TVM_PROTOCOL) -> List[Tuple[Waiter, Offer]]:
    """One board of ``protocol`` offered, and what it is matched with."""
    queue.add_offer(board(protocol))
    return queue.matches(now, lambda offer: offer.peer.silent(now))[0]


def test_peer_from_its_writer() -> None:
    peer = Peer(StandInWriter(4242))  # type: ignore[arg-type]
    assert peer.name == "127.0.0.1:4242" and peer.host == "127.0.0.1"
    assert peer.protocol == TVM_PROTOCOL  # until UPDATE_INFO says otherwise
    peer.send([Code.PING])
    assert peer.writer.written == [encode_message([1])]  # type: ignore[attr-defined]
    peer.closed = True
    peer.send([Code.PING])
    assert len(peer.writer.written) == 1  # type: ignore[attr-defined]


def test_a_peer_that_does_not_read_is_dropped_past_its_output_bound() -> None:
    peer = Peer(StandInWriter(4242), max_output=100)  # type: ignore[arg-type]
    peer.send("x" * 90)
    assert not peer.closed and not peer.writer.aborted  # type: ignore[attr-defined]
    peer.send("y")
    assert peer.closed and peer.writer.aborted  # type: ignore[attr-defined]
    peer.send("z")
    assert len(peer.writer.written) == 2  # type: ignore[attr-defined]


def test_waiter_options() -> None:
    assert waiter().protocols == frozenset([TVM_PROTOCOL]) and not waiter().extended
    ours = Waiter(waiter().peer, "k", "", 0, 0, frozenset(["farm"]), {"progress": True, "wait": 2.5})
    assert ours.extended and ours.progress and ours.wait == 2.5


def test_priority_first_then_first_come_first_served() -> None:
    queue, now = KeyQueue("k", FAIR_AFTER), time.monotonic()
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
    queue, now = KeyQueue("k", FAIR_AFTER), time.monotonic()
    offers = [board(), board(), board()]
    for offer in offers:
        queue.add_offer(offer)
    high, low = waiter(2, ["farm"]), waiter(1, ["farm"])
    queue.add_waiter(low, now)
    queue.add_waiter(high, now)
    assert queue.matches(now, lambda offer: False) == ([(high, offers[0]), (low, offers[1])], [])
    assert queue.all_offers() == [offers[2]] and queue.waiting == 0
    assert queue.matches(now, lambda offer: False) == ([], [])


def test_a_tvm_client_never_gets_a_farm_board() -> None:
    queue, now = KeyQueue("k", FAIR_AFTER), time.monotonic()
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
    queue, now = KeyQueue("k", FAIR_AFTER), time.monotonic()
    tvm_board, farm_board = board(TVM_PROTOCOL), board(FARM_PROTOCOL)
    queue.add_offer(tvm_board)
    queue.add_offer(farm_board)
    farm_only, both = waiter(5, ["farm"]), waiter(1, ["farm", "tvm"])
    queue.add_waiter(both, now)
    queue.add_waiter(farm_only, now)
    # the farm-only client skips the TVM board; the one speaking both takes what is left
    assert queue.matches(now, lambda offer: False)[0] == [(farm_only, farm_board), (both, tvm_board)]


def test_a_free_board_of_this_farm_silent_too_long_is_not_matched_until_it_speaks() -> None:
    queue, now = KeyQueue("k", FAIR_AFTER), time.monotonic()
    hung, live = board(FARM_PROTOCOL), board(FARM_PROTOCOL)
    for offer in (hung, live):
        offer.peer.offers[offer] = None
        offer.peer.info["protocol"] = FARM_PROTOCOL  # as this farm's boards say in UPDATE_INFO
        queue.add_offer(offer)
    hung.peer.last_heard = now - SILENT_AFTER - 0.1
    first, second = waiter(0, ["farm"]), waiter(0, ["farm"])
    queue.add_waiter(first, now)
    queue.add_waiter(second, now)
    assert queue.matches(now, lambda offer: offer.peer.silent(now)) == ([(first, live)], [hung])
    assert queue.ordered(now) == [second] and list(queue.parked) == [hung]
    hung.peer.last_heard = now  # it spoke
    queue.unpark(hung)
    assert queue.matches(now, lambda offer: offer.peer.silent(now)) == ([(second, hung)], [])


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


def test_a_peer_that_left_is_freed_at_once_without_the_garbage_collector() -> None:
    """Its offers and waiters point back at it: unless the tracker breaks those cycles, the peer (and the keys it
    sent) wait for a full collection, which a busy tracker seldom runs."""

    async def scenario() -> List[weakref.ref]:
        tracker = Tracker()
        server = await asyncio.start_server(tracker.handle_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_magic())
        await reader.readexactly(4)
        writer.write(encode_message([Code.PUT, "k" * 4000, [9000, "k:1"], None]))
        writer.write(encode_message([Code.REQUEST, "other", "", 0, {"wait_for_key": True, "wait": 60}]))
        await reader.readexactly(5)  # the PUT's reply: int32 length 1, "0"
        while not any(peer.waiters for peer in tracker.peers):
            await asyncio.sleep(0.01)
        peers = [weakref.ref(peer) for peer in tracker.peers]
        writer.close()
        while tracker.peers:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return peers

    gc.disable()
    try:
        peers = asyncio.run(scenario())
        assert [ref() for ref in peers] == [None]
    finally:
        gc.enable()
