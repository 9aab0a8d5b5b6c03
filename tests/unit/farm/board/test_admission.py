"""farm.board.admission: handshakes of real connections on 127.0.0.1, driven by this test's own selector loop.

The supervisor is replaced by a recorder of the sessions it is asked to start, so that no process is forked.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from typing import Iterator, List, NamedTuple, Optional

import pytest

from farm.board.admission import Admission, busy_reason
from farm.board.config import BoardConfig
from farm.board.session import SessionStatus
from farm.board.supervisor import ActiveSession
from farm.protocol.handshake import CODE_BUSY, CODE_MISMATCH, CODE_SUCCESS, encode_hello

DEADLINE = 10.0  # seconds any one exchange may take here


class Started(NamedTuple):
    peer: str
    timeout: Optional[float]
    leftover: bytes
    bytes_sent: int


class Sessions:
    """What the supervisor is asked: the running session (``active``), and each start."""

    def __init__(self) -> None:
        self.active: Optional[ActiveSession] = None
        self.started: List[Started] = []

    def start(
        self, sock: socket.socket, peer: str, timeout: Optional[float], leftover: bytes, bytes_sent: int
    ) -> None:
        self.started.append(Started(peer, timeout, leftover, bytes_sent))
        sock.close()


class Board(NamedTuple):
    admission: Admission
    sessions: Sessions
    selector: selectors.BaseSelector
    address: tuple


@pytest.fixture
def board() -> Iterator[Board]:
    yield from _board(BoardConfig(key="rasp4", max_pending_per_address=2))


def _board(config: BoardConfig) -> Iterator[Board]:
    listener = socket.create_server(("127.0.0.1", 0))
    selector = selectors.DefaultSelector()
    sessions = Sessions()
    port = listener.getsockname()[1]
    admission = Admission(config, port, listener, selector, None, sessions)  # type: ignore[arg-type]
    admission.listen()
    try:
        yield Board(admission, sessions, selector, listener.getsockname())
    finally:
        admission.close()
        selector.close()
        listener.close()


def turn(board: Board) -> None:
    """One turn of the daemon's loop, as far as admission goes."""
    for key, _ in board.selector.select(0.05):
        if key.data is None:
            board.admission.accept()
        else:
            board.admission.on_handshake_data(key.data)
    board.admission.tick(time.monotonic())


def reply_to(board: Board, client: socket.socket) -> bytes:
    """Turn the loop until the board answered ``client`` and closed or handed on the connection."""
    client.settimeout(0)
    data = b""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        turn(board)
        try:
            piece = client.recv(4096)
        except BlockingIOError:
            continue
        if not piece:
            return data
        data += piece
    raise AssertionError("no end of the reply within %g s; got %r" % (DEADLINE, data))


def code(reply: bytes) -> int:
    return struct.unpack_from("<i", reply)[0]


def test_a_client_of_this_board_starts_a_session_with_the_bytes_after_its_hello(board: Board) -> None:
    with socket.create_connection(board.address) as client:
        hello = encode_hello("client", "rasp4", 30)
        client.sendall(hello[:5])
        turn(board)
        client.sendall(hello[5:] + b"first frame")
        reply = reply_to(board, client)
    assert code(reply) == CODE_SUCCESS and reply.endswith(b"server:rasp4")
    [started] = board.sessions.started
    assert started.timeout == 30.0 and started.leftover == b"first frame" and started.bytes_sent == len(reply)


def test_another_key_is_a_mismatch(board: Board) -> None:
    with socket.create_connection(board.address) as client:
        client.sendall(encode_hello("client", "jetson"))
        assert code(reply_to(board, client)) == CODE_MISMATCH
    assert board.sessions.started == []


def test_a_busy_board_says_why(board: Board) -> None:
    with socket.socket() as running, socket.create_connection(board.address) as client:
        board.sessions.active = ActiveSession(running, "127.0.0.9:7", "/nonexistent", None, SessionStatus())
        client.sendall(encode_hello("client", "rasp4"))
        reply = reply_to(board, client)
    assert code(reply) == CODE_BUSY and b"busy: it serves a session from 127.0.0.9:7" in reply
    assert board.sessions.started == []


def test_a_bad_timeout_is_a_bad_handshake(board: Board) -> None:
    with socket.create_connection(board.address) as client:
        text = b"client:rasp4 -timeout=soon"
        client.sendall(struct.pack("<ii", 0xFF271, len(text)) + text)
        assert reply_to(board, client) == b""  # closed without a reply
    assert board.sessions.started == []


def test_a_silent_connection_is_closed_at_its_deadline_and_the_gate_bounds_an_address(board: Board) -> None:
    clients = [socket.create_connection(board.address, timeout=DEADLINE) for _ in range(3)]
    try:
        for _ in range(5):
            turn(board)
        assert clients[2].recv(1) == b""  # the third from one address is refused at accept
        deadline = board.admission.next_deadline()
        assert deadline is not None and deadline <= time.monotonic() + BoardConfig().handshake_timeout
        board.admission.tick(deadline + 1.0)  # both deadlines passed
        assert [client.recv(1) for client in clients[:2]] == [b"", b""]
        assert board.admission.next_deadline() is None
    finally:
        for client in clients:
            client.close()


def test_busy_reason() -> None:
    with socket.socket() as running:
        active = ActiveSession(running, "10.0.0.2:4000", "/nonexistent", None, SessionStatus(), now=50.0)
    assert busy_reason("rasp4", "0.0.0.0", 9090, active, 62.25) == (
        "board 'rasp4' at 0.0.0.0:9090 is busy: it serves a session from 10.0.0.2:4000 since 12.2 s"
    )
