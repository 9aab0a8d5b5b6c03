"""Start, watch and stop the tracker, proxy and boards of an inventory (host side).

    stack = FarmStack(load_inventory("configs/farm.emulated.yaml"), "/tmp/farm-logs")
    stack.start()            # returns once every board has registered with the tracker
    ...                      # stack.tracker_address, stack.describe()
    stack.supervise()        # now and then: restart, with backoff, any daemon that died
    stack.stop()             # SIGTERM, then SIGKILL, to each daemon's whole process group

Each daemon binds its own port (port 0 or a range) and logs the address it
got; nothing is probed and reused. A restarted tracker or proxy binds the port
it had, so boards and clients find it again. The daemons run in process
groups of their own and carry ``FARM_PARENT_PID`` (:mod:`farm.lifetime`), so
they also go when the launching process dies without stopping them.

Local boards run ``python -m farm.server`` in this Python; emulated boards run
the packed board server (:mod:`farm.ops.pack`) in the target's own Python under
qemu-user (:mod:`farm.ops.emulators`); external boards are started by someone else
and only waited for. Boards whose group says ``server: native`` run the native
board server (:mod:`farm.ops.native`) built for their architecture, under
qemu-user with the target's userland when emulated.

An inventory's ``tls`` block reaches every daemon as ``REMOTEDEV_TLS_*``
(:mod:`farm.net.tls`), in place of any the launching process has, and the
launcher's own connections to the tracker use it too; without one, the
daemons inherit whatever TLS setting the environment has, as they do the
farm secret. The paths are absolute, so an emulated board's Python under
qemu-user, which gets the same environment, finds the files.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..client.tracker import TrackerClient
from ..lifetime import PARENT_ENV
from ..net.tls import ENV as TLS_ENV
from ..net.tls import TlsConfig
from .inventory import BoardGroup, Inventory, Listener
from .processes import DaemonError, DaemonProcess, board_command

logger = logging.getLogger("farm.launcher")

_WAITING_AT_PROXY = re.compile(r"waiting at the proxy")
#: How often the tracker is asked whether every board has registered.
POLL_PERIOD = 0.02
#: Restart delays: the first, doubled after each quick death up to the last; reset once a daemon has lived a while.
RESTART_FIRST, RESTART_MAX, STABLE_AFTER = 0.5, 30.0, 30.0


class StartInterrupted(DaemonError):
    """:meth:`FarmStack.start` was told to give up (its ``stop`` said so) before every board had registered."""


class Supervised:
    """One daemon of the stack, restarted with backoff when it dies (see :meth:`check`)."""

    def __init__(self, name: str, argv: List[str], log_path: str, env: Dict[str, str],
                 group: Optional[BoardGroup] = None) -> None:  # fmt: skip
        self.name = name
        self.argv = argv
        self.group = group
        self.restarts = 0
        self._log_path = log_path
        self._env = env
        self._failures = 0  # deaths in a row, each before STABLE_AFTER
        self._restart_at: Optional[float] = None
        self._started = time.monotonic()
        self.process = DaemonProcess(argv, log_path, env)

    @property
    def label(self) -> str:
        return "board %s (key %s)" % (self.name, self.group.key) if self.group is not None else self.name

    def exited(self) -> Optional[int]:
        """The exit code if the daemon has exited (and was not restarted since), else None."""
        return self.process.process.poll()

    def check(self, now: float) -> None:
        """Notice a death and schedule a restart; restart when it is due."""
        if self._restart_at is None:
            code = self.exited()
            if code is None:
                return
            lived = now - self._started
            self._failures = 1 if lived >= STABLE_AFTER else self._failures + 1
            delay = min(RESTART_MAX, RESTART_FIRST * 2 ** (self._failures - 1))
            logger.warning(
                "%s exited with code %s after %.1f s; restarting it in %.1f s", self.label, code, lived, delay
            )
            self.process.stop()  # reap it and whatever is left of its process group
            self._restart_at = now + delay
        elif now >= self._restart_at:
            self._restart_at = None
            self.restarts += 1
            self._started = now
            with open(self._log_path, "ab") as log:
                log.write(b"---- restarted by the launcher (restart %d) ----\n" % self.restarts)
            self.process = DaemonProcess(self.argv, self._log_path, self._env, append=True)
            logger.warning("%s restarted (restart %d, pid %d)", self.label, self.restarts, self.process.pid)

    def registered(self, summary: Dict[str, Any]) -> bool:
        """Whether the tracker (direct boards) or the proxy (proxied boards) has this board."""
        assert self.group is not None
        if self.group.proxy:
            return bool(_WAITING_AT_PROXY.search(self.process.log_text()))
        return any(server.get("name") == self.name for server in summary.get("server_info", []))


class FarmStack:
    """The daemons of one inventory, started from this process; see the module docstring."""

    def __init__(self, inventory: Inventory, log_dir: str, python: str = sys.executable) -> None:
        self.inventory = inventory
        self.log_dir = log_dir
        self.python = python
        self.tracker: Optional[Supervised] = None
        self.proxy: Optional[Supervised] = None
        self.boards: List[Supervised] = []
        self._env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
        if inventory.tls is not None:
            for name in TLS_ENV.values():
                self._env.pop(name, None)
            self._env.update(inventory.tls.as_env())
        #: The daemons' TLS setting, which the launcher's own connections use too (disabled: TLS off).
        self.tls = TlsConfig.from_env(self._env)
        self._tracker_address: Optional[Tuple[str, int]] = None
        self._proxy_address: Optional[Tuple[str, int]] = None

    @property
    def tracker_address(self) -> Tuple[str, int]:
        assert self._tracker_address is not None, "the stack has not started"
        return self._tracker_address

    @property
    def daemons(self) -> List[Supervised]:
        return [daemon for daemon in (self.tracker, self.proxy) if daemon is not None] + self.boards

    def start(self, timeout: float = 30.0, stop: Optional[Callable[[], bool]] = None) -> None:
        """Start every daemon and return once each board has registered; DaemonError names what failed.

        ``stop`` is asked while the boards register: once it returns true (say, after Ctrl-C), everything
        started is stopped and :class:`StartInterrupted` raised, instead of waiting out ``timeout``.
        """
        os.makedirs(self.log_dir, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            self._start_tracker(timeout)
            if self.inventory.proxy is not None:
                argv = [self.python, "-m", "farm.proxy", *_listen_args(self.inventory.proxy)]
                self.proxy = self._daemon("proxy", argv + ["--tracker", "%s:%d" % self.tracker_address])
            started = _numbered(self.inventory)
            emulated = self._emulated_servers([group for _, group, _ in started])
            emulated.update(self._native_servers([group for _, group, _ in started]))
            for name, group, position in started:  # boards that listen start while the proxy binds
                if not group.proxy:
                    self._board(name, group, position, emulated)
            if self.proxy is not None:
                self._proxy_address = self._bound(self.proxy, max(0.1, deadline - time.monotonic()))
                for name, group, position in started:
                    if group.proxy:
                        self._board(name, group, position, emulated)
            self._wait_registered(deadline, stop)
        except BaseException:
            self.stop()
            raise
        logger.info("farm of %s ready: tracker at %s:%d", self.inventory.path, *self.tracker_address)

    def _start_tracker(self, timeout: float) -> None:
        self.tracker = self._daemon(
            "tracker", [self.python, "-m", "farm.tracker", *_listen_args(self.inventory.tracker)]
        )
        self._tracker_address = self._bound(self.tracker, timeout)

    def _bound(self, daemon: Supervised, timeout: float) -> Tuple[str, int]:
        """Wait for the daemon's address; from now on it restarts on that very port."""
        host, port = daemon.process.wait_for_bind(timeout)
        daemon.argv = _with_port(daemon.argv, port)
        return host, port

    def _daemon(self, name: str, argv: List[str], group: Optional[BoardGroup] = None,
                env: Optional[Dict[str, str]] = None) -> Supervised:  # fmt: skip
        log_path = os.path.join(self.log_dir, name + ".log")
        return Supervised(name, argv, log_path, env if env is not None else self._env, group)

    def _native_servers(self, groups: Sequence[BoardGroup]) -> Dict[str, List[str]]:
        """The command that runs the native board server of each architecture of the native groups, by
        :func:`_native_key` (under qemu-user with the target's userland for an emulated one), each built once."""
        natives = {_native_key(group): group for group in groups if group.server == "native" and group.target}
        if not natives:
            return {}
        from .emulators import sysroot  # host side only, and only for farms with native boards
        from .native import build_server
        from .toolchain import toolchain_for

        commands: Dict[str, List[str]] = {}
        for key, group in natives.items():
            target = group.target
            assert target is not None
            # under TLS a native board needs it built in: a BuildError names the missing OpenSSL
            server = build_server(toolchain_for(target, self.inventory.toolchains), tls=self.tls.enabled or None)
            emulated = group.start == "emulated"
            commands[key] = [target.qemu, "-L", sysroot(target.name), server] if emulated else [server]
        return commands

    def _emulated_servers(self, groups: Sequence[BoardGroup]) -> Dict[str, List[str]]:
        """The command that runs the board server in each emulated architecture's own Python."""
        arches = sorted(
            {group.target.name for group in groups if group.start == "emulated" and group.target and
             group.server == "python"}
        )  # fmt: skip
        if not arches:
            return {}
        from .emulators import python_command  # host side only, and only for emulated farms
        from .pack import pack_server

        archive = pack_server(os.path.join(self.log_dir, "farm-server.pyz"))
        return {arch: [*python_command(arch), archive] for arch in arches}

    def _board(self, name: str, group: BoardGroup, position: int, emulated: Dict[str, List[str]]) -> None:
        """Start one board: ``position`` is its place in its group (its port, when the group has fixed ports)."""
        extra = ["--name", name, *group.limit_options()]
        if group.session_user:
            extra += ["--session-user", group.session_user]
        if group.proxy:
            host, port = self._proxy_address or ("", 0)
            extra.append("--through-proxy")
        else:
            host, port = group.host, 0
            extra += ["--tracker", "%s:%d" % self.tracker_address]
            if group.port:
                port = group.port + position
                extra += ["--port-end", str(port + 1)]
        env = self._env
        server = None
        if group.server == "native" and group.target is not None:
            server = emulated[_native_key(group)]
        elif group.start == "emulated" and group.target is not None:
            server = emulated[group.target.name]
            env = {k: v for k, v in self._env.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # the host's Python's
        argv = board_command(group.key, host, port, self.python, extra, server=server)
        self.boards.append(self._daemon(name, argv, group, env))

    def _wait_registered(self, deadline: float, stop: Optional[Callable[[], bool]] = None) -> None:
        with TrackerClient(*self.tracker_address, tls=self.tls) as tracker:
            while True:
                if stop is not None and stop():
                    raise StartInterrupted("stopped while waiting for the boards to register")
                for daemon in self.daemons:
                    code = daemon.exited()
                    if code is not None:
                        raise DaemonError(
                            "%s exited with code %d while the farm started:\n%s"
                            % (daemon.label, code, daemon.process.log_text()[-4000:])
                        )
                summary = tracker.summary()
                missing = [board for board in self.boards if not board.registered(summary)]
                absent = self._external_missing(summary)
                if not missing and not absent and self._all_offered(summary):
                    return
                if time.monotonic() > deadline:
                    raise DaemonError(self._late_message(missing, absent))
                time.sleep(POLL_PERIOD)

    def _external_missing(self, summary: Dict[str, Any]) -> Dict[str, Tuple[int, int]]:
        """Keys whose external boards have not all registered: key -> (expected, registered)."""
        queues = summary.get("queue_info", {})
        started: Dict[str, int] = {}
        for board in self.boards:
            assert board.group is not None
            started[board.group.key] = started.get(board.group.key, 0) + 1
        missing = {}
        for key, expected in self.inventory.expected_boards().items():
            registered = int(queues.get(key, {}).get("total", 0)) - started.get(key, 0)
            if registered < expected:
                missing[key] = (expected, max(0, registered))
        return missing

    def _late_message(self, missing: List[Supervised], absent: Dict[str, Tuple[int, int]]) -> str:
        tracker = "%s:%d" % self.tracker_address
        if missing:
            board = missing[0]
            return "%s did not register with the tracker at %s in time; its log:\n%s" % (
                board.label, tracker, board.process.log_text()[-4000:])  # fmt: skip
        if absent:
            key, (expected, registered) = sorted(absent.items())[0]
            return (
                "the external boards of key %s did not register with the tracker at %s in time (expected %d, "
                "registered %d); start each with: %s"
                % (key, tracker, expected, registered, external_board_command(tracker, key, self.tls.enabled))
            )
        return "the boards registered with the tracker at %s but were not all offered in time" % tracker

    def _all_offered(self, summary: Dict[str, Any]) -> bool:
        queues = summary.get("queue_info", {})
        return all(queues.get(key, {}).get("free", 0) >= count for key, count in self.inventory.board_counts().items())

    def supervise(self) -> None:
        """One look at every daemon: restart, with backoff, those that died (call it now and then)."""
        now = time.monotonic()
        for daemon in self.daemons:
            daemon.check(now)

    def stop(self) -> None:
        """Stop the boards, then the proxy, then the tracker (each with its whole process group)."""
        for board in self.boards:
            board.process.terminate()  # all at once, then wait for each
        for daemon in self.boards + [d for d in (self.proxy, self.tracker) if d is not None]:
            daemon.process.stop()

    def pids(self) -> List[int]:
        """The pids of every daemon started (running or not)."""
        return [daemon.process.pid for daemon in self.daemons]

    def describe(self) -> Dict[str, Any]:
        """What runs where, as JSON-friendly data (what the pytest plugin hands its workers)."""
        return {
            "inventory": self.inventory.path,
            "tracker": list(self.tracker_address),
            "proxy": list(self._proxy_address) if self._proxy_address else None,
            "default_key": self.inventory.default_key,
            "keys": self.inventory.board_counts(),
            "expected": self.inventory.expected_boards(),
            "boards": [_describe_board(board) for board in self.boards],
            "tls": self._client_tls(),
        }

    def _client_tls(self) -> Optional[Dict[str, str]]:
        """What a client of the farm needs of its TLS setting (``ca``, ``server_name``); None when TLS is off."""
        if not self.tls.enabled:
            return None
        return {name: getattr(self.tls, name) for name in ("ca", "server_name") if getattr(self.tls, name)}

    def __enter__(self) -> FarmStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _native_key(group: BoardGroup) -> str:
    """Which native board server a group runs: ``native:local:x86_64``, ``native:emulated:aarch64``."""
    return "native:%s:%s" % (group.start, group.target.name if group.target else group.arch)


def external_board_command(tracker: str, key: str, tls: bool) -> str:
    """How an external board of ``key`` is started, for messages (with TLS: the options it needs too)."""
    command = "farm server --tracker %s --key %s" % (tracker, key)
    return command + " --tls-cert CERT --tls-key KEY --tls-ca CA" if tls else command


def _describe_board(board: Supervised) -> Dict[str, Any]:
    group = board.group
    assert group is not None
    target = group.target
    return {
        "name": board.name,
        "key": group.key,
        "pid": board.process.pid,
        "proxy": group.proxy,
        "start": group.start,
        "arch": target.name if target is not None else group.arch,
        "restarts": board.restarts,
    }


def _numbered(inventory: Inventory) -> List[Tuple[str, BoardGroup, int]]:
    """The boards this stack starts (not the external ones): name, group and place in the group."""
    started = []
    places: Dict[int, int] = {}
    for name, group in inventory.named_boards():
        if group.start != "external":
            place = places.get(id(group), 0)
            places[id(group)] = place + 1
            started.append((name, group, place))
    return started


def _listen_args(listener: Listener) -> List[str]:
    end = listener.port_end if listener.port_end is not None else listener.port + 1
    return ["--host", listener.host, "--port", str(listener.port), "--port-end", str(end)]


def _with_port(argv: List[str], port: int) -> List[str]:
    """``argv`` with ``--port``/``--port-end`` set to exactly ``port``."""
    fixed = list(argv)
    fixed[fixed.index("--port") + 1] = str(port)
    fixed[fixed.index("--port-end") + 1] = str(port + 1)
    return fixed
