"""Property-based fuzzing of the sans-IO protocols in farm.protocol (Hypothesis).

For each encoder/reader pair (data-plane frames, the handshake, call records,
tracker messages): every valid message, drawn from the real schemas, comes back
whole however the byte stream is cut; arbitrary and mutated streams (bit flips,
truncations, insertions, deletions, huge length fields) end in the protocol's
own :class:`~farm.errors.ProtocolError` or wait for more bytes, never in another
exception; and no reader allocates past its configured limits: a declared
length beyond them is refused from the header alone, before any allocation.
Past the wire format, the tracker's handling of messages: whatever a peer
sends, it is answered or refused with ProtocolError, and summaries survive.

``FARM_FUZZ_PROFILE=long`` runs every property with the long profile's example
count instead of the CI's (tests/fuzz/fuzz_settings.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import tracemalloc
from collections import deque
from typing import Any, Callable, List, Optional, Sequence, Tuple

import pytest
from fuzz_settings import FUZZ
from fuzz_streams import HUGE_LENGTHS, REMOVE, cut, edit, mutate
from hypothesis import assume, given
from hypothesis import strategies as st

from farm.errors import ArgumentError, ProtocolError
from farm.protocol import calls, handshake
from farm.protocol import tracker as tracker_wire
from farm.protocol.framing import DEFAULT_MAX_META, HEADER, INLINE_PAYLOAD, Frame, FrameReader, encode_frame
from farm.protocol.handshake import HelloReader, ReplyReader, encode_hello, encode_reply, parse_key
from farm.protocol.ops import Op
from farm.protocol.tracker import Code, MessageReader, encode_magic, encode_message
from farm.tracker.server import Peer, Tracker

MAX_KEY_LENGTH, RPC_MAGIC = handshake.MAX_KEY_LENGTH, handshake.RPC_MAGIC
MAX_MESSAGE, TRACKER_MAGIC = tracker_wire.MAX_MESSAGE, tracker_wire.TRACKER_MAGIC
FARM_PROTOCOL, TVM_PROTOCOL = tracker_wire.FARM_PROTOCOL, tracker_wire.TVM_PROTOCOL

#: What a reader may allocate beyond the buffers its limits allow: exception objects, frames, bookkeeping.
SLACK = 64 << 10
#: The frame reader's own receive buffer (allocated at construction; also the size it starts from).
OWN_BUFFER = 1 << 16
U32 = st.integers(0, 2**32 - 1)

# --- feeding streams -------------------------------------------------------------------------

CUTS = st.lists(st.integers(0, 1 << 20), max_size=12)

#: ``(kind, position, argument)``; positions are taken modulo the stream's length when applied.
MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0), st.none()),
    st.tuples(st.just("insert"), st.integers(0), st.binary(min_size=1, max_size=24)),
    st.tuples(st.just("delete"), st.integers(0), st.integers(1, 24)),
    st.tuples(st.just("length"), st.integers(0), st.sampled_from(HUGE_LENGTHS) | st.integers(-(2**31), 2**64 - 1)),
)


def until_refused(
    feed: Callable[[bytes], Any], pieces: Sequence[bytes], first: bool = False
) -> Tuple[List[Any], Optional[ProtocolError]]:
    """Feed ``pieces`` in turn: what came out (only the first result with ``first``), and the ProtocolError that
    stopped it. Any other exception escapes: that is what the properties look for."""
    out: List[Any] = []
    for piece in pieces:
        try:
            result = feed(piece)
        except ProtocolError as exc:
            assert str(exc), "a ProtocolError without a reason"
            return out, exc
        out += result if isinstance(result, list) else [] if result is None else [result]
        if first and out:
            break
    return out, None


def first_result(feed: Callable[[bytes], Any], pieces: Sequence[bytes]) -> Tuple[Any, Optional[ProtocolError]]:
    """Feed ``pieces`` until a result comes out: it (or None), and the ProtocolError that ended it, if one did."""
    out, error = until_refused(feed, pieces, first=True)
    return (out[0] if out else None), error


def peak_while(action: Callable[[], Any]) -> Tuple[int, Optional[ProtocolError]]:
    """Bytes allocated at the peak of ``action()`` (tracemalloc), and the ProtocolError it raised, if any."""
    tracemalloc.start()
    try:
        action()
        error = None
    except ProtocolError as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


# --- data-plane frames -----------------------------------------------------------------------


class Allocations:
    """An ``allocate`` hook that records every size asked for; hands out a bytearray, or None (the reader's own)."""

    def __init__(self, own: bool = False) -> None:
        self.sizes: List[int] = []
        self.own = own

    def __call__(self, op: int, meta: dict, nbytes: int) -> Optional[bytearray]:
        assert isinstance(meta, dict)
        self.sizes.append(nbytes)
        return None if self.own else bytearray(nbytes)


def filler(size: int) -> bytes:
    """``size`` bytes of a pattern that shows misplaced or reordered data."""
    block = (size.to_bytes(4, "little") + bytes(range(7, 256, 3)))[: 5 + size % 83]
    return (block * (size // len(block) + 1))[:size]


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
NAMES = st.sampled_from(["libvadd.so", "a/b/c.bin", "../escape", "/etc/passwd", "", "."]) | st.text(max_size=24)
IDS = st.integers(0, 2**40)
SHAPES = st.lists(st.integers(0, 1 << 12), max_size=4)
DTYPES = st.sampled_from(["float32", "float64", "int8", "uint8", "int64", "complex128", "bool", "object"])
SMALL_PAYLOADS = st.binary(max_size=64) | st.binary(min_size=INLINE_PAYLOAD - 8, max_size=INLINE_PAYLOAD + 8)
LARGE_PAYLOADS = st.integers(INLINE_PAYLOAD + 1, 3 * OWN_BUFFER).map(filler)
PAYLOADS = st.one_of(st.just(b""), SMALL_PAYLOADS, LARGE_PAYLOADS)
TAG_VALUES = {
    "a": st.integers(0, 2**64 - 1),
    "i": st.integers(-(2**63), 2**63 - 1),
    "u": st.integers(0, 2**64 - 1),
    "f": st.floats(),
    "n": st.just(0),
}
CALL_ARGUMENTS = st.lists(st.sampled_from(calls.TAGS).flatmap(lambda tag: st.tuples(st.just(tag), TAG_VALUES[tag])))
CALL_RECORDS = st.tuples(U32, CALL_ARGUMENTS.filter(lambda args: len(args) <= calls.MAX_ARGS))
RESULT_VALUES = st.none() | st.integers(-(2**63), 2**64 - 1) | st.floats()


def encode_record(record: Tuple[int, List[Tuple[str, Any]]]) -> bytes:
    """The CALL payload of ``(function id, [(tag, value), ...])``."""
    function_id, arguments = record
    return calls.encode_call(function_id, "".join(tag for tag, _ in arguments), [value for _, value in arguments])


def meta_of(required: dict, optional: Optional[dict] = None) -> st.SearchStrategy[dict]:
    """A request's metadata as docs/protocol.md lists it: its fields, and ``release`` on any request."""
    return st.fixed_dictionaries(required, optional={"release": st.lists(IDS, max_size=4), **(optional or {})})


#: op -> (metadata, payload) as docs/protocol.md §4.2 gives them, requests and replies.
SCHEMAS = {
    Op.PING: (meta_of({}), st.just(b"")),
    Op.SYSTEM_INFO: (meta_of({}), st.just(b"")),
    Op.UPLOAD: (meta_of({"name": NAMES}), PAYLOADS),
    Op.DOWNLOAD: (meta_of({"name": NAMES}), st.just(b"")),
    Op.REMOVE: (meta_of({"name": NAMES}), st.just(b"")),
    Op.LISTDIR: (meta_of({}, {"name": NAMES}), st.just(b"")),
    Op.LOAD_MODULE: (meta_of({"name": NAMES}), st.just(b"")),
    Op.GET_FUNCTION: (meta_of({"module": IDS, "name": NAMES}, {"signature": st.text(max_size=40)}), st.just(b"")),
    Op.CALL: (meta_of({}), CALL_RECORDS.map(encode_record)),
    Op.ARRAY_NEW: (meta_of({"shape": SHAPES, "dtype": DTYPES}), PAYLOADS),
    Op.ARRAY_EMPTY: (meta_of({"shape": SHAPES, "dtype": DTYPES}), st.just(b"")),
    Op.ARRAY_READ: (meta_of({"id": IDS}), st.just(b"")),
    Op.ARRAY_WRITE: (meta_of({"id": IDS}), PAYLOADS),
    Op.RUN: (meta_of({}), SMALL_PAYLOADS),
    Op.CLOSE: (meta_of({}), st.just(b"")),
    Op.RESULT: (
        st.dictionaries(st.sampled_from(["id", "name", "size"]), st.integers(0, 2**40) | NAMES, max_size=2),
        RESULT_VALUES.map(calls.encode_result) | PAYLOADS,
    ),
    Op.ERROR: (
        st.fixed_dictionaries({"type": st.text(max_size=20), "message": st.text(), "traceback": st.text()}),
        st.just(b""),
    ),
    Op.SESSION_END: (
        st.fixed_dictionaries(
            {
                "message": st.text(max_size=80),
                "signal": st.none() | st.integers(1, 64),
                "exit_code": st.none() | st.integers(0, 255),
                "timed_out": st.booleans(),
                "board": st.text(max_size=20),
                "started": st.floats(0, 2e9),
                "ended": st.floats(0, 2e9),
            }
        ),
        st.just(b""),
    ),
}
#: ``(op, request id, meta, payload)`` of a frame of the protocol, or of any op with any JSON object as metadata.
FRAMES = st.one_of(
    *[st.tuples(st.just(int(op)), U32, meta, payload) for op, (meta, payload) in SCHEMAS.items()],
    st.tuples(st.integers(0, 255), U32, st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4), PAYLOADS),
)
#: The buffer types a payload may be handed to encode_frame in.
BUFFER_TYPES = st.sampled_from([bytes, bytearray, memoryview])


def frame_stream(frames: Sequence[Tuple[int, int, dict, bytes]]) -> Tuple[bytes, List[Tuple[int, int]]]:
    """The frames encoded back to back, and where their length fields are: (offset, width) of each."""
    stream = bytearray()
    fields = []
    for op, request_id, meta, payload in frames:
        fields += [(len(stream) + 8, 4), (len(stream) + 12, 8)]
        for piece in encode_frame(op, request_id, meta, payload):
            stream += piece
    return bytes(stream), fields


def read_frames(reader: FrameReader, pieces: Sequence[bytes], how: str) -> List[Frame]:
    """Frames out of ``pieces``: pushed in (``push``), or received by ``read_frame`` as a socket would hand them."""
    if how == "push":
        return until_refused(reader.feed, pieces)[0]
    arriving = deque(pieces)

    def recv_into(buffer: memoryview) -> int:
        if not arriving:
            return 0  # the end of the stream
        piece = arriving.popleft()
        count = min(len(buffer), len(piece))
        buffer[:count] = piece[:count]
        if count < len(piece):
            arriving.appendleft(piece[count:])
        return count

    frames: List[Frame] = []
    for _ in range(sum(len(piece) for piece in pieces) // HEADER.size + 1):  # a frame takes 20 bytes at least
        frame = reader.read_frame(recv_into)
        if frame is None:
            break
        frames.append(frame)
    return frames


def as_sent(frame: Tuple[int, int, dict, bytes]) -> Tuple[int, int, dict, bytes]:
    op, request_id, meta, payload = frame
    return op, request_id, json.loads(json.dumps(meta)), bytes(payload)


def as_received(frame: Frame) -> Tuple[int, int, dict, bytes]:
    return frame.op, frame.request_id, frame.meta, bytes(frame.payload)


@FUZZ
@given(
    frames=st.lists(st.tuples(FRAMES, BUFFER_TYPES), min_size=1, max_size=6),
    points=CUTS,
    how=st.sampled_from(["push", "read_frame"]),
    hook=st.sampled_from(["none", "own buffers", "hook buffers"]),
)
def test_frames_round_trip_however_the_stream_is_cut(
    frames: List[Tuple[Tuple[int, int, dict, bytes], type]], points: List[int], how: str, hook: str
) -> None:
    """Frames of every op come out as sent, through push or read_frame, with or without an allocator."""
    sent = [(op, request_id, meta, kind(payload)) for (op, request_id, meta, payload), kind in frames]
    stream, _ = frame_stream(sent)
    allocations = Allocations(own=hook == "own buffers")
    reader = FrameReader(allocate=allocations if hook != "none" else None)
    received = read_frames(reader, cut(stream, points), how)
    assert [as_received(frame) for frame in received] == [as_sent(frame) for frame in sent]
    assert not reader.pending
    if hook != "none":  # asked once per payload, for exactly its size
        assert allocations.sizes == [len(bytes(frame[3])) for frame in sent if len(bytes(frame[3]))]


@FUZZ
@given(
    frames=st.lists(FRAMES, min_size=1, max_size=4),
    mutations=st.lists(MUTATIONS, min_size=1, max_size=4),
    points=CUTS,
    how=st.sampled_from(["push", "read_frame"]),
    limits=st.tuples(st.integers(0, 1 << 12), st.integers(0, 1 << 20)),
    own=st.booleans(),
)
def test_mutated_frame_streams_raise_only_protocol_errors_and_stay_within_limits(
    frames: List[Tuple[int, int, dict, bytes]],
    mutations: List[Tuple[str, int, Any]],
    points: List[int],
    how: str,
    limits: Tuple[int, int],
    own: bool,
) -> None:
    """Bit flips, cuts, insertions and huge length fields: frames or ProtocolError; payloads within the limit."""
    stream, fields = frame_stream(frames)
    max_meta, max_payload = limits
    allocations = Allocations(own)
    reader = FrameReader(max_meta=max_meta, max_payload=max_payload, allocate=allocations)
    try:
        received = read_frames(reader, cut(mutate(stream, fields, mutations), points), how)
    except ProtocolError as exc:
        assert str(exc)
        received = []
    assert all(size <= max_payload for size in allocations.sizes), allocations.sizes
    for frame in received:
        assert isinstance(frame.meta, dict) and 0 <= frame.op <= 255
        assert len(json.dumps(frame.meta).encode()) <= max(2, 6 * max_meta)  # decoded from at most max_meta bytes
        assert len(bytes(frame.payload)) <= max_payload


@FUZZ
@given(
    data=st.binary(max_size=600) | st.binary(max_size=600).map(lambda tail: b"RD\x01" + tail),
    points=CUTS,
    how=st.sampled_from(["push", "read_frame"]),
)
def test_arbitrary_bytes_give_frames_or_a_protocol_error(data: bytes, points: List[int], how: str) -> None:
    """Any bytes at all, some after a valid magic and version: frames or ProtocolError, payloads within the limit."""
    allocations = Allocations()
    reader = FrameReader(max_payload=1 << 16, allocate=allocations)
    try:
        read_frames(reader, cut(data, points), how)
    except ProtocolError as exc:
        assert str(exc)
    assert all(size <= 1 << 16 for size in allocations.sizes)


@FUZZ
@given(
    op=st.integers(0, 255),
    meta_length=st.integers(0, 2**32 - 1) | st.sampled_from([0, 2, DEFAULT_MAX_META, DEFAULT_MAX_META + 1]),
    payload_length=st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2**31, 2**31 - 1, 2**32]),
    max_meta=st.integers(0, DEFAULT_MAX_META),
    max_payload=st.integers(0, 1 << 20),
    hook=st.booleans(),
)
def test_a_header_alone_never_allocates_past_the_limits(
    op: int, meta_length: int, payload_length: int, max_meta: int, max_payload: int, hook: bool
) -> None:
    """Whatever lengths a header declares, the reader allocates at most what its limits allow (tracemalloc)."""
    allocations = Allocations()
    reader = FrameReader(max_meta=max_meta, max_payload=max_payload, allocate=allocations if hook else None)
    header = HEADER.pack(b"RD", 1, op, 1, meta_length, payload_length)
    peak, error = peak_while(lambda: reader.feed(header))
    if meta_length > max_meta or payload_length > max_payload:
        assert error is not None and not allocations.sizes, "a header past the limits was not refused at once"
        assert peak < SLACK
    else:
        assert error is None
        payload = payload_length if meta_length == 0 else 0  # allocated at once, by the reader or the hook
        assert peak <= HEADER.size + meta_length + payload + SLACK


# --- call records ----------------------------------------------------------------------------


def same_value(sent: Any, received: Any) -> bool:
    """Equal, NaN included (a float64 NaN comes back as a NaN)."""
    if isinstance(sent, float) and math.isnan(sent):
        return isinstance(received, float) and math.isnan(received)
    return sent == received and type(sent) is type(received)


@FUZZ
@given(record=CALL_RECORDS)
def test_call_records_round_trip(record: Tuple[int, List[Tuple[str, Any]]]) -> None:
    """Up to MAX_ARGS arguments of every tag, any 64-bit values (NaNs too), come back as encoded."""
    function_id, arguments = record
    got_id, tags, values = calls.decode_call(encode_record(record))
    assert got_id == function_id and tags == "".join(tag for tag, _ in arguments)
    assert all(same_value(value, got) for (_, value), got in zip(arguments, values)) and len(values) == len(arguments)


@FUZZ
@given(value=RESULT_VALUES)
def test_call_results_round_trip(value: Any) -> None:
    """None, signed and unsigned 64-bit ints and any float come back from a RESULT payload."""
    got = calls.decode_result(calls.encode_result(value))
    assert same_value(value, got)


@FUZZ
@given(
    record=CALL_RECORDS,
    mutations=st.lists(MUTATIONS, min_size=1, max_size=3),
    data=st.binary(max_size=300),
    arbitrary=st.booleans(),
)
def test_mutated_call_records_and_results_raise_only_protocol_errors(
    record: Tuple[int, List[Tuple[str, Any]]], mutations: List[Tuple[str, int, Any]], data: bytes, arbitrary: bool
) -> None:
    """decode_call and decode_result on mutated records and arbitrary bytes: a value or ProtocolError."""
    encoded = encode_record(record)
    payload = data if arbitrary else mutate(encoded, [(4, 2)], mutations)  # the argument count is the length field
    for decode in (calls.decode_call, calls.decode_result):
        try:
            decode(payload)
        except ProtocolError as exc:
            assert str(exc)


@FUZZ
@given(value=st.integers() | st.floats(), tags=st.text(alphabet="aiufnvx?", max_size=calls.MAX_ARGS + 2))
def test_call_encoders_refuse_with_their_documented_errors(value: Any, tags: str) -> None:
    """tag_of: ArgumentError past 64 bits; encode_call: ArgumentError past MAX_ARGS, ProtocolError for bad tags."""
    try:
        tag = calls.tag_of(value)
    except ArgumentError:
        assert isinstance(value, int) and not -(2**63) <= value < 2**64
    else:
        assert same_value(value, calls.decode_call(calls.encode_call(1, tag, [value]))[2][0])
    try:
        calls.encode_call(1, tags, [0] * len(tags))
    except ArgumentError:
        assert len(tags) > calls.MAX_ARGS
    except ProtocolError:
        assert set(tags) - set(calls.TAGS)


# --- the handshake ---------------------------------------------------------------------------


def no_space(text: str) -> bool:
    return not any(char.isspace() for char in text)


TOKEN_CHARS = st.characters(blacklist_categories=("Cs",))
ROLES = st.sampled_from(["client", "server"]) | st.text(TOKEN_CHARS, max_size=12).filter(
    lambda role: no_space(role) and ":" not in role
)
KEYS = st.text(TOKEN_CHARS, max_size=40).filter(no_space) | st.integers(1, MAX_KEY_LENGTH).map(lambda n: "k" * n)
TIMEOUTS = st.none() | st.integers(0, 10**7) | st.floats(0, 1e9, allow_nan=False)
CODES = st.sampled_from([getattr(handshake, "CODE_" + name) for name in ("SUCCESS", "DUPLICATE", "MISMATCH", "BUSY")])


@FUZZ
@given(role=ROLES, key=KEYS, timeout=TIMEOUTS, tail=st.binary(max_size=40), points=CUTS)
def test_hellos_round_trip_however_the_stream_is_cut(
    role: str, key: str, timeout: Optional[float], tail: bytes, points: List[int]
) -> None:
    """A hello comes out of any cut of its bytes, with its role, key and timeout; what follows it is left over."""
    try:
        hello_bytes = encode_hello(role, key, timeout)
    except ValueError:  # documented: a key text past MAX_KEY_LENGTH
        assume(False)
        return
    pieces = cut(hello_bytes + tail, points)
    reader = HelloReader()
    hello, error = first_result(reader.feed, pieces)
    assert hello is not None and error is None
    fed = 0
    for piece in pieces:  # the hello took every piece up to the one that completed it
        fed += len(piece)
        if fed >= len(hello_bytes):
            break
    assert reader.leftover() + (hello_bytes + tail)[fed:] == tail
    assert (hello.role, hello.key) == (role, key)
    assert hello.timeout == (float(timeout) if timeout else None)


@FUZZ
@given(
    code=CODES, text=st.text(TOKEN_CHARS, max_size=64) | st.integers(0, 3000).map(lambda n: "\u20ac" * n), points=CUTS
)
def test_replies_round_trip_however_the_stream_is_cut(code: int, text: str, points: List[int]) -> None:
    """Every reply code, with its text cut to whole characters within MAX_KEY_LENGTH bytes."""
    data = encode_reply(code, text)
    reply, error = first_result(ReplyReader().feed, cut(data, points))
    assert reply is not None and error is None and reply.code == code
    if code in (handshake.CODE_DUPLICATE, handshake.CODE_MISMATCH):
        assert reply.text == ""
    else:  # whole characters, at most MAX_KEY_LENGTH bytes of them
        assert text.startswith(reply.text) and len(reply.text.encode()) <= MAX_KEY_LENGTH
        assert reply.text == text or len(reply.text.encode()) > MAX_KEY_LENGTH - 4


@FUZZ
@given(
    role=ROLES,
    key=KEYS,
    timeout=TIMEOUTS,
    mutations=st.lists(MUTATIONS, min_size=1, max_size=4),
    arbitrary=st.binary(max_size=MAX_KEY_LENGTH + 64),
    use_arbitrary=st.booleans(),
    points=CUTS,
)
def test_mutated_hellos_and_replies_raise_only_protocol_errors(
    role: str,
    key: str,
    timeout: Optional[float],
    mutations: List[Tuple[str, int, Any]],
    arbitrary: bytes,
    use_arbitrary: bool,
    points: List[int],
) -> None:
    """Hello reader (which checks ``-timeout``) and reply reader: a result, more bytes needed, or ProtocolError."""
    try:
        valid = encode_hello(role, key, timeout)
    except ValueError:  # documented: a key text past MAX_KEY_LENGTH
        valid = encode_hello(role, "k", timeout)
    data = arbitrary if use_arbitrary else mutate(valid, [(0, 4), (4, 4)], mutations)
    first_result(HelloReader().feed, cut(data, points))
    reply = arbitrary if use_arbitrary else mutate(encode_reply(handshake.CODE_BUSY, key), [(0, 4), (4, 4)], mutations)
    first_result(ReplyReader().feed, cut(reply, points))


@FUZZ
@given(text=st.text() | st.text(TOKEN_CHARS).map(lambda options: "client:key -timeout=" + options))
def test_any_key_text_parses_or_is_refused(text: str) -> None:
    """Any key text, and any ``-timeout`` value: a hello with a positive timeout or none, or ProtocolError."""
    try:
        hello = parse_key(text)
        assert hello.timeout is None or hello.timeout > 0
    except ProtocolError as exc:
        assert str(exc)


@FUZZ
@given(
    length=st.integers(0, MAX_KEY_LENGTH) | st.integers(-(2**31), 2**31 - 1),
    body=st.binary(max_size=MAX_KEY_LENGTH + 16),
    magic=st.just(RPC_MAGIC) | st.integers(-(2**31), 2**31 - 1),
    points=CUTS,
)
def test_the_hello_reader_decides_within_one_maximal_hello(
    length: int, body: bytes, magic: int, points: List[int]
) -> None:
    """Given 8 + MAX_KEY_LENGTH bytes it has a hello or has refused: it never buffers more than that, waiting."""
    data = (struct.pack("<ii", magic, length) + body + bytes(MAX_KEY_LENGTH))[: 8 + MAX_KEY_LENGTH]
    outcome: List[Any] = []
    peak, _ = peak_while(lambda: outcome.extend(first_result(HelloReader().feed, cut(data, points))))
    hello, error = outcome
    assert (hello is None) != (error is None), "undecided after %d bytes" % len(data)
    if hello is not None:
        assert magic == RPC_MAGIC and 0 <= length <= MAX_KEY_LENGTH
    assert peak < 4 * len(data) + SLACK


# --- tracker messages ------------------------------------------------------------------------

TRACKER_KEYS = st.sampled_from(["rasp4", "nat", "fuzz"]) | st.text(max_size=20)
PROTOCOLS = st.sampled_from([FARM_PROTOCOL, TVM_PROTOCOL]) | st.text(max_size=6)
PORTS = st.integers(1, 65535) | st.integers(1, 65535).map(str)
HOSTS = st.none() | st.sampled_from(["127.0.0.1", "::1", "board.local"])


#: Requests as farm/tracker/server.py reads them.
TRACKER_REQUESTS = st.one_of(
    st.tuples(st.sampled_from([Code.PING, Code.SUMMARY, Code.GET_PENDING_MATCHKEYS])).map(list),
    st.tuples(st.just(Code.STOP), TRACKER_KEYS).map(list),
    st.tuples(
        st.just(Code.PUT),
        TRACKER_KEYS,
        st.tuples(PORTS, TRACKER_KEYS).map(list),
        HOSTS,
        st.fixed_dictionaries({"protocol": PROTOCOLS}),
    ).map(list),
    st.tuples(
        st.just(Code.REQUEST),
        TRACKER_KEYS,
        st.text(max_size=10),
        st.integers(-10, 10) | st.floats(-1e9, 1e9),
        st.fixed_dictionaries(
            {},
            optional={
                "wait": st.floats(0, 1e6),
                "wait_for_key": st.booleans(),
                "progress": st.booleans(),
                "protocols": st.lists(PROTOCOLS, max_size=3),
            },
        ),
    ).map(list),
    st.tuples(
        st.just(Code.UPDATE_INFO),
        st.fixed_dictionaries(
            {
                "addr": st.tuples(HOSTS, st.integers(0, 65535)).map(list),
                "key": TRACKER_KEYS.map("server:".__add__),
                "protocol": PROTOCOLS,
            },
            optional={"boards": st.dictionaries(TRACKER_KEYS, st.integers(0, 9), max_size=3)},
        ),
    ).map(list),
)
#: Requests and replies as farm/protocol/tracker.py and farm/tracker/server.py give them.
TRACKER_MESSAGES = st.one_of(
    TRACKER_REQUESTS,
    st.sampled_from([Code.SUCCESS, Code.FAIL]),
    st.tuples(st.just(Code.SUCCESS), st.tuples(HOSTS, PORTS, TRACKER_KEYS, PROTOCOLS).map(list)).map(list),
    st.tuples(st.just(Code.FAIL), st.text(max_size=80)).map(list),
    st.tuples(
        st.just(Code.WAITING),
        st.fixed_dictionaries({name: st.integers(0, 99) for name in ("position", "ahead", "boards", "free")}),
    ).map(list),
    st.lists(TRACKER_KEYS, max_size=5),
    JSON_VALUES,
)
#: Requests with a field or two of the wrong type, or missing, and other messages of any shape.
LOOSE_REQUESTS = st.one_of(
    st.tuples(TRACKER_REQUESTS, st.lists(st.tuples(st.integers(0), JSON_VALUES | st.just(REMOVE)), max_size=2)).map(
        lambda request_edits: edit(*request_edits)
    ),
    st.tuples(st.integers(-5, 200), st.lists(JSON_VALUES, max_size=4)).map(lambda c: [c[0], *c[1]]),
    JSON_VALUES,
)


def message_stream(messages: Sequence[Any], magic: bool) -> Tuple[bytes, List[Tuple[int, int]]]:
    """The messages encoded back to back (after the magic), and where their length fields are."""
    stream = bytearray(encode_magic() if magic else b"")
    fields = []
    for message in messages:
        fields.append((len(stream), 4))
        stream += encode_message(message)
    return bytes(stream), fields


@FUZZ
@given(messages=st.lists(TRACKER_MESSAGES, min_size=1, max_size=8), magic=st.booleans(), points=CUTS)
def test_tracker_messages_round_trip_however_the_stream_is_cut(
    messages: List[Any], magic: bool, points: List[int]
) -> None:
    """Requests and replies of every code, after the magic or not, come out as sent (as JSON gives them back)."""
    stream, _ = message_stream(messages, magic)
    reader = MessageReader(expect_magic=magic)
    received, error = until_refused(reader.feed, cut(stream, points))
    assert error is None and reader.magic_seen
    assert received == [json.loads(json.dumps(message)) for message in messages]


@FUZZ
@given(
    messages=st.lists(TRACKER_MESSAGES, min_size=1, max_size=5),
    mutations=st.lists(MUTATIONS, min_size=1, max_size=4),
    arbitrary=st.binary(max_size=400),
    use_arbitrary=st.booleans(),
    magic=st.booleans(),
    max_message=st.sampled_from([MAX_MESSAGE, 64, 1]),
    points=CUTS,
)
def test_mutated_tracker_streams_raise_only_protocol_errors(
    messages: List[Any],
    mutations: List[Tuple[str, int, Any]],
    arbitrary: bytes,
    use_arbitrary: bool,
    magic: bool,
    max_message: int,
    points: List[int],
) -> None:
    """Mutated or arbitrary streams: messages or ProtocolError, each message decoded from at most the limit."""
    stream, fields = message_stream(messages, magic)
    data = arbitrary if use_arbitrary else mutate(stream, fields + [(0, 4)] * magic, mutations)
    reader = MessageReader(expect_magic=magic, max_message=max_message)
    received, _ = until_refused(reader.feed, cut(data, points))
    assert all(len(json.dumps(message)) <= 6 * max_message for message in received)


@FUZZ
@given(length=st.integers(1, MAX_MESSAGE) | U32 | st.sampled_from(HUGE_LENGTHS[:3]), sent=st.integers(0, 1 << 16))
def test_the_tracker_reader_allocates_only_what_arrived(length: int, sent: int) -> None:
    """A declared length is refused outside 1..MAX_MESSAGE; within it, memory follows the bytes that came.

    A message that came whole is copied a few times while it is decoded (slice, bytes, str), hence the factor.
    """
    reader = MessageReader(expect_magic=True)
    data = encode_magic() + struct.pack("<I", length) + bytes(sent)
    peak, error = peak_while(lambda: reader.feed(data))
    if not 0 < length <= MAX_MESSAGE:  # read as an int32: 2**31 and up are negative
        assert error is not None
    assert peak < 4 * len(data) + SLACK


# --- the tracker's handling of messages --------------------------------------------------------


class Wire:
    """The writer end the tracker gets for a peer: keeps what it is sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = bytearray()
        self.transport = self

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", self.port) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.sent += data

    def get_write_buffer_size(self) -> int:
        return 0  # the peer reads everything at once


async def play(script: Sequence[Tuple[int, Any]], peers: int) -> List[Wire]:
    """Each ``(peer, message)`` of ``script`` handled as the tracker's connection handler does it.

    A peer the tracker drops connects again, as a new peer, for its next message.
    """
    tracker = Tracker()
    wires: List[Wire] = []

    def connect() -> Peer:
        wires.append(Wire(40000 + len(wires)))
        peer = Peer(wires[-1])  # type: ignore[arg-type]  (a writer as far as the tracker uses one)
        tracker.peers.add(peer)
        return peer

    connected = [connect() for _ in range(peers)]
    for index, message in script:
        try:
            tracker._dispatch(connected[index], json.loads(json.dumps(message)))  # as it arrives: Codes are ints
        except ProtocolError as exc:  # the handler drops that connection, and only that one
            assert str(exc)
            tracker._drop(connected[index])
            connected[index] = connect()
        encode_message([Code.SUCCESS, tracker.summary()])  # what any peer may ask for next: never too large
    for peer in connected:
        tracker._drop(peer)  # cancels the timers of waits
    return wires


@FUZZ
@given(script=st.lists(st.tuples(st.integers(0, 2), LOOSE_REQUESTS), min_size=8, max_size=40))
def test_the_tracker_answers_any_message_or_refuses_it_and_summaries_survive(script: List[Tuple[int, Any]]) -> None:
    """Peers sending requests with fields of any type, missing or extra: each message is handled or refused with
    ProtocolError (closing that peer alone), the summary works after every step, and every reply is a message."""
    for wire in asyncio.run(play(script, 3)):
        replies, error = until_refused(MessageReader(expect_magic=False).feed, [bytes(wire.sent)])
        assert error is None and len(replies) <= len(script)


# --- the 2 GiB length prefix -----------------------------------------------------------------

TWO_GIB = 1 << 31


@pytest.mark.parametrize(
    "reader, data",
    [
        (lambda: FrameReader(max_payload=1 << 30), HEADER.pack(b"RD", 1, Op.UPLOAD, 1, 0, TWO_GIB)),
        (lambda: FrameReader(), HEADER.pack(b"RD", 1, Op.PING, 1, TWO_GIB, 0)),
        (lambda: HelloReader(), struct.pack("<iI", RPC_MAGIC, TWO_GIB - 1)),
        (lambda: MessageReader(), struct.pack("<iI", TRACKER_MAGIC, TWO_GIB - 1)),
        (lambda: MessageReader(expect_magic=False), struct.pack("<I", TWO_GIB)),
    ],
    ids=["frame-payload", "frame-meta", "hello", "tracker", "tracker-reply"],
)
def test_a_2_gib_length_prefix_is_refused_before_any_allocation(reader: Callable[[], Any], data: bytes) -> None:
    """Where 2 GiB is past the limit, the length field alone is refused, with next to nothing allocated."""
    instance = reader()
    allocations = Allocations()
    if isinstance(instance, FrameReader):
        instance.allocate = allocations
    peak, error = peak_while(lambda: instance.feed(data))
    assert error is not None, "a 2 GiB length was not refused"
    assert not allocations.sizes
    assert peak < 16 << 10, "%d bytes allocated before refusing" % peak
