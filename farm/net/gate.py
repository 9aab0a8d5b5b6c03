"""Bounds on the connections a daemon holds before their peers have proven anything (standard library only).

A new connection costs its daemon a descriptor and some memory before the
peer has shown that it belongs: proven the farm secret, or without one sent
TVM's tracker magic, the proxy's hello, the board's hello. A :class:`Gate`
bounds such connections in number, per source address and in time, so that
silent connections from one address cannot use up what peers from the
others get. It is bookkeeping only (the time is passed in): the asyncio
listener of the tracker and the proxy (:mod:`farm.net.aio`) and the board's
selector loop (:mod:`farm.board.daemon`) close what it refuses or lets expire.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Dict, List, NamedTuple, Optional, Tuple

from ..cli_types import positive_count, seconds

#: Seconds between two log lines about the same kind of refusal (the ones between are counted, not logged).
LOG_INTERVAL = 10.0


class Limits(NamedTuple):
    """How many unproven connections at once (``total``, and from one address: ``per_address``), for how long."""

    total: int
    per_address: int
    seconds: float


class Ticket:
    """One unproven connection held by a :class:`Gate`; ``data`` is its holder's (what to close: a task, a pending
    handshake)."""

    __slots__ = ("address", "deadline", "data")

    def __init__(self, address: str, deadline: float) -> None:
        self.address = address
        self.deadline = deadline
        self.data: object = None


class Gate:
    """The unproven connections of one listener, within :class:`Limits`.

    When all ``total`` are taken, a connection from an address that holds
    fewer than the address holding the most takes the place of that address's
    oldest: many addresses cannot shut out a new one for long, and the oldest
    connections, which a peer of the farm would have proven long ago, go
    first.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._tickets: Dict[Ticket, None] = {}  # in the order they entered: the same timeout for all, so by deadline
        self._by_address: Dict[str, Dict[Ticket, None]] = {}  # each address's, in the same order

    def __len__(self) -> int:
        return len(self._tickets)

    def held_by(self, address: str) -> int:
        """Unproven connections from ``address`` (as :func:`address_key` names it)."""
        return len(self._by_address.get(address, ()))

    def enter(self, address: str, now: float) -> Tuple[Optional[Ticket], Optional[Ticket]]:
        """A ticket for a new connection from ``address`` (None: refused, :meth:`refusal` says why), and the
        ticket it displaced, taken out of the gate (its connection is to be closed), if any."""
        held = self.held_by(address)
        if held >= self.limits.per_address:
            return None, None
        displaced = None
        if len(self._tickets) >= self.limits.total:
            _, theirs = max(self._by_address.items(), key=lambda item: len(item[1]))
            if len(theirs) <= held:
                return None, None
            displaced = next(iter(theirs))
            self.leave(displaced)
        ticket = Ticket(address, now + self.limits.seconds)
        self._tickets[ticket] = None
        self._by_address.setdefault(address, {})[ticket] = None
        return ticket, displaced

    def refusal(self, address: str) -> Tuple[str, str]:
        """Why a connection from ``address`` is refused now: the bound it meets (``"total"`` or ``"address"``),
        and the refusal in words."""
        held = self.held_by(address)
        if held >= self.limits.per_address:
            return "address", "%d connections from %s have proven nothing yet (--max-unproven-per-address)" % (
                held,
                address,
            )
        what = "%d connections have proven nothing yet, none from an address with more than %s (--max-unproven)"
        return "total", what % (len(self._tickets), address)

    def leave(self, ticket: Ticket) -> None:
        """The connection proved itself or closed (again: nothing)."""
        if ticket in self._tickets:
            del self._tickets[ticket]
            theirs = self._by_address[ticket.address]
            del theirs[ticket]
            if not theirs:
                del self._by_address[ticket.address]

    def expired(self, now: float) -> List[Ticket]:
        """The tickets whose time is up, taken out of the gate (their connections are to be closed)."""
        late = []
        for ticket in self._tickets:
            if ticket.deadline > now:
                break
            late.append(ticket)
        for ticket in late:
            self.leave(ticket)
        return late

    def next_deadline(self) -> Optional[float]:
        """When the oldest ticket expires (None: there is none)."""
        return next(iter(self._tickets)).deadline if self._tickets else None


def address_key(host: str) -> str:
    """The share a peer's address counts against: the address itself; for IPv6 its /64, which one host may hold
    whole (an IPv4 address mapped into IPv6 counts as the IPv4 address)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network("%s/64" % address, strict=False))
    return str(address)


class LogThrottle:
    """Warnings to ``log``, at most one per kind of event and :data:`LOG_INTERVAL`; the ones between are counted
    and the next line says how many."""

    def __init__(self, log: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        self.log = log
        self.interval = interval
        self._last: Dict[str, float] = {}
        self._skipped: Dict[str, int] = {}

    def warning(self, kind: str, now: float, message: str, *args: object) -> None:
        """Log ``message % args`` unless a line of ``kind`` was logged less than an interval before ``now``."""
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped and last is not None:
            message += " (and %d more in the last %.0f s)" % (skipped, now - last)
        self.log.warning(message, *args)


def add_admission_arguments(parser: argparse.ArgumentParser, defaults: Limits, with_timeout: bool = True) -> None:
    """``--max-unproven``, ``--max-unproven-per-address`` and (``with_timeout``) ``--unproven-timeout``."""
    parser.add_argument(
        "--max-unproven",
        metavar="N",
        type=positive_count,
        default=defaults.total,
        help="connections that have not proven anything yet (the farm secret, or without one the protocol's "
        "opening) held at once; more are closed at accept (default: %d)" % defaults.total,
    )
    parser.add_argument(
        "--max-unproven-per-address",
        metavar="N",
        type=positive_count,
        default=defaults.per_address,
        help="of those, from one address (an IPv6 /64) (default: %d)" % defaults.per_address,
    )
    if with_timeout:
        parser.add_argument(
            "--unproven-timeout",
            metavar="SECONDS",
            type=seconds(positive=True),
            default=defaults.seconds,
            help="seconds a connection has to prove itself (default: %g)" % defaults.seconds,
        )


def limits_from(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` of the options :func:`add_admission_arguments` added."""
    return Limits(args.max_unproven, args.max_unproven_per_address, args.unproven_timeout)
