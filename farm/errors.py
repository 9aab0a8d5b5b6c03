"""Exceptions shared by the board and the host (standard library only)."""

from __future__ import annotations


class FarmError(Exception):
    """Base class of every error this package raises on purpose."""


class ProtocolError(FarmError):
    """The peer sent bytes that break the wire protocol; the connection must close."""


class HandshakeError(FarmError):
    """The data-plane handshake failed (wrong magic, key mismatch, refused)."""


class BoardBusyError(HandshakeError):
    """The board already serves another session and refused this one."""


class PathEscapeError(FarmError, ValueError):
    """A file name points outside the session directory."""


class ArgumentError(FarmError, TypeError):
    """A call was made with the wrong number or types of arguments."""


class DataError(FarmError, ValueError):
    """A value that is not data a ``run()`` result may be, or bytes that do not encode one (farm.protocol.values)."""


class SkippedCallError(FarmError):
    """A pipelined call the board did not run, because an earlier call of its pipeline failed."""


class RemoteError(FarmError):
    """Something failed on the board; carries the board's traceback text.

    The session stays usable after a ``RemoteError`` unless it is a
    :class:`SessionLostError`.
    """

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\n--- traceback on the board ---\n" + self.remote_traceback.rstrip()
        return text


class SessionLostError(RemoteError):
    """The session on the board ended: its process died, timed out, or the link dropped.

    ``signal`` or ``exit_code`` is set when the board reported how the
    session process ended; ``timed_out`` when the session timeout expired.
    """

    def __init__(
        self,
        message: str,
        signal: int | None = None,
        exit_code: int | None = None,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.signal = signal
        self.exit_code = exit_code
        self.timed_out = timed_out
