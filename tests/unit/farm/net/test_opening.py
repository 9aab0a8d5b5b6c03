"""The blocking driver of the opening, over socket pairs: what it sends, returns and raises."""

from __future__ import annotations

import socket
import threading
from typing import Callable, Iterator, List, Tuple

import pytest

from farm.net.opening import OpeningClosed, OpeningTimeout, open_socket
from farm.net.secret import prove_on_socket
from farm.protocol.auth import AuthError
from farm.protocol.handshake import CODE_BUSY, CODE_SUCCESS, Reply, encode_hello
from farm.protocol.opening import Acceptor, Connector, HelloReceived, Kind, Opened, Refused

SECRET = b"0123456789abcdef0123456789abcdef"
HELLO = encode_hello("client", "rasp4", 30)
#: Long enough for the other thread under load; a test that waits for it ends sooner, on its condition.
PATIENCE = 10.0


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def in_thread(body: Callable[[], None]) -> Callable[[], None]:
    """Run ``body`` in a thread; the result joins it and re-raises what it raised."""
    errors: List[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> None:
        thread.join(PATIENCE)
        assert not thread.is_alive(), "the other side did not finish"
        if errors:
            raise errors[0]

    return join


def board(sock: socket.socket, code: int = CODE_SUCCESS, text: str = "server:rasp4", after: bytes = b"") -> None:
    """The accepting side of a data-plane opening with the secret: answer the hello with ``code``, then ``after``."""
    opening = Acceptor(Kind.DATA, SECRET)
    event = open_socket(sock, opening, PATIENCE)
    assert isinstance(event, HelloReceived) and event.text == "client:rasp4 -timeout=30"
    opening.answer(code, text)
    sock.sendall(opening.data_to_send() + after)


@pytest.mark.parametrize("code", [CODE_SUCCESS, CODE_BUSY])
def test_both_sides_open_or_are_refused_over_a_socket(pair: Tuple[socket.socket, socket.socket], code: int) -> None:
    ours, theirs = pair
    join = in_thread(lambda: board(theirs, code, "server:rasp4" if code == CODE_SUCCESS else "busy", b"FRAME"))
    event = open_socket(ours, Connector(Kind.DATA, SECRET, HELLO), PATIENCE)
    join()
    if code == CODE_SUCCESS:
        assert isinstance(event, Opened) and event.reply == Reply(CODE_SUCCESS, "server:rasp4")
        assert event.leftover + _read(ours, 5 - len(event.leftover)) == b"FRAME"  # kept, or still in the socket
    else:
        assert isinstance(event, Refused) and event.reply == Reply(CODE_BUSY, "busy")


def test_a_tracker_opening_hands_over_what_followed_the_echo(pair: Tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair

    def tracker() -> None:
        event = open_socket(theirs, Acceptor(Kind.TRACKER), PATIENCE)
        assert event == Opened(b"")
        theirs.sendall(b"NEXT")

    join = in_thread(tracker)
    event = open_socket(ours, Connector(Kind.TRACKER), PATIENCE)
    join()
    assert isinstance(event, Opened) and event.leftover + _read(ours, 4 - len(event.leftover)) == b"NEXT"


def test_silence_times_out_naming_what_did_not_come(pair: Tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    ours.settimeout(7.0)
    with pytest.raises(OpeningTimeout, match="no answer to our proof of the farm secret within 0.2 s"):
        open_socket(ours, Connector(Kind.DATA, SECRET, HELLO), 0.2)
    assert ours.gettimeout() == 7.0  # as it was
    with pytest.raises(socket.timeout, match="no handshake reply within 0.2 s"):
        open_socket(ours, Connector(Kind.DATA, None, HELLO), 0.2)


def test_a_close_is_reported_naming_what_did_not_come(pair: Tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(OpeningClosed, match="closed the connection before its tracker magic echo"):
        open_socket(ours, Connector(Kind.TRACKER), PATIENCE)


def test_a_failed_proof_is_refused_on_the_wire(pair: Tuple[socket.socket, socket.socket]) -> None:
    """The acceptor's driver sends the refusal before it raises; the connector is told it was refused."""
    ours, theirs = pair
    failures: List[BaseException] = []

    def acceptor() -> None:
        try:
            open_socket(theirs, Acceptor(Kind.TRACKER, SECRET), PATIENCE)
        except AuthError as exc:
            failures.append(exc)

    join = in_thread(acceptor)
    connector = Connector(Kind.TRACKER, SECRET)
    ours.sendall(connector.data_to_send())
    connector.receive_data(_read(ours, 64))  # the acceptor's nonce and proof
    ours.sendall(bytes(32))  # not the proof it computed
    join()
    assert len(failures) == 1 and "proof does not match" in str(failures[0])
    assert _read(ours, 1) == b"\x00"


def test_prove_on_socket_says_what_failed_as_an_auth_error(pair: Tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    join = in_thread(lambda: accept_proof(theirs))
    assert prove_on_socket(ours, SECRET, PATIENCE) == b""
    join()
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(AuthError, match="closed the connection during authentication"):
        prove_on_socket(ours, SECRET, PATIENCE)
    silent, other = socket.socketpair()
    with silent, other, pytest.raises(AuthError, match="no answer to our proof of the farm secret within 0.2 s"):
        prove_on_socket(silent, SECRET, 0.2)


def accept_proof(sock: socket.socket) -> None:
    """Accept the proof alone on ``sock``."""
    assert open_socket(sock, Acceptor(Kind.PROOF, SECRET), PATIENCE) == Opened(b"")


def _read(sock: socket.socket, count: int) -> bytes:
    """Exactly ``count`` bytes (fewer only if the stream ends)."""
    sock.settimeout(PATIENCE)
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data
