"""Drive the opening of a connection (:mod:`farm.protocol.opening`) on a blocking socket, within a deadline.

The client, the tracker client and :func:`farm.net.secret.prove_on_socket`
use it; TLS, when the farm uses it, is on the socket already. Standard
library only: boards use it.
"""

from __future__ import annotations

import socket
import time
from typing import Union

from ..errors import ProtocolError
from ..protocol.opening import Acceptor, Connector, Event, NeedData, Proven

Opening = Union[Connector, Acceptor]


class OpeningClosed(ConnectionError):
    """The other end closed the connection before the opening ended."""


class OpeningTimeout(socket.timeout):
    """The other end said nothing in time; the message names what it did not send."""


def open_socket(sock: socket.socket, opening: Opening, timeout: float) -> Event:
    """Run ``opening`` on the blocking ``sock`` until it ends (Opened, Refused) or, on an acceptor, a hello awaits
    an answer (HelloReceived): that event. Sends what the opening has to send on the way, a refusal included.

    ProtocolError (AuthError about the secret) if the other end breaks the opening, :class:`OpeningClosed`
    if it closes the connection, :class:`OpeningTimeout` if the opening is not over within ``timeout``
    seconds. The socket's own timeout is back as it was on return.
    """
    previous = sock.gettimeout()
    deadline = time.monotonic() + timeout
    try:
        while True:
            outgoing = opening.data_to_send()
            if outgoing:
                sock.sendall(outgoing)
            event = opening.next_event()
            if isinstance(event, Proven):
                continue
            if not isinstance(event, NeedData):
                return event
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                raise OpeningTimeout("no %s within %g s" % (opening.waiting_for(), timeout)) from None
            if not data:
                raise closed_during(opening)
            try:
                opening.receive_data(data)
            except ProtocolError:
                _send_refusal(sock, opening.data_to_send())
                raise
    finally:
        sock.settimeout(previous)


def closed_during(opening: Opening) -> OpeningClosed:
    """The error for a connection that closed before ``opening`` ended, naming what did not come."""
    return OpeningClosed("the peer closed the connection before its %s" % opening.waiting_for())


def _send_refusal(sock: socket.socket, data: bytes) -> None:
    """Tell the other end it is refused, if the opening got that far (it may be gone already: no matter)."""
    try:
        sock.sendall(data)
    except OSError:
        pass
