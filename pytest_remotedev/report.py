"""What a run reports about its boards: per-test properties and a summary per key.

Each board a test held adds one group of ``user_properties`` (they reach the
junit XML and, under pytest-xdist, travel to the controller in the reports):

    device_key, device_address, device_id,
    device_queue_wait (s), device_held (s),
    device_held_from, device_held_until (seconds since the epoch)

``device_held_from``/``until`` are the board's own record of the session
when the board sent it (always for this project's boards), else the
client's clock. :class:`UsageSummary` reads them back from the teardown
reports and prints one line per key at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Sequence, Set, Tuple

import pytest

PROPERTY_NAMES = (
    "device_key",
    "device_address",
    "device_id",
    "device_queue_wait",
    "device_held",
    "device_held_from",
    "device_held_until",
)


@dataclass(frozen=True)
class Hold:
    """One board held by one test."""

    key: str
    address: str
    board_id: str
    queue_wait: float
    held: float
    held_from: float
    held_until: float

    def properties(self) -> List[Tuple[str, Any]]:
        values = (self.key, self.address, self.board_id, round(self.queue_wait, 6), round(self.held, 6),
                  round(self.held_from, 6), round(self.held_until, 6))  # fmt: skip
        return list(zip(PROPERTY_NAMES, values))


def holds_in(properties: Iterable[Tuple[str, Any]]) -> List[Hold]:
    """The :class:`Hold` records among a report's ``user_properties`` (each group starts at ``device_key``)."""
    groups: List[Dict[str, Any]] = []
    for name, value in properties:
        if name == PROPERTY_NAMES[0]:
            groups.append({})
        if name in PROPERTY_NAMES and groups:
            groups[-1][name] = value
    holds = []
    for group in groups:
        if len(group) == len(PROPERTY_NAMES):
            holds.append(
                Hold(str(group["device_key"]), str(group["device_address"]), str(group["device_id"]),
                     *(float(group[name]) for name in PROPERTY_NAMES[3:]))
            )  # fmt: skip
    return holds


@dataclass
class KeyUsage:
    tests: Set[str] = field(default_factory=set)
    boards: Set[str] = field(default_factory=set)
    total_wait: float = 0.0
    longest_wait: float = 0.0
    busy: float = 0.0
    first: float = float("inf")
    last: float = float("-inf")

    def add(self, nodeid: str, hold: Hold) -> None:
        self.tests.add(nodeid)
        self.boards.add(hold.board_id)
        self.total_wait += hold.queue_wait
        self.longest_wait = max(self.longest_wait, hold.queue_wait)
        self.busy += hold.held
        self.first = min(self.first, hold.held_from)
        self.last = max(self.last, hold.held_until)

    @property
    def utilisation(self) -> float:
        """Busy time over what the boards used could have given between the first hold and the last release."""
        span = (self.last - self.first) * len(self.boards)
        return self.busy / span if span > 0 else 0.0


class UsageSummary:
    """Collects the holds of a run's tests and prints the per-key table."""

    def __init__(self) -> None:
        self.keys: Dict[str, KeyUsage] = {}

    def add_report(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":  # the teardown report carries every property the test recorded
            return
        for hold in holds_in(report.user_properties):
            self.keys.setdefault(hold.key, KeyUsage()).add(report.nodeid, hold)

    def lines(self) -> List[str]:
        if not self.keys:
            return []
        rows: List[Sequence[str]] = [("key", "tests", "boards", "queue wait total", "longest", "busy", "utilisation")]
        for key, usage in sorted(self.keys.items()):
            waits = ("%.1f s" % usage.total_wait, "%.1f s" % usage.longest_wait)
            use = ("%.1f s" % usage.busy, "%.0f%%" % (100 * usage.utilisation))
            rows.append((key, str(len(usage.tests)), str(len(usage.boards)), *waits, *use))
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]

    def write(self, terminalreporter: Any) -> None:
        lines = self.lines()
        if lines:
            terminalreporter.write_sep("-", "remotedev: boards by key")
            for line in lines:
                terminalreporter.write_line(line)
