"""The session spawner: the process that starts a board's sessions (board side; standard library only).

A session forked from the board daemon would carry the daemon's memory, the
farm secret and the TLS key among it. So the daemon forks the spawner first
thing, before it reads either, and hands it each admitted connection over a
Unix socket pair (``SCM_RIGHTS``). The spawner forks the session process,
which becomes the session user (:mod:`farm.board.sandbox`) and serves; the spawner
reaps it, kills what it left behind (it is a subreaper), and tells the daemon
its pid and how it ended. The spawner dies with the daemon
(``PR_SET_PDEATHSIG``); the daemon stops when the spawner is gone, since a
new one forked from it would carry the secrets.

A session process is forked ahead of its client: when the daemon is ready for
the next session it orders a *standby*, which leaves the spawner's state
behind, moves into the next session's cgroup (a write to ``cgroup.procs``
waits for the kernel's read-copy-update grace period, 5 to 30 ms on a cgroup v2
hierarchy that saw no move for a while), takes its limits and becomes the
session user, then waits. The next connection goes to it with its order; only
the session's directory, environment and connection are left to set up.

Messages are datagrams of a ``SOCK_SEQPACKET`` pair: one byte of kind, then
JSON (or packed integers).
"""

from __future__ import annotations

import array
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..lifetime import become_subreaper, die_with_parent, kill_children, kill_group, rename_process, run_then_exit
from ..net.transport import FramedSocket
from ..protocol.framing import FrameReader
from . import confine
from .sandbox import (
    SessionUser,
    become,
    clean_import_path,
    not_dumpable,
    preload,
    session_environment,
    unsafe_import_paths,
)
from .session import Session, SessionStatus

logger = logging.getLogger("farm.spawner")

# The daemon's orders: start a session (with its connection), kill the session's process group, check the setup,
# fork a standby session process (in the cgroup named) for the next session.
_START, _KILL, _CHECK, _STANDBY = b"S", b"K", b"C", b"W"
# The spawner's reports: a session started (pid), ended (pid, wait status), could not start; the check's answer.
STARTED, ENDED, FAILED, _CHECKED = b"P", b"E", b"F", b"R"
_PIDS = struct.Struct("<ii")
#: Largest message the daemon sends: an order carries the bytes that came with the handshake.
MAX_MESSAGE = 1 << 20
#: Largest report the spawner sends (the check's answer is the longest).
MAX_REPORT = 64 << 10
#: The process name (``/proc/PID/comm``) of a standby session process until its session comes.
STANDBY_NAME = "farm-standby"
#: Seconds the daemon waits for the spawner's answer to the check at start (a board under qemu is slow).
CHECK_TIMEOUT = 60.0


class SessionOrder(NamedTuple):
    """What a session process needs besides its connection."""

    directory: str
    leftover: bytes  # bytes that came after the handshake: the first frames
    bytes_sent: int  # on the connection before the session took over
    key: str
    name: str
    quota: int
    max_message_size: int
    cgroup: str  # the name of the session's cgroup in the farm's ("": none)


class _Standby(NamedTuple):
    """A session process forked ahead of its session: its pid, the spawner's end of its socket, its cgroup."""

    pid: int
    sock: socket.socket
    cgroup: str


class SpawnerGone(Exception):
    """The spawner process died or closed its end; the daemon cannot start sessions any more."""


class Spawner:
    """The daemon's handle on its spawner process, forked when this is made: make it before reading secrets."""

    def __init__(
        self, user: SessionUser, limits: confine.Limits, confinement: Optional[confine.Confinement] = None
    ) -> None:
        self.user = user
        self.limits = limits  # what each session may use
        self.status = SessionStatus()  # one mapping shared by the daemon, the spawner and each session
        start_directory = os.getcwd()
        self.sock, spawner_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        daemon_pid = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            process = _SpawnerProcess(spawner_end, user, self.status, start_directory, daemon_pid, limits, confinement)
            run_then_exit(process.run, logger, "the session spawner")
        spawner_end.close()

    def start(self, order: SessionOrder, connection: socket.socket) -> None:
        """Have the spawner start a session serving ``connection`` (the caller keeps its own copy)."""
        fields = order._asdict()
        fields["leftover"] = order.leftover.decode("latin-1")
        fds = array.array("i", [connection.fileno()])
        self._send(_START + json.dumps(fields).encode(), [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])

    def kill(self) -> None:
        """Kill the running session's process group (nothing if none runs)."""
        self._send(_KILL)

    def stand_by(self, cgroup: str) -> None:
        """Have the spawner fork the next session's process now, in the farm's cgroup ``cgroup`` ("": none), so that
        the next :meth:`start` naming that cgroup only hands it its order (one in the spawner replaces any other)."""
        self._send(_STANDBY + cgroup.encode())

    def check(self, work_dir: str, private_files: Sequence[str]) -> Dict[str, List[str]]:
        """Try the session user's view of the board, from a process that became it: ``problems`` that would
        break every session, ``readable`` private files, import paths ``dropped`` from sessions."""
        self._send(_CHECK + json.dumps({"work_dir": work_dir, "private": list(private_files)}).encode())
        self.sock.settimeout(CHECK_TIMEOUT)
        try:
            kind, body = self.receive()
        finally:
            self.sock.settimeout(None)
        if kind != _CHECKED:
            raise SpawnerGone("the session spawner answered %r to the check" % kind)
        return json.loads(body.decode())

    def receive(self) -> Tuple[bytes, bytes]:
        """The next report (kind, body); SpawnerGone if the spawner is gone."""
        try:
            message = self.sock.recv(MAX_REPORT)
        except OSError as exc:
            raise SpawnerGone("the session spawner's socket failed: %s" % exc) from None
        if not message:
            raise SpawnerGone("the session spawner (pid %d) is gone" % self.pid)
        return message[:1], message[1:]

    def close(self) -> None:
        """Close the socket (the spawner then exits) and reap the spawner."""
        self.sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

    def _send(self, message: bytes, ancillary: Sequence[Tuple[int, int, bytes]] = ()) -> None:
        try:
            self.sock.sendmsg([message], list(ancillary))
        except OSError as exc:
            raise SpawnerGone("cannot reach the session spawner: %s" % exc) from None


def report_numbers(body: bytes) -> Tuple[int, int]:
    """The pid and the wait status (0 in ``STARTED``) of a ``STARTED`` or ``ENDED`` report."""
    pid, wait_status = _PIDS.unpack(body)
    return pid, wait_status


class _SpawnerProcess:
    """The spawner's side: one session at a time, started, reaped and reported."""

    def __init__(
        self,
        sock: socket.socket,
        user: SessionUser,
        status: SessionStatus,
        start_directory: str,
        daemon_pid: int,
        limits: confine.Limits,
        confinement: Optional[confine.Confinement],
    ) -> None:
        self.sock = sock
        self.limits = limits
        self.confinement = confinement
        self.user = user
        self.status = status
        self.start_directory = start_directory
        self.daemon_pid = daemon_pid
        self.session = 0  # the running session's pid (and process group)
        self.standby: Optional[_Standby] = None  # the next session's process, forked ahead
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._selector = selectors.DefaultSelector()

    def run(self) -> None:
        die_with_parent(self.daemon_pid)
        not_dumpable()  # sessions of its own user (a daemon that is not root) must not reach into it
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)  # it ends when the daemon's end of the socket closes
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        signal.set_wakeup_fd(self._wakeup_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        become_subreaper()
        preload()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ)
        while True:
            for key, _ in self._selector.select():
                if key.fileobj is self.sock and not self._on_order():
                    self._kill()
                    self._reap(block=True)
                    if self.standby is not None:
                        _retire(self.standby)
                    return
                if key.fileobj == self._wakeup_r:
                    _drain(self._wakeup_r)
            self._reap()
            self._reap_standby()

    def _on_order(self) -> bool:
        """Carry out one order; False once the daemon is gone."""
        message, ancillary, _flags, _ = self.sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * 4))
        fds = _received_fds(ancillary)
        if not message:
            return False
        kind, body = message[:1], message[1:]
        if kind == _START and len(fds) == 1 and self.session:
            self._report(FAILED + b"a session process (pid %d) still runs" % self.session)
        elif kind == _START and len(fds) == 1:
            self._start(body, fds[0])
        elif kind == _KILL:
            self._kill()
        elif kind == _CHECK:
            self._report(_CHECKED + json.dumps(self._check(json.loads(body.decode()))).encode())
        elif kind == _STANDBY:
            self._stand_by(body.decode())
        else:
            logger.error("the session spawner got an unexpected order %r; ignored", kind)
        for fd in fds:
            os.close(fd)
        return True

    def _report(self, message: bytes) -> None:
        try:
            self.sock.send(message)
        except (BrokenPipeError, ConnectionResetError):  # it died or stopped: the spawner follows it
            logger.info("the session spawner's daemon is gone; its report is dropped")
        except OSError as exc:
            logger.error("the session spawner cannot reach the daemon: %s", exc)

    def _start(self, body: bytes, fd: int) -> None:
        """Start the session of the order in ``body`` on connection ``fd``: hand it to the standby if that is in the
        order's cgroup, else fork the session process now."""
        order = _order(body)
        standby, self.standby = self.standby, None
        if standby is not None and standby.cgroup == order.cgroup and _hand_over(standby, body, fd):
            pid = standby.pid
        else:
            if standby is not None:
                _retire(standby)
            try:
                pid = self._fork(order.cgroup, lambda: self._serve(order, fd))
            except OSError as exc:
                self._report(FAILED + ("cannot start a session process: %s" % exc).encode())
                return
        self.session = pid
        self._report(STARTED + _PIDS.pack(pid, 0))

    def _stand_by(self, cgroup: str) -> None:
        """Fork the next session's process now, in ``cgroup``, to wait for its order (replacing any standby)."""
        if self.standby is not None:
            _retire(self.standby)
            self.standby = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = self._fork(cgroup, lambda: self._await_order(theirs), also_close=ours)
        except OSError as exc:
            logger.error("cannot fork a standby session process: %s", exc)
            ours.close()
            return
        finally:
            theirs.close()
        self.standby = _Standby(pid, ours, cgroup)

    def _fork(self, cgroup: str, then: Callable[[], None], also_close: Optional[socket.socket] = None) -> int:
        """Fork a session process that leaves the spawner (into ``cgroup``, as the session user); then ``then``."""
        pid = os.fork()
        if pid == 0:
            if also_close is not None:
                also_close.close()

            def session_process() -> None:
                self._leave_spawner(cgroup)
                then()

            run_then_exit(session_process, logger, "session process")
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child already did it, or already exited
        return pid

    def _leave_spawner(self, cgroup_name: str) -> None:
        """In a session process: drop the spawner's state and powers, enter the session's cgroup and limits."""
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signal.SIG_DFL)
        self._selector.close()
        self.sock.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
        spawner = os.getppid()
        cgroup = None
        if cgroup_name and self.confinement is not None:
            cgroup = confine.SessionCgroup(self.confinement.hierarchies, cgroup_name)
        # before any of the client's code, and while it may still write cgroups; its limits for the session user
        confine.enter(cgroup, self.limits, self.user.uid)
        become(self.user)
        die_with_parent(spawner)  # after changing user, which clears the parent-death signal

    def _await_order(self, sock: socket.socket) -> None:
        """A standby (named ``STANDBY_NAME`` meanwhile): wait for the order and the connection of its session, then
        serve; return if retired."""
        name = rename_process(STANDBY_NAME)
        message, ancillary, _flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4))
        sock.close()
        fds = _received_fds(ancillary)
        if message and len(fds) == 1:
            if name:
                rename_process(name)
            self._serve(_order(message), fds[0])

    def _serve(self, order: SessionOrder, fd: int) -> None:
        """The session process, once it left the spawner: its directory and environment, then serve."""
        os.chdir(order.directory)
        environment = session_environment(self.user, order.directory, dict(os.environ))
        os.environ.clear()
        os.environ.update(environment)
        clean_import_path(self.start_directory)
        conn = FramedSocket(socket.socket(fileno=fd), FrameReader())
        Session(
            conn,
            order.directory,
            order.key,
            self.status,
            order.max_message_size,
            order.leftover,
            order.bytes_sent,
            order.name,
            quota=order.quota,
        ).serve()
        self.status.state = SessionStatus.FINISHED

    def _kill(self) -> None:
        if self.session:
            kill_group(self.session)

    def _reap(self, block: bool = False) -> None:
        """Reap an ended session: kill its group while its id cannot be reused yet, reap, kill strays, report."""
        pid = self.session
        if not pid:
            return
        if hasattr(os, "waitid"):
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)) is None:
                return
            kill_group(pid)  # still a zombie, so its process group id cannot belong to anyone else yet
            _, wait_status = os.waitpid(pid, 0)
        else:
            done, wait_status = os.waitpid(pid, 0 if block else os.WNOHANG)
            if done == 0:
                return
            kill_group(pid)
        self.session = 0
        # what the session left outside its group: the spawner's only other children but the standby
        kill_children(keep=(self.standby.pid,) if self.standby is not None else ())
        self._report(ENDED + _PIDS.pack(pid, wait_status))

    def _reap_standby(self) -> None:
        """Forget a standby that ended before its session (it could not enter its cgroup, say): the next session
        is forked when it starts."""
        standby = self.standby
        if standby is not None and os.waitpid(standby.pid, os.WNOHANG)[0]:
            logger.warning("the standby session process %d ended before its session", standby.pid)
            standby.sock.close()
            self.standby = None

    def _check(self, request: Dict[str, Any]) -> Dict[str, List[str]]:
        """Fork a process that becomes the session user and looks at what sessions will need and must not read."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                become(self.user)
                os.write(write_fd, json.dumps(self._session_view(request)).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as answer:
            text = answer.read(MAX_REPORT - 1)
        os.waitpid(pid, 0)
        return json.loads(text.decode()) if text else {"problems": ["the session user's check failed"]}

    def _session_view(self, request: Dict[str, Any]) -> Dict[str, List[str]]:
        name = self.user.name
        problems = []
        library = os.path.dirname(os.__file__)
        if not os.access(library, os.R_OK | os.X_OK):
            problems.append(
                "the session user %s cannot read this board's Python (%s): make every directory above it searchable "
                "by that user (chmod o+x), install it where that user can read it, or name another --session-user"
                % (name, library)
            )
        if not os.access(request["work_dir"], os.X_OK):
            problems.append(
                "the session user %s cannot reach the work directory %s: every directory above it must be "
                "searchable by that user (chmod o+x), or give another --work-dir" % (name, request["work_dir"])
            )
        readable = [path for path in request["private"] if os.access(path, os.R_OK)]
        dropped = [p for p in unsafe_import_paths(sys.path, self.start_directory) if p and p != self.start_directory]
        return {"problems": problems, "readable": readable, "dropped": dropped}


def _order(body: bytes) -> SessionOrder:
    fields = json.loads(body.decode())
    fields["leftover"] = fields["leftover"].encode("latin-1")
    return SessionOrder(**fields)


def _hand_over(standby: _Standby, order: bytes, fd: int) -> bool:
    """Send ``standby`` its session's order and connection; False if it is gone."""
    try:
        standby.sock.sendmsg([order], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])
    except OSError as exc:
        logger.warning("the standby session process %d is gone (%s); forking the session's", standby.pid, exc)
        _retire(standby)
        return False
    standby.sock.close()
    return True


def _retire(standby: _Standby) -> None:
    """End a standby that will have no session: kill its group and reap it."""
    standby.sock.close()
    kill_group(standby.pid)
    try:
        os.kill(standby.pid, signal.SIGKILL)
        os.waitpid(standby.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _received_fds(ancillary: List[Tuple[int, int, bytes]]) -> List[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
