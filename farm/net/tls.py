"""Optional TLS on every connection of the farm (standard library ``ssl``; boards use it).

A daemon that listens presents its certificate (``--tls-cert``, ``--tls-key``);
whoever connects (a client, a board dialling its tracker or proxy, the proxy
dialling the tracker) checks that certificate against ``--tls-ca`` and the
name it dialled, or ``--tls-server-name`` when one certificate serves the
whole farm. TLS keeps the traffic private and proves the daemons' identity;
who may connect stays the farm secret's job (:mod:`farm.net.secret`), whose
exchange then runs inside TLS. Each option falls back to an environment
variable, so daemons, the plugin and its xdist workers share one setting.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from typing import TYPE_CHECKING, Dict, Mapping, Optional

if TYPE_CHECKING:  # ssl is imported when TLS is on: a board without it does not load it
    import ssl

logger = logging.getLogger("farm.tls")

#: The environment variable behind each option (the option's name is ``--tls-`` + the key, with dashes).
ENV = {
    "cert": "REMOTEDEV_TLS_CERT",
    "key": "REMOTEDEV_TLS_KEY",
    "ca": "REMOTEDEV_TLS_CA",
    "server_name": "REMOTEDEV_TLS_SERVER_NAME",
}
#: ``--tls-ca system``: trust the system's certificate authorities.
SYSTEM_CA = "system"
#: How long either side of a TLS handshake waits for the other.
HANDSHAKE_TIMEOUT = 10.0


class TlsConfig:
    """Where the farm's TLS files are. TLS is on when any of them is named."""

    def __init__(
        self,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        ca: Optional[str] = None,
        server_name: Optional[str] = None,
    ) -> None:
        self.cert = cert or None
        self.key = key or None
        self.ca = ca or None
        self.server_name = server_name or None
        self._server: Optional[ssl.SSLContext] = None
        self._client: Optional[ssl.SSLContext] = None

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> TlsConfig:
        """The configuration ``$REMOTEDEV_TLS_*`` name (TLS off when none is set)."""
        environ = os.environ if environ is None else environ
        return cls(**{field: environ.get(name) for field, name in ENV.items()})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TlsConfig:
        """The configuration of the options :func:`add_tls_arguments` added."""
        return cls(**{field: getattr(args, "tls_" + field) for field in ENV})

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    def as_env(self) -> Dict[str, str]:
        """The environment variables that carry this configuration to another process."""
        return {name: getattr(self, field) for field, name in ENV.items() if getattr(self, field)}

    def __repr__(self) -> str:
        return "TlsConfig(%s)" % ", ".join("%s=%r" % (f, getattr(self, f)) for f in ENV if getattr(self, f))

    def server_context(self) -> ssl.SSLContext:
        """The context a listening daemon accepts TLS connections with; ValueError naming what is missing."""
        if self._server is None:
            import ssl

            if not (self.cert and self.key):
                raise ValueError("a daemon that listens with TLS needs both --tls-cert and --tls-key")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    "cannot load the TLS certificate %s with its key %s: %s" % (self.cert, self.key, _reason(exc))
                ) from None
            self._server = context
        return self._server

    def client_context(self) -> ssl.SSLContext:
        """The context for connecting: checks the other end's certificate; ValueError naming what is missing."""
        if self._client is None:
            import ssl

            if not self.ca:
                raise ValueError(
                    "connecting with TLS needs --tls-ca (the certificate authority that signed the farm's "
                    "certificates, or %r for the system's)" % SYSTEM_CA
                )
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the certificate and the name
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                if self.ca == SYSTEM_CA:
                    context.load_default_certs()
                else:
                    context.load_verify_locations(cafile=self.ca)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError("cannot load the TLS CA %s: %s" % (self.ca, _reason(exc))) from None
            self._client = context
        return self._client

    def server_hostname(self, host: str) -> str:
        """The name the other end's certificate must carry when we dial ``host``."""
        return self.server_name or host

    def check(self, listens: bool, dials: bool) -> None:
        """Load what a process that ``listens`` and/or ``dials`` needs now; ValueError naming the problem."""
        if listens:
            self.server_context()
        if dials:
            self.client_context()

    def wrap_client(self, sock: socket.socket, host: str) -> ssl.SSLSocket:
        """Run the TLS handshake on a connected blocking socket (its timeout applies); TlsError if it fails."""
        import ssl

        try:
            return self.client_context().wrap_socket(sock, server_hostname=self.server_hostname(host))
        except ssl.SSLError as exc:
            raise TlsError("TLS handshake with %s failed: %s" % (host, describe_failure(exc))) from None
        except ValueError as exc:
            raise TlsError(str(exc)) from None
        except (ConnectionError, EOFError):
            raise TlsError(
                "%s closed the connection during the TLS handshake (does it use TLS, with this farm's CA?)" % host
            ) from None


class TlsError(ConnectionError):
    """A TLS handshake failed; the message names why."""


def describe_failure(exc: BaseException) -> str:
    """A TLS failure in words: a certificate problem, or the other end not speaking TLS."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return "the certificate was refused: %s" % (exc.verify_message or exc.reason)
    reason = _reason(exc)
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNEXPECTED_EOF_WHILE_READING", "PACKET_LENGTH_TOO_LONG"):
        return "the other end does not speak TLS (%s)" % reason
    if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"):
        return "the other end refused this end's certificate (%s: is it signed by the farm's CA?)" % reason
    return reason


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-cert``, ``--tls-key``, ``--tls-ca`` and ``--tls-server-name``, the same on every daemon and command."""
    group = parser.add_argument_group("TLS (default: off; each option defaults to its environment variable)")
    helps = {
        "cert": "this daemon's certificate (PEM), presented to whoever connects",
        "key": "the private key of --tls-cert (PEM)",
        "ca": "check the other end's certificate against this CA bundle (PEM), or %r for the system's" % SYSTEM_CA,
        "server_name": "the name every daemon's certificate must carry (default: the address dialled)",
    }
    for field, name in ENV.items():
        group.add_argument(
            "--tls-" + field.replace("_", "-"),
            metavar="NAME" if field == "server_name" else "PATH",
            default=os.environ.get(name) or None,
            help="%s ($%s)" % (helps[field], name),
        )


def daemon_tls(args: argparse.Namespace, listens: bool, dials: bool) -> Optional[TlsConfig]:
    """The TLS configuration a daemon starts with, None when TLS is off; an unusable one is logged and ends
    the daemon with exit code 2."""
    config = TlsConfig.from_args(args)
    if not config.enabled:
        return None
    try:
        config.check(listens, dials)
    except ValueError as exc:
        logger.error("%s", exc)
        raise SystemExit(2) from None
    return config


class Handshake:
    """The TLS handshake of a non-blocking socket, driven by a selector loop (the board's daemon).

    Wrapping detaches ``sock``: unregister it from the selector first and
    register :attr:`sock` instead. Call :meth:`step` on each event.
    """

    def __init__(self, sock: socket.socket, config: TlsConfig, server_side: bool, host: str = "") -> None:
        """TlsError (``sock`` closed) if the connection is already gone."""
        if server_side:
            context, name = config.server_context(), None
        else:
            context, name = config.client_context(), config.server_hostname(host)
        try:
            self.sock = context.wrap_socket(
                sock, server_side=server_side, server_hostname=name, do_handshake_on_connect=False
            )
        except OSError as exc:  # the peer reset the connection already (ssl.SSLError is an OSError too)
            sock.close()
            raise TlsError("the connection broke before the TLS handshake: %s" % (exc.strerror or exc)) from None
        self.done = False

    def step(self) -> int:
        """Advance: the selector events to wait for next, 0 once done; TlsError naming why it failed."""
        import selectors
        import ssl

        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            return selectors.EVENT_READ
        except ssl.SSLWantWriteError:
            return selectors.EVENT_WRITE
        except ssl.SSLError as exc:
            raise TlsError(describe_failure(exc)) from None
        except OSError as exc:
            raise TlsError("the connection broke during the TLS handshake: %s" % (exc.strerror or exc)) from None
        self.done = True
        return 0
