"""The board's tracker link and proxy dialer, driven by a selector loop against a peer in this process."""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import pytest

from farm.board.registration import ProxyDialer, TrackerLink, UnusedMatchKey
from farm.net.credentials import Credentials
from farm.net.opening import open_socket
from farm.protocol.handshake import CODE_BUSY, CODE_SUCCESS
from farm.protocol.opening import Acceptor, HelloReceived, Kind, Opened
from farm.protocol.tracker import Code, MessageReader, encode_message

SECRET = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"
#: Long enough for the other thread under load; each wait ends sooner, on its condition.
PATIENCE = 10.0


class Peer:
    """A tracker or a proxy in a thread of this process: accepts one connection and runs ``serve`` on it."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(PATIENCE)
        self.address = self.listener.getsockname()[:2]
        self.errors: List[BaseException] = []
        self.done = threading.Event()
        self.conn: Optional[socket.socket] = None
        self._serve = serve
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.conn, _ = self.listener.accept()
            self._serve(self.conn)
        except BaseException as exc:  # handed to the test's thread
            self.errors.append(exc)
        finally:
            self.done.set()

    def close(self) -> None:
        self._thread.join(PATIENCE)
        if self.conn is not None:
            self.conn.close()
        self.listener.close()
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def selector() -> Iterator[selectors.BaseSelector]:
    with selectors.DefaultSelector() as chosen:
        yield chosen


def pump(selector: selectors.BaseSelector, side: Union[TrackerLink, ProxyDialer], until: Callable[[], bool]) -> None:
    """Run the board's loop for ``side`` until ``until()``; fail after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while not until():
        assert time.monotonic() < deadline, "the condition did not come true within %g s" % PATIENCE
        side.tick(time.monotonic())
        for key, mask in selector.select(0.05):
            key.data.on_event(mask)


def run(
    selector: selectors.BaseSelector, side: Union[TrackerLink, ProxyDialer], peer: Peer, until: Callable[[], bool]
) -> None:
    """:func:`pump` until ``until()``, then close ``side`` and ``peer`` (re-raising what the peer's thread raised)."""
    try:
        pump(selector, side, until)
    finally:
        side.close()
        peer.close()


def tracker(secret: Optional[bytes], received: List[Any]) -> Callable[[socket.socket], None]:
    """A tracker that takes the opening, then answers the board's first two messages with success."""

    def serve(conn: socket.socket) -> None:
        event = open_socket(conn, Acceptor(Kind.TRACKER, secret), PATIENCE)
        assert isinstance(event, Opened)
        messages = MessageReader(expect_magic=False)
        received.extend(messages.feed(event.leftover))
        conn.settimeout(PATIENCE)
        while len(received) < 2:
            received.extend(messages.feed(conn.recv(65536)))
        conn.sendall(encode_message(0) * len(received))

    return serve


@pytest.mark.parametrize("secret", [None, SECRET])
def test_the_link_opens_then_registers_and_offers_the_board(
    selector: selectors.BaseSelector, secret: Optional[bytes]
) -> None:
    received: List[Any] = []
    peer = Peer(tracker(secret, received))
    link = TrackerLink(peer.address, "rasp4", 9091, selector, name="b1", credentials=Credentials(secret))
    try:
        pump(selector, link, peer.done.is_set)
        accepts_offered = link.accepts(received[1][2][1]) if len(received) == 2 else False
        accepts_other = link.accepts("rasp4:other")
    finally:
        link.close()
        peer.close()
    info, put = received
    assert info == [Code.UPDATE_INFO, {"key": "server:rasp4", "addr": [None, 9091], "protocol": "farm", "name": "b1"}]
    assert put[:2] == [Code.PUT, "rasp4"] and put[2][0] == 9091
    assert accepts_offered and not accepts_other  # only the client presenting the match key offered


def test_a_tracker_with_another_secret_is_left(
    selector: selectors.BaseSelector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="farm.registration")
    refusals: List[BaseException] = []

    def serve(conn: socket.socket) -> None:
        try:
            open_socket(conn, Acceptor(Kind.TRACKER, OTHER), PATIENCE)
        except ConnectionError as exc:  # the board closes as soon as our proof does not check out
            refusals.append(exc)

    peer = Peer(serve)
    link = TrackerLink(peer.address, "rasp4", 9091, selector, credentials=Credentials(SECRET))
    run(selector, link, peer, lambda: "refused us" in caplog.text)
    assert "does not hold this farm's secret; reconnecting" in caplog.text
    assert link.matchkey is None and refusals


def proxy(secret: Optional[bytes], code: int, text: str, after: bytes) -> Callable[[socket.socket], None]:
    """A proxy that takes the board's opening and answers its hello with ``code`` and ``text``, then ``after``."""

    def serve(conn: socket.socket) -> None:
        opening = Acceptor(Kind.DATA, secret)
        event = open_socket(conn, opening, PATIENCE)
        assert isinstance(event, HelloReceived) and event.text == "server:rasp4 -protocol=farm"
        opening.answer(code, text)
        conn.sendall(opening.data_to_send() + after)

    return serve


@pytest.mark.parametrize("secret", [None, SECRET])
def test_the_dialer_hands_a_paired_connection_over_with_what_followed(
    selector: selectors.BaseSelector, secret: Optional[bytes]
) -> None:
    paired: List[Tuple[socket.socket, str, bytes, int]] = []
    peer = Peer(proxy(secret, CODE_SUCCESS, "client:rasp4 -timeout=5", b"FIRST"))
    dialer = ProxyDialer(peer.address, "rasp4", selector, lambda *args: paired.append(args), Credentials(secret))
    try:
        pump(selector, dialer, lambda: bool(paired))
        sock, text, leftover, sent = paired[0]
        with sock:
            sock.settimeout(PATIENCE)
            while len(leftover) < 5:  # what did not come with the reply is still in the socket
                leftover += sock.recv(5 - len(leftover))
    finally:
        dialer.close()
        peer.close()
    assert (text, leftover) == ("client:rasp4 -timeout=5", b"FIRST")
    hello = 8 + len("server:rasp4 -protocol=farm")
    assert sent == hello + (4 + 1 + 32 + 32 if secret else 0)  # the session counts on from there


def test_a_refusing_proxy_is_dialled_again(selector: selectors.BaseSelector, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="farm.registration")
    peer = Peer(proxy(None, CODE_BUSY, "no room", b""))
    dialer = ProxyDialer(peer.address, "rasp4", selector, lambda *args: pytest.fail("paired"))
    run(selector, dialer, peer, lambda: "dialling again" in caplog.text)
    assert "the proxy answered the handshake with code 0xFF274: no room" in caplog.text
    assert dialer.next_deadline() < float("inf")  # a next attempt is due


# --- a match key handed out and never used, with the clock passed in ---------------------------


def test_a_handed_out_key_counts_as_unused_only_past_the_timeout() -> None:
    watch = UnusedMatchKey(timeout=5.0)
    assert watch.polled(True, 0.0) is None  # still offered
    assert watch.polled(False, 1.0) is None  # handed out: the clock starts here
    assert watch.polled(False, 6.0) is None  # 5 s: not more than the timeout
    assert watch.polled(False, 6.5) == 5.5


def test_a_key_offered_again_restarts_the_watch() -> None:
    watch = UnusedMatchKey(timeout=5.0)
    assert watch.polled(False, 0.0) is None
    assert watch.polled(True, 4.0) is None  # pending again (the tracker took the key back)
    assert watch.polled(False, 8.0) is None  # handed out anew at 8 s
    assert watch.polled(False, 12.0) is None
    assert watch.polled(False, 13.5) == 5.5
