"""TVM's tracker protocol, sans-IO, with this project's extensions.

A connection opens with ``int32 0x2F271`` from the peer, echoed by the
tracker. Then every message is ``int32 length`` + UTF-8 JSON: requests are
arrays whose first element is a :class:`Code`, replies are whatever the code
returns (``0``, ``[0, value]``, a list of match keys).

Extensions that TVM peers never see or safely ignore:

- REQUEST may carry a fifth element, an options object: ``wait`` (seconds
  before giving up), ``wait_for_key`` (queue even when no board serves the
  key yet), ``progress`` (send WAITING messages while queued),
  ``protocols`` (data protocols the client speaks; TVM clients speak
  ``tvm`` only).
- The reply to such a request names the board's data protocol as a fourth
  element: ``[SUCCESS, [host, port, matchkey, protocol]]``.
- While such a request is queued the tracker may send
  ``[WAITING, {"position": n, "ahead": n, "boards": n, "free": n}]`` before
  the final reply; a request that cannot be served is answered
  ``[FAIL, "why"]``.
- UPDATE_INFO may carry ``protocol`` (``farm`` for this project's boards);
  PUT may carry a fifth element ``{"protocol": ...}`` for the board it
  offers (a proxy offers boards of either kind).
"""

from __future__ import annotations

import json
import random
import struct
from enum import IntEnum
from typing import Any, List, Optional

from ..errors import ProtocolError
from .peers import spoke

TRACKER_MAGIC = 0x2F271
#: Longest message either side accepts, as TVM's tracker does.
MAX_MESSAGE = 1 << 20

#: Data protocols a board may speak: this project's, and TVM's RPC.
FARM_PROTOCOL = "farm"
TVM_PROTOCOL = "tvm"
PROTOCOLS = (FARM_PROTOCOL, TVM_PROTOCOL)
#: The summary's field counting what it leaves out to stay within MAX_MESSAGE: ``{"queue_info": n, "server_info": n}``.
OMITTED = "omitted"

_INT32 = struct.Struct("<i")


class Code(IntEnum):
    FAIL = -1
    SUCCESS = 0
    PING = 1
    STOP = 2
    PUT = 3
    REQUEST = 4
    UPDATE_INFO = 5
    SUMMARY = 6
    GET_PENDING_MATCHKEYS = 7
    WAITING = 100  # ours: a queued request's position, sent only to clients that asked


def encode_magic() -> bytes:
    return _INT32.pack(TRACKER_MAGIC)


def encode_message(value: Any) -> bytes:
    """``int32 length`` + compact JSON of ``value``."""
    data = json.dumps(value, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("tracker message of %d bytes exceeds the limit of %d" % (len(data), MAX_MESSAGE))
    return _INT32.pack(len(data)) + data


def random_matchkey(key: str) -> str:
    """``KEY:`` followed by a random token, as TVM forms match keys."""
    return "%s:%s" % (key, random.SystemRandom().random())


def key_of_matchkey(matchkey: str) -> str:
    """The board key a match key was made for (``rasp4:0.123`` -> ``rasp4``)."""
    return matchkey.rsplit(":", 1)[0]


class MessageReader:
    """Turns received bytes into decoded messages.

    ``expect_magic``: the stream starts with the 4-byte magic (what a
    tracker receives first, and what a peer receives as the echo).
    Anything malformed raises :class:`ProtocolError`; drop the connection then.
    """

    def __init__(self, expect_magic: bool = True, max_message: int = MAX_MESSAGE) -> None:
        self._data = bytearray()
        self._magic_seen = not expect_magic
        self._length: Optional[int] = None
        self.max_message = max_message

    def feed(self, data: bytes) -> List[Any]:
        """Add ``data``; return every message it completed, in order."""
        self._data += data
        messages: List[Any] = []
        if not self._magic_seen:
            if len(self._data) < 4:
                return messages
            (magic,) = _INT32.unpack_from(self._data)
            if magic != TRACKER_MAGIC:
                raise ProtocolError(
                    "wrong tracker magic 0x%X (expected 0x%X): %s"
                    % (magic & 0xFFFFFFFF, TRACKER_MAGIC, spoke(self._data))
                )
            del self._data[:4]
            self._magic_seen = True
        while True:
            if self._length is None:
                if len(self._data) < 4:
                    return messages
                (length,) = _INT32.unpack_from(self._data)
                if length <= 0 or length > self.max_message:
                    raise ProtocolError("tracker message length %d is outside 1..%d" % (length, self.max_message))
                del self._data[:4]
                self._length = length
            if len(self._data) < self._length:
                return messages
            raw = bytes(self._data[: self._length])
            del self._data[: self._length]
            self._length = None
            try:
                messages.append(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise ProtocolError("tracker message is not valid JSON: %s" % str(exc)[:200]) from None

    @property
    def magic_seen(self) -> bool:
        return self._magic_seen
