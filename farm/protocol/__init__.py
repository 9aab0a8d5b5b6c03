"""Wire protocols, sans-IO: bytes in, events out, no sockets.

``opening``: the opening of every connection (the farm secret's proof from
``auth``, then the handshake or the tracker magic), one machine per side.
``handshake``: TVM's data-plane handshake. ``framing``: this project's frames
after it. ``calls``: the binary payloads of native calls. ``ops``: the
operation codes. The blocking board and client (:mod:`farm.net.transport`) use
them, and any other I/O layer can, since none of them touches a socket.
"""

from .framing import Frame, FrameReader, encode_frame
from .handshake import Hello, HelloReader, Reply, ReplyReader, encode_hello, encode_reply
from .ops import Op

__all__ = [
    "Frame",
    "FrameReader",
    "Hello",
    "HelloReader",
    "Op",
    "Reply",
    "ReplyReader",
    "encode_frame",
    "encode_hello",
    "encode_reply",
]
