"""farm.net.transport: whole frames over a socket pair, gathered sends, and the end of a stream."""

from __future__ import annotations

import socket
import threading
from typing import Iterator, Tuple

import pytest

from farm.net.transport import ConnectionClosed, FramedSocket, send_buffers, tune
from farm.protocol.framing import encode_frame
from farm.protocol.ops import Op

DEADLINE = 10.0


@pytest.fixture
def pair() -> Iterator[Tuple[FramedSocket, FramedSocket]]:
    a, b = socket.socketpair()
    for sock in (a, b):
        sock.settimeout(DEADLINE)
    yield FramedSocket(a), FramedSocket(b)
    a.close()
    b.close()


def test_a_frame_goes_across_whole(pair: Tuple[FramedSocket, FramedSocket]) -> None:
    sender, receiver = pair
    sender.send(Op.CALL, 5, {"name": "vadd"}, b"\x01\x02\x03")
    frame = receiver.recv()
    assert (frame.op, frame.request_id, frame.meta, bytes(frame.payload)) == (Op.CALL, 5, {"name": "vadd"}, b"\1\2\3")


def test_frames_larger_than_the_socket_buffers_arrive_in_order(pair: Tuple[FramedSocket, FramedSocket]) -> None:
    sender, receiver = pair
    big = bytes(range(256)) * (1 << 13)  # 2 MB: the sender blocks until the receiver reads

    def send_three() -> None:
        for n in range(3):
            sender.send(Op.UPLOAD, n, {"n": n}, big)

    writer = threading.Thread(target=send_three)
    writer.start()
    try:
        frames = [receiver.recv() for _ in range(3)]
    finally:
        writer.join(DEADLINE)
    assert [frame.meta for frame in frames] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(bytes(frame.payload) == big for frame in frames)


def test_bytes_that_came_before_are_read_first() -> None:
    a, b = socket.socketpair()
    with a, b:
        first = b"".join(bytes(part) for part in encode_frame(Op.PING, 1, None))
        a.sendall(b"".join(bytes(part) for part in encode_frame(Op.PING, 2, None)))
        receiver = FramedSocket(b, initial=first)
        assert [receiver.recv().request_id, receiver.recv().request_id] == [1, 2]


def test_send_buffers_gathers_parts(pair: Tuple[FramedSocket, FramedSocket]) -> None:
    sender, receiver = pair
    send_buffers(sender.sock, [b"ab", memoryview(b"cdef"), bytearray(b"g")])
    assert receiver.sock.recv(16) == b"abcdefg"


def test_the_end_of_the_stream_between_frames_and_inside_one(pair: Tuple[FramedSocket, FramedSocket]) -> None:
    sender, receiver = pair
    sender.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionClosed) as clean:
        receiver.recv()
    assert not clean.value.partial and str(clean.value) == "connection closed"
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"".join(bytes(part) for part in encode_frame(Op.PING, 1, {"x": 1}))[:-1])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionClosed, match="mid-frame") as cut:
            FramedSocket(b).recv()
        assert cut.value.partial


def test_tune_sets_no_delay_and_keepalive() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()) as sock:
        tune(sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


def test_close_twice_is_harmless(pair: Tuple[FramedSocket, FramedSocket]) -> None:
    sender, _ = pair
    sender.close()
    sender.close()
    assert sender.sock.fileno() == -1
