"""The tracker's connection object (farm.tracker.server.Peer): its name and its bound on unread replies."""

from __future__ import annotations

from typing import Any, List

from farm.protocol.tracker import Code, encode_message
from farm.tracker.server import Peer


class StandInWriter:
    """Just enough of a StreamWriter for Peer: its address, a record of what was written, its buffer."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.address = (host, port)
        self.written: List[bytes] = []
        self.transport = self
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.address if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:  # nothing is ever read: everything written stays queued
        return sum(len(data) for data in self.written)

    def abort(self) -> None:
        self.aborted = True


def test_peer_from_its_writer() -> None:
    writer = StandInWriter(4242)
    peer = Peer(7, writer)  # type: ignore[arg-type]
    assert (peer.id, peer.name, peer.address) == (7, "127.0.0.1:4242", ("127.0.0.1", 4242))
    peer.send([Code.PING])
    assert writer.written == [encode_message([1])]
    peer.closed = True
    peer.send([Code.PING])
    assert len(writer.written) == 1


def test_a_peer_that_does_not_read_is_dropped_past_its_output_bound() -> None:
    writer = StandInWriter(4242)
    peer = Peer(1, writer, max_output=100)  # type: ignore[arg-type]
    peer.send("x" * 90)
    assert not peer.closed and not writer.aborted
    peer.send("y")
    assert peer.closed and writer.aborted
    peer.send("z")
    assert len(writer.written) == 2
