"""farm.board.session: path rules, quota messages and the dispatch of requests, over a socket pair, in one process."""

from __future__ import annotations

import ctypes
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import pytest

from farm.board.session import (
    Session,
    SessionStatus,
    _Function,
    _settled_tags,
    directory_usage,
    megabytes,
    over_files_message,
    over_quota_message,
)
from farm.errors import PathEscapeError
from farm.net.transport import FramedSocket
from farm.protocol.calls import encode_call, encode_result
from farm.protocol.ops import Op
from farm.signature import parse_signature

MB = 1 << 20


class Pair(NamedTuple):
    session: Session
    client: FramedSocket


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    yield from _pair(tmp_path / "session", quota=0)


def _pair(root: Path, quota: int) -> Iterator[Pair]:
    root.mkdir()
    ours, theirs = socket.socketpair()
    session = Session(FramedSocket(ours), str(root), key="rasp4", name="b1", quota=quota)
    try:
        yield Pair(session, FramedSocket(theirs))
    finally:
        ours.close()
        theirs.close()


def ask(pair: Pair, op: int, meta: Optional[dict] = None, payload: bytes = b"") -> tuple:
    """Send one request, let the session handle it: (whether it goes on, the reply frame)."""
    pair.client.send(op, 7, meta, payload)
    goes_on = pair.session.handle(pair.session.conn.recv())
    return goes_on, pair.client.recv()


# --- paths -----------------------------------------------------------------------------------------------------------


def test_names_resolve_inside_the_session_directory(pair: Pair) -> None:
    root = pair.session.root
    assert pair.session.resolve("a/b.so") == os.path.join(root, "a", "b.so")
    assert pair.session.resolve("a/../c") == os.path.join(root, "c")
    assert pair.session.resolve(".") == root


@pytest.mark.parametrize(
    "name, says",
    [
        ("", "is not a non-empty string"),
        (None, "is not a non-empty string"),
        ("a\0b", "is not a non-empty string"),
        ("/etc/passwd", "is an absolute path"),
        ("../outside", "points outside the session directory"),
        ("a/../../outside", "points outside the session directory"),
    ],
)
def test_names_that_leave_are_refused(pair: Pair, name: Any, says: str) -> None:
    with pytest.raises(PathEscapeError, match=says):
        pair.session.resolve(name)


def test_a_link_out_is_refused_when_followed_and_is_itself_when_not(pair: Pair, tmp_path: Path) -> None:
    os.symlink(str(tmp_path), os.path.join(pair.session.root, "out"))
    with pytest.raises(PathEscapeError, match="points outside"):
        pair.session.resolve("out")
    assert pair.session.resolve("out", follow=False) == os.path.join(pair.session.root, "out")


# --- quotas ----------------------------------------------------------------------------------------------------------


def test_quota_messages() -> None:
    assert megabytes(3 * MB) == "3" and megabytes(3 * MB + MB // 2) == "3.5"
    assert over_quota_message(9 * MB, 8 * MB) == "the session's directory holds 9 MB, over its quota of 8 MB"
    assert over_files_message(10) == "the session's directory holds more than its quota of 10 files and directories"


def test_directory_usage_counts_a_hard_link_once_and_stops_past_the_bound(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100)
    os.link(str(tmp_path / "d" / "f"), str(tmp_path / "g"))
    (tmp_path / "h").write_bytes(b"y" * 10)
    assert directory_usage(str(tmp_path)) == (110, 4)
    assert directory_usage(str(tmp_path), max_entries=2).entries == 3


def test_an_upload_over_the_quota_is_refused_and_the_session_goes_on(tmp_path: Path) -> None:
    for pair in _pair(tmp_path / "session", quota=1000):
        goes_on, reply = ask(pair, Op.UPLOAD, {"name": "small"}, b"s" * 600)
        assert goes_on and reply.op == Op.RESULT and reply.meta == {"name": "small", "size": 600}
        goes_on, reply = ask(pair, Op.UPLOAD, {"name": "big"}, b"b" * 600)
        assert goes_on and reply.op == Op.ERROR and reply.meta["type"] == "QuotaError"
        assert "over its quota of 0.0 MB" in reply.meta["message"]
        goes_on, reply = ask(pair, Op.UPLOAD, {"name": "small"}, b"r" * 900)  # replaces the file of its name
        assert goes_on and reply.op == Op.RESULT
        assert sorted(os.listdir(pair.session.root)) == ["small"]


# --- dispatch --------------------------------------------------------------------------------------------------------


def test_files_go_up_come_down_are_listed_and_removed(pair: Pair) -> None:
    assert ask(pair, Op.UPLOAD, {"name": "lib/k.so"}, b"ELF")[1].meta == {"name": "lib/k.so", "size": 3}
    down = ask(pair, Op.DOWNLOAD, {"name": "lib/k.so"})[1]
    assert (down.meta, bytes(down.payload)) == ({"size": 3}, b"ELF")
    assert json.loads(bytes(ask(pair, Op.LISTDIR, {"name": "lib"})[1].payload)) == ["k.so"]
    assert ask(pair, Op.REMOVE, {"name": "lib"})[1].op == Op.RESULT
    assert os.listdir(pair.session.root) == []


def test_a_ping_and_the_system_info(pair: Pair) -> None:
    goes_on, pong = ask(pair, Op.PING)
    assert goes_on and (pong.op, pong.request_id, bytes(pong.payload)) == (Op.RESULT, 7, b"")
    info = ask(pair, Op.SYSTEM_INFO)[1]
    assert info.op == Op.RESULT and info.meta["key"] == "rasp4"
    assert pair.session.status.state == SessionStatus.IDLE


def test_an_error_is_a_reply_and_the_session_goes_on(pair: Pair) -> None:
    goes_on, reply = ask(pair, Op.DOWNLOAD, {"name": "../etc/passwd"})
    assert goes_on and reply.op == Op.ERROR and reply.meta["type"] == "PathEscapeError"
    assert reply.meta["traceback"] == ""  # the board's own errors carry no traceback


def test_close_and_an_unknown_operation_end_the_session(pair: Pair) -> None:
    goes_on, reply = ask(pair, 99)
    assert not goes_on and reply.op == Op.ERROR and "unknown operation 99" in reply.meta["message"]
    goes_on, reply = ask(pair, Op.CLOSE)
    assert not goes_on and reply.op == Op.RESULT


# --- calls -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signature", "settled"),
    [
        ("int noop(void)", ""),
        ("int64_t f(int64_t a, double b, bool c, long long d)", "ifii"),
        ("void f(float *x)", None),  # an array is looked up
        ("void f(int32_t x)", None),  # a value is range-checked
        ("void f(uint64_t x)", None),  # a negative int64 is out of its range
        (None, None),  # values are converted as their tags say
    ],
)
def test_the_calls_whose_values_go_unchecked_are_those_the_tags_settle(signature: Optional[str], settled: Any) -> None:
    assert _settled_tags(parse_signature(signature) if signature else None) == settled


def test_a_call_is_checked_unless_its_tags_settle_it(pair: Pair) -> None:
    """abs() takes an int: a value past int32 is refused on the board; labs() takes a long (int64 here): any int64
    value goes through as it is."""
    libc = ctypes.CDLL(None)
    for function_id, name, text in [(1, "abs", "int abs(int x)"), (2, "labs", "long labs(long x)")]:
        signature = parse_signature(text)
        cfunc = getattr(libc, name)
        cfunc.argtypes, cfunc.restype = [param.type.ctype for param in signature.params], signature.restype.ctype
        activity = SessionStatus.encode("running " + name)
        pair.session._functions[function_id] = _Function(cfunc, activity, signature, name, _settled_tags(signature))
    reply = ask(pair, Op.CALL, None, encode_call(1, "i", [-(1 << 31) - 1]))[1]
    assert reply.op == Op.ERROR and "outside the range of int" in reply.meta["message"]
    assert bytes(ask(pair, Op.CALL, None, encode_call(1, "i", [-7]))[1].payload) == encode_result(7)
    reply = ask(pair, Op.CALL, None, encode_call(2, "i", [-(1 << 40)]))[1]
    assert bytes(reply.payload) == encode_result(1 << 40)
