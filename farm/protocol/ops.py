"""Operation codes of data-plane frames; docs/protocol.md gives each one's metadata."""

from __future__ import annotations

from enum import IntEnum

#: RUN payloads are pickles of this protocol: the newest every supported Python (3.8 on) reads.
PICKLE_PROTOCOL = 4
#: A RUN request's ``result`` field that asks for the result as a pickle (``run_trusted``); otherwise it comes
#: back as data only (:mod:`farm.protocol.values`).
RESULT_PICKLE = "pickle"


class Op(IntEnum):
    # Requests, host -> board. The board answers each with RESULT or ERROR.
    PING = 1
    SYSTEM_INFO = 2
    UPLOAD = 3
    DOWNLOAD = 4
    REMOVE = 5
    LISTDIR = 6
    LOAD_MODULE = 7
    GET_FUNCTION = 8
    CALL = 9
    ARRAY_NEW = 10
    ARRAY_EMPTY = 11
    ARRAY_READ = 12
    ARRAY_WRITE = 13
    RUN = 14
    CLOSE = 15
    TIME = 16
    PIPELINE = 17
    PIPELINED_CALL = 18
    # Replies and notices, board -> host.
    RESULT = 64
    ERROR = 65
    SESSION_END = 66
