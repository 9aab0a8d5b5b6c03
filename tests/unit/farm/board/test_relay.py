"""farm.board.relay: the daemon's relay between a client's connection and the session process, over socket pairs.

The test plays the daemon's selector loop, the client (one socket pair) and the session process (the relay's
``child_end``); every wait is a bounded loop with a deadline.
"""

from __future__ import annotations

import selectors
import socket
import time
from typing import Callable, Iterator, NamedTuple

import pytest

from farm.board.relay import SessionRelay

DEADLINE = 10.0


class Relay(NamedTuple):
    relay: SessionRelay
    client: socket.socket  # the client's end of its connection
    child: socket.socket  # the session process's end
    selector: selectors.BaseSelector


@pytest.fixture
def wired() -> Iterator[Relay]:
    outer, client = socket.socketpair()
    selector = selectors.DefaultSelector()
    relay = SessionRelay(outer, selector)
    child = relay.child_end.dup()  # the session process's copy; the daemon closes its own, as after a fork
    relay.child_end.close()
    relay.register()
    for sock in (client, child):
        sock.setblocking(False)
    try:
        yield Relay(relay, client, child, selector)
    finally:
        for sock in (client, child):
            sock.close()
        selector.close()


def pump_until(wired: Relay, done: Callable[[], bool]) -> None:
    """Turn the daemon's loop, for the relay alone, until ``done()``."""
    deadline = time.monotonic() + DEADLINE
    while not done():
        assert time.monotonic() < deadline, "the relay did not get there within %g s" % DEADLINE
        for key, mask in wired.selector.select(0.05):
            key.data.on_event(mask)


def receiver(sock: socket.socket, into: bytearray) -> Callable[[], int]:
    """A function that reads what ``sock`` has now into ``into``; the bytes held so far (-1 at the end)."""

    def take() -> int:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return len(into)
        if not data:
            return -1
        into.extend(data)
        return len(into)

    return take


def test_bytes_go_both_ways_and_are_counted(wired: Relay) -> None:
    to_child, to_client = bytearray(), bytearray()
    wired.client.sendall(b"request")
    pump_until(wired, lambda: receiver(wired.child, to_child)() == 7)
    wired.child.sendall(b"reply!")
    pump_until(wired, lambda: receiver(wired.client, to_client)() == 6)
    assert (bytes(to_child), bytes(to_client), wired.relay.from_child) == (b"request", b"reply!", 6)


def test_more_than_the_buffers_hold_arrives_whole_in_order(wired: Relay) -> None:
    payload = bytes(range(256)) * (3 << 12)  # 3 MB
    got = bytearray()
    take = receiver(wired.child, got)
    sent = 0
    deadline = time.monotonic() + DEADLINE
    while len(got) < len(payload):
        assert time.monotonic() < deadline, "only %d of %d bytes arrived" % (len(got), len(payload))
        if sent < len(payload):
            try:
                sent += wired.client.send(payload[sent : sent + (1 << 16)])
            except BlockingIOError:
                pass
        for key, mask in wired.selector.select(0.01):
            key.data.on_event(mask)
        take()
    assert got == payload


def test_the_client_leaving_ends_the_stream_for_the_session(wired: Relay) -> None:
    wired.client.sendall(b"last words")
    wired.client.shutdown(socket.SHUT_WR)
    got = bytearray()
    pump_until(wired, lambda: receiver(wired.child, got)() == -1)
    assert got == b"last words" and wired.relay.client_gone


def test_finish_sends_what_the_session_left_then_the_notice_and_closes(wired: Relay) -> None:
    wired.child.sendall(b"half a reply")
    wired.child.close()  # the session process died
    wired.relay.drain_child()
    wired.relay.finish(b"<notice>", timeout=DEADLINE)
    wired.client.settimeout(DEADLINE)  # all of it is in the client's socket already, then the end
    got = b"".join(iter(lambda: wired.client.recv(1 << 16), b""))
    assert got == b"half a reply<notice>" and wired.relay.from_child == len(b"half a reply")
    assert not wired.selector.get_map()  # nothing left registered
