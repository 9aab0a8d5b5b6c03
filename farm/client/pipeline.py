"""Calls sent without waiting for their replies: futures, read back in order.

A pipelined call is sent at once and answered later; :class:`CallFuture`
stands for its result. The session reads replies in the order it sent the
calls, when a future's result is asked for, when a synchronous request
needs the connection, or when too many calls are in flight. Calls belong
to a pipeline (PIPELINE on the wire): once one of them fails, the board
runs none of the calls after it in the same pipeline and answers each with
:class:`farm.SkippedCallError`. Host side.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Deque, Optional, Tuple

from ..errors import RemoteError

if TYPE_CHECKING:
    from .session import RemoteSession

#: Most calls in flight before the client reads replies: their replies (about 40 bytes each) must fit the
#: sockets' buffers, or the board would block sending them while the client blocks sending calls.
MAX_IN_FLIGHT = 256


class CallFuture(Future):
    """The result of a pipelined call; ``result()`` reads replies from the board until this one's has come."""

    def __init__(self, session: RemoteSession, description: str) -> None:
        super().__init__()
        self._session = session
        self.description = description

    def __repr__(self) -> str:
        return "<CallFuture %s %s>" % (self.description, "done" if self.done() else "pending")

    def result(self, timeout: Optional[float] = None) -> Any:
        if not self.done():
            self._session._pipeline.collect(until=self)
        return super().result(0)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        if not self.done():
            self._session._pipeline.collect(until=self)
        return super().exception(0)


class Pipeline:
    """A session's calls in flight, oldest first, and the pipeline they belong to."""

    def __init__(self, session: RemoteSession) -> None:
        self._session = session
        self.in_flight: Deque[Tuple[int, CallFuture, Any]] = deque()  # request id, future, result decoder
        self.number = 0  # the pipeline calls go to; 0: none started
        self.broken = False  # a call of the current pipeline failed: the next call starts another

    def __len__(self) -> int:
        return len(self.in_flight)

    def add(self, request_id: int, future: CallFuture, decode: Any) -> None:
        self.in_flight.append((request_id, future, decode))

    def collect(self, until: Optional[CallFuture] = None) -> None:
        """Read replies in order until ``until``'s has come (None: every one)."""
        while self.in_flight and not (until is not None and until.done()):
            request_id, future, decode = self.in_flight.popleft()
            try:
                future.set_result(decode(self._session._receive_reply(request_id)))
            except RemoteError as exc:
                self.broken = True
                future.set_exception(exc)
                if self._session.closed:  # lost: no reply will come for the others
                    self.fail_all(exc)
            except BaseException as exc:  # interrupted while reading: the session is abandoned
                future.set_exception(exc)
                self.fail_all(self._session._lost or exc)
                raise

    def fail_all(self, error: BaseException) -> None:
        while self.in_flight:
            _, future, _ = self.in_flight.popleft()
            future.set_exception(error)
