"""The farm: board server, tracker, proxy and the host client.

``import farm`` stays standard-library only, so a board runs it on a bare
Python; the host client (which needs numpy) loads on first use of
``farm.connect`` and friends.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    ArgumentError,
    BoardBusyError,
    DataError,
    FarmError,
    HandshakeError,
    PathEscapeError,
    ProtocolError,
    RemoteError,
    SessionLostError,
    SkippedCallError,
)

__version__ = "0.1.0"

_CLIENT_NAMES = (
    "connect",
    "BenchmarkResult",
    "CallFuture",
    "RemoteArray",
    "RemoteDevice",
    "RemoteFunction",
    "RemoteModule",
    "RemoteSession",
)
_TRACKER_NAMES = ("connect_tracker", "NoBoardError", "TrackerClient", "TrackerError")

__all__ = [
    "ArgumentError",
    "BoardBusyError",
    "DataError",
    "FarmError",
    "HandshakeError",
    "PathEscapeError",
    "ProtocolError",
    "RemoteError",
    "SessionLostError",
    "SkippedCallError",
    "__version__",
    *_CLIENT_NAMES,
    *_TRACKER_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from .client import session as client

        return getattr(client, name)
    if name in _TRACKER_NAMES:
        from .client import tracker as tracker_client

        return getattr(tracker_client, name)
    raise AttributeError("module 'farm' has no attribute %r" % name)
