"""The CALL frame built once per argument shape and the RESULT frame read without the general reader (the client's
fast path); the CALL frame read and the RESULT frame built in place (the board's)."""

from __future__ import annotations

from typing import Any, List, Tuple

from hypothesis import given
from hypothesis import strategies as st

from farm.protocol.calls import (
    NOT_A_RESULT,
    RESULT_FRAME_SIZE,
    CallFrame,
    ResultFrame,
    decode_call,
    encode_call,
    encode_result,
    read_call_frame,
    read_result_frame,
)
from farm.protocol.framing import FrameReader, encode_frame
from farm.protocol.ops import Op

_VALUES = {
    "a": st.integers(0, (1 << 64) - 1),
    "u": st.integers(0, (1 << 64) - 1),
    "i": st.integers(-(1 << 63), (1 << 63) - 1),
    "f": st.floats(allow_nan=False),
    "n": st.just(0),
}
_REQUEST_IDS = st.integers(1, 0xFFFFFFFF)


@st.composite
def _arguments(draw: Any) -> Tuple[str, List[Any]]:
    tags = draw(st.text(alphabet="aiufn", max_size=12))
    return tags, [draw(_VALUES[tag]) for tag in tags]


@given(st.integers(0, 0xFFFFFFFF), _arguments(), _REQUEST_IDS)
def test_call_frame_is_the_general_encoding(
    function_id: int, arguments: Tuple[str, List[Any]], request_id: int
) -> None:
    tags, values = arguments
    call = CallFrame(int(Op.CALL), function_id, tags)
    expected = encode_frame(int(Op.CALL), request_id, None, encode_call(function_id, tags, values))
    assert bytes(call.fill(request_id, values)) == b"".join(expected)
    assert call.payload(values) == encode_call(function_id, tags, values)


@given(_arguments(), st.lists(_REQUEST_IDS, min_size=2, max_size=4))
def test_a_reused_call_frame_reads_back_each_call(arguments: Tuple[str, List[Any]], request_ids: List[int]) -> None:
    tags, values = arguments
    call = CallFrame(int(Op.CALL), 7, tags)
    for request_id in request_ids:
        (frame,) = FrameReader().feed(bytes(call.fill(request_id, values)))
        assert (frame.op, frame.request_id, frame.meta) == (int(Op.CALL), request_id, {})
        assert decode_call(frame.payload) == (7, tags, tuple(values))


@given(
    st.one_of(st.none(), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(allow_nan=False), st.booleans().map(int)),
    _REQUEST_IDS,
)
def test_result_frame_reads_as_the_general_path(value: Any, request_id: int) -> None:
    (frame,) = encode_frame(int(Op.RESULT), request_id, None, encode_result(value))
    assert len(frame) == RESULT_FRAME_SIZE
    assert read_result_frame(frame, request_id) == value
    assert read_result_frame(bytearray(frame), request_id) == value


def test_other_frames_are_left_to_the_general_path() -> None:
    result = encode_result(5)
    others = [
        encode_frame(int(Op.RESULT), 4, None, result)[0],  # another request's
        encode_frame(int(Op.ERROR), 3, None, result)[0],
        encode_frame(int(Op.SESSION_END), 3, None, result)[0],
        b"XD" + encode_frame(int(Op.RESULT), 3, None, result)[0][2:],
        encode_frame(int(Op.RESULT), 3, None, b"?" + bytes(8))[0],  # a tag no board sends
    ]
    for frame in others:
        assert read_result_frame(frame, 3) is NOT_A_RESULT
    assert read_result_frame(encode_frame(int(Op.RESULT), 3, None, result)[0], 3) == 5


@given(st.integers(0, 0xFFFFFFFF), _arguments(), _REQUEST_IDS)
def test_the_board_reads_a_call_frame_as_the_general_path(
    function_id: int, arguments: Tuple[str, List[Any]], request_id: int
) -> None:
    tags, values = arguments
    frame = b"".join(encode_frame(int(Op.CALL), request_id, None, encode_call(function_id, tags, values)))
    buffer = bytearray(frame) + b"\0" * 64  # a receive buffer holds more than one read brought
    assert read_call_frame(buffer, len(frame)) == (request_id, function_id, tags, tuple(values))


def test_frames_of_one_size_with_other_tags_are_each_read_with_their_own() -> None:
    """The board reads a frame with the layout of the last frame of its size, checking that guess: frames of the
    same size and other tags, or a CALL of that size with other header fields, are each read as they are."""
    frames = [(5, "ai", [1, 2]), (6, "ia", [-3, 4]), (7, "ff", [0.5, -1.5]), (8, "ai", [9, 10]), (9, "an", [11, 0])]
    for request_id, tags, values in frames:
        frame = b"".join(encode_frame(int(Op.CALL), request_id, None, encode_call(3, tags, values)))
        assert read_call_frame(bytearray(frame), len(frame)) == (request_id, 3, tags, tuple(values))
    frame = bytearray(b"".join(encode_frame(int(Op.CALL), 10, None, encode_call(3, "ai", [1, 2]))))
    frame[3] = int(Op.PIPELINED_CALL)
    assert read_call_frame(frame, len(frame)) is None
    frame[3], frame[24] = int(Op.CALL), 3  # an argument count the tags disagree with
    assert read_call_frame(frame, len(frame)) is None


def test_anything_but_one_whole_call_is_left_to_the_general_reader() -> None:
    def call(request_id: int, meta: Any = None, op: Op = Op.CALL, tags: str = "ai") -> bytes:
        return b"".join(encode_frame(int(op), request_id, meta, encode_call(3, tags, [1, 2][: len(tags)])))

    whole = call(5)
    others = [
        whole[:-1],  # part of a frame
        whole + call(6),  # two frames in one read
        call(5, {"release": [1]}),  # metadata
        call(5, op=Op.PIPELINED_CALL),
        b"XD" + whole[2:],
        whole[:24] + b"\x01\x00" + whole[26:],  # an argument count the payload's length disagrees with
        call(5, tags="uu")[:26] + b"??" + call(5, tags="uu")[28:],  # tags no client sends
    ]
    for frame in others:
        assert read_call_frame(bytearray(frame), len(frame)) is None
    assert read_call_frame(bytearray(whole), len(whole)) == (5, 3, "ai", (1, 2))


@given(
    st.lists(
        st.one_of(st.none(), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(allow_nan=False), st.booleans()),
        max_size=4,
    ),
    _REQUEST_IDS,
)
def test_a_result_frame_filled_in_place_is_the_general_encoding(values: List[Any], request_id: int) -> None:
    result = ResultFrame()
    for value in values:  # one buffer, filled call after call
        assert (
            bytes(result.fill(request_id, value))
            == encode_frame(int(Op.RESULT), request_id, None, encode_result(value))[0]
        )
