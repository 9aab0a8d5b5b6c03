"""What a peer spoke, named from its first bytes, for refusals that say what went wrong (sans-IO)."""

from __future__ import annotations

import struct
from typing import Union

#: The first byte of a TLS handshake record (a ClientHello), followed by the major version 3.
_TLS_HANDSHAKE = 0x16
_KNOWN_MAGICS = {
    0xFF271: "TVM's data-plane handshake",
    0x2F271: "TVM's tracker protocol",
    0x2F27A: "the farm's proof of its secret",
}


def looks_like_tls(data: Union[bytes, bytearray]) -> bool:
    """Whether ``data`` (at least one byte) could begin a TLS handshake."""
    return len(data) >= 1 and data[0] == _TLS_HANDSHAKE and (len(data) < 2 or data[1] == 3)


def spoke(data: Union[bytes, bytearray]) -> str:
    """``"TVM's tracker protocol"``, ``"TLS (...)"``, or the first bytes themselves."""
    if looks_like_tls(data):
        return "TLS (is TLS on at one end only?)"
    if len(data) >= 4:
        name = _KNOWN_MAGICS.get(struct.unpack_from("<i", data)[0])
        if name:
            return name
    return "no protocol of this farm (first bytes %r)" % bytes(data[:4])
