"""What a peer proves itself with: the farm secret and the TLS configuration, carried as one value.

Either part may be absent: without a secret the farm speaks plain TVM, without TLS the bytes travel in
clear. Standard library only: boards use it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from .tls import TlsConfig


class Credentials(NamedTuple):
    """The farm secret (``None``: no proof asked or given) and TLS (``None``: plain TCP)."""

    secret: Optional[bytes] = None
    tls: Optional[TlsConfig] = None

    @property
    def tls_enabled(self) -> bool:
        """Whether TLS is on: a configuration that names no file leaves it off."""
        return self.tls is not None and self.tls.enabled


#: No secret, no TLS: plain TVM.
PLAIN = Credentials()
