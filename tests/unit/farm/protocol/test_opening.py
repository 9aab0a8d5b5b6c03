"""The opening of a connection, sans-IO: both sides' machines, every path, any chunking, any bytes."""

from __future__ import annotations

import struct
from typing import List, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.errors import ProtocolError
from farm.protocol.auth import AUTH_MAGIC, AuthError
from farm.protocol.handshake import (
    CODE_BUSY,
    CODE_DUPLICATE,
    CODE_MISMATCH,
    CODE_SUCCESS,
    Reply,
    encode_hello,
    encode_reply,
)
from farm.protocol.opening import (
    MAX_OPENING,
    NEED_ANSWER,
    NEED_DATA,
    PROVEN,
    Acceptor,
    Connector,
    Event,
    HelloReceived,
    Kind,
    Opened,
    Refused,
)
from farm.protocol.tracker import encode_magic

SECRET = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"
HELLO = encode_hello("client", "rasp4", 30)
SECRETS = st.sampled_from([None, SECRET])
KINDS = st.sampled_from(list(Kind))


def connector_for(kind: Kind, secret: Optional[bytes], nonce: Optional[bytes] = None) -> Connector:
    return Connector(kind, secret, HELLO if kind is Kind.DATA else b"", nonce)


def events(side: Connector | Acceptor) -> List[Event]:
    """Every event the side has now, up to the first that waits or ends."""
    seen: List[Event] = []
    for _ in range(10):
        event = side.next_event()
        seen.append(event)
        if not isinstance(event, type(PROVEN)):
            return seen
    raise AssertionError("more than 10 events: %r" % seen)


def feed(side: Connector | Acceptor, data: bytes, cuts: Sequence[int] = ()) -> List[Event]:
    """Feed ``data`` cut at ``cuts`` (offsets); every event seen on the way."""
    return feed_until_end(side, data, cuts, answer=False)[0]


def feed_until_end(
    side: Connector | Acceptor, data: bytes, cuts: Sequence[int] = (), answer: bool = True
) -> Tuple[List[Event], bytes]:
    """Feed ``data`` cut at ``cuts`` (offsets) until the opening ends, as a driver does, answering a hello with
    success if ``answer``: every event seen on the way, and the bytes not fed."""
    seen: List[Event] = []
    start = 0
    for end in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        if end > start and not side.ended:
            side.receive_data(data[start:end])
            start = end
            seen += events(side)
            if answer and side.next_event() == NEED_ANSWER:
                side.answer(CODE_SUCCESS, "server:rasp4")  # type: ignore[union-attr]
                seen.append(side.next_event())
    return seen, data[start:]


def shuttle(
    connector: Connector, acceptor: Acceptor, code: int = CODE_SUCCESS, text: str = "server:rasp4", chunk: int = 4096
) -> Tuple[List[Event], List[Event], bytes, bytes]:
    """Run both sides until both ended: the events of each, and what each sent."""
    seen_c: List[Event] = []
    seen_a: List[Event] = []
    sent_c, sent_a = bytearray(), bytearray()
    for _ in range(10):
        outgoing = connector.data_to_send()
        sent_c += outgoing
        for start in range(0, len(outgoing), chunk):
            seen_a += feed(acceptor, outgoing[start : start + chunk])
        if seen_a and isinstance(seen_a[-1], HelloReceived) and acceptor.next_event() == NEED_ANSWER:
            acceptor.answer(code, text)
            seen_a.append(acceptor.next_event())
        answer = acceptor.data_to_send()
        sent_a += answer
        for start in range(0, len(answer), chunk):
            seen_c += feed(connector, answer[start : start + chunk])
        if connector.ended and acceptor.ended:
            break
    return seen_c, seen_a, bytes(sent_c), bytes(sent_a)


# --- every path ---------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, SECRET])
def test_a_data_plane_opening_opens_both_sides_with_the_reply(secret: Optional[bytes]) -> None:
    seen_c, seen_a, sent_c, _ = shuttle(connector_for(Kind.DATA, secret), Acceptor(Kind.DATA, secret))
    hello = [e for e in seen_a if isinstance(e, HelloReceived)]
    assert len(hello) == 1 and hello[0].hello.key == "rasp4" and hello[0].text == "client:rasp4 -timeout=30"
    assert seen_c[-1] == Opened(b"", Reply(CODE_SUCCESS, "server:rasp4"))
    assert seen_a[-1] == Opened(b"", Reply(CODE_SUCCESS, "server:rasp4"))
    assert (PROVEN in seen_c, PROVEN in seen_a) == (secret is not None, secret is not None)
    assert sent_c.endswith(HELLO) and (secret is not None) == sent_c.startswith(struct.pack("<i", AUTH_MAGIC))


@pytest.mark.parametrize("code", [CODE_MISMATCH, CODE_BUSY, CODE_DUPLICATE])
def test_a_refusing_reply_is_refused_on_both_sides_with_its_code_and_text(code: int) -> None:
    seen_c, seen_a, _, sent_a = shuttle(connector_for(Kind.DATA, SECRET), Acceptor(Kind.DATA, SECRET), code, "busy")
    assert isinstance(seen_c[-1], Refused) and isinstance(seen_a[-1], Refused)
    assert seen_c[-1].reply.code == code and seen_a[-1].reply.code == code
    assert sent_a.endswith(encode_reply(code, "busy"))
    assert ("busy" in seen_c[-1].reason) == (code == CODE_BUSY)
    assert "0x%X" % code in seen_c[-1].reason


@pytest.mark.parametrize("secret", [None, SECRET])
def test_a_tracker_opening_echoes_the_magic(secret: Optional[bytes]) -> None:
    seen_c, seen_a, sent_c, sent_a = shuttle(connector_for(Kind.TRACKER, secret), Acceptor(Kind.TRACKER, secret))
    assert seen_c[-1] == Opened(b"") and seen_a[-1] == Opened(b"")
    assert sent_c.endswith(encode_magic()) and sent_a.endswith(encode_magic())


def test_the_proof_alone_opens_after_the_verdict() -> None:
    seen_c, seen_a, _, _ = shuttle(Connector(Kind.PROOF, SECRET), Acceptor(Kind.PROOF, SECRET))
    assert seen_c[-2:] == [PROVEN, Opened(b"")] and seen_a[-2:] == [PROVEN, Opened(b"")]


def test_the_proof_alone_needs_a_secret_and_only_the_data_plane_a_hello() -> None:
    with pytest.raises(ValueError):
        Acceptor(Kind.PROOF)
    with pytest.raises(ValueError):
        Connector(Kind.DATA)
    with pytest.raises(ValueError):
        Connector(Kind.TRACKER, hello=HELLO)


def test_a_wrong_secret_is_refused_by_the_connector_and_no_hello_is_sent() -> None:
    connector, acceptor = connector_for(Kind.DATA, SECRET), Acceptor(Kind.DATA, OTHER)
    feed(acceptor, connector.data_to_send())
    with pytest.raises(AuthError, match="does not hold this farm's secret"):
        connector.receive_data(acceptor.data_to_send())
    assert connector.data_to_send() == b"" and connector.next_event() == NEED_DATA


def test_a_wrong_proof_is_refused_by_the_acceptor_with_a_refusal_to_send() -> None:
    connector, acceptor = connector_for(Kind.DATA, SECRET), Acceptor(Kind.DATA, SECRET)
    feed(acceptor, connector.data_to_send())
    feed(connector, acceptor.data_to_send())
    proof = bytearray(connector.data_to_send())
    proof[0] ^= 1
    with pytest.raises(AuthError, match="proof does not match"):
        acceptor.receive_data(bytes(proof))
    assert acceptor.data_to_send() == b"\x00"
    with pytest.raises(ProtocolError, match="failed already"):
        acceptor.receive_data(b"more")


def test_the_connector_is_told_its_proof_was_refused() -> None:
    connector = connector_for(Kind.TRACKER, SECRET)
    acceptor = Acceptor(Kind.TRACKER, SECRET)
    feed(acceptor, connector.data_to_send())
    feed(connector, acceptor.data_to_send())
    with pytest.raises(AuthError, match="refused our proof"):
        connector.receive_data(b"\x00")


@pytest.mark.parametrize("kind", [Kind.DATA, Kind.TRACKER])
def test_a_peer_without_the_secret_is_named_at_its_first_four_bytes(kind: Kind) -> None:
    acceptor = Acceptor(kind, SECRET)
    spoken = connector_for(kind, None).data_to_send()
    with pytest.raises(AuthError, match="without the farm secret"):
        acceptor.receive_data(spoken[:4])


def test_a_wrong_tracker_magic_is_refused_naming_what_it_spoke() -> None:
    with pytest.raises(ProtocolError, match="wrong tracker magic .*data-plane handshake"):
        Acceptor(Kind.TRACKER).receive_data(HELLO)
    connector = Connector(Kind.TRACKER)
    with pytest.raises(ProtocolError, match="wrong magic echoed by the tracker"):
        connector.receive_data(b"\x00\x00\x00\x00")


def test_a_wrong_hello_or_reply_raises_the_handshake_readers_error() -> None:
    with pytest.raises(ProtocolError, match="wrong handshake magic"):
        Acceptor(Kind.DATA).receive_data(encode_magic())
    with pytest.raises(ProtocolError, match="unknown handshake reply code"):
        connector_for(Kind.DATA, None).receive_data(b"\x01\x00\x00\x00")


def test_the_acceptor_answers_once_and_only_after_the_hello() -> None:
    acceptor = Acceptor(Kind.DATA)
    with pytest.raises(RuntimeError):
        acceptor.answer(CODE_SUCCESS)
    assert feed(acceptor, HELLO)[-1].text == "client:rasp4 -timeout=30"  # type: ignore[union-attr]
    assert acceptor.next_event() == NEED_ANSWER
    acceptor.answer(CODE_SUCCESS, "server:x")
    with pytest.raises(RuntimeError):
        acceptor.answer(CODE_SUCCESS)
    assert acceptor.data_to_send() == encode_reply(CODE_SUCCESS, "server:x")


@pytest.mark.parametrize("kind", list(Kind))
def test_bytes_after_the_opening_are_kept_on_both_sides(kind: Kind) -> None:
    from_connector, from_acceptor = transcript(kind, SECRET)
    acceptor = Acceptor(kind, SECRET, nonce=NONCE_A)
    seen = feed(acceptor, from_connector + b"FIRST")
    if kind is Kind.DATA:
        assert isinstance(seen[-1], HelloReceived) and acceptor.leftover() == b"FIRST"
        acceptor.receive_data(b"+MORE")
        acceptor.answer(CODE_SUCCESS, "server:rasp4")
        assert acceptor.next_event() == Opened(b"FIRST+MORE", Reply(CODE_SUCCESS, "server:rasp4"))
    else:
        assert seen[-1] == Opened(b"FIRST")
    connector = connector_for(kind, SECRET, NONCE_C)
    seen = feed(connector, from_acceptor + b"REPLY")
    assert isinstance(seen[-1], Opened) and seen[-1].leftover == b"REPLY"
    assert connector.data_to_send() == from_connector
    with pytest.raises(ProtocolError, match="is over"):
        connector.receive_data(b"late")


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("secret", [None, SECRET])
def test_an_exchange_cut_at_every_offset_opens(kind: Kind, secret: Optional[bytes]) -> None:
    if kind is Kind.PROOF and secret is None:
        return
    whole_c, whole_a, sent_c, sent_a = shuttle(connector_for(kind, secret), Acceptor(kind, secret), chunk=1 << 16)
    for offset in range(max(len(sent_c), len(sent_a)) + 1):
        seen_c, seen_a, _, _ = shuttle(connector_for(kind, secret), Acceptor(kind, secret), chunk=max(1, offset))
        assert seen_c[-1] == whole_c[-1] and seen_a[-1] == whole_a[-1], offset


def test_waiting_for_names_each_step() -> None:
    connector, acceptor = connector_for(Kind.DATA, SECRET), Acceptor(Kind.DATA, SECRET)
    assert connector.waiting_for() == "answer to our proof of the farm secret"
    assert acceptor.waiting_for() == "proof of the farm secret" and acceptor.proving
    shuttle(connector, acceptor)
    assert connector.waiting_for() == "handshake reply" and acceptor.waiting_for() == "hello"
    assert not acceptor.proving
    assert Acceptor(Kind.TRACKER).waiting_for() == "tracker magic"
    assert Connector(Kind.TRACKER).waiting_for() == "tracker magic echo"


# --- properties ---------------------------------------------------------------------------------

NONCE_C, NONCE_A = b"c" * 32, b"a" * 32
CUTS = st.lists(st.integers(0, MAX_OPENING + 64), max_size=16)


def transcript(kind: Kind, secret: Optional[bytes]) -> Tuple[bytes, bytes]:
    """What each side sends in a well-formed opening, with fixed nonces: connector's bytes, acceptor's."""
    _, _, sent_c, sent_a = shuttle(connector_for(kind, secret, NONCE_C), Acceptor(kind, secret, nonce=NONCE_A))
    return sent_c, sent_a


SIDES = st.sampled_from(["connector", "acceptor"])


@settings(max_examples=300, deadline=None)
@given(kind=KINDS, secret=SECRETS, side=SIDES, cuts=CUTS, tail=st.binary(max_size=64))
def test_a_well_formed_opening_opens_whatever_the_chunking(
    kind: Kind, secret: Optional[bytes], side: str, cuts: List[int], tail: bytes
) -> None:
    """The other side's bytes cut anywhere, the next protocol's first bytes right behind: opened, what was fed of
    them kept as leftover, and the same bytes sent as in the exchange unbroken."""
    secret = SECRET if kind is Kind.PROOF else secret
    from_connector, from_acceptor = transcript(kind, secret)
    if side == "connector":
        opening: Connector | Acceptor = connector_for(kind, secret, NONCE_C)
        received, sent = from_acceptor, from_connector
    else:
        opening = Acceptor(kind, secret, nonce=NONCE_A)
        received, sent = from_connector, from_acceptor
    _, unfed = feed_until_end(opening, received + tail, cuts)
    reply = Reply(CODE_SUCCESS, "server:rasp4") if kind is Kind.DATA else None
    assert opening.next_event() == Opened(tail[: len(tail) - len(unfed)], reply)
    assert opening.data_to_send() == sent


@settings(max_examples=300, deadline=None)
@given(
    kind=KINDS,
    secret=SECRETS,
    side=SIDES,
    valid=st.integers(0, MAX_OPENING),
    garbage=st.binary(max_size=MAX_OPENING),
    cuts=CUTS,
)
def test_arbitrary_bytes_raise_only_protocol_errors_and_take_at_most_an_opening(
    kind: Kind, secret: Optional[bytes], side: str, valid: int, garbage: bytes, cuts: List[int]
) -> None:
    """The start of a well-formed stream (``valid`` bytes of it), then any bytes, cut anywhere: events or
    ProtocolError, nothing else; a machine decides within MAX_OPENING bytes and keeps the rest as leftover."""
    secret = SECRET if kind is Kind.PROOF else secret
    from_connector, from_acceptor = transcript(kind, secret)
    if side == "connector":
        opening: Connector | Acceptor = connector_for(kind, secret, NONCE_C)
        stream = from_acceptor[:valid] + garbage
    else:
        opening = Acceptor(kind, secret, nonce=NONCE_A)
        stream = from_connector[:valid] + garbage
    try:
        _, unfed = feed_until_end(opening, stream, cuts)
    except ProtocolError:
        return
    fed = len(stream) - len(unfed)
    end = opening.next_event()
    if isinstance(end, Opened):
        kept = len(end.leftover)
    else:  # still opening; an acceptor keeps what came after the hello until it answers
        kept = len(opening.leftover()) if isinstance(opening, Acceptor) else 0
    assert fed - kept <= MAX_OPENING
    assert not isinstance(end, type(NEED_DATA)) or fed <= MAX_OPENING
