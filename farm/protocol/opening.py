"""The opening of a connection, one state machine per side, sans-IO.

Every connection of the farm opens the same way: TLS when the farm uses it,
then the proof of the farm secret when it has one (:mod:`.auth`), then what
the protocol it opens starts with. Which protocol is the caller's
:class:`Kind`:

- ``DATA``: TVM's data-plane handshake (:mod:`.handshake`): the connector's
  hello, then the acceptor's reply. The acceptor chooses the reply itself
  (:meth:`Acceptor.answer`), after it has seen the hello.
- ``TRACKER``: TVM's tracker magic (:mod:`.tracker`), echoed by the tracker.
- ``PROOF``: the proof alone; what follows is the caller's.

:class:`Connector` and :class:`Acceptor` work as h11's ``Connection``: hand
them the bytes received with :meth:`~_Opening.receive_data` (the end of the
stream is the driver's to report), send what :meth:`~_Opening.data_to_send`
gives, and ask :meth:`~_Opening.next_event` what happened: :data:`NEED_DATA`,
:class:`Proven` (the secret exchange succeeded; the peer no longer counts as
unproven), :class:`HelloReceived` (acceptor, ``DATA``: answer it),
:class:`Opened` (with the bytes that came after the opening, never lost) or
:class:`Refused` (connector, ``DATA``: the acceptor answered with another code
than success; acceptor: it answered so itself). Bytes that break the
opening raise :class:`~farm.errors.ProtocolError` (:class:`.auth.AuthError`
when they are about the secret); :meth:`~_Opening.data_to_send` then holds
the refusal to send before closing, if the exchange got that far.

TLS stays outside the machines: a connection's TLS outlives its opening
(the board's session and the daemons' forwarding go on over the same TLS
socket or asyncio transport), so each driver wraps its socket before the
opening, as it must for the rest of the connection. There are no clocks
either: each driver keeps its own deadline.
"""

from __future__ import annotations

import struct
from collections import deque
from enum import Enum
from typing import Deque, Dict, NamedTuple, Optional, Union

from ..errors import ProtocolError
from . import auth
from .handshake import CODE_SUCCESS, MAX_KEY_LENGTH, Hello, HelloReader, Reply, ReplyReader, encode_reply
from .peers import spoke
from .tracker import TRACKER_MAGIC, encode_magic

#: The most bytes either side of an opening takes from the stream: the proof (magic, version, nonce, MACs and
#: verdict, counted whichever way they go), then the longest hello or reply (magic or code, length, key).
MAX_OPENING = 4 + 1 + auth.NONCE_SIZE + 2 * auth.MAC_SIZE + 1 + 4 + 4 + MAX_KEY_LENGTH


class Kind(Enum):
    """What the opening leads to."""

    DATA = "TVM's data-plane handshake"
    TRACKER = "TVM's tracker protocol"
    PROOF = "the proof of the farm secret alone"


class _Signal:
    """An event without data: one instance of each kind, compared by identity."""

    __slots__ = ()

    def __repr__(self) -> str:
        return type(self).__name__ + "()"


class NeedData(_Signal):
    """The opening waits for bytes from the other end."""


class NeedAnswer(_Signal):
    """The acceptor has shown the hello (:class:`HelloReceived`) and waits for :meth:`Acceptor.answer`."""


class Proven(_Signal):
    """The other end proved it holds the farm secret (and we did)."""


class HelloReceived(NamedTuple):
    """The connector's hello, and the key it sent as text (``role:key -name=value...``)."""

    hello: Hello
    text: str


class Opened(NamedTuple):
    """The opening is over: ``leftover`` is what came after it; ``reply`` the acceptor's (``DATA`` only)."""

    leftover: bytes
    reply: Optional[Reply] = None


class Refused(NamedTuple):
    """The acceptor answered the hello with another code than success (``reply``); ``reason`` says so."""

    reason: str
    reply: Reply


Event = Union[NeedData, NeedAnswer, Proven, HelloReceived, Opened, Refused]
NEED_DATA = NeedData()
NEED_ANSWER = NeedAnswer()
PROVEN = Proven()


class _Opening:
    """What both sides share: the proof first (with a secret), then the opening of ``kind``."""

    #: What each side waits for, during the proof and then by kind (see :meth:`waiting_for`).
    _PROOF_AWAITED = ""
    _AWAITED: Dict[Kind, str] = {}

    def __init__(self, kind: Kind, proof: Optional[Union[auth.Connector, auth.Acceptor]]) -> None:
        if kind is Kind.PROOF and proof is None:
            raise ValueError("an opening of the proof alone needs a secret")
        self.kind = kind
        self._proof = proof
        self._out = bytearray(proof.data_to_send() if proof is not None else b"")
        self._events: Deque[Event] = deque()
        self._failed: Optional[ProtocolError] = None
        self._end: Optional[Event] = None  # Opened or Refused, once there

    @property
    def proving(self) -> bool:
        """Whether the proof of the farm secret is still going on."""
        return self._proof is not None and not self._proof.done

    @property
    def ended(self) -> bool:
        """Whether the opening is over (opened or refused)."""
        return self._end is not None

    def data_to_send(self) -> bytes:
        """What to send now (possibly nothing)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> Event:
        """What happened since last asked, one event at a time; the last one (Opened, Refused) stays."""
        if self._events:
            return self._events.popleft()
        return self._end if self._end is not None else self._waiting()

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the other end; ProtocolError (AuthError about the secret) if they break the opening."""
        if self._failed is not None:
            raise ProtocolError("the opening failed already: %s" % self._failed)
        if self._end is not None:
            raise ProtocolError("the opening is over: the bytes belong to the protocol it opened")
        try:
            if self._proof is not None and not self._proof.done:
                self._proof.feed(data)
                self._out += self._proof.data_to_send()
                if not self._proof.done:
                    return
                self._events.append(PROVEN)
                data = self._proof.leftover()
                self._proven()
            self._receive(data)
        except ProtocolError as exc:
            self._failed = exc
            if self._proof is not None:
                self._out += self._proof.data_to_send()  # the acceptor's refusal, if it got that far
            raise

    def waiting_for(self) -> str:
        """What the opening waits for now, as a noun: ``"hello"`` (for messages: no hello within 10 s)."""
        if self.proving:
            return self._PROOF_AWAITED
        return self._AWAITED[self.kind]

    def _finish(self, event: Event) -> None:
        self._end = event

    def _waiting(self) -> Event:
        return NEED_DATA

    def _proven(self) -> None:
        """The proof succeeded: start the opening proper."""

    def _receive(self, data: bytes) -> None:
        raise NotImplementedError


class Connector(_Opening):
    """The side that connected: sends first (its proof, else its hello or magic)."""

    _PROOF_AWAITED = "answer to our proof of the farm secret"
    _AWAITED = {Kind.DATA: "handshake reply", Kind.TRACKER: "tracker magic echo", Kind.PROOF: "nothing"}

    def __init__(
        self, kind: Kind, secret: Optional[bytes] = None, hello: bytes = b"", nonce: Optional[bytes] = None
    ) -> None:
        """``hello``: for ``DATA``, what :func:`.handshake.encode_hello` made; ``secret``: the farm's, if any."""
        if (kind is Kind.DATA) != bool(hello):
            raise ValueError("a hello is sent in the data-plane opening, and only there")
        super().__init__(kind, auth.Connector(secret, nonce) if secret is not None else None)
        self._hello = hello
        self._replies = ReplyReader()
        self._echo = bytearray()
        if secret is None:
            self._proven()

    def _proven(self) -> None:
        if self.kind is Kind.DATA:
            self._out += self._hello
        elif self.kind is Kind.TRACKER:
            self._out += encode_magic()

    def _receive(self, data: bytes) -> None:
        if self.kind is Kind.PROOF:
            self._finish(Opened(data))
        elif self.kind is Kind.TRACKER:
            self._echo += data
            if len(self._echo) >= 4:
                _check_tracker_magic(self._echo, "wrong magic echoed by the tracker")
                self._finish(Opened(bytes(self._echo[4:])))
        else:
            reply = self._replies.feed(data)
            if reply is None:
                return
            leftover = self._replies.leftover()
            if reply.code == CODE_SUCCESS:
                self._finish(Opened(leftover, reply))
            else:
                why = ": " + reply.text if reply.text else ""
                self._finish(
                    Refused("answered the handshake with code 0x%X%s" % (reply.code & 0xFFFFFFFF, why), reply)
                )


class Acceptor(_Opening):
    """The side that accepted the connection: waits for the connector."""

    _PROOF_AWAITED = "proof of the farm secret"
    _AWAITED = {Kind.DATA: "hello", Kind.TRACKER: "tracker magic", Kind.PROOF: "nothing"}

    def __init__(self, kind: Kind, secret: Optional[bytes] = None, nonce: Optional[bytes] = None) -> None:
        super().__init__(kind, auth.Acceptor(secret, nonce) if secret is not None else None)
        self._hellos = HelloReader()
        self._hello: Optional[Hello] = None
        self._buffer = bytearray()  # what came after the hello or magic

    def leftover(self) -> bytes:
        """What came after the hello (or the magic, or the proof) so far: the start of the protocol opened."""
        return bytes(self._buffer)

    def answer(self, code: int, text: str = "") -> None:
        """Answer the hello (after :class:`HelloReceived`): queue the reply, then open or refuse."""
        if self._hello is None or self._end is not None:
            raise RuntimeError("answer a hello once, after it came")
        self._out += encode_reply(code, text)
        reply = Reply(code, text)
        if code == CODE_SUCCESS:
            self._finish(Opened(self.leftover(), reply))
        else:
            self._finish(Refused("answered the handshake with code 0x%X" % (code & 0xFFFFFFFF), reply))

    def _waiting(self) -> Event:
        return NEED_ANSWER if self._hello is not None else NEED_DATA

    def _receive(self, data: bytes) -> None:
        if self.kind is Kind.PROOF:
            self._finish(Opened(data))
        elif self._hello is not None:
            self._buffer += data
        elif self.kind is Kind.TRACKER:
            self._buffer += data
            if len(self._buffer) >= 4:
                _check_tracker_magic(self._buffer, "wrong tracker magic")
                del self._buffer[:4]
                self._out += encode_magic()
                self._finish(Opened(self.leftover()))
        else:
            hello = self._hellos.feed(data)
            if hello is not None:
                self._hello = hello
                self._buffer += self._hellos.leftover()
                text = "%s:%s" % (hello.role, hello.key) + "".join(" -%s=%s" % item for item in hello.options.items())
                self._events.append(HelloReceived(hello, text))


def _check_tracker_magic(data: bytearray, what: str) -> None:
    (magic,) = struct.unpack_from("<i", data)
    if magic != TRACKER_MAGIC:
        raise ProtocolError(
            "%s 0x%X (expected 0x%X): %s" % (what, magic & 0xFFFFFFFF, TRACKER_MAGIC, spoke(bytes(data[:4])))
        )
