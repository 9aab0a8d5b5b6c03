"""Telling the terminal which of this run's tests wait in the tracker's queue, and where.

The tracker's summary lists each key's waiting requests with their user and
the time they have waited; this run's requests carry the run's tag in their
user. :func:`status_line` turns a summary into one line. Who prints it:

- in a plain run, the waiting test itself (through pytest's terminal, with
  capture suspended, from the main thread);
- under pytest-xdist, a thread of the controller (workers cannot write to
  the terminal), which polls the tracker and writes between pytest's own
  output under :class:`TerminalLock`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple

import pytest

from farm.client.tracker import TrackerClient, TrackerError

logger = logging.getLogger("pytest_remotedev")

#: Seconds a request waits before the terminal mentions it.
WAIT_NOTICE = 3.0
#: Seconds between two lines while the waiting goes on unchanged.
REPRINT = 10.0
#: Seconds between two looks at the tracker.
POLL = 1.0


def status_line(summary: Dict[str, Any], run_tag: str, notice: float = WAIT_NOTICE) -> Optional[str]:
    """``remotedev: waiting for boards: local: 3 tests at positions 1-3 of 4 (2 boards busy), longest 7 s``.

    Only keys where one of this run's requests has waited ``notice`` seconds
    or more; None when there are none.
    """
    parts = []
    for key, queue in sorted(summary.get("queue_info", {}).items()):
        waiters = queue.get("waiters") or []
        ours = [(position, w) for position, w in enumerate(waiters, 1) if run_tag in str(w.get("user", ""))]
        if not ours:
            continue
        longest = max(float(w.get("waited", 0)) for _, w in ours)
        if longest < notice:
            continue
        positions = _ranges([position for position, _ in ours])
        total = int(queue.get("total", 0))
        busy = min(total, max(0, total - int(queue.get("free", 0))))
        parts.append(
            "%s: %d test%s at position%s %s of %d (%d board%s busy), longest %.0f s"
            % (key, len(ours), "" if len(ours) == 1 else "s", "" if len(ours) == 1 else "s", positions,
               int(queue.get("pending", len(waiters))), busy, "" if busy == 1 else "s", longest)
        )  # fmt: skip
    return "remotedev: waiting for boards: " + "; ".join(parts) if parts else None


def _ranges(numbers: List[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3, 5"``."""
    spans: List[Tuple[int, int]] = []
    for number in sorted(numbers):
        if spans and number == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], number)
        else:
            spans.append((number, number))
    return ", ".join(str(a) if a == b else "%d-%d" % (a, b) for a, b in spans)


class Announcer:
    """Decides when a status line is worth printing: when it changed in substance, or every REPRINT seconds."""

    def __init__(self) -> None:
        self._last_gist: Optional[str] = None
        self._last_time = 0.0

    def due(self, line: Optional[str], now: float) -> bool:
        gist = None if line is None else line.rsplit(", longest", 1)[0]
        if gist is None:
            self._last_gist = None
            return False
        if gist != self._last_gist or now - self._last_time >= REPRINT:
            self._last_gist, self._last_time = gist, now
            return True
        return False


def fetch_status(tracker: Tuple[str, int], run_tag: str) -> Optional[str]:
    """The status line of this run at ``tracker`` (None if nothing to say or the tracker cannot be asked)."""
    try:
        with TrackerClient(*tracker, timeout=5.0) as client:
            return status_line(client.summary(), run_tag)
    except TrackerError as exc:
        logger.debug("cannot read the queue: %s", exc)
        return None


class TerminalLock:
    """Keeps the queue watcher's lines out of the middle of the controller's own terminal writes.

    Registered only in an xdist controller: each hook through which pytest
    writes test progress runs while holding the lock the watcher writes under.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_logstart(self) -> Generator[None, None, None]:
        with self.lock:
            yield

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_logreport(self) -> Generator[None, None, None]:
        with self.lock:
            yield

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_logfinish(self) -> Generator[None, None, None]:
        with self.lock:
            yield

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_collectreport(self) -> Generator[None, None, None]:
        with self.lock:
            yield

    @pytest.hookimpl(hookwrapper=True, tryfirst=True, optionalhook=True)
    def pytest_testnodedown(self) -> Generator[None, None, None]:
        with self.lock:
            yield


class QueueWatcher:
    """A thread that polls the tracker and writes this run's waiting status through ``write``."""

    def __init__(self, tracker: Tuple[str, int], run_tag: str, write: Callable[[str], None]) -> None:
        self.tracker = tracker
        self.run_tag = run_tag
        self.write = write
        self._stop = threading.Event()
        self._announcer = Announcer()
        self._thread = threading.Thread(target=self._run, name="remotedev-queue-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(POLL):
            line = fetch_status(self.tracker, self.run_tag)
            if self._announcer.due(line, time.monotonic()) and not self._stop.is_set():
                self.write(line)  # type: ignore[arg-type]
