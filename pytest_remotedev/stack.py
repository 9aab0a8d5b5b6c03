"""The farm a run uses: an existing one (``--tracker``) or its own, brought up from an inventory.

Who owns the run's own ("bundled") farm:

- under pytest-xdist, the controller: it starts the farm before any worker,
  hands its description to each worker in ``workerinput`` and stops it after
  the last worker has ended (:class:`BundledFarm` in the plugin object);
- in a plain run, the session-scoped ``farm`` fixture starts it on first use
  and stops it at the end of the session.

Either way the daemons run in process groups of their own and die with the
process that started them (see :mod:`farm.ops.launcher`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from farm.client.tracker import TrackerClient, TrackerError
from farm.ops.inventory import Inventory
from farm.ops.launcher import FarmStack

logger = logging.getLogger("pytest_remotedev")


class FarmUnavailable(Exception):
    """The farm could not be started or reached; the message says why."""


@dataclass
class Farm:
    """The farm in use: what the ``farm`` fixture gives tests."""

    tracker: Tuple[str, int]
    bundled: bool
    keys: Dict[str, int] = field(default_factory=dict)  # boards per key
    default_key: Optional[str] = None
    inventory: Optional[str] = None
    boards: List[Dict[str, Any]] = field(default_factory=list)  # a bundled farm's boards: name, key, pid, proxy

    @property
    def tracker_address(self) -> str:
        return "%s:%d" % self.tracker

    def serves(self, key: str) -> bool:
        """Whether a board of ``key`` is in the farm (asks the tracker again if it was not)."""
        if self.keys.get(key):
            return True
        if not self.bundled:
            self.keys = keys_at(self.tracker)
        return bool(self.keys.get(key))

    def to_json(self) -> Dict[str, Any]:
        return {
            "tracker": list(self.tracker),
            "bundled": self.bundled,
            "keys": self.keys,
            "default_key": self.default_key,
            "inventory": self.inventory,
            "boards": self.boards,
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> Farm:
        return cls(
            tracker=(data["tracker"][0], int(data["tracker"][1])),
            bundled=bool(data["bundled"]),
            keys={str(k): int(v) for k, v in data["keys"].items()},
            default_key=data.get("default_key"),
            inventory=data.get("inventory"),
            boards=list(data.get("boards") or []),
        )


def keys_at(tracker: Tuple[str, int]) -> Dict[str, int]:
    """Boards per key that the tracker knows of (free or held)."""
    with TrackerClient(*tracker) as client:
        queues = client.summary().get("queue_info", {})
    counts = {key: int(queue.get("total", queue.get("free", 0))) for key, queue in queues.items()}
    return {key: count for key, count in counts.items() if count}


def existing_farm(tracker: Tuple[str, int]) -> Farm:
    """The farm behind a running tracker; FarmUnavailable if it cannot be reached."""
    try:
        keys = keys_at(tracker)
    except TrackerError as exc:
        raise FarmUnavailable("pytest-remotedev: %s" % exc) from None
    default_key = next(iter(keys)) if len(keys) == 1 else None
    return Farm(tracker, bundled=False, keys=keys, default_key=default_key)


class BundledFarm:
    """The run's own farm, started from an inventory in this process; logs in a temporary directory."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.log_dir = tempfile.mkdtemp(prefix="remotedev-farm-")
        self.stack: Optional[FarmStack] = None
        self.farm: Optional[Farm] = None

    def start(self) -> Farm:
        """Start the farm (once); FarmUnavailable with the failing daemon's log if it does not come up."""
        if self.farm is not None:
            return self.farm
        stack = FarmStack(self.inventory, self.log_dir)
        try:
            stack.start()
        except Exception as exc:
            raise FarmUnavailable(
                "pytest-remotedev: the farm of %s did not start: %s" % (self.inventory.path, exc)
            ) from None
        self.stack = stack
        described = stack.describe()
        self.farm = Farm(
            tracker=stack.tracker_address,
            bundled=True,
            keys=described["keys"],
            default_key=described["default_key"],
            inventory=self.inventory.path,
            boards=described["boards"],
        )
        logger.info("bundled farm up: tracker at %s", self.farm.tracker_address)
        return self.farm

    def stop(self, keep_logs: bool = False) -> None:
        """Stop every daemon (idempotent); remove the logs unless asked to keep them."""
        if self.stack is not None:
            self.stack.stop()
            self.stack = None
        if not keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)
