"""The board daemon's sessions: started through the spawner, watched, ended, and their end told to the client.

One session runs at a time, in a process the spawner (:mod:`farm.board.spawner`)
forks ahead of it, in the cgroup the supervisor made for it. The supervisor
hands it the client's connection, learns from the spawner's reports when it
started and how it ended, ends it when it passes its time, its quota or loses
its client, and then tells the client how and when it ran, removes its
directory and its cgroup. The :class:`~farm.board.watchdog.Watchdog` cleans up
after a daemon that dies. Standard library only, Python >= 3.8.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import selectors
import shutil
import signal
import socket
import struct
import tempfile
import termios
import time
from typing import Callable, Optional, Tuple, Union

from ..lifetime import become_subreaper, kill_children
from ..net.transport import send_buffers
from ..protocol.framing import encode_frame
from ..protocol.ops import Op
from . import confine
from .config import BoardConfig
from .registration import ProxyDialer, TrackerLink
from .relay import SessionRelay
from .session import SessionStatus, directory_usage, megabytes, over_files_message, over_quota_message
from .spawner import ENDED, FAILED, STARTED, SessionOrder, Spawner, SpawnerGone, report_numbers
from .watchdog import Watchdog

logger = logging.getLogger("farm.server")

#: Seconds between two checks of the running session's directory against the quota.
QUOTA_CHECK_PERIOD = 1.0
#: Seconds the daemon tries to tell a client how its session ended.
NOTIFY_TIMEOUT = 2.0
#: Seconds a stopping daemon waits for the spawner to report the end of the session it killed.
STOP_TIMEOUT = 10.0


class ActiveSession:
    """The session being served: its process, connection and directory, and why it may have to end."""

    def __init__(self, sock: socket.socket, peer: str, directory: str, timeout: Optional[float],
                 status: SessionStatus, relay: Optional[SessionRelay] = None,
                 cgroup: Optional[confine.SessionCgroup] = None, timeout_reason: str = "",
                 now: Optional[float] = None) -> None:  # fmt: skip
        self.pid = 0  # once the spawner reported it
        self.cgroup = cgroup  # the session's own cgroup, where the board has one
        self.sock = sock
        self.relay = relay  # under TLS: the daemon relays between the client and the session process
        self.sent_before = 0  # bytes sent on the connection before the session process took over
        # what bytes_written counts beyond the bytes written: the SYN of a connection the board dialled (through a
        # proxy), which the kernel counts as acknowledged; nothing on one it accepted
        self.counted_beyond = 0
        self.peer = peer
        self.directory = directory
        self.status = status  # shared with the session process; one session at a time
        self.status.state = SessionStatus.IDLE
        self.started = time.monotonic() if now is None else now
        self.started_at = time.time()  # the board's clock, reported to the client at the end
        self.timeout = timeout
        self.timeout_reason = timeout_reason  # which limit the timeout is, for the client: see session_time
        self.deadline = self.started + timeout if timeout else None
        self.timed_out = False
        self.abandoned = False  # the client hung up while the session ran code
        self.start_failure = ""  # why the spawner could not start the session process
        self.over_quota = 0  # the directory's size once found over the quota
        self.over_files = False  # the directory was found to hold more entries than its quota
        self.oom_kills = 0  # processes of the session the kernel killed over its memory limit
        self.next_quota_check = self.started + QUOTA_CHECK_PERIOD

    def expired(self, now: float) -> bool:
        """Whether the session reached its timeout at ``now`` and was not ended for it yet."""
        return self.deadline is not None and now >= self.deadline and not self.timed_out

    def quota_check_due(self, now: float) -> bool:
        """Whether its directory is to be measured at ``now`` (not once it was found over a quota)."""
        return now >= self.next_quota_check and not (self.over_quota or self.over_files)


def describe_exit(wait_status: int) -> Tuple[str, Optional[int], Optional[int]]:
    """``("was killed by signal 11 (SIGSEGV)", 11, None)`` or ``("exited with code 3", None, 3)``."""
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        return "was killed by signal %d (%s)" % (number, name), number, None
    code = os.WEXITSTATUS(wait_status)
    return "exited with code %d" % code, None, code


def session_time(asked: Optional[float], limit: float) -> Tuple[Optional[float], str]:
    """The session's timeout: what the client asked for, at most ``limit`` (--max-session-time; 0: none); and
    which limit it is, for the client."""
    if asked and (not limit or asked <= limit):
        return asked, "the session timeout of %g s" % asked
    if not limit:
        return None, ""
    wanted = "asked for %g s" % asked if asked else "asked for none"
    return limit, "the board's maximum session time of %g s (--max-session-time; the client %s)" % (limit, wanted)


def end_message(session: ActiveSession, wait_status: int, reason: str, config: BoardConfig, memory: int) -> str:
    """What the client is told of how its session ended ("": it ended as asked); ``memory``: its memory limit."""
    how, signal_number, exit_code = describe_exit(wait_status)
    activity = session.status.activity
    if reason:
        return reason
    if session.start_failure:
        return "the board could not start a session process: %s" % session.start_failure
    if session.over_quota:
        quota = over_quota_message(session.over_quota, config.session_quota)
        return "%s; the board ended the session while %s" % (quota, activity)
    if session.over_files:
        return "%s; the board ended the session while %s" % (over_files_message(config.session_quota_files), activity)
    if session.abandoned:
        return "the client left while %s; the board ended the session" % activity
    if session.timed_out:
        return "%s expired while %s; the board ended the session" % (session.timeout_reason, activity)
    if signal_number is None and exit_code == 0 and session.status.state == SessionStatus.FINISHED:
        return ""
    if session.oom_kills:
        return (
            "the session went over its memory limit of %s MB (--session-memory): the kernel killed %d of its "
            "processes, and the board's session process %s while %s"
            % (megabytes(memory), session.oom_kills, how, activity)
        )
    return "the board's session process %s while %s" % (how, activity)


class Supervisor:
    """Runs one session at a time through ``spawner``; see the module docstring.

    ``on_spawner_gone`` is called once the spawner is found dead: no session can start any more.
    """

    def __init__(
        self,
        config: BoardConfig,
        name: str,
        work_dir: str,
        spawner: Spawner,
        confinement: Optional[confine.Confinement],
        selector: selectors.BaseSelector,
        link: Optional[Union[TrackerLink, ProxyDialer]],
        on_spawner_gone: Callable[[SpawnerGone], None],
    ) -> None:
        self.config = config
        self.name = name  # the board's name, in each session's notice
        self.work_dir = work_dir  # where session directories go
        self._spawner = spawner
        self._confinement = confinement  # the sessions' cgroups, where the board has them
        self.limits = spawner.limits  # processes, open files and memory of each session
        self._selector = selector
        self._link = link  # told when a session starts and ends
        self._on_spawner_gone = on_spawner_gone
        self.active: Optional[ActiveSession] = None
        self.spawner_alive = True
        self._subreaper = False
        self._watchdog: Optional[Watchdog] = None
        self._next_cgroup: Optional[confine.SessionCgroup] = None  # the standby's, made ahead of the next session

    def begin(self, own_work_dir: Optional[str]) -> None:
        """Fork the watchdog (which removes ``own_work_dir`` too, if the daemon dies) and become a subreaper."""
        self._watchdog = Watchdog(own_work_dir, self._confinement)
        self._subreaper = become_subreaper()  # what sessions leave behind in sessions of their own comes here
        self._selector.register(self._spawner.sock, selectors.EVENT_READ, self)
        self._stand_by()

    @property
    def watchdog(self) -> Watchdog:
        assert self._watchdog is not None, "begin() forks the watchdog"
        return self._watchdog

    def next_deadline(self) -> Optional[float]:
        """When the running session's timeout falls, if it has one."""
        return self.active.deadline if self.active is not None else None

    # --- start --------------------------------------------------------------

    def start(
        self, sock: socket.socket, peer: str, timeout: Optional[float], leftover: bytes, bytes_sent: int
    ) -> None:
        """Start a session on ``sock`` (``leftover``: bytes read past the handshake; ``bytes_sent``: written)."""
        try:
            directory = self._session_directory()
        except OSError as exc:
            logger.error("cannot make a session directory for %s: %s", peer, exc)
            sock.close()
            return
        cgroup, self._next_cgroup = self._next_cgroup, None
        try:
            if cgroup is None and self._confinement is not None:
                cgroup = self._confinement.session()
        except OSError as exc:
            logger.error("cannot make a cgroup for the session of %s: %s", peer, exc)
            shutil.rmtree(directory, ignore_errors=True)
            sock.close()
            return
        relay = SessionRelay(sock, self._selector) if self.config.credentials.tls is not None else None
        timeout, timeout_reason = session_time(timeout, self.config.max_session_time)
        active = ActiveSession(sock, peer, directory, timeout, self._spawner.status, relay, cgroup, timeout_reason)
        active.sent_before = bytes_sent
        active.counted_beyond = counted_beyond(sock, bytes_sent) if relay is None else 0
        order = SessionOrder(
            directory,
            leftover,
            bytes_sent,
            self.config.key,
            self.name,
            self.config.session_quota,
            self.config.max_message_size,
            cgroup.name if cgroup is not None else "",
        )
        self.active = active
        try:
            self._spawner.start(order, relay.child_end if relay is not None else sock)
        except SpawnerGone as exc:
            self._spawner_gone(exc)
            return
        finally:
            if relay is not None:
                relay.child_end.close()  # the session process has its own copy now
        if relay is not None:
            relay.register()
        if self._link is not None:
            self._link.session_started()

    def _stand_by(self) -> None:
        """Have the spawner fork the next session's process now, in the cgroup made for it here: the slow part of
        starting a session (the move into a cgroup) is then done before its client comes."""
        if self._next_cgroup is None and self._confinement is not None:
            try:
                self._next_cgroup = self._confinement.session()
            except OSError as exc:
                logger.error("cannot make a cgroup for the next session ahead of it: %s", exc)
                return
        try:
            self._spawner.stand_by(self._next_cgroup.name if self._next_cgroup is not None else "")
        except SpawnerGone as exc:
            self._spawner_gone(exc)

    def _session_directory(self) -> str:
        """A new session directory, mode 700, owned by the session user."""
        directory = tempfile.mkdtemp(prefix="session-", dir=self.work_dir)
        user = self._spawner.user
        if user.switch:
            try:
                os.chown(directory, user.uid, user.gid)
            except OSError:
                os.rmdir(directory)
                raise
        return directory

    # --- the spawner's reports ----------------------------------------------

    def on_report(self) -> None:
        """Read one report of the spawner: the session started, ended, or could not start."""
        try:
            kind, body = self._spawner.receive()
        except SpawnerGone as exc:
            self._spawner_gone(exc)
            return
        active = self.active
        if active is None:
            logger.error("the session spawner reported %r with no session running; ignored", kind)
        elif kind == STARTED:
            active.pid = report_numbers(body)[0]
            self.watchdog.watch(active.pid, active.directory)
            logger.info(
                "session from %s started (pid %d%s)",
                active.peer,
                active.pid,
                ", timeout %g s" % active.timeout if active.timeout else "",
            )
        elif kind == ENDED:
            self.watchdog.watch(0)
            self._remove_cgroup(active)
            self._end_session(active, report_numbers(body)[1])
            self._stand_by()
        elif kind == FAILED:
            active.start_failure = body.decode("utf-8", "replace")
            self._remove_cgroup(active)
            self._end_session(active, 0)
            self._stand_by()
        else:
            logger.error("the session spawner sent an unknown report %r; ignored", kind)

    def _spawner_gone(self, exc: SpawnerGone) -> None:
        self.spawner_alive = False
        self._on_spawner_gone(exc)

    # --- limits -------------------------------------------------------------

    def tick(self, now: float) -> None:
        """End the session if at ``now`` it passed its timeout, its quota, or its client left while it runs code."""
        active = self.active
        if active is None:
            return
        if active.expired(now):
            logger.warning("session from %s reached its timeout of %g s; killing it", active.peer, active.timeout)
            active.timed_out = True
            self._kill_session(active)
        if (self.config.session_quota or self.config.session_quota_files) and active.quota_check_due(now):
            self._check_quota(active, now)
        if not active.abandoned and hung_up_while_running(active):
            logger.warning("client %s left while %s; killing the session", active.peer, active.status.activity)
            active.abandoned = True
            self._kill_session(active)

    def _check_quota(self, active: ActiveSession, now: float) -> None:
        """End the session if its directory holds more than its quotas (RLIMIT_FSIZE bounds each file, not the sum).

        Counting stops past the quota of entries, so a directory of millions of files costs no more to check.
        """
        active.next_quota_check = now + QUOTA_CHECK_PERIOD
        quota, quota_files = self.config.session_quota, self.config.session_quota_files
        usage = directory_usage(active.directory, quota_files)
        if quota_files and usage.entries > quota_files:
            active.over_files = True
            message = over_files_message(quota_files)
        elif quota and usage.size > quota:
            active.over_quota = usage.size
            message = over_quota_message(usage.size, quota)
        else:
            return
        logger.warning("session from %s: %s; killing it", active.peer, message)
        self._kill_session(active)

    def _kill_session(self, active: ActiveSession) -> None:
        """SIGKILL every process of the session: its cgroup where it has one, and its process group (by the
        spawner, which kills only a session it has not reaped yet, and reports the end)."""
        if active.cgroup is not None:
            active.cgroup.kill()
        try:
            self._spawner.kill()
        except SpawnerGone as exc:
            self._spawner_gone(exc)

    # --- the end ------------------------------------------------------------

    def _remove_cgroup(self, active: ActiveSession) -> None:
        """Once the session process is reaped: note what the cgroup saw, kill what is left in it, remove it."""
        cgroup = active.cgroup
        if cgroup is None:
            return
        active.oom_kills = cgroup.oom_kills()
        refused = cgroup.refused_forks()
        if refused:
            logger.warning("session from %s: the process limit of %d refused %d fork(s)", active.peer,
                           self.limits.processes, refused)  # fmt: skip
        if not cgroup.remove():
            logger.error("the cgroup of the session from %s could not be emptied and removed", active.peer)

    def _end_session(self, active: ActiveSession, wait_status: int, reason: str = "") -> None:
        """Tell the client how the (reaped) session process ended and when it ran (board clock); clean up."""
        self.active = None
        if self._link is not None and not reason:
            self._link.session_ended()
        _, signal_number, exit_code = describe_exit(wait_status)
        message = end_message(active, wait_status, reason, self.config, self.limits.memory)
        elapsed = time.monotonic() - active.started
        if message:
            logger.warning("session from %s ended after %.1f s: %s", active.peer, elapsed, message)
        else:
            logger.info("session from %s ended after %.1f s", active.peer, elapsed)
        shutil.rmtree(active.directory, ignore_errors=True)  # before the client sees the end of the stream
        if active.relay is not None:
            active.relay.drain_child()
        notice = None
        if not reply_cut_short(active):  # else no frame can follow on the connection
            notice = {
                "message": message,
                "signal": signal_number,
                "exit_code": exit_code,
                "timed_out": active.timed_out,
                "board": self.name,
                "started": active.started_at,
                "ended": time.time(),
            }
        if active.relay is not None:
            active.relay.finish(b"".join(encode_frame(Op.SESSION_END, 0, notice)) if notice else b"", NOTIFY_TIMEOUT)
        else:
            if notice is not None:
                _notify(active.sock, notice)
            active.sock.close()

    def close(self) -> None:
        """End any session (the daemon is shutting down), close the spawner, stop the watchdog, remove the cgroups."""
        active = self.active
        if active is not None:
            wait_status = self._stop_session(active)
            self._remove_cgroup(active)
            self._end_session(active, wait_status, "the board daemon shut down")
        self._spawner.close()
        self._kill_strays()
        self.watchdog.stop()
        if self._confinement is not None:
            self._confinement.destroy()

    def _stop_session(self, active: ActiveSession) -> int:
        """Kill the running session and wait for the spawner to report its end: its wait status.

        With the spawner gone, the session died with it (its parent-death signal): SIGKILL.
        """
        if active.cgroup is not None:
            active.cgroup.kill()
        if self.spawner_alive:
            try:
                self._spawner.kill()
                self._spawner.sock.settimeout(STOP_TIMEOUT)
                while True:
                    kind, body = self._spawner.receive()
                    if kind == ENDED:
                        self.watchdog.watch(0)
                        return report_numbers(body)[1]
            except SpawnerGone:
                pass
        self.watchdog.watch(0)
        self._kill_strays()
        return signal.SIGKILL

    def _kill_strays(self) -> None:
        """Kill and reap what a session left behind that came to the daemon, a subreaper: with the spawner
        gone, its orphans come here. The daemon's other children are the watchdog and the spawner."""
        if self._subreaper:
            kill_children(keep=(self.watchdog.pid, self._spawner.pid))


def reply_cut_short(active: ActiveSession) -> bool:
    """Whether the dead session process left a reply half sent."""
    if active.status.state != SessionStatus.SENDING:
        return False
    if active.relay is not None:  # what it wrote to the relay reaches the client before anything else
        written: Optional[int] = active.sent_before + active.relay.from_child
    else:
        written = bytes_written(active.sock)
        written = written - active.counted_beyond if written is not None else None
    return written is None or written < active.status.reply_end


def _notify(sock: socket.socket, notice: dict) -> None:
    try:
        sock.settimeout(NOTIFY_TIMEOUT)
        send_buffers(sock, encode_frame(Op.SESSION_END, 0, notice))
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        logger.info("could not tell the client: %s", exc)


def hung_up_while_running(active: ActiveSession) -> bool:
    """Whether the client closed its end while the session process runs code (and so cannot notice).

    An idle session process sees the end of the stream itself; one running a
    long call would keep the board until the call returned. Linux only
    (``POLLRDHUP``); elsewhere such a session runs to the end of its call.
    """
    hangup = getattr(select, "POLLRDHUP", 0)
    if not hangup or active.status.state != SessionStatus.RUNNING:
        return False
    poller = select.poll()
    poller.register(active.sock, hangup)
    return bool(poller.poll(0))


def counted_beyond(sock: socket.socket, sent: int) -> int:
    """What :func:`bytes_written` counts on ``sock`` beyond the ``sent`` bytes written to it so far: 1 for the SYN of
    a connection this end dialled, which the kernel counts as an acknowledged byte; 0 for one it accepted."""
    written = bytes_written(sock)
    return written - sent if written is not None else 0


def bytes_written(sock: socket.socket) -> Optional[int]:
    """Bytes written to a TCP socket so far by anyone holding it: acknowledged plus queued (Linux)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        queued = struct.unpack("=i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, AttributeError):
        return None
    if len(info) < 128:
        return None
    return struct.unpack_from("=Q", info, 120)[0] + queued  # tcpi_bytes_acked
