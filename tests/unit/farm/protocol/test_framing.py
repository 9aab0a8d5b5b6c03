"""Unit tests of the sans-IO frame encoder and reader."""

from __future__ import annotations

import array
import json
import os
import re
import struct
from typing import List, Optional, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import rss
from farm.errors import ProtocolError
from farm.protocol.framing import (
    DEFAULT_MAX_META,
    DEFAULT_MAX_PAYLOAD,
    FRAME_MAGIC,
    HEADER,
    VERSION,
    Frame,
    FrameReader,
    encode_frame,
)
from farm.protocol.ops import Op

INTERNAL_BUFFER = 1 << 16
MIB = 1 << 20


def encode(op: int, request_id: int, meta: Optional[dict] = None, payload=b"") -> bytes:
    """One frame as a single ``bytes``."""
    return b"".join(bytes(piece) for piece in encode_frame(op, request_id, meta, payload))


def header(magic=b"RD", version=1, op=1, request_id=0, meta_len=0, payload_len=0) -> bytes:
    """A raw 20-byte header with any field values."""
    return struct.pack("<2sBBIIQ", magic, version, op, request_id, meta_len, payload_len)


def as_tuple(frame: Frame) -> Tuple[int, int, dict, bytes]:
    return frame.op, frame.request_id, frame.meta, bytes(frame.payload)


def receive_in_chunks(reader: FrameReader, data: bytes, chunk: int) -> List[Frame]:
    """Write ``data`` into ``writable()`` at most ``chunk`` bytes at a time, as ``recv_into`` would."""
    frames = []
    view = memoryview(data)
    while view:
        target = reader.writable()
        assert len(target) > 0
        count = min(chunk, len(target), len(view))
        target[:count] = view[:count]
        del target
        view = view[count:]
        reader.advance(count)
        while True:
            frame = reader.next_frame()
            if frame is None:
                break
            frames.append(frame)
    return frames


def pattern(nbytes: int, seed: int = 0) -> bytes:
    """Deterministic non-repeating-looking bytes."""
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()


class RecordingAllocator:
    """An allocate hook that hands out bytearrays and remembers its calls."""

    def __init__(self) -> None:
        self.calls: List[Tuple[int, dict, int]] = []
        self.buffers: List[bytearray] = []

    def __call__(self, op: int, meta: dict, nbytes: int) -> bytearray:
        self.calls.append((op, dict(meta), nbytes))
        buffer = bytearray(nbytes)
        self.buffers.append(buffer)
        return buffer


# --- encoding -----------------------------------------------------------------------------------


def test_header_layout():
    """magic "RD" | version u8 | op u8 | request id u32 | meta length u32 | payload length u64, little-endian."""
    assert HEADER.size == 20
    meta = {"name": "vadd", "n": 3}
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    data = encode(Op.CALL, 0x01020304, meta, b"xyz")
    expected_head = (
        b"RD" + bytes([VERSION, 9]) + b"\x04\x03\x02\x01" + struct.pack("<I", len(meta_bytes)) + b"\x03" + b"\0" * 7
    )
    assert data == expected_head + meta_bytes + b"xyz"
    assert FRAME_MAGIC == b"RD" and VERSION == 1


def test_encode_frame_does_not_copy_large_payload():
    """A large payload is handed back as the same object, after the header and metadata."""
    payload = bytearray(b"\x01" * MIB)
    pieces = encode_frame(Op.ARRAY_WRITE, 1, {"id": 2}, payload)
    assert len(pieces) == 2
    assert pieces[1] is payload
    assert pieces[0] == header(op=Op.ARRAY_WRITE, request_id=1, meta_len=8, payload_len=MIB) + b'{"id":2}'


@pytest.mark.parametrize("size", [1, 100, 4095, 4096, 4097, 65536])
def test_encode_frame_pieces_join_to_one_frame(size):
    """Whatever the payload size, the pieces are header, metadata and payload in order."""
    payload = pattern(size, seed=size)
    data = b"".join(bytes(piece) for piece in encode_frame(Op.UPLOAD, 6, {"p": "x"}, payload))
    assert data == header(op=Op.UPLOAD, request_id=6, meta_len=9, payload_len=size) + b'{"p":"x"}' + payload


@pytest.mark.parametrize("meta", [None, {}])
def test_encode_frame_empty_meta_and_payload(meta):
    """No metadata and no payload: just the 20-byte header, with zero lengths."""
    pieces = encode_frame(Op.PING, 5, meta)
    assert pieces == [header(op=Op.PING, request_id=5)]


def test_encode_frame_payload_length_counts_bytes_of_typed_buffers():
    """A typed buffer's length field is its size in bytes, not its item count."""
    payload = array.array("d", [1.0, 2.0, 3.0])
    data = b"".join(bytes(piece) for piece in encode_frame(Op.ARRAY_WRITE, 1, None, payload))
    assert HEADER.unpack_from(data)[5] == 24
    assert data[HEADER.size :] == payload.tobytes()


def test_encode_frame_numpy_payload_round_trip():
    """A large numpy array goes out without copying and comes back byte for byte."""
    values = np.arange(MIB // 8, dtype=np.float64)
    pieces = encode_frame(Op.ARRAY_WRITE, 3, {"dtype": "float64"}, values)
    assert pieces[1] is values
    (frame,) = FrameReader().feed(b"".join(bytes(memoryview(p).cast("B")) for p in pieces))
    assert np.array_equal(np.frombuffer(frame.payload, dtype=np.float64), values)


# --- round trips --------------------------------------------------------------------------------

ROUND_TRIP_CASES = [
    pytest.param(Op.PING, 1, {}, b"", id="empty"),
    pytest.param(Op.CALL, 2, {"name": "vadd", "args": [["a", 1], ["i", 5], ["f", 1.5], ["n", None]]}, b"", id="meta"),
    pytest.param(Op.UPLOAD, 3, {}, b"payload bytes", id="payload"),
    pytest.param(Op.RESULT, 2**32 - 1, {"ü": "ßñ", "nested": {"list": [1, 2.5, True, None]}}, b"\0\xff", id="unicode"),
    pytest.param(255, 0, {"x": 1}, pattern(5 * MIB), id="5MiB"),
]


@pytest.mark.parametrize("op, request_id, meta, payload", ROUND_TRIP_CASES)
def test_round_trip_all_at_once(op, request_id, meta, payload):
    """One feed with a whole frame gives exactly that frame back."""
    reader = FrameReader()
    frames = reader.feed(encode(op, request_id, meta, payload))
    assert [as_tuple(frame) for frame in frames] == [(op, request_id, meta, payload)]
    assert not reader.pending


@pytest.mark.parametrize("chunk", [1, 3, 7, 20, 21, 4093, INTERNAL_BUFFER + 1, 1 << 22])
def test_round_trip_through_writable_in_odd_chunks(chunk):
    """Receiving through writable()/advance() in odd chunk sizes gives the same frames."""
    cases = [case.values for case in ROUND_TRIP_CASES[:-1]]
    if chunk >= 4093:
        cases.append(ROUND_TRIP_CASES[-1].values)
    data = b"".join(encode(*case) for case in cases)
    frames = receive_in_chunks(FrameReader(), data, chunk)
    assert [as_tuple(frame) for frame in frames] == [tuple(case) for case in cases]


def test_large_payload_in_small_chunks():
    """A 3 MiB payload arrives intact through 1000-byte receives."""
    payload = pattern(3 * MIB, seed=1)
    data = encode(Op.DOWNLOAD, 7, {"path": "f"}, payload) + encode(Op.PING, 8)
    frames = receive_in_chunks(FrameReader(), data, 1000)
    assert [as_tuple(frame) for frame in frames] == [(Op.DOWNLOAD, 7, {"path": "f"}, payload), (Op.PING, 8, {}, b"")]


def test_an_announced_payload_commits_memory_only_as_it_arrives():
    """A header for a 512 MiB payload (within the limit) and 1 MiB of it: memory for what came, not for all."""
    size = 512 * MIB
    head = header(op=Op.PING, request_id=1, payload_len=size)
    reader = FrameReader(max_payload=1 << 30)
    before = rss(os.getpid())
    assert reader.feed(head + bytes(MIB)) == []
    assert rss(os.getpid()) - before < 64 * MIB
    rest = pattern(MIB, seed=3) * (size // MIB - 1)  # one random MiB over and over: generating 511 takes seconds
    (frame,) = reader.feed(rest)
    assert len(frame.payload) == size and bytes(frame.payload[MIB : MIB + 64]) == rest[:64]


def test_frames_back_to_back_in_one_buffer():
    """Several frames in one chunk all come out, in order."""
    sent = [
        (Op.PING, 1, {}, b""),
        (Op.CALL, 2, {"a": 1}, b"abc"),
        (Op.RESULT, 3, {}, b"x" * 100),
        (Op.CLOSE, 4, {}, b""),
    ]
    reader = FrameReader()
    frames = reader.feed(b"".join(encode(*frame) for frame in sent))
    assert [as_tuple(frame) for frame in frames] == sent
    assert reader.feed(b"") == []


def test_byte_at_a_time():
    """One byte per feed: nothing until a frame's last byte, then that frame."""
    sent = [(Op.CALL, 9, {"k": [1, 2]}, b"payload"), (Op.PING, 10, {}, b""), (Op.UPLOAD, 11, {}, b"z")]
    reader = FrameReader()
    received = []
    for frame in sent:
        data = encode(*frame)
        for i in range(len(data) - 1):
            assert reader.feed(data[i : i + 1]) == []
        received += reader.feed(data[-1:])
    assert [as_tuple(frame) for frame in received] == sent


def test_push_then_next_frame():
    """``push`` queues frames; ``next_frame`` hands them out oldest first, then None."""
    reader = FrameReader()
    reader.push(encode(Op.PING, 1) + encode(Op.PING, 2))
    assert reader.next_frame().request_id == 1
    assert reader.next_frame().request_id == 2
    assert reader.next_frame() is None


def test_feed_returns_frames_queued_by_push():
    """``feed`` returns frames an earlier ``push`` completed, and clears the queue."""
    reader = FrameReader()
    reader.push(encode(Op.PING, 1))
    frames = reader.feed(encode(Op.PING, 2))
    assert [frame.request_id for frame in frames] == [1, 2]
    assert reader.next_frame() is None


def test_feed_accepts_memoryview_and_bytearray():
    """Any bytes-like object can be fed."""
    data = encode(Op.UPLOAD, 1, {"p": 1}, b"abc")
    assert as_tuple(FrameReader().feed(memoryview(data))[0]) == (Op.UPLOAD, 1, {"p": 1}, b"abc")
    assert as_tuple(FrameReader().feed(bytearray(data))[0]) == (Op.UPLOAD, 1, {"p": 1}, b"abc")


def test_metadata_larger_than_internal_buffer():
    """Metadata of several times the 64 KiB buffer is read whole, however it arrives."""
    meta = {"blob": "m" * (5 * INTERNAL_BUFFER), "n": 1}
    data = encode(Op.CALL, 4, meta, b"tail") + encode(Op.PING, 5)
    expected = [(Op.CALL, 4, meta, b"tail"), (Op.PING, 5, {}, b"")]
    assert [as_tuple(frame) for frame in FrameReader().feed(data)] == expected
    assert [as_tuple(frame) for frame in receive_in_chunks(FrameReader(), data, 4099)] == expected


def test_metadata_straddling_buffer_end_after_earlier_frames():
    """A frame whose metadata starts near the end of the internal buffer is read correctly."""
    filler = encode(Op.UPLOAD, 1, {}, b"f" * (INTERNAL_BUFFER - 100))
    meta = {"s": "q" * 50_000}
    data = filler + encode(Op.CALL, 2, meta) + encode(Op.PING, 3)
    frames = receive_in_chunks(FrameReader(), data, 30_000)
    assert [frame.request_id for frame in frames] == [1, 2, 3]
    assert frames[1].meta == meta


# --- the allocate hook --------------------------------------------------------------------------


def test_allocator_receives_op_meta_and_size():
    """The hook is called once per non-empty payload with (op, meta, nbytes)."""
    allocate = RecordingAllocator()
    reader = FrameReader(allocate=allocate)
    reader.feed(encode(Op.ARRAY_WRITE, 1, {"id": 7, "dtype": "float32"}, b"12345678") + encode(Op.PING, 2))
    assert allocate.calls == [(Op.ARRAY_WRITE, {"id": 7, "dtype": "float32"}, 8)]


def test_allocator_not_called_for_empty_payload():
    """Frames without payload never call the hook."""
    allocate = RecordingAllocator()
    frames = FrameReader(allocate=allocate).feed(encode(Op.PING, 1, {"a": 1}))
    assert allocate.calls == []
    assert bytes(frames[0].payload) == b""


@pytest.mark.parametrize("chunk", [1, 13, 1 << 20])
def test_payload_lands_in_allocated_buffer(chunk):
    """The payload is written into the buffer the hook returned, not a copy of it."""
    allocate = RecordingAllocator()
    payload = pattern(100_000, seed=2)
    frames = receive_in_chunks(FrameReader(allocate=allocate), encode(Op.ARRAY_WRITE, 1, {}, payload), chunk)
    (buffer,) = allocate.buffers
    assert buffer == payload
    assert frames[0].payload.obj is buffer


def test_writable_is_the_allocated_buffer():
    """Once header and metadata are in, ``writable()`` is a view of the hook's buffer."""
    allocate = RecordingAllocator()
    reader = FrameReader(allocate=allocate)
    data = encode(Op.ARRAY_WRITE, 1, {"id": 1}, b"ABCDEFGH")
    reader.push(data[:-8])
    target = reader.writable()
    assert target.obj is allocate.buffers[0]
    assert len(target) == 8
    target[:8] = b"ABCDEFGH"
    del target
    reader.advance(8)
    assert allocate.buffers[0] == b"ABCDEFGH"
    assert reader.next_frame().payload.obj is allocate.buffers[0]


def test_payload_lands_in_numpy_array():
    """A hook may return a numpy array; the frame's bytes become its contents."""
    values = np.linspace(0, 1, 4096, dtype=np.float32)
    destination = np.zeros_like(values)

    def allocate(op: int, meta: dict, nbytes: int) -> np.ndarray:
        assert nbytes == destination.nbytes
        return destination

    frames = receive_in_chunks(FrameReader(allocate=allocate), encode(Op.ARRAY_WRITE, 1, {}, values.tobytes()), 777)
    assert np.array_equal(destination, values)
    assert frames[0].payload.obj is destination


def test_allocator_wrong_size_is_an_error():
    """A hook returning a buffer of the wrong size is a programming error (ValueError)."""
    reader = FrameReader(allocate=lambda op, meta, nbytes: bytearray(nbytes + 1))
    with pytest.raises(ValueError, match="allocator returned 5 bytes for a 4-byte payload"):
        reader.feed(encode(Op.UPLOAD, 1, {}, b"abcd"))


# --- limits -------------------------------------------------------------------------------------


def test_default_limits():
    """By default metadata is limited to 1 MiB and payloads to 4 GiB."""
    reader = FrameReader()
    assert (reader.max_meta, reader.max_payload) == (DEFAULT_MAX_META, DEFAULT_MAX_PAYLOAD) == (MIB, 4 << 30)


def test_meta_over_limit_raises_on_header():
    """Metadata over ``max_meta`` is refused as soon as the header arrives."""
    with pytest.raises(ProtocolError, match="metadata of 101 bytes exceeds the limit of 100"):
        FrameReader(max_meta=100).feed(header(meta_len=101))


def test_meta_at_limit_is_accepted():
    """Metadata of exactly ``max_meta`` bytes is accepted."""
    meta = {"k": "v" * 92}
    size = len(json.dumps(meta, separators=(",", ":")))
    (frame,) = FrameReader(max_meta=size).feed(encode(Op.CALL, 1, meta))
    assert frame.meta == meta


def test_payload_over_limit_raises_before_allocating():
    """A payload over ``max_payload`` is refused from the header, before the hook is called."""
    allocate = RecordingAllocator()
    reader = FrameReader(max_payload=1000, allocate=allocate)
    with pytest.raises(ProtocolError, match="payload of 1001 bytes exceeds the limit of 1000 bytes"):
        reader.feed(header(meta_len=2, payload_len=1001) + b"{}")
    assert allocate.calls == []


def test_payload_over_default_limit_raises_before_allocating():
    """A header announcing more than 4 GiB is refused without trying to allocate it."""
    allocate = RecordingAllocator()
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        FrameReader(allocate=allocate).feed(header(payload_len=DEFAULT_MAX_PAYLOAD + 1))
    assert allocate.calls == []


def test_payload_at_limit_is_accepted():
    """A payload of exactly ``max_payload`` bytes is accepted."""
    (frame,) = FrameReader(max_payload=10).feed(encode(Op.UPLOAD, 1, {}, b"0123456789"))
    assert bytes(frame.payload) == b"0123456789"


def test_meta_limit_checked_before_payload_limit():
    """With both limits broken, the metadata one is reported."""
    with pytest.raises(ProtocolError, match="metadata"):
        FrameReader(max_meta=1, max_payload=1).feed(header(meta_len=2, payload_len=2))


# --- malformed frames ---------------------------------------------------------------------------


@pytest.mark.parametrize("magic", [b"rd", b"DR", b"\0\0", b"GE"])
def test_bad_magic(magic):
    """A header not starting with "RD" is refused, naming what was received."""
    with pytest.raises(ProtocolError, match=re.escape("bad frame magic %r (expected %r)" % (magic, b"RD"))):
        FrameReader().feed(header(magic=magic))


def test_bad_magic_from_http():
    """Something speaking HTTP is refused at the first header."""
    with pytest.raises(ProtocolError, match="bad frame magic"):
        FrameReader().feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


@pytest.mark.parametrize("version", [0, 2, 255])
def test_bad_version(version):
    """Only version 1 is spoken; the error names both versions."""
    with pytest.raises(ProtocolError, match="unsupported frame version %d \\(this side speaks 1\\)" % version):
        FrameReader().feed(header(version=version))


def test_nothing_raised_before_header_complete():
    """A bad header is only judged once all 20 bytes are in."""
    reader = FrameReader()
    assert reader.feed(header(magic=b"XX")[:19]) == []
    with pytest.raises(ProtocolError):
        reader.feed(b"\0")


@pytest.mark.parametrize("raw", [b"{not json", b"{'a': 1}", b'{"a": 1', b"\xff\xfe", b'{"a": 1}x', b"[" * 100_000])
def test_invalid_json_meta(raw):
    """Metadata that is not valid UTF-8 JSON is refused."""
    with pytest.raises(ProtocolError, match="frame metadata is not valid JSON"):
        FrameReader().feed(header(meta_len=len(raw)) + raw)


@pytest.mark.parametrize(
    "raw, name", [(b"[1, 2]", "list"), (b"3", "int"), (b'"s"', "str"), (b"null", "NoneType"), (b"1.5", "float")]
)
def test_meta_not_an_object(raw, name):
    """Metadata must be a JSON object; the error names what it was."""
    with pytest.raises(ProtocolError, match="frame metadata is a JSON %s, not an object" % name):
        FrameReader().feed(header(meta_len=len(raw)) + raw)


@pytest.mark.parametrize("raw", [b'{"a": 1}  ', b'{"a": 1}\n', b' {"a": 1}', b'\n\t{"a": 1}', b'\r\n{ "a" : 1 }\r\n'])
def test_meta_with_surrounding_whitespace(raw):
    """JSON allows whitespace before and after the value; such metadata is valid."""
    (frame,) = FrameReader().feed(header(meta_len=len(raw)) + raw)
    assert frame.meta == {"a": 1}


def test_meta_empty_object_spelled_out():
    """``{}`` sent explicitly reads the same as no metadata."""
    (frame,) = FrameReader().feed(header(meta_len=2) + b"{}")
    assert frame.meta == {}


# --- state properties ---------------------------------------------------------------------------


def test_pending_and_request_id_through_a_frame():
    """``pending`` is True mid-frame only; ``request_id`` is known from the header until the frame ends."""
    reader = FrameReader()
    assert (reader.pending, reader.request_id) == (False, 0)
    data = encode(Op.CALL, 42, {"a": 1}, b"payload")
    head_end = HEADER.size
    reader.push(data[:5])
    assert (reader.pending, reader.request_id) == (True, 0)
    reader.push(data[5:head_end])
    assert (reader.pending, reader.request_id) == (True, 42)
    reader.push(data[head_end:-3])
    assert (reader.pending, reader.request_id) == (True, 42)
    reader.push(data[-3:])
    assert (reader.pending, reader.request_id) == (False, 0)
    assert reader.next_frame().request_id == 42


def test_pending_with_a_second_frame_started():
    """After one whole frame and the start of another, the reader is pending again."""
    reader = FrameReader()
    frames = reader.feed(encode(Op.PING, 1) + encode(Op.PING, 2)[:3])
    assert [frame.request_id for frame in frames] == [1]
    assert reader.pending
    assert reader.request_id == 0


def test_pending_false_after_many_empty_frames():
    """Frames without payload leave nothing pending behind them."""
    reader = FrameReader()
    frames = reader.feed(b"".join(encode(Op.PING, i, {"i": i}) for i in range(5000)))
    assert [frame.request_id for frame in frames] == list(range(5000))
    assert not reader.pending


# --- properties ---------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False),
    st.text(max_size=10),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
FRAMES = st.tuples(
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4),
    st.binary(max_size=3000),
)


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(FRAMES, min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 20_000), max_size=10),
    through_writable=st.booleans(),
)
def test_random_frames_split_anywhere(frames, cuts, through_writable):
    """Valid frames round-trip however the byte stream is split, via push or writable()/advance()."""
    data = b"".join(encode(*frame) for frame in frames)
    bounds = [0, *sorted({c for c in cuts if c < len(data)}), len(data)]
    reader = FrameReader()
    received = []
    for start, end in zip(bounds, bounds[1:]):
        if through_writable:
            received += receive_in_chunks(reader, data[start:end], end - start)
        else:
            received += reader.feed(data[start:end])
    assert [as_tuple(frame) for frame in received] == [tuple(frame) for frame in frames]
    assert not reader.pending


def _header_then(fields, tail: bytes) -> bytes:
    magic, version, op, request_id, meta_len, payload_len = fields
    return header(magic, version, op, request_id, meta_len, payload_len) + tail


HEADER_FIELDS = st.tuples(
    st.sampled_from([b"RD", b"RD", b"RD", b"Rd", b"\0\0"]),
    st.sampled_from([1, 1, 1, 0, 2]),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)),
    st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1)),
)
GARBAGE = st.one_of(
    st.binary(max_size=200),
    st.tuples(HEADER_FIELDS, st.binary(max_size=200)).map(lambda t: _header_then(*t)),
    st.tuples(HEADER_FIELDS, st.text(max_size=60)).map(lambda t: _header_then(t[0], t[1].encode())),
)


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(GARBAGE, min_size=1, max_size=4))
def test_garbage_raises_only_protocol_error(chunks):
    """Arbitrary bytes give frames or ProtocolError, never another exception."""
    reader = FrameReader(max_payload=1 << 16)
    try:
        for chunk in chunks:
            for frame in reader.feed(chunk):
                assert isinstance(frame.meta, dict)
    except ProtocolError as exc:
        assert str(exc)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=20, max_size=200).map(lambda b: b"RD\x01" + b), chunk=st.integers(1, 64))
def test_garbage_through_writable_raises_only_protocol_error(data, chunk):
    """The writable()/advance() path is as strict as push() on arbitrary input."""
    try:
        receive_in_chunks(FrameReader(max_payload=1 << 16), data, chunk)
    except ProtocolError as exc:
        assert str(exc)
