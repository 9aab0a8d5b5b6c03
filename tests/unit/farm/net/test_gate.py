"""farm.admission: the bookkeeping of unproven connections and the log throttle, with time passed in."""

from __future__ import annotations

import argparse
import logging

import pytest

from farm.net.gate import Gate, Limits, LogThrottle, add_admission_arguments, address_key, limits_from


def test_the_gate_bounds_connections_per_address_and_in_all() -> None:
    gate = Gate(Limits(total=3, per_address=2, seconds=10))
    (first, _), (second, _) = gate.enter("10.0.0.1", 0), gate.enter("10.0.0.1", 0)
    assert first and second and gate.held_by("10.0.0.1") == 2
    assert gate.enter("10.0.0.1", 0) == (None, None)
    assert gate.refusal("10.0.0.1") == (
        "address",
        "2 connections from 10.0.0.1 have proven nothing yet (--max-unproven-per-address)",
    )
    third, displaced = gate.enter("10.0.0.2", 0)  # another address has its share
    assert third and displaced is None and len(gate) == 3
    gate.leave(first)
    gate.leave(first)  # leaving twice changes nothing
    assert len(gate) == 2 and gate.held_by("10.0.0.1") == 1


def test_a_full_gate_gives_a_new_address_the_place_of_the_oldest_of_the_address_holding_the_most() -> None:
    gate = Gate(Limits(total=4, per_address=3, seconds=10))
    crowd = [gate.enter("10.0.0.1", now)[0] for now in range(3)]
    other, _ = gate.enter("10.0.0.2", 3)
    newcomer, displaced = gate.enter("10.0.0.3", 4)
    assert newcomer is not None and displaced is crowd[0]
    assert gate.held_by("10.0.0.1") == 2 and len(gate) == 4
    assert gate.enter("10.0.0.4", 5)[1] is crowd[1]  # 10.0.0.1 still holds the most
    # Now every address holds one: one more from any of them has to wait.
    assert gate.enter("10.0.0.2", 6) == (None, None)
    assert gate.refusal("10.0.0.2") == (
        "total",
        "4 connections have proven nothing yet, none from an address with more than 10.0.0.2 (--max-unproven)",
    )
    assert gate.expired(10.0) == []
    assert gate.expired(12.0) == [crowd[2]]  # (the displaced are out: they do not expire)


def test_tickets_expire_in_the_order_they_entered() -> None:
    gate = Gate(Limits(total=10, per_address=10, seconds=5))
    assert gate.next_deadline() is None
    (early, _), (late, _) = gate.enter("a", 1.0), gate.enter("b", 2.0)
    assert early and late and early.data is None
    assert gate.next_deadline() == 6.0
    assert gate.expired(5.9) == []
    assert gate.expired(6.0) == [early]
    assert gate.held_by("a") == 0 and gate.next_deadline() == 7.0
    gate.leave(late)  # proven before its deadline
    assert gate.expired(100.0) == [] and len(gate) == 0


@pytest.mark.parametrize(
    "host, key",
    [
        ("127.0.0.2", "127.0.0.2"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9%eth0", "2001:db8:1:2::/64"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_an_ipv6_host_counts_as_its_64_and_a_mapped_ipv4_as_itself(host: str, key: str) -> None:
    assert address_key(host) == key


def test_the_log_throttle_logs_once_per_kind_and_interval_and_counts_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.throttle")
    throttle = LogThrottle(log, interval=10)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        for now in (0.0, 1.0, 2.0, 9.9):
            throttle.warning("accept", now, "cannot accept (%s)", "EMFILE")
        throttle.warning("other", 3.0, "another kind")
        throttle.warning("accept", 10.0, "cannot accept (%s)", "EMFILE")
        throttle.warning("accept", 30.0, "cannot accept (%s)", "EMFILE")
    assert [record.getMessage() for record in caplog.records] == [
        "cannot accept (EMFILE)",
        "another kind",
        "cannot accept (EMFILE) (and 3 more in the last 10 s)",
        "cannot accept (EMFILE)",
    ]


def test_the_options_have_defaults_and_refuse_nonsense(capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_admission_arguments(parser, Limits(512, 64, 12.0))
    assert limits_from(parser.parse_args([])) == Limits(512, 64, 12.0)
    assert limits_from(parser.parse_args(["--max-unproven", "8", "--max-unproven-per-address", "2"])).total == 8
    for bad in (["--max-unproven", "0"], ["--max-unproven-per-address", "x"], ["--unproven-timeout", "inf"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert "'inf' is not a number of seconds above 0" in capsys.readouterr().err
