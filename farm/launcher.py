"""Start, check and stop the tracker, proxy and boards of an inventory (host side).

    stack = FarmStack(load_inventory("configs/farm.local.yaml"), "/tmp/farm-logs")
    stack.start()            # returns once every board has registered with the tracker
    ...                      # stack.tracker_address, stack.describe()
    stack.stop()             # SIGTERM, then SIGKILL, to each daemon's whole process group

Each daemon binds its own port (port 0 or a range) and logs the address it
got; nothing is probed and reused. The daemons run in process groups of their
own and carry ``FARM_PARENT_PID`` (:mod:`farm.lifetime`), so they also go
when the launching process dies without stopping them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from .inventory import BoardGroup, Inventory, Listener
from .lifetime import PARENT_ENV
from .processes import DaemonError, DaemonProcess, board_command
from .tracker_client import TrackerClient

logger = logging.getLogger("farm.launcher")

_WAITING_AT_PROXY = re.compile(r"waiting at the proxy")
#: How often the tracker is asked whether every board has registered.
POLL_PERIOD = 0.02


class LaunchedBoard:
    """One board daemon of the stack."""

    def __init__(self, name: str, group: BoardGroup, process: DaemonProcess) -> None:
        self.name = name
        self.key = group.key
        self.through_proxy = group.proxy
        self.process = process

    def registered(self, summary: Dict[str, Any]) -> bool:
        """Whether the tracker (direct boards) or the proxy (proxied boards) has it."""
        if self.through_proxy:
            return bool(_WAITING_AT_PROXY.search(self.process.log_text()))
        return any(server.get("name") == self.name for server in summary.get("server_info", []))


class FarmStack:
    """The daemons of one inventory, started from this process; see the module docstring."""

    def __init__(self, inventory: Inventory, log_dir: str, python: str = sys.executable) -> None:
        self.inventory = inventory
        self.log_dir = log_dir
        self.python = python
        self.tracker: Optional[DaemonProcess] = None
        self.proxy: Optional[DaemonProcess] = None
        self.boards: List[LaunchedBoard] = []
        self._env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})

    @property
    def tracker_address(self) -> Tuple[str, int]:
        assert self.tracker is not None and self.tracker.address is not None, "the stack has not started"
        return self.tracker.address

    def start(self, timeout: float = 30.0) -> None:
        """Start every daemon and return once each board has registered; DaemonError names what failed."""
        os.makedirs(self.log_dir, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            self.tracker = self._daemon("tracker", ["-m", "farm.tracker", *_listen_args(self.inventory.tracker)])
            self.tracker.wait_for_bind(timeout)
            tracker = "%s:%d" % self.tracker_address
            if self.inventory.proxy is not None:
                listen = _listen_args(self.inventory.proxy)
                self.proxy = self._daemon("proxy", ["-m", "farm.proxy", *listen, "--tracker", tracker])
            named = self.inventory.named_boards()
            for name, group in named:  # boards that listen start while the proxy binds
                if not group.proxy:
                    extra = ["--tracker", tracker, "--name", name]
                    self._board(name, group, board_command(group.key, group.host, 0, self.python, extra))
            if self.proxy is not None:
                host, port = self.proxy.wait_for_bind(max(0.1, deadline - time.monotonic()))
                for name, group in named:
                    if group.proxy:
                        extra = ["--through-proxy", "--name", name]
                        self._board(name, group, board_command(group.key, host, port, self.python, extra))
            self._wait_registered(deadline)
        except BaseException:
            self.stop()
            raise
        logger.info("farm of %s ready: tracker at %s", self.inventory.path, tracker)

    def _daemon(self, name: str, args: List[str]) -> DaemonProcess:
        return DaemonProcess([self.python, *args], os.path.join(self.log_dir, name + ".log"), self._env)

    def _board(self, name: str, group: BoardGroup, argv: List[str]) -> None:
        process = DaemonProcess(argv, os.path.join(self.log_dir, name + ".log"), self._env)
        self.boards.append(LaunchedBoard(name, group, process))

    def _wait_registered(self, deadline: float) -> None:
        with TrackerClient(*self.tracker_address) as tracker:
            while True:
                for daemon in [self.tracker, self.proxy] + [board.process for board in self.boards]:
                    if daemon is not None and daemon.process.poll() is not None:
                        raise DaemonError(
                            "%s exited with code %d while the farm started:\n%s"
                            % (_label(daemon), daemon.process.returncode, daemon.log_text()[-4000:])
                        )
                summary = tracker.summary()
                missing = [board for board in self.boards if not board.registered(summary)]
                if not missing and self._all_offered(summary):
                    return
                if time.monotonic() > deadline:
                    board = missing[0] if missing else self.boards[0]
                    raise DaemonError(
                        "board %s (key %r) did not register with the tracker at %s:%d in time; its log:\n%s"
                        % (board.name, board.key, *self.tracker_address, board.process.log_text()[-4000:])
                    )
                time.sleep(POLL_PERIOD)

    def _all_offered(self, summary: Dict[str, Any]) -> bool:
        queues = summary.get("queue_info", {})
        return all(queues.get(key, {}).get("free", 0) >= count for key, count in self.inventory.board_counts().items())

    def stop(self) -> None:
        """Stop the boards, then the proxy, then the tracker (each with its whole process group)."""
        for board in self.boards:
            board.process.terminate()  # all at once, then wait for each
        for board in self.boards:
            board.process.stop()
        for daemon in (self.proxy, self.tracker):
            if daemon is not None:
                daemon.stop()

    def pids(self) -> List[int]:
        """The pids of every daemon started (running or not)."""
        daemons = [self.tracker, self.proxy] + [board.process for board in self.boards]
        return [daemon.pid for daemon in daemons if daemon is not None]

    def describe(self) -> Dict[str, Any]:
        """What runs where, as JSON-friendly data (what the pytest plugin hands its workers)."""
        proxy = self.proxy.address if self.proxy is not None else None
        return {
            "inventory": self.inventory.path,
            "tracker": list(self.tracker_address),
            "proxy": list(proxy) if proxy else None,
            "default_key": self.inventory.default_key,
            "keys": self.inventory.board_counts(),
            "boards": [
                {"name": b.name, "key": b.key, "pid": b.process.pid, "proxy": b.through_proxy} for b in self.boards
            ],
        }

    def __enter__(self) -> FarmStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _listen_args(listener: Listener) -> List[str]:
    end = listener.port_end if listener.port_end is not None else listener.port + 1
    return ["--host", listener.host, "--port", str(listener.port), "--port-end", str(end)]


def _label(daemon: DaemonProcess) -> str:
    """``tracker``, ``proxy`` or the board's name: what its log file is called."""
    return os.path.splitext(os.path.basename(daemon.log_path))[0]
