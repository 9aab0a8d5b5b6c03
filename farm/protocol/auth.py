"""Proof that both ends of a connection hold the farm secret, sans-IO.

When a farm has a secret, every connection starts with this exchange, before
any TVM or tracker byte, and the secret never crosses the wire::

    connector -> acceptor   int32 AUTH_MAGIC, uint8 version, 32-byte nonce Nc
    acceptor  -> connector  32-byte nonce Na, HMAC(secret, "server" Nc Na)
    connector -> acceptor   HMAC(secret, "client" Na Nc)
    acceptor  -> connector  uint8 1 (admitted) or 0 (refused), then it closes

Each side proves it holds the secret over the other's fresh nonce, so a
recorded exchange cannot be replayed. The acceptor answers only after the
connector's hello, and the magic differs from TVM's two, so a TVM peer (or a
farm member without the secret) is told apart at its first four bytes.

:class:`Connector` and :class:`Acceptor` take bytes with ``feed`` and give
what to send with ``data_to_send``; ``done`` says the exchange succeeded and
``leftover`` holds bytes that came after it. Failures raise :class:`AuthError`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Optional

from ..errors import ProtocolError
from .peers import spoke

#: The first four bytes of an authenticating connection (TVM's are 0xFF271 and 0x2F271).
AUTH_MAGIC = 0x2F27A
VERSION = 1
NONCE_SIZE = 32
MAC_SIZE = 32
ADMITTED, REFUSED = b"\x01", b"\x00"

_HELLO = struct.Struct("<iB")


class AuthError(ProtocolError):
    """The other end does not hold the farm secret, or does not authenticate at all."""


def _mac(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, b"farm-auth-v1 " + label + first + second, hashlib.sha256).digest()


class _Exchange:
    def __init__(self, secret: bytes, nonce: Optional[bytes]) -> None:
        if not secret:
            raise ValueError("an empty secret proves nothing")
        self._secret = secret
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        if len(self._nonce) != NONCE_SIZE:
            raise ValueError("a nonce is %d bytes" % NONCE_SIZE)
        self._buffer = bytearray()
        self._out = bytearray()
        self.done = False

    def data_to_send(self) -> bytes:
        """What to send now (possibly nothing)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def leftover(self) -> bytes:
        """Bytes received after the exchange ended: the start of the protocol it guards."""
        return bytes(self._buffer) if self.done else b""

    def _take(self, count: int) -> Optional[bytes]:
        if len(self._buffer) < count:
            return None
        taken = bytes(self._buffer[:count])
        del self._buffer[:count]
        return taken


class Connector(_Exchange):
    """The side that connected: sends its hello at once (see :meth:`data_to_send`)."""

    def __init__(self, secret: bytes, nonce: Optional[bytes] = None) -> None:
        super().__init__(secret, nonce)
        self._out += _HELLO.pack(AUTH_MAGIC, VERSION) + self._nonce
        self._proved = False

    def feed(self, data: bytes) -> None:
        """Take bytes from the acceptor; AuthError if it does not hold the secret or refuses us."""
        if self.done:
            self._buffer += data
            return
        self._buffer += data
        if not self._proved:
            answer = self._take(NONCE_SIZE + MAC_SIZE)
            if answer is None:
                return
            theirs, proof = answer[:NONCE_SIZE], answer[NONCE_SIZE:]
            if not hmac.compare_digest(proof, _mac(self._secret, b"server", self._nonce, theirs)):
                raise AuthError("the other end does not hold this farm's secret")
            self._out += _mac(self._secret, b"client", theirs, self._nonce)
            self._proved = True
        verdict = self._take(1)
        if verdict is None:
            return
        if verdict != ADMITTED:
            raise AuthError("the other end refused our proof of the farm secret")
        self.done = True


class Acceptor(_Exchange):
    """The side that accepted the connection: waits for the connector's hello."""

    def __init__(self, secret: bytes, nonce: Optional[bytes] = None) -> None:
        super().__init__(secret, nonce)
        self._theirs: Optional[bytes] = None

    def feed(self, data: bytes) -> None:
        """Take bytes from the connector; AuthError (after queueing a refusal) if it cannot prove the secret."""
        self._buffer += data
        if self.done:
            return
        if self._theirs is None:
            self._check_magic()
            hello = self._take(_HELLO.size + NONCE_SIZE)
            if hello is None:
                return
            _, version = _HELLO.unpack_from(hello)
            if version != VERSION:
                raise AuthError("the other end speaks authentication version %d, not %d" % (version, VERSION))
            self._theirs = hello[_HELLO.size :]
            self._out += self._nonce + _mac(self._secret, b"server", self._theirs, self._nonce)
        proof = self._take(MAC_SIZE)
        if proof is None:
            return
        if not hmac.compare_digest(proof, _mac(self._secret, b"client", self._nonce, self._theirs)):
            self._out += REFUSED
            raise AuthError("the other end's proof does not match this farm's secret")
        self._out += ADMITTED
        self.done = True

    def _check_magic(self) -> None:
        if len(self._buffer) < 4:
            return
        (magic,) = struct.unpack_from("<i", self._buffer)
        if magic != AUTH_MAGIC:
            raise AuthError(
                "the other end did not authenticate: it spoke %s without the farm secret" % spoke(self._buffer[:4])
            )
