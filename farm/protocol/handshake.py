"""TVM's data-plane handshake, sans-IO.

The connecting side sends ``int32 0xFF271``, ``int32 len`` and a key such as
``client:rasp4 -timeout=30`` (a board dialling a proxy sends ``server:KEY``).
The accepting side answers with an ``int32`` code; on success it follows with
``int32 len`` and its own key (``server:KEY``). Only the first whitespace
token of the key is matched; the rest are ``-name=value`` options.

``BUSY`` is this project's extension: a board that already serves a session
answers it with a length-prefixed reason and closes. TVM clients treat any
code but success as a failure, so they fail cleanly too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict

from ..errors import ProtocolError
from .peers import spoke

RPC_MAGIC = 0xFF271
CODE_SUCCESS = 0xFF271
CODE_DUPLICATE = 0xFF272
CODE_MISMATCH = 0xFF273
CODE_BUSY = 0xFF274

#: Longest key accepted in a handshake; TVM leaves it unbounded.
MAX_KEY_LENGTH = 4096

_INT32 = struct.Struct("<i")
_CODES_WITHOUT_TEXT = (CODE_MISMATCH, CODE_DUPLICATE)


@dataclass(frozen=True)
class Hello:
    """The connecting side's key, split into role, match key and options.

    A malformed ``-timeout`` makes the hello itself malformed: making one raises :class:`ProtocolError`.
    """

    role: str
    key: str
    options: Dict[str, str] = field(default_factory=dict)
    #: The session timeout asked for with ``-timeout=S``, if any (0 means none).
    timeout: float | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeout", _timeout(self.options.get("timeout")))


def _timeout(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ProtocolError("handshake option -timeout=%s is not a number" % value) from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ProtocolError("handshake option -timeout=%s is not a finite number" % value)
    if seconds < 0:
        raise ProtocolError("handshake option -timeout=%s is negative" % value)
    return seconds or None


@dataclass(frozen=True)
class Reply:
    """The accepting side's answer: a code and, for most codes, a text."""

    code: int
    text: str = ""


def parse_key(text: str) -> Hello:
    """Split ``client:KEY -timeout=S`` into a :class:`Hello`; :class:`ProtocolError` if it is malformed."""
    tokens = text.split()
    if not tokens or ":" not in tokens[0]:
        raise ProtocolError("handshake key %r is not of the form ROLE:KEY" % text[:80])
    role, key = tokens[0].split(":", 1)
    options = {}
    for token in tokens[1:]:
        name, _, value = token.lstrip("-").partition("=")
        options[name] = value
    return Hello(role, key, options)


def encode_hello(role: str, key: str, timeout: float | None = None) -> bytes:
    """The bytes the connecting side sends: magic, length, ``ROLE:KEY [-timeout=S]``."""
    text = "%s:%s" % (role, key)
    if timeout:
        text += " -timeout=%s" % _format_seconds(timeout)
    data = text.encode("utf-8")
    if len(data) > MAX_KEY_LENGTH:
        raise ValueError("handshake key is %d bytes, more than %d" % (len(data), MAX_KEY_LENGTH))
    return _INT32.pack(RPC_MAGIC) + _INT32.pack(len(data)) + data


def encode_reply(code: int, text: str = "") -> bytes:
    """The bytes the accepting side answers with; ``MISMATCH`` and ``DUPLICATE`` carry no text."""
    if code in _CODES_WITHOUT_TEXT:
        return _INT32.pack(code)
    data = text.encode("utf-8")[:MAX_KEY_LENGTH].decode("utf-8", "ignore").encode("utf-8")  # whole characters
    return _INT32.pack(code) + _INT32.pack(len(data)) + data


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


class _Reader:
    """Accumulates bytes and hands out fixed-size pieces."""

    def __init__(self) -> None:
        self._data = bytearray()

    def _take(self, size: int) -> bytes | None:
        if len(self._data) < size:
            return None
        piece = bytes(self._data[:size])
        del self._data[:size]
        return piece

    def _take_int(self) -> int | None:
        piece = self._take(4)
        return None if piece is None else _INT32.unpack(piece)[0]

    def _take_text(self, length: int) -> str | None:
        if length < 0 or length > MAX_KEY_LENGTH:
            raise ProtocolError("handshake key length %d is outside 0..%d" % (length, MAX_KEY_LENGTH))
        piece = self._take(length)
        if piece is None:
            return None
        try:
            return piece.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("handshake key is not UTF-8") from None

    def leftover(self) -> bytes:
        """Bytes received after the handshake ended (the first frames)."""
        data = bytes(self._data)
        self._data.clear()
        return data


class HelloReader(_Reader):
    """Reads the connecting side's hello: ``feed`` bytes until it returns a :class:`Hello`."""

    def __init__(self) -> None:
        super().__init__()
        self._magic_seen = False
        self._length: int | None = None
        self._hello: Hello | None = None

    def feed(self, data: bytes) -> Hello | None:
        if self._hello is not None:
            raise ProtocolError("the hello was already read")
        self._data += data
        if not self._magic_seen:
            magic = self._take_int()
            if magic is None:
                return None
            if magic != RPC_MAGIC:
                raise ProtocolError(
                    "wrong handshake magic 0x%X (expected 0x%X): %s"
                    % (magic & 0xFFFFFFFF, RPC_MAGIC, spoke(struct.pack("<i", magic)))
                )
            self._magic_seen = True
        if self._length is None:
            self._length = self._take_int()
            if self._length is None:
                return None
        text = self._take_text(self._length)
        if text is not None:
            self._hello = parse_key(text)
        return self._hello


class ReplyReader(_Reader):
    """Reads the accepting side's reply: ``feed`` bytes until it returns a :class:`Reply`."""

    def __init__(self) -> None:
        super().__init__()
        self._code: int | None = None
        self._length: int | None = None

    def feed(self, data: bytes) -> Reply | None:
        self._data += data
        if self._code is None:
            self._code = self._take_int()
            if self._code is None:
                return None
            if self._code not in (CODE_SUCCESS, CODE_DUPLICATE, CODE_MISMATCH, CODE_BUSY):
                raise ProtocolError("unknown handshake reply code 0x%X" % (self._code & 0xFFFFFFFF))
        if self._code in _CODES_WITHOUT_TEXT:
            return Reply(self._code)
        if self._length is None:
            self._length = self._take_int()
            if self._length is None:
                return None
        text = self._take_text(self._length)
        return None if text is None else Reply(self._code, text)
