"""Unit tests of the sans-IO data-plane handshake, checked against TVM's byte layout."""

from __future__ import annotations

import struct
from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.errors import FarmError, ProtocolError
from farm.protocol.handshake import (
    CODE_BUSY,
    CODE_DUPLICATE,
    CODE_MISMATCH,
    CODE_SUCCESS,
    MAX_KEY_LENGTH,
    RPC_MAGIC,
    Hello,
    HelloReader,
    Reply,
    ReplyReader,
    encode_hello,
    encode_reply,
    parse_key,
)

TVM_MAGIC = 0xFF271


def int32(value: int) -> bytes:
    """A little-endian signed 32-bit integer, as TVM sends it."""
    return struct.pack("<i", value)


def tvm_hello(key: bytes) -> bytes:
    """The bytes TVM's client sends: magic, key length, key."""
    return int32(TVM_MAGIC) + int32(len(key)) + key


def feed_bytewise(reader, data: bytes) -> list:
    """Feed ``data`` one byte at a time and collect every result."""
    return [reader.feed(data[i : i + 1]) for i in range(len(data))]


def feed_chunks(reader, data: bytes, cuts: List[int]):
    """Feed ``data`` split at ``cuts``; return the first non-None result, checking nothing came earlier."""
    bounds = [0, *sorted(set(cuts)), len(data)]
    results = [reader.feed(data[a:b]) for a, b in zip(bounds, bounds[1:])]
    assert all(result is None for result in results[:-1])
    return results[-1]


# --- constants and encoding ---------------------------------------------------------------------


def test_codes_match_tvm():
    """Magic and reply codes are TVM's (RPC_MAGIC, +1 duplicate, +2 mismatch); BUSY is the next free one."""
    assert RPC_MAGIC == TVM_MAGIC
    assert CODE_SUCCESS == TVM_MAGIC
    assert CODE_DUPLICATE == TVM_MAGIC + 1
    assert CODE_MISMATCH == TVM_MAGIC + 2
    assert CODE_BUSY == TVM_MAGIC + 3


@pytest.mark.parametrize(
    "timeout, key_text",
    [
        (None, b"client:rasp4"),
        (0, b"client:rasp4"),
        (30, b"client:rasp4 -timeout=30"),
        (30.0, b"client:rasp4 -timeout=30"),
        (1.5, b"client:rasp4 -timeout=1.5"),
        (0.25, b"client:rasp4 -timeout=0.25"),
    ],
)
def test_encode_hello_is_tvm_layout(timeout, key_text):
    """int32 LE magic, int32 LE length, then ``client:KEY [-timeout=S]`` in UTF-8."""
    data = encode_hello("client", "rasp4", timeout)
    assert data == tvm_hello(key_text)
    assert data[:4] == b"\x71\xf2\x0f\x00"
    assert data[4:8] == struct.pack("<i", len(key_text))


def test_encode_hello_utf8_length_counts_bytes():
    """The length field counts UTF-8 bytes, not characters."""
    data = encode_hello("client", "bücher")
    assert struct.unpack("<i", data[4:8])[0] == len("client:bücher".encode())
    assert data[8:] == "client:bücher".encode()


def test_encode_hello_rejects_overlong_key():
    """A key longer than MAX_KEY_LENGTH bytes cannot be encoded."""
    with pytest.raises(ValueError, match="more than %d" % MAX_KEY_LENGTH):
        encode_hello("client", "k" * MAX_KEY_LENGTH)


def test_encode_hello_accepts_key_of_exactly_max_length():
    """A key of exactly MAX_KEY_LENGTH bytes is encoded and read back."""
    key = "k" * (MAX_KEY_LENGTH - len("client:"))
    data = encode_hello("client", key)
    assert len(data) == 8 + MAX_KEY_LENGTH
    assert HelloReader().feed(data) == Hello("client", key, {})


# --- hello round trips --------------------------------------------------------------------------


HELLO_CASES = [
    ("client", "rasp4", None, None),
    ("client", "rasp4", 30, 30.0),
    ("client", "rasp4", 1.5, 1.5),
    ("client", "", None, None),
    ("server", "jetson-nano", 600, 600.0),
    ("client", "a:b", 2.75, 2.75),
]


@pytest.mark.parametrize("role, key, timeout, expected", HELLO_CASES)
def test_hello_round_trip_all_at_once(role, key, timeout, expected):
    """Everything in one feed gives the hello and leaves nothing over."""
    reader = HelloReader()
    hello = reader.feed(encode_hello(role, key, timeout))
    assert isinstance(hello, Hello)
    assert (hello.role, hello.key, hello.timeout) == (role, key, expected)
    assert reader.leftover() == b""


@pytest.mark.parametrize("role, key, timeout, expected", HELLO_CASES)
def test_hello_round_trip_byte_at_a_time(role, key, timeout, expected):
    """One byte per feed: None until the last byte, then the hello."""
    results = feed_bytewise(HelloReader(), encode_hello(role, key, timeout))
    assert all(result is None for result in results[:-1])
    hello = results[-1]
    assert (hello.role, hello.key, hello.timeout) == (role, key, expected)


def test_hello_from_raw_tvm_bytes():
    """Bytes laid out by hand exactly as TVM's client sends them are understood."""
    hello = HelloReader().feed(tvm_hello(b"client:rasp4 -timeout=30"))
    assert hello == Hello("client", "rasp4", {"timeout": "30"})
    assert hello.timeout == 30.0


def test_hello_from_raw_tvm_bytes_float_timeout():
    """TVM's ``str(session_timeout)`` of a float is read back as that float."""
    hello = HelloReader().feed(tvm_hello(b"client:rasp4 -timeout=12.5"))
    assert hello.timeout == 12.5


def test_hello_empty_key_after_role():
    """``client:`` (TVM's default empty key) gives an empty match key."""
    hello = HelloReader().feed(tvm_hello(b"client:"))
    assert (hello.role, hello.key, hello.options) == ("client", "", {})


def test_hello_leftover_in_same_chunk():
    """Bytes after the hello in the same chunk come back from leftover(), once."""
    reader = HelloReader()
    hello = reader.feed(encode_hello("client", "k") + b"RD\x01first-frame")
    assert hello is not None and hello.key == "k"
    assert reader.leftover() == b"RD\x01first-frame"
    assert reader.leftover() == b""


def test_hello_leftover_after_piecewise_feed():
    """Leftover is what follows the key even when the hello arrived in pieces."""
    data = encode_hello("client", "board", 5)
    reader = HelloReader()
    assert reader.feed(data[:3]) is None
    assert reader.feed(data[3:10]) is None
    hello = reader.feed(data[10:] + b"\x00\xff tail")
    assert hello is not None and hello.timeout == 5.0
    assert reader.leftover() == b"\x00\xff tail"


def test_hello_waits_for_full_key():
    """A hello missing its last key byte is not complete."""
    data = encode_hello("client", "rasp4")
    reader = HelloReader()
    assert reader.feed(data[:-1]) is None
    assert reader.feed(data[-1:]) == Hello("client", "rasp4", {})


# --- hello errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "magic, shown",
    [(0x12345678, "0x12345678"), (TVM_MAGIC + 1, "0xFF272"), (-1, "0xFFFFFFFF"), (0, "0x0")],
)
def test_hello_wrong_magic(magic, shown):
    """The first four bytes must be the magic; the error names the value received and the expected one."""
    with pytest.raises(ProtocolError, match="wrong handshake magic %s \\(expected 0xFF271\\)" % shown):
        HelloReader().feed(int32(magic))


def test_hello_wrong_magic_from_http_client():
    """Something speaking HTTP is refused at the magic."""
    with pytest.raises(ProtocolError, match="magic"):
        HelloReader().feed(b"GET / HTTP/1.1\r\n\r\n")


def test_hello_big_endian_magic_is_wrong():
    """The magic is little-endian; its big-endian spelling is refused."""
    with pytest.raises(ProtocolError, match="magic"):
        HelloReader().feed(struct.pack(">i", TVM_MAGIC) + int32(0))


def test_hello_negative_length():
    """A negative key length is refused as soon as it arrives."""
    with pytest.raises(ProtocolError, match="length -1 is outside 0..%d" % MAX_KEY_LENGTH):
        HelloReader().feed(int32(TVM_MAGIC) + int32(-1))


def test_hello_length_over_limit():
    """A key length over MAX_KEY_LENGTH is refused before any key byte arrives."""
    with pytest.raises(ProtocolError, match="length %d is outside" % (MAX_KEY_LENGTH + 1)):
        HelloReader().feed(int32(TVM_MAGIC) + int32(MAX_KEY_LENGTH + 1))


def test_hello_huge_length():
    """The largest int32 length is refused, not waited for."""
    with pytest.raises(ProtocolError, match="length 2147483647"):
        HelloReader().feed(int32(TVM_MAGIC) + int32(2**31 - 1))


def test_hello_non_utf8_key():
    """Key bytes that are not UTF-8 are refused."""
    with pytest.raises(ProtocolError, match="not UTF-8"):
        HelloReader().feed(tvm_hello(b"client:\xff\xfe"))


@pytest.mark.parametrize("key", [b"rasp4", b"", b"   ", b"rasp4 client:x", b"-timeout=3"])
def test_hello_key_without_role(key):
    """A key whose first token has no ``ROLE:`` prefix is refused."""
    with pytest.raises(ProtocolError, match="not of the form ROLE:KEY"):
        HelloReader().feed(tvm_hello(key))


def test_protocol_error_is_farm_error():
    """Handshake errors share the package's base class."""
    with pytest.raises(FarmError):
        HelloReader().feed(int32(0))


# --- keys and options ---------------------------------------------------------------------------


def test_parse_key_splits_role_key_and_options():
    """Only the first token is ROLE:KEY; the rest are ``-name=value`` options."""
    hello = parse_key("client:rasp4 -timeout=30 -extra=x  -flag")
    assert hello.role == "client"
    assert hello.key == "rasp4"
    assert hello.options == {"timeout": "30", "extra": "x", "flag": ""}


def test_parse_key_splits_role_at_first_colon():
    """The key may itself contain colons."""
    assert parse_key("client:a:b:c") == Hello("client", "a:b:c", {})


def test_parse_key_tolerates_surrounding_whitespace():
    """Tabs, newlines and repeated spaces separate tokens."""
    hello = parse_key("  client:k\t-timeout=4\n")
    assert (hello.role, hello.key, hello.timeout) == ("client", "k", 4.0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("client:k", None),
        ("client:k -timeout=0", None),
        ("client:k -timeout=0.0", None),
        ("client:k -timeout=10", 10.0),
        ("client:k -timeout=0.5", 0.5),
        ("client:k -timeout=1e3", 1000.0),
    ],
)
def test_timeout_values(text, expected):
    """``-timeout=S`` is seconds as a float; absent or zero means no timeout."""
    assert parse_key(text).timeout == expected


@pytest.mark.parametrize(
    "value, problem",
    [
        ("abc", "is not a number"),
        ("", "is not a number"),
        ("10s", "is not a number"),
        ("-1", "is negative"),
        ("-0.5", "is negative"),
    ],
)
def test_timeout_bad_values(value, problem):
    """A malformed or negative timeout makes the key malformed: ProtocolError naming the option and the problem."""
    with pytest.raises(ProtocolError, match="-timeout=%s %s" % (value, problem)):
        parse_key("client:k -timeout=%s" % value)


def test_timeout_bad_value_through_reader():
    """The reader refuses a hello with a bad timeout as it decodes it."""
    reader = HelloReader()
    with pytest.raises(ProtocolError, match="not a number"):
        reader.feed(tvm_hello(b"client:k -timeout=soon"))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_timeout_not_finite_is_refused(value):
    """``-timeout=nan`` or ``inf`` is not a usable number of seconds and must be refused."""
    with pytest.raises(ProtocolError, match="-timeout=%s is not a finite number" % value):
        parse_key("client:k -timeout=%s" % value)


def test_a_hello_made_by_hand_is_checked_too():
    with pytest.raises(ProtocolError, match="-timeout=x is not a number"):
        Hello("client", "k", {"timeout": "x"})
    assert Hello("client", "k", {"timeout": "2"}).timeout == 2.0


# --- replies ------------------------------------------------------------------------------------


def test_encode_reply_success_is_tvm_layout():
    """SUCCESS: int32 code, int32 length, then the server's key."""
    assert encode_reply(CODE_SUCCESS, "server:rasp4") == int32(TVM_MAGIC) + int32(12) + b"server:rasp4"


@pytest.mark.parametrize("code", [CODE_MISMATCH, CODE_DUPLICATE])
def test_encode_reply_without_text(code):
    """MISMATCH and DUPLICATE are a bare int32 code, whatever text is given."""
    assert encode_reply(code) == int32(code)
    assert encode_reply(code, "ignored") == int32(code)


def test_encode_reply_busy_carries_text():
    """BUSY is followed by a length-prefixed reason."""
    assert encode_reply(CODE_BUSY, "busy") == int32(CODE_BUSY) + int32(4) + b"busy"


@pytest.mark.parametrize(
    "code, text",
    [
        (CODE_SUCCESS, "server:rasp4"),
        (CODE_SUCCESS, ""),
        (CODE_BUSY, "board 'x' is busy: since 3.0 s"),
        (CODE_BUSY, "ü"),
    ],
)
def test_reply_round_trip_with_text(code, text):
    """SUCCESS and BUSY round-trip their text, all at once and byte by byte."""
    data = encode_reply(code, text)
    assert ReplyReader().feed(data) == Reply(code, text)
    results = feed_bytewise(ReplyReader(), data)
    assert all(result is None for result in results[:-1])
    assert results[-1] == Reply(code, text)


@pytest.mark.parametrize("code", [CODE_MISMATCH, CODE_DUPLICATE])
def test_reply_without_text_complete_after_code(code):
    """MISMATCH and DUPLICATE are complete after four bytes; what follows is leftover."""
    reader = ReplyReader()
    assert reader.feed(int32(code)[:3]) is None
    assert reader.feed(int32(code)[3:] + b"more") == Reply(code, "")
    assert reader.leftover() == b"more"


def test_reply_from_raw_tvm_server_bytes():
    """The bytes TVM's server sends on success are read as SUCCESS with its key."""
    reader = ReplyReader()
    reply = reader.feed(int32(TVM_MAGIC) + int32(len(b"server:rasp4")) + b"server:rasp4" + b"RD")
    assert reply == Reply(CODE_SUCCESS, "server:rasp4")
    assert reader.leftover() == b"RD"


@pytest.mark.parametrize("code", [0, 1, TVM_MAGIC - 1, TVM_MAGIC + 4, -1])
def test_reply_unknown_code(code):
    """Any code that is not one of the four raises, naming the code."""
    with pytest.raises(ProtocolError, match="unknown handshake reply code 0x%X" % (code & 0xFFFFFFFF)):
        ReplyReader().feed(int32(code))


def test_reply_negative_length():
    """A negative reply text length is refused."""
    with pytest.raises(ProtocolError, match="outside"):
        ReplyReader().feed(int32(CODE_BUSY) + int32(-5))


def test_reply_length_over_limit():
    """A reply text length over MAX_KEY_LENGTH is refused."""
    with pytest.raises(ProtocolError, match="outside"):
        ReplyReader().feed(int32(CODE_SUCCESS) + int32(MAX_KEY_LENGTH + 1))


def test_reply_non_utf8_text():
    """Reply text that is not UTF-8 is refused."""
    with pytest.raises(ProtocolError, match="not UTF-8"):
        ReplyReader().feed(int32(CODE_BUSY) + int32(2) + b"\xc3\x28")


def test_encode_reply_truncates_long_ascii_text():
    """Text longer than MAX_KEY_LENGTH bytes is cut so the reply stays readable."""
    reply = ReplyReader().feed(encode_reply(CODE_BUSY, "x" * (MAX_KEY_LENGTH + 100)))
    assert reply == Reply(CODE_BUSY, "x" * MAX_KEY_LENGTH)


def test_encode_reply_truncation_keeps_utf8_valid():
    """Cutting long non-ASCII text must not split a character and make the reply unreadable."""
    text = "x" + "é" * MAX_KEY_LENGTH  # the byte limit falls in the middle of an 'é'
    data = encode_reply(CODE_BUSY, text)
    assert len(data) <= 8 + MAX_KEY_LENGTH
    reply = ReplyReader().feed(data)
    assert reply is not None and text.startswith(reply.text)


# --- properties ---------------------------------------------------------------------------------

NO_SPACE = st.characters(blacklist_categories=("Cs",)).filter(lambda c: not c.isspace())
ROLES = st.text(NO_SPACE.filter(lambda c: c != ":"), max_size=10)
KEYS = st.text(NO_SPACE, max_size=40)
TIMEOUTS = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=200, deadline=None)
@given(
    role=ROLES, key=KEYS, timeout=TIMEOUTS, cuts=st.lists(st.integers(0, 200), max_size=6), tail=st.binary(max_size=20)
)
def test_hello_round_trip_split_anywhere(role, key, timeout, cuts, tail):
    """Any role, key and timeout round-trip however the bytes are split; trailing bytes are leftover."""
    data = encode_hello(role, key, timeout)
    reader = HelloReader()
    hello = feed_chunks(reader, data + tail, [c for c in cuts if c < len(data)])
    assert (hello.role, hello.key) == (role, key)
    assert hello.timeout == (float(timeout) if timeout else None)
    assert reader.leftover() == tail


@settings(max_examples=200, deadline=None)
@given(
    code=st.sampled_from([CODE_SUCCESS, CODE_BUSY, CODE_MISMATCH, CODE_DUPLICATE]),
    text=st.text(max_size=60),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_reply_round_trip_split_anywhere(code, text, cuts):
    """Every reply code round-trips however the bytes are split."""
    data = encode_reply(code, text)
    reply = feed_chunks(ReplyReader(), data, [c for c in cuts if c < len(data)])
    expected = "" if code in (CODE_MISMATCH, CODE_DUPLICATE) else text
    assert reply == Reply(code, expected)


def _feed_until_done(reader, chunks: List[bytes]) -> Optional[object]:
    for chunk in chunks:
        result = reader.feed(chunk)
        if result is not None:
            return result
    return None


GARBAGE = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: int32(TVM_MAGIC) + b),
    st.tuples(st.integers(-(2**31), 2**31 - 1), st.binary(max_size=64)).map(
        lambda t: int32(TVM_MAGIC) + int32(t[0]) + t[1]
    ),
    st.tuples(st.integers(0, 64), st.binary(max_size=64)).map(lambda t: int32(TVM_MAGIC) + int32(t[0]) + t[1]),
)


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(GARBAGE, min_size=1, max_size=4))
def test_hello_reader_garbage_raises_only_protocol_error(chunks):
    """Arbitrary bytes give a Hello, None or ProtocolError, never another exception."""
    try:
        result = _feed_until_done(HelloReader(), chunks)
        if result is not None:
            assert isinstance(result, Hello)
            try:
                result.timeout  # noqa: B018
            except ProtocolError:
                pass
    except ProtocolError as exc:
        assert str(exc)


REPLY_GARBAGE = st.one_of(
    st.binary(max_size=64),
    st.tuples(
        st.sampled_from([CODE_SUCCESS, CODE_BUSY, CODE_MISMATCH, CODE_DUPLICATE]),
        st.integers(-(2**31), 2**31 - 1),
        st.binary(max_size=64),
    ).map(lambda t: int32(t[0]) + int32(t[1]) + t[2]),
)


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(REPLY_GARBAGE, min_size=1, max_size=4))
def test_reply_reader_garbage_raises_only_protocol_error(chunks):
    """Arbitrary bytes give a Reply, None or ProtocolError, never another exception."""
    try:
        result = _feed_until_done(ReplyReader(), chunks)
        assert result is None or isinstance(result, Reply)
    except ProtocolError as exc:
        assert str(exc)
