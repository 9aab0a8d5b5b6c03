"""The ``build_for`` fixture's builder: which board it builds for."""

from __future__ import annotations

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
    """Sessions of different boards come and go in one worker, and a freed session's id() is often the next one's
    (CPython hands a freed block of memory to the next object of its size)."""
    builder = Builder({})
    reused = 0
    for round_ in range(200):
        first = BoardSession("aarch64")
        assert builder.machine_of(first) == "aarch64"
        address = id(first)
        del first
        later = BoardSession("armv7l")
        reused += id(later) == address
        assert builder.machine_of(later) == "armv7l", "round %d: the machine of a freed session" % round_
    assert reused, "no later session got a freed one's id() in 200 rounds: the test proved nothing"
