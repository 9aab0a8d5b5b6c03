"""A client's call on its fast path and every reply it leaves to the general reader, against a scripted socket."""

from __future__ import annotations

import socket
from typing import Any, List, Optional

import pytest

from farm.client.session import RemoteFunction, RemoteSession
from farm.errors import RemoteError, SessionLostError
from farm.protocol.calls import decode_call, encode_result
from farm.protocol.framing import FrameReader, encode_frame
from farm.protocol.ops import Op


class ScriptedSocket:
    """A socket whose replies are scripted: ``recv_into`` hands out the scripted bytes ``step`` at a time."""

    def __init__(self, replies: bytes, step: Optional[int] = None) -> None:
        self.replies = bytearray(replies)
        self.step = step
        self.sent = FrameReader()

    def sendall(self, data: Any) -> None:
        self.sent.push(data)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        count = min(nbytes or len(buffer), len(buffer), self.step or len(self.replies), len(self.replies))
        buffer[:count] = self.replies[:count]
        del self.replies[:count]
        return count

    def settimeout(self, timeout: Optional[float]) -> None:
        pass

    def setsockopt(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _result(request_id: int, value: Any, meta: Optional[dict] = None) -> bytes:
    return b"".join(encode_frame(int(Op.RESULT), request_id, meta, encode_result(value)))


def _session(replies: bytes, step: Optional[int] = None, leftover: bytes = b"") -> RemoteSession:
    ends = socket.socketpair()
    ends[1].close()
    session = RemoteSession(ends[0], "board", 1, "key", leftover=leftover)
    session._conn.sock = ScriptedSocket(replies, step)  # type: ignore[assignment]
    return session


def _sent(session: RemoteSession) -> List[Any]:
    reader = session._conn.sock.sent  # type: ignore[attr-defined]
    return [(frame.op, frame.request_id, frame.meta, decode_call(frame.payload)) for frame in reader.feed(b"")]


def test_calls_on_the_fast_path_send_the_general_frame() -> None:
    session = _session(_result(1, None) + _result(2, 7) + _result(3, 2.5))
    function = RemoteFunction(session, 5, "f", None)
    assert [function(), function(1, 2), function(1.0)] == [None, 7, 2.5]
    assert _sent(session) == [
        (int(Op.CALL), 1, {}, (5, "", ())),
        (int(Op.CALL), 2, {}, (5, "ii", (1, 2))),
        (int(Op.CALL), 3, {}, (5, "f", (1.0,))),
    ]


@pytest.mark.parametrize("step", [1, 7, 28])
def test_a_reply_in_pieces_is_read_whole(step: int) -> None:
    session = _session(_result(1, 3) + _result(2, 4), step)
    function = RemoteFunction(session, 5, "f", None)
    assert (function(), function()) == (3, 4)


def test_a_result_with_metadata_or_after_leftover_bytes_is_read_by_the_general_reader() -> None:
    session = _session(_result(2, 4, {"note": 1}), leftover=_result(1, 3))
    function = RemoteFunction(session, 5, "f", None)
    assert (function(), function()) == (3, 4)


def test_an_error_reply_raises_and_the_session_goes_on() -> None:
    error = b"".join(encode_frame(int(Op.ERROR), 1, {"type": "ValueError", "message": "no"}))
    session = _session(error + _result(2, 1))
    function = RemoteFunction(session, 5, "f", None)
    with pytest.raises(RemoteError, match="ValueError: no"):
        function()
    assert function() == 1


def test_a_bad_result_or_a_closed_connection_loses_the_session() -> None:
    bad = b"".join(encode_frame(int(Op.RESULT), 1, None, b"?" + bytes(8)))
    with pytest.raises(SessionLostError, match="makes no sense"):
        RemoteFunction(_session(bad), 5, "f", None)()
    with pytest.raises(SessionLostError, match="connection closed"):
        RemoteFunction(_session(b""), 5, "f", None)()


def test_releases_ride_on_the_next_call() -> None:
    session = _session(_result(1, None) + _result(2, None))
    function = RemoteFunction(session, 5, "f", None)
    session._release_later(9)
    function()
    function()
    assert [meta for _op, _id, meta, _call in _sent(session)] == [{"release": [9]}, {}]
