"""The farm secret: where it comes from, and the proof exchange alone on a blocking socket.

A secret lives in a file named by ``--secret-file PATH`` or by the environment
variable ``REMOTEDEV_SECRET_FILE`` (never on a command line, where ``ps`` would
show it). With one, every daemon refuses peers that cannot prove they hold it
(:mod:`farm.protocol.auth`, run as part of each connection's opening:
:mod:`farm.protocol.opening`); without one, the farm speaks plain TVM. Standard
library only: boards use it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import stat
from typing import Optional

from ..protocol.auth import AuthError
from ..protocol.opening import Connector, Kind, Opened
from .opening import OpeningClosed, OpeningTimeout, open_socket

logger = logging.getLogger("farm.auth")

#: The environment variable naming the secret file, for every daemon, CLI and client.
SECRET_ENV = "REMOTEDEV_SECRET_FILE"
#: How long either side waits for the other's part of the exchange.
AUTH_TIMEOUT = 10.0
#: A secret shorter than this is refused: it could be guessed.
MIN_SECRET_BYTES = 16
_MAX_SECRET_BYTES = 4096


def load_secret(path: str) -> bytes:
    """The secret in ``path`` (trailing newlines stripped); ValueError naming the problem."""
    try:
        with open(path, "rb") as handle:
            secret = handle.read(_MAX_SECRET_BYTES + 1).rstrip(b"\r\n")
            mode = os.fstat(handle.fileno()).st_mode
    except OSError as exc:
        raise ValueError("cannot read the secret file %s: %s" % (path, exc.strerror or exc)) from None
    if len(secret) > _MAX_SECRET_BYTES:
        raise ValueError("the secret file %s holds more than %d bytes" % (path, _MAX_SECRET_BYTES))
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            "the secret in %s is %d bytes; use at least %d random bytes (e.g. `head -c 32 /dev/urandom | base64`)"
            % (path, len(secret), MIN_SECRET_BYTES)
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("the secret file %s can be read by other users (mode %o): chmod 600 it", path, mode & 0o777)
    return secret


def secret_from(path: Optional[str] = None) -> Optional[bytes]:
    """The secret of ``path``, else of ``$REMOTEDEV_SECRET_FILE``, else None (no secret: plain TVM)."""
    path = path or os.environ.get(SECRET_ENV)
    return load_secret(path) if path else None


def add_secret_argument(parser: argparse.ArgumentParser) -> None:
    """``--secret-file PATH``, the same on every daemon and command."""
    parser.add_argument(
        "--secret-file",
        metavar="PATH",
        default=os.environ.get(SECRET_ENV) or None,
        help="the farm secret's file: peers must prove they hold it (default: $%s; none: plain TVM)" % SECRET_ENV,
    )


def daemon_secret(path: Optional[str], host: Optional[str], what: str) -> Optional[bytes]:
    """The secret a daemon starts with (``--secret-file``, else the environment's), warning when ``what`` listens
    on ``host`` beyond this machine without one (``host`` None: it listens nowhere). An unusable secret file is
    logged and ends the daemon with exit code 2."""
    try:
        secret = secret_from(path)
    except ValueError as exc:
        logger.error("%s", exc)
        raise SystemExit(2) from None
    if host is not None:
        warn_if_exposed(host, secret, what)
    return secret


def warn_if_exposed(host: str, secret: Optional[bytes], what: str) -> None:
    """Log a warning when ``what`` listens beyond this machine with no secret to keep strangers out."""
    if secret is not None:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        logger.warning(
            "the %s listens on %s without a farm secret: anyone who can reach it can use it, and boards run the "
            "code they are sent; give every daemon --secret-file (see docs/security.md)",
            what,
            host,
        )


def prove_on_socket(sock: socket.socket, secret: bytes, timeout: float = AUTH_TIMEOUT) -> bytes:
    """Run the exchange as the connecting side of a blocking socket; return bytes that came after it.

    AuthError if the other end does not hold the secret, refuses us, or does
    not answer within ``timeout`` (an end without a secret says nothing).
    """
    try:
        opened = open_socket(sock, Connector(Kind.PROOF, secret), timeout)
    except OpeningTimeout:
        raise AuthError(
            "no answer to our proof of the farm secret within %g s (does the other end have a secret?)" % timeout
        ) from None
    except OpeningClosed:
        raise AuthError("the other end closed the connection during authentication (a different secret?)") from None
    assert isinstance(opened, Opened)  # (the proof alone ends opened, or raises)
    return opened.leftover
