"""Unit tests of the sans-IO tracker protocol (no sockets). The tracker's queue and state: tests/unit/farm/tracker."""

from __future__ import annotations

import json
import struct
from typing import Any, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.errors import ProtocolError
from farm.protocol.tracker import (
    MAX_MESSAGE,
    TRACKER_MAGIC,
    Code,
    MessageReader,
    encode_magic,
    encode_message,
    key_of_matchkey,
    random_matchkey,
)

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
