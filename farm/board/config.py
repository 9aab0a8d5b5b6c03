"""The board daemon's configuration: its options, and :class:`BoardConfig`, made from them in one place.

Standard library only, Python >= 3.8.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..cli_types import count, seconds, whole
from ..net.credentials import PLAIN, Credentials
from ..net.gate import Limits, add_admission_arguments
from ..net.secret import add_secret_argument
from ..net.sockets import parse_address
from ..net.tls import add_tls_arguments
from ..protocol.framing import DEFAULT_MAX_PAYLOAD
from . import confine
from .sandbox import DEFAULT_SESSION_USER
from .session import DEFAULT_SESSION_QUOTA_FILES, DEFAULT_SESSION_QUOTA_MB, MB

#: Connections still in their handshake at once (``--max-unproven``); more are closed at accept.
MAX_PENDING_HANDSHAKES = 64
#: Of those, from one address (``--max-unproven-per-address``): silent peers of one address leave the others room.
MAX_PENDING_PER_ADDRESS = 16
#: Seconds a new connection has to say hello (``--handshake-timeout``).
HANDSHAKE_TIMEOUT = 10.0
#: Longest a session may last by default, in seconds (the board's ``--max-session-time``).
DEFAULT_MAX_SESSION_TIME = 3600.0

megabytes = whole(0, "a number of MB")


@dataclass(frozen=True)
class BoardConfig:
    """What a board daemon serves and how: where it listens or dials, how it admits clients, what a session may use.

    Made from the options by :func:`board_config`; the defaults are the options' defaults.
    """

    host: str = "127.0.0.1"  # where it listens; through a proxy, the proxy's address
    port: int = 9090  # the first port to try (0: the system picks); through a proxy, the proxy's port
    port_end: int = 9199  # the end of the port range, exclusive
    key: str = ""  # the board's key, e.g. rasp4
    name: str = ""  # the board's name in reports ("": HOSTNAME:PORT, or HOSTNAME/PID through a proxy)
    work_dir: Optional[str] = None  # where session directories go (None: a temporary directory of its own)
    tracker: Optional[Tuple[str, int]] = None  # the tracker it registers with, if any
    custom_addr: Optional[str] = None  # the address the tracker gives clients (None: ours)
    through_proxy: bool = False  # dial out to the proxy at host:port instead of listening
    credentials: Credentials = field(default=PLAIN, repr=False)  # the farm secret and TLS; kept out of logs
    max_message_size: int = DEFAULT_MAX_PAYLOAD  # largest payload of one message, in bytes
    handshake_timeout: float = HANDSHAKE_TIMEOUT  # seconds a new connection has to say hello
    max_pending: int = MAX_PENDING_HANDSHAKES  # connections in their handshake at once
    max_pending_per_address: int = MAX_PENDING_PER_ADDRESS  # of those, from one address
    session_quota: int = DEFAULT_SESSION_QUOTA_MB * MB  # bytes a session's directory may hold (0: no limit)
    session_quota_files: int = DEFAULT_SESSION_QUOTA_FILES  # files and directories it may hold (0: no limit)
    max_session_time: float = DEFAULT_MAX_SESSION_TIME  # seconds (0: no limit)

    @property
    def unproven(self) -> Limits:
        """The bounds on connections still in their handshake."""
        return Limits(self.max_pending, self.max_pending_per_address, self.handshake_timeout)


def board_config(args: argparse.Namespace, credentials: Credentials) -> BoardConfig:
    """The configuration the options of :func:`add_arguments` ask for, with ``credentials`` read as they say."""
    return BoardConfig(
        host=args.host,
        port=args.port,
        port_end=args.port_end,
        key=args.key,
        name=args.name,
        work_dir=args.work_dir,
        tracker=args.tracker,
        custom_addr=args.custom_addr,
        through_proxy=args.through_proxy,
        credentials=credentials,
        max_message_size=args.max_message_size,
        handshake_timeout=args.handshake_timeout,
        max_pending=args.max_unproven,
        max_pending_per_address=args.max_unproven_per_address,
        session_quota=args.session_quota * MB,
        session_quota_files=args.session_quota_files,
        max_session_time=args.max_session_time,
    )


def session_limits(args: argparse.Namespace) -> confine.Limits:
    """What each session's processes may use together, as the options ask (the spawner holds them)."""
    memory = confine.default_memory() if args.session_memory is None else args.session_memory * MB
    return confine.Limits(processes=args.session_processes, open_files=args.session_open_files, memory=memory)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The board server's options, shared by ``python -m farm.server`` and ``farm server``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9090, help="first port to try; 0 lets the system pick")
    parser.add_argument("--port-end", type=int, default=9199, help="end of the port range, exclusive")
    parser.add_argument("--key", default="", help="the board's key, e.g. rasp4")
    parser.add_argument("--work-dir", help="where session directories go (default: a fresh temporary directory)")
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=DEFAULT_MAX_PAYLOAD,
        help="largest payload of one message, in bytes (default: %d)" % DEFAULT_MAX_PAYLOAD,
    )
    parser.add_argument(
        "--session-quota",
        metavar="MB",
        type=megabytes,
        default=DEFAULT_SESSION_QUOTA_MB,
        help="most a session's directory may hold, in MB: larger uploads are refused, files written past it "
        "fail (EFBIG), and a session whose directory outgrows it is ended; 0: no limit (default: %d)"
        % DEFAULT_SESSION_QUOTA_MB,
    )
    parser.add_argument(
        "--session-quota-files",
        metavar="N",
        type=count,
        default=DEFAULT_SESSION_QUOTA_FILES,
        help="most files and directories a session's directory may hold: a session found with more is ended; "
        "0: no limit (default: %d)" % DEFAULT_SESSION_QUOTA_FILES,
    )
    parser.add_argument(
        "--max-session-time",
        metavar="SECONDS",
        type=seconds(),
        default=DEFAULT_MAX_SESSION_TIME,
        help="longest a session may last: a client may ask for a shorter session timeout, never a longer one, "
        "and one that asks for none gets this; 0: no limit (default: %g)" % DEFAULT_MAX_SESSION_TIME,
    )
    parser.add_argument(
        "--session-memory",
        metavar="MB",
        type=megabytes,
        default=None,
        help="most memory a session's processes may use together, in MB (each process's private memory where "
        "the board has no memory cgroup); 0: no limit (default: half of the board's memory)",
    )
    parser.add_argument(
        "--session-processes",
        metavar="N",
        type=count,
        default=confine.DEFAULT_PROCESSES,
        help="most processes and threads a session may run at once (with no pids cgroup: RLIMIT_NPROC, at what "
        "the session's user runs already plus N); 0: no limit (default: %d)" % confine.DEFAULT_PROCESSES,
    )
    parser.add_argument(
        "--session-open-files",
        metavar="N",
        type=count,
        default=confine.DEFAULT_OPEN_FILES,
        help="most files each process of a session may hold open (RLIMIT_NOFILE); 0: the daemon's own limit "
        "(default: %d)" % confine.DEFAULT_OPEN_FILES,
    )
    parser.add_argument(
        "--handshake-timeout", type=float, default=HANDSHAKE_TIMEOUT, help="seconds a new connection has to say hello"
    )
    parser.add_argument(
        "--tracker",
        metavar="HOST:PORT",
        type=parse_address,
        help="register with this tracker; clients come through it",
    )
    parser.add_argument("--name", default="", help="the board's name in reports (default: HOSTNAME:PORT)")
    parser.add_argument("--custom-addr", metavar="ADDR", help="the address the tracker gives clients (default: ours)")
    parser.add_argument(
        "--through-proxy",
        action="store_true",
        help="dial out to the proxy at --host:--port instead of listening (for boards behind NAT)",
    )
    parser.add_argument(
        "--session-user",
        metavar="NAME",
        help="the user a daemon started as root runs sessions as (default: %s; better a user of its own that owns "
        "nothing); a daemon that is not root runs them as itself" % DEFAULT_SESSION_USER,
    )
    add_secret_argument(parser)
    add_tls_arguments(parser)
    add_admission_arguments(parser, Limits(MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_ADDRESS, 0.0), with_timeout=False)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
