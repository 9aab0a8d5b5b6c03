"""The ``build_for`` fixture's builder: which board it builds for."""

from __future__ import annotations

import gc
from typing import Any, Dict

from pytest_remotedev.artifacts import Builder


class BoardSession:
    """Stands in for a session: all the builder asks of one is ``system_info()``."""

    def __init__(self, machine: str) -> None:
        self.machine = machine
        self.asked = 0

    def system_info(self) -> Dict[str, Any]:
        self.asked += 1
        return {"machine": self.machine}


def test_machine_is_asked_once_per_session() -> None:
    builder = Builder({})
    session = BoardSession("aarch64")
    assert [builder.machine_of(session) for _ in range(3)] == ["aarch64"] * 3
    assert session.asked == 1


def test_a_later_session_at_the_same_address_is_asked_again() -> None:
    """Sessions of different boards come and go in one worker, and a freed session's id() may be a later one's."""
    builder = Builder({})
    first = BoardSession("aarch64")
    assert builder.machine_of(first) == "aarch64"
    address = id(first)
    del first
    gc.collect()
    kept = []  # alive, so that their memory is not offered again
    for _ in range(10_000):
        later = BoardSession("armv7l")
        if id(later) == address:
            break
        kept.append(later)
    else:
        raise AssertionError("no later session got the freed one's id(): the test proves nothing here")
    assert builder.machine_of(later) == "armv7l"
    assert later.asked == 1
