"""The compiled call path (farm/client/callpath.c) against a scripted board on the other end of a socket pair.

Its one promise: a call it takes sends exactly the frame the Python path would send, and returns what the
Python path would return; a call it does not take (arguments outside its plan) sends nothing and is left to the
Python path, whose checks and messages then apply.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import struct
import subprocess
import sysconfig
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from farm.client import callpath
from farm.client.session import RemoteArray, RemoteFunction, RemoteSession
from farm.errors import ArgumentError, RemoteError, SessionLostError
from farm.protocol.calls import NOT_A_RESULT, CallFrame, decode_result, encode_result
from farm.protocol.framing import encode_frame
from farm.protocol.ops import Op
from farm.signature import parse_signature

FUNCTION_ID = 5


@pytest.fixture(autouse=True)
def compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here is of the compiled path: it must be built (a test fails, never skips, without it)."""
    monkeypatch.delenv(callpath.ENV, raising=False)
    assert callpath.available(), "the compiled call path (farm.client._callpath) is not built"


class Board:
    """The board's end of a session's socket pair: replies are written before the call, requests read after."""

    def __init__(self) -> None:
        client, self.sock = socket.socketpair()
        bound = struct.pack("ll", 5, 0)  # a call that waits for a reply that never comes fails, and cannot hang
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
        self.session = RemoteSession(client, "board", 1, "key")
        self.sock.setblocking(False)

    def function(self, signature: Optional[str] = None) -> RemoteFunction:
        parsed = parse_signature(signature) if signature else None
        function = RemoteFunction(self.session, FUNCTION_ID, "f", parsed)
        assert function._path is not None
        return function

    def reply(self, request_id: int, value: Any, meta: Optional[dict] = None) -> None:
        self.sock.sendall(b"".join(encode_frame(int(Op.RESULT), request_id, meta, encode_result(value))))

    def received(self) -> bytes:
        try:
            return self.sock.recv(1 << 16)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        self.session._conn.close()
        self.sock.close()


@pytest.fixture
def board() -> Iterator[Board]:
    board = Board()
    yield board
    board.close()


def python_frame(function: RemoteFunction, request_id: int, args: Tuple[Any, ...]) -> bytes:
    """The CALL frame the Python path sends for ``args`` (ArgumentError where it refuses them)."""
    tags, values = function._arguments(args)
    return bytes(CallFrame(int(Op.CALL), FUNCTION_ID, tags).fill(request_id, values))


VADD = "void vadd(const float *a, const float *b, float *c, int64_t n)"


def test_a_call_sends_the_python_paths_frame_and_returns_the_result(board: Board) -> None:
    vadd = board.function(VADD)
    arrays = [RemoteArray(board.session, 10 + index, (4,), np.float32) for index in range(3)]
    board.reply(1, None)
    assert vadd(*arrays, 4) is None
    assert board.received() == python_frame(vadd, 1, (*arrays, 4))
    board.reply(2, None)
    assert vadd(*arrays, -(1 << 63)) is None  # the next request id, the lowest int64
    assert board.received() == python_frame(vadd, 2, (*arrays, -(1 << 63)))
    assert board.session._next_id == 3


@pytest.mark.parametrize(
    ("signature", "value", "expected"),
    [
        ("int64_t f(void)", -7, -7),
        ("uint64_t f(void)", (1 << 64) - 1, (1 << 64) - 1),
        ("double f(void)", -2.5, -2.5),
        ("bool f(void)", 2, True),
        ("bool f(void)", 0, False),
        ("bool f(void)", 0.5, True),
        ("void f(void)", None, None),
        (None, 3, 3),
    ],
)
def test_results_of_every_tag(board: Board, signature: Optional[str], value: Any, expected: Any) -> None:
    function = board.function(signature)
    board.reply(1, value)
    result = function()
    assert result == expected and type(result) is type(expected)
    assert decode_result(encode_result(value)) == value  # the Python path's reading of the same payload


def test_arguments_outside_the_plan_send_nothing_and_get_the_python_paths_error(board: Board) -> None:
    other = Board()
    try:
        vadd = board.function(VADD)
        a, b, c = (RemoteArray(board.session, index, (4,), np.float32) for index in range(3))
        doubles = RemoteArray(board.session, 9, (4,), np.float64)
        foreign = RemoteArray(other.session, 1, (4,), np.float32)
        refused = [
            ((a, b, c), "takes 4 arguments"),
            ((a, b, c, 4.0), "expects an integer"),
            ((a, b, doubles, 4), "float64"),
            ((a, foreign, c, 4), "another session"),
            ((a, np.zeros(4, np.float32), c, 4), "host numpy array"),
            ((a, b, c, "4"), "str"),
            ((a, b, c, 1 << 63), "outside the range"),
        ]
        for args, message in refused:
            assert vadd._path.call(1, args) is callpath.BAIL  # type: ignore[union-attr]
            with pytest.raises(ArgumentError, match=message):
                vadd(*args)
        assert board.received() == b""
        assert board.session._next_id == 1
    finally:
        other.close()


def test_arguments_the_plan_leaves_to_the_python_path_are_sent_by_it(board: Board) -> None:
    """Values the compiled path does not take but the Python path does: numpy scalars, 64-bit unsigned values
    past int64, more arguments than a plan-less call of the compiled path carries."""
    scale = board.function("void scale(float *x, uint64_t n, double factor)")
    x = RemoteArray(board.session, 3, (4,), np.float32)
    for args in [(x, np.uint32(4), np.float32(0.5)), (x, (1 << 64) - 1, 2.0)]:
        assert scale._path.call(9, args) is callpath.BAIL  # type: ignore[union-attr]
        request_id = board.session._next_id
        board.reply(request_id, None)
        assert scale(*args) is None
        assert board.received() == python_frame(scale, request_id, args)


@pytest.mark.parametrize("ctype", ["int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t", "uint32_t", "int64_t",
                                   "uint64_t", "bool", "double"])  # fmt: skip
def test_integers_at_the_edges_of_their_c_type(board: Board, ctype: str) -> None:
    """Each value at and past the ends of the parameter's type: sent as the Python path sends it, or refused."""
    function = board.function("void f(%s x)" % ctype)
    bits = {"bool": 64, "double": 64}.get(ctype) or int("".join(filter(str.isdigit, ctype)))
    low, high = (0, (1 << bits) - 1) if ctype.startswith("u") else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    for value in (low - 1, low, low + 1, high - 1, high, high + 1):
        try:
            expected: Optional[bytes] = python_frame(function, 1, (value,))
        except ArgumentError:
            expected = None
        taken = expected is not None and -(1 << 63) <= value < (1 << 63)  # int64: the compiled path's values
        if taken:
            board.reply(1, None)
        result = function._path.call(1, (value,))  # type: ignore[union-attr]
        assert (result, board.received()) == ((None, expected) if taken else (callpath.BAIL, b"")), value


def test_a_reply_other_than_the_plain_result_goes_to_the_general_reader(board: Board) -> None:
    function = board.function("int64_t f(int64_t x)")
    board.reply(1, 5, meta={"note": "metadata makes it the general reader's"})
    assert function(1) == 5
    board.sock.sendall(b"".join(encode_frame(int(Op.ERROR), 2, {"type": "ValueError", "message": "no"})))
    with pytest.raises(RemoteError, match="ValueError: no"):
        function(2)
    assert not board.session.closed
    board.reply(3, 8)
    assert function(3) == 8
    assert board.session._next_id == 4


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (b"XD" + bytes(27), "bad frame magic"),  # not this protocol
        (b"".join(encode_frame(int(Op.RESULT), 1, None, b"?" + bytes(8))), "makes no sense"),  # an unknown tag
        (b"".join(encode_frame(int(Op.RESULT), 9, None, encode_result(1))), "unexpected frame 64 for request 9"),
        (struct.pack("<2sBBIIQ", b"RD", 1, int(Op.RESULT), 1, 0, 1 << 60) + bytes(9), "exceeds the limit"),
    ],
)
def test_a_hostile_reply_loses_the_session_and_is_never_a_value(board: Board, reply: bytes, says: str) -> None:
    """What a hostile board answers a call on the compiled path goes to the general reader and its limits: the
    session is given up with the reason, and nothing of the reply is returned as the call's value."""
    function = board.function("int64_t f(void)")
    board.sock.sendall(reply)
    board.sock.shutdown(socket.SHUT_WR)  # a reader that waited for more would see the end, not hang
    with pytest.raises(SessionLostError, match=says):
        function()
    assert board.session._lost is not None


def test_a_reply_in_two_pieces_is_read_whole(board: Board) -> None:
    function = board.function("double f(void)")
    reply = b"".join(encode_frame(int(Op.RESULT), 1, None, encode_result(1.5)))
    board.sock.sendall(reply[:7])
    path = function._path
    assert path is not None
    assert path.call(1, ()) is NOT_A_RESULT and path.received == 7 and path.received_bytes() == reply[:7]
    board.sock.sendall(reply[7:])
    assert board.session._reply_after(1, path.received_bytes()).payload == encode_result(1.5)


def test_a_closed_connection_loses_the_session(board: Board) -> None:
    function = board.function("int f(void)")
    board.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(SessionLostError, match="lost while waiting for a reply"):
        function()
    with pytest.raises(SessionLostError):
        function()  # the session stays lost: the compiled path is not taken on a lost session


def test_a_failed_send_says_so(board: Board) -> None:
    function = board.function("int f(void)")
    board.sock.close()
    with pytest.raises(SessionLostError, match="lost while sending a request"):
        function()


def test_a_closed_socket_is_not_written_through_the_number_it_gave_up(board: Board) -> None:
    """The compiled path asks the socket for its descriptor at each call: once closed, whatever took its number
    next (here a pipe) gets nothing, and the call fails with EBADF."""
    path = board.function("int f(void)")._path
    assert path is not None
    board.reply(1, 0)
    assert path.call(1, ()) == 0 and board.received()  # a call on the open socket first
    client = board.session._conn.sock
    number = client.fileno()
    read_end, write_end = os.pipe()
    client.close()
    os.dup2(write_end, number)  # the socket's old number now writes into the pipe
    try:
        with pytest.raises(OSError) as raised:
            path.call(1, ())
        assert raised.value.errno == errno.EBADF
        os.set_blocking(read_end, False)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 64)
    finally:
        for descriptor in (number, read_end, write_end):
            os.close(descriptor)


def test_a_board_that_goes_silent_past_the_session_timeout_is_named(board: Board) -> None:
    client = board.session._conn.sock
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 50_000))
    board.session.silence_limit = 1  # as a session with a session timeout sets it (SO_RCVTIMEO, here 50 ms)
    board.session.session_timeout = 0.5
    with pytest.raises(SessionLostError, match="went silent while waiting for a reply"):
        board.function("int f(void)")()


def test_a_signal_during_the_wait_runs_its_handler_and_the_call_goes_on(board: Board) -> None:
    """A handler that returns (here: the one that makes the board answer) lets the receive go on."""
    function = board.function("int64_t f(void)")
    previous = signal.signal(signal.SIGALRM, lambda *_: board.reply(1, 42))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert function() == 42
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_an_interrupt_during_the_wait_abandons_the_session(board: Board) -> None:
    function = board.function("int64_t f(void)")

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            function()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    with pytest.raises(SessionLostError, match="abandoned in the middle of a request"):
        function()


def test_a_session_with_something_else_to_do_first_takes_the_python_path(board: Board) -> None:
    """Arrays to release ride on the next request, which the Python path sends."""
    function = board.function("int f(void)")
    board.session._release_later(77)
    board.reply(1, 0)
    assert function() == 0
    assert b"release" in board.received()
    board.reply(2, 0)
    assert function() == 0
    assert b"release" not in board.received()


@pytest.mark.parametrize("compiler", ["cc", "clang-14"])
def test_the_source_builds_clean_with_every_warning_as_an_error(compiler: str, tmp_path: Path) -> None:
    """As the native board's sources do: C11, -Wall -Wextra -Werror, with GCC and with clang (which CI installs)."""
    assert shutil.which(compiler), "%s is not installed" % compiler
    source = Path(callpath.__file__).with_name("callpath.c")
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC", "-c", "-o", str(tmp_path / "callpath.o")]
    command = [compiler, *flags, "-I", sysconfig.get_paths()["include"], str(source)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr


def test_the_compiled_path_can_be_turned_off(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(callpath.ENV, "0")
    assert RemoteFunction(board.session, FUNCTION_ID, "f", None)._path is None


# --- the compiled path against the Python path, on arguments of every kind --------------------------------

PARAMETER_TYPES = ["const float *", "double *", "void *", "int64_t", "uint64_t", "int8_t", "uint32_t", "size_t",
                   "double", "float", "bool"]  # fmt: skip
INT_EDGES = [0, 1, -1, 127, 128, -128, -129, 255, 256, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
             (1 << 63) - 1, 1 << 63, -(1 << 63), -(1 << 63) - 1, (1 << 64) - 1, 1 << 64]  # fmt: skip


def argument(board: Board, other: Board) -> st.SearchStrategy[Any]:
    arrays = st.builds(
        lambda mine, dtype, array_id: RemoteArray(board.session if mine else other.session, array_id, (2,), dtype),
        st.booleans(),
        st.sampled_from([np.float32, np.float64, np.int8]),
        st.integers(0, (1 << 64) - 1),
    )
    return st.one_of(
        arrays,
        st.sampled_from(INT_EDGES),
        st.integers(),
        st.floats(allow_nan=True),
        st.booleans(),
        st.none(),
        st.sampled_from([np.int32(3), np.float32(0.5), np.uint64(7), "1", b"1", [1]]),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_compiled_path_sends_what_the_python_path_sends_or_leaves_the_call_to_it(data: st.DataObject) -> None:
    board, other = Board(), Board()
    try:
        types = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(PARAMETER_TYPES), max_size=6)))
        signature = None if types is None else "int64_t f(%s)" % ", ".join(types)
        function = board.function(signature)
        count = len(types) if types is not None and data.draw(st.booleans()) else data.draw(st.integers(0, 6))
        args = tuple(data.draw(argument(board, other)) for _ in range(count))
        try:
            expected: Optional[bytes] = python_frame(function, 7, args)
        except ArgumentError:
            expected = None
        board.reply(7, -3)
        path = function._path
        assert path is not None
        result = path.call(7, args)
        sent: List[bytes] = [board.received()]
        event("left to the Python path" if result is callpath.BAIL else "sent")
        event("the Python path refuses" if expected is None else "the Python path sends")
        if result is callpath.BAIL:
            assert sent == [b""]
        else:
            assert expected is not None, "the compiled path sent a call the Python path refuses: %r" % (args,)
            assert (result, sent) == (-3, [expected])
    finally:
        board.close()
        other.close()
