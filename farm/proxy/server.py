"""The proxy: ``python -m farm.proxy --host 127.0.0.1 --port 9090 --port-end 9091 --tracker HOST:PORT``.

Boards that clients cannot reach dial out to the proxy and say ``server:KEY``
(``python -m farm.server --host PROXY --port PORT --through-proxy --key KEY``).
The proxy offers each one to the tracker under a match key of its own, with
its own address, as TVM's proxy does (it shows in the server list as
``server:proxy[KEY0,KEY1]``). A client handed such a board connects to the
proxy with ``client:MATCHKEY``; the proxy answers both sides with the other's
key (so the board sees the client's ``-timeout``) and then forwards bytes
both ways as a stream, never holding a whole message. Without a tracker, a
client and a board pair up when their keys match.

With ``--tls-cert`` and ``--tls-key`` it speaks only TLS to clients and boards
(:mod:`farm.net.aio`): it ends both sides' TLS and forwards the bytes between them.
With ``--tls-ca`` it checks the tracker's certificate when it dials it.

asyncio, standard library, one process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys
import time
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

from ..cli_types import positive_count
from ..errors import ProtocolError
from ..lifetime import die_with_launcher
from ..logs import configure_logging
from ..net.aio import DEFAULT_LIMITS, open_connection, open_stream, start_listener
from ..net.credentials import PLAIN, Credentials
from ..net.gate import Limits, add_admission_arguments, address_key, limits_from
from ..net.secret import AUTH_TIMEOUT, add_secret_argument, daemon_secret
from ..net.sockets import bind_first_free, keep_alive, parse_address
from ..net.tls import TlsError, add_tls_arguments, daemon_tls
from ..protocol.auth import AuthError
from ..protocol.handshake import (
    CODE_BUSY,
    CODE_DUPLICATE,
    CODE_MISMATCH,
    CODE_SUCCESS,
    Hello,
    encode_reply,
)
from ..protocol.opening import Acceptor, Connector, HelloReceived, Kind, Opened
from ..protocol.tracker import (
    TVM_PROTOCOL,
    Code,
    MessageReader,
    encode_message,
    key_of_matchkey,
    random_matchkey,
)
from ..tracker.server import MAX_INFO

logger = logging.getLogger("farm.proxy")
#: Put in a connection's reply queue when the connection ends, so that a waiting call stops waiting.
_LINK_LOST = object()

#: Seconds a new connection has to say hello.
HELLO_TIMEOUT = 10.0
#: Seconds between checks of the tracker's pending match keys.
POLL_PERIOD = 1.0
#: A match key handed out but not presented within this many seconds is replaced.
UNUSED_MATCHKEY_TIMEOUT = 5.0
#: Without a tracker, how long a client waits for a board of its key.
CLIENT_WAIT = 600.0
#: Bytes forwarded per read.
CHUNK = 1 << 18
#: Longest key of a board at the proxy (``--max-board-key``), in characters.
MAX_BOARD_KEY = 128


def boards_within_info(max_key: int) -> int:
    """How many boards of keys up to ``max_key`` characters the proxy's UPDATE_INFO can name within the tracker's
    MAX_INFO: each board adds its match key (``offers``) and, at worst a key of its own, the key twice more (in
    ``key`` and in ``boards``), with quotes, separators and a count; 512 bytes go to the rest."""
    return (MAX_INFO - 512) // (3 * max_key + 48)


#: Boards connected to the proxy at once (``--max-boards``): at most what its UPDATE_INFO can name.
MAX_BOARDS = boards_within_info(MAX_BOARD_KEY)
#: Of those, waiting from one address (``--max-boards-per-address``).
MAX_BOARDS_PER_ADDRESS = 64


class Endpoint:
    """One side of a future pair: a board or a client that has said hello."""

    def __init__(self, hello: Hello, text: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hello = hello
        self.text = text  # the whole key it sent, options included
        self.reader = reader
        self.writer = writer
        self.leftover = b""
        address = writer.get_extra_info("peername") or ("?", 0)
        self.name = "%s:%s" % address[:2]
        self.address = address_key(str(address[0]))  # the share it counts against
        self.protocol = hello.options.get("protocol", TVM_PROTOCOL)
        self.handed_out_since: Optional[float] = None
        self.paired = asyncio.Event()
        self.watch: Optional[asyncio.Future[bytes]] = None  # a waiting board's read that notices it leave


async def read_hello(reader: asyncio.StreamReader, secret: Optional[bytes], writer: asyncio.StreamWriter
                     ) -> Tuple[Hello, str, bytes]:  # fmt: skip
    """The peer's hello (after its proof of the farm secret, with one), the key text it sent, and any bytes that
    came after it."""
    opening = Acceptor(Kind.DATA, secret)
    event = await open_stream(opening, reader, writer)
    assert isinstance(event, HelloReceived)  # (an acceptor stops there: its answer is the pairing's)
    return event.hello, event.text, opening.leftover()


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return "%s:%d" % peer[:2] if peer else "a peer"


async def forward(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    """Copy bytes from ``source`` to ``target`` until end of stream, then half-close ``target``."""
    try:
        while True:
            data = await source.read(CHUNK)
            if not data:
                break
            target.write(data)
            await target.drain()
        if target.can_write_eof():
            target.write_eof()
        else:  # TLS: no half-close, and the source has closed its whole connection
            target.close()
    except OSError:
        target.close()


class BoardBounds(NamedTuple):
    """How many boards the proxy holds at once (waiting or in a session), waiting from one address, and their keys'
    length: together, what keeps its UPDATE_INFO within the tracker's limit (the proxy checks that too)."""

    total: int = MAX_BOARDS
    per_address: int = MAX_BOARDS_PER_ADDRESS
    key_length: int = MAX_BOARD_KEY


class Proxy:
    """Pairs clients with boards that dialled out; see the module docstring."""

    def __init__(self, port: int, tracker: Optional[Tuple[str, int]] = None, host: Optional[str] = None,
                 credentials: Credentials = PLAIN, bounds: Optional[BoardBounds] = None) -> None:  # fmt: skip
        self.port = port
        self.bounds = bounds or BoardBounds()
        self.tracker = tracker
        self.credentials = credentials  # the secret for every peer; TLS for dialling the tracker
        # What the tracker tells clients: the address we listen on, unless that is every address
        # (then the tracker takes the address it sees us at).
        self.advertised = None if host in (None, "", "0.0.0.0", "::") else host
        self.boards: Dict[str, Endpoint] = {}  # by match key, waiting for a client
        self.clients: Dict[str, Endpoint] = {}  # without a tracker: by key, waiting for a board
        self.paired: Dict[str, int] = {}  # boards forwarding a session now, by key
        self.stopped = asyncio.Event()
        self._tracker_writer: Optional[asyncio.StreamWriter] = None
        self._tracker_replies: asyncio.Queue[object] = asyncio.Queue()
        self._tracker_lock = asyncio.Lock()

    # --- connections ----------------------------------------------------------

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello, text, leftover = await asyncio.wait_for(
                read_hello(reader, self.credentials.secret, writer), HELLO_TIMEOUT
            )
        except AuthError as exc:
            logger.warning("refused %s: %s", _peer_name(writer), exc)
            writer.close()
            return
        except (ProtocolError, asyncio.TimeoutError, OSError) as exc:  # OSError: ssl.SSLError too
            logger.warning("closing a connection without a valid hello: %s", str(exc) or "timed out")
            writer.close()
            return
        endpoint = Endpoint(hello, text, reader, writer)
        endpoint.leftover = leftover
        if hello.role == "server":
            await self._board_waits(endpoint)
        elif hello.role == "client":
            await self._client_arrives(endpoint)
        else:
            logger.warning("closing %s: role %r is neither server nor client", endpoint.name, hello.role)
            writer.close()

    async def _board_waits(self, board: Endpoint) -> None:
        key = board.hello.key
        refusal = self._board_refusal(board)
        if refusal:
            logger.warning("refusing board %s of key %r: %s", board.name, key[:64], refusal)
            board.writer.write(encode_reply(CODE_BUSY, "the proxy refuses the board: %s" % refusal))
            board.writer.close()
            return
        if self.tracker is not None:
            board_key = key
            matchkey = random_matchkey(board_key)
        else:
            board_key = matchkey = key
            if matchkey in self.boards:
                logger.warning("refusing board %s: key %r is already waiting here", board.name, key)
                board.writer.write(encode_reply(CODE_DUPLICATE))
                board.writer.close()
                return
            client = self.clients.pop(matchkey, None)
            if client is not None:
                await self._pair(board, client)
                return
        self.boards[matchkey] = board
        logger.info("board %s waits under key %r", board.name, board_key)
        # A waiting board says nothing: data or the end of its stream means it is gone. The watch
        # starts before anything awaits, so a client pairing meanwhile finds it to cancel.
        board.watch = asyncio.ensure_future(board.reader.read(1))
        try:
            if self.tracker is not None:
                await self._offer(matchkey, board)
            try:
                await board.watch
            except asyncio.CancelledError:
                return  # paired: the pairing cancelled the watch and forwards from now on
            except ConnectionError:
                pass  # reset rather than closed: gone all the same
            logger.info("board %s left before a client came", board.name)
        finally:
            if not board.paired.is_set():
                for waiting_key, waiting in list(self.boards.items()):  # its key may have been renewed
                    if waiting is board:
                        del self.boards[waiting_key]
                board.writer.close()
                if self.tracker is not None:
                    await self._update_info()

    async def _client_arrives(self, client: Endpoint) -> None:
        key = client.hello.key
        board = self.boards.pop(key, None)
        if board is not None:
            await self._pair(board, client)
            return
        if self.tracker is not None:
            logger.warning("client %s presented key %r, which no board here holds", client.name, key)
            client.writer.write(encode_reply(CODE_MISMATCH))
            client.writer.close()
            return
        if key in self.clients:
            client.writer.write(encode_reply(CODE_DUPLICATE))
            client.writer.close()
            return
        self.clients[key] = client
        try:
            await asyncio.wait_for(client.paired.wait(), CLIENT_WAIT)
        except asyncio.TimeoutError:
            if self.clients.get(key) is client:
                del self.clients[key]
                client.writer.write(encode_reply(CODE_MISMATCH))
                client.writer.close()

    async def _pair(self, board: Endpoint, client: Endpoint) -> None:
        """Tell each side the other's key, then forward both ways until both are done."""
        board.paired.set()
        client.paired.set()
        if board.watch is not None:  # only one reader of the board's stream at a time
            board.watch.cancel()
            await asyncio.gather(board.watch, return_exceptions=True)
        logger.info("pairing client %s with board %s (%s)", client.name, board.name, board.hello.key)
        key = key_of_matchkey(board.hello.key)
        self.paired[key] = self.paired.get(key, 0) + 1
        counted = True

        def uncount() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.paired[key] -= 1

        async def from_board() -> None:
            try:
                await forward(board.reader, client.writer)
            finally:
                uncount()  # the board ended the session and may dial again before the client's side is done

        try:
            client.writer.write(encode_reply(CODE_SUCCESS, board.text))
            board.writer.write(encode_reply(CODE_SUCCESS, client.text) + client.leftover)
            await asyncio.gather(forward(client.reader, board.writer), from_board())
        finally:
            uncount()
            board.writer.close()
            client.writer.close()
        logger.info("client %s and board %s are done", client.name, board.name)

    # --- the tracker ------------------------------------------------------------

    async def run_tracker_link(self) -> None:
        """Keep a connection to the tracker: offer every waiting board, replace unused match keys."""
        assert self.tracker is not None
        delay = 0.25
        while not self.stopped.is_set():
            opening = Connector(Kind.TRACKER, self.credentials.secret)
            try:
                reader, writer = await open_connection(*self.tracker, self.credentials.tls)
                keep_alive(writer.get_extra_info("socket"))
                opened = await asyncio.wait_for(open_stream(opening, reader, writer), AUTH_TIMEOUT)
                self._tracker_writer = writer
                self._tracker_replies = asyncio.Queue()
                messages = MessageReader(expect_magic=False)
                assert isinstance(opened, Opened)  # (a tracker's opening opens, or raises)
                for message in messages.feed(opened.leftover):
                    self._tracker_replies.put_nowait(message)
                delay = 0.25
                logger.info("registered with the tracker at %s:%d", *self.tracker)
                pump = asyncio.ensure_future(self._read_tracker(reader, messages))
                # Its error is the link's end, handled below; retrieved here too, or asyncio logs it when collected.
                pump.add_done_callback(lambda task: task.cancelled() or task.exception())
                for matchkey in list(self.boards):  # the old tracker's offers are gone: offer again
                    fresh = self._renew(matchkey)
                    await self._offer(fresh, self.boards[fresh])
                await self._poll_pending(pump)
            except (OSError, ProtocolError, asyncio.TimeoutError) as exc:
                why = str(exc) or "no %s within %g s" % (opening.waiting_for(), AUTH_TIMEOUT)  # a timeout says nothing
                level = logging.WARNING if isinstance(exc, TlsError) else logging.INFO  # TLS: a setup to fix
                logger.log(level, "tracker link: %s; retrying in %.2f s", why, delay)
            finally:
                self._tracker_writer = None
                self._tracker_replies.put_nowait(_LINK_LOST)  # a call waiting for a reply gives up now
            try:
                await asyncio.wait_for(self.stopped.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(2.0, delay * 2)

    async def _read_tracker(self, reader: asyncio.StreamReader, messages: MessageReader) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the tracker closed the connection")
            for message in messages.feed(data):
                self._tracker_replies.put_nowait(message)

    async def _call_tracker(self, message: list) -> object:
        async with self._tracker_lock:
            if self._tracker_writer is None:
                raise ConnectionError("not connected to the tracker")
            replies = self._tracker_replies  # this connection's; a new connection gets a new queue
            self._tracker_writer.write(encode_message(message))
            reply = await asyncio.wait_for(replies.get(), 10)
            if reply is _LINK_LOST:
                raise ConnectionError("the connection to the tracker was lost before it answered")
            return reply

    async def _offer(self, matchkey: str, board: Optional[Endpoint]) -> None:
        if board is None or self._tracker_writer is None:
            return
        key = key_of_matchkey(matchkey)
        try:
            put = [Code.PUT, key, [self.port, matchkey], self.advertised, {"protocol": board.protocol}]
            await self._call_tracker(put)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            logger.info("could not offer %r to the tracker: %s", key, exc)
            return
        await self._update_info()

    def _board_refusal(self, board: Endpoint) -> str:
        """Why the proxy cannot take ``board`` now ("" if it can): one bound or another, or the tracker's limit on
        what the proxy tells it about its boards."""
        key = board.hello.key
        if len(key) > self.bounds.key_length:
            return "its key is %d characters, more than %d (--max-board-key)" % (len(key), self.bounds.key_length)
        held = len(self.boards) + sum(self.paired.values())
        if held >= self.bounds.total:
            return "%d boards are connected here, its most (--max-boards)" % held
        waiting = sum(1 for other in self.boards.values() if other.address == board.address)
        if waiting >= self.bounds.per_address:
            return "%d boards from %s wait here, its most (--max-boards-per-address)" % (waiting, board.address)
        size = len(json.dumps(self._info(also=key if self.tracker is not None else None)))
        if self.tracker is not None and size > MAX_INFO - 64:  # (the tracker puts our address into it: 64 left)
            return "the proxy's information for the tracker would grow to %d bytes, past its %d" % (size, MAX_INFO)
        return ""

    def board_counts(self) -> Dict[str, int]:
        """Boards connected here per key: waiting for a client or in a session."""
        counts = {key: count for key, count in self.paired.items() if count}
        for matchkey in self.boards:
            key = key_of_matchkey(matchkey) if self.tracker is not None else matchkey
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def _update_info(self) -> None:
        """Tell the tracker our keys, how many boards of each we have (it counts a proxy's boards so) and which
        match keys we still offer (it drops offers of boards that left before a client came)."""
        try:
            await self._call_tracker([Code.UPDATE_INFO, self._info()])
        except (ConnectionError, asyncio.TimeoutError) as exc:
            logger.info("could not update the tracker: %s", exc)

    def _info(self, also: Optional[str] = None) -> Dict[str, object]:
        """Our UPDATE_INFO: only the keys of boards here now (those of boards gone would add up to more than the
        tracker takes); ``also``: with one more board of that key waiting."""
        counts = self.board_counts()
        offers = sorted(self.boards)  # the match keys still good: the tracker drops the others
        if also is not None:
            counts[also] = counts.get(also, 0) + 1
            offers.append(random_matchkey(also))
        keys = "[" + ",".join(sorted(counts)) + "]"
        return {"key": "server:proxy" + keys, "addr": [self.advertised, self.port], "boards": counts, "offers": offers}

    def _renew(self, matchkey: str) -> str:
        """Move a waiting board to a fresh match key (the old one may be in a client's hands)."""
        board = self.boards.pop(matchkey)
        fresh = random_matchkey(key_of_matchkey(matchkey))
        board.handed_out_since = None
        self.boards[fresh] = board
        return fresh

    async def _poll_pending(self, pump: asyncio.Future[None]) -> None:
        while not pump.done() and not self.stopped.is_set():
            await asyncio.wait({pump}, timeout=POLL_PERIOD)
            if pump.done():
                break
            pending = await self._call_tracker([Code.GET_PENDING_MATCHKEYS])
            pending_keys = set(pending) if isinstance(pending, list) else set()
            now = time.monotonic()
            for matchkey, board in list(self.boards.items()):
                if matchkey in pending_keys:
                    board.handed_out_since = None
                elif board.handed_out_since is None:
                    board.handed_out_since = now
                elif now - board.handed_out_since > UNUSED_MATCHKEY_TIMEOUT:
                    logger.info("match key of %r handed out but never used; offering the board again", matchkey)
                    await self._offer(self._renew(matchkey), board)
        pump.result()  # raises what ended the link


# --- command line -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The proxy's options, shared by ``python -m farm.proxy`` and ``farm proxy``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9090, help="first port to try; 0 lets the system pick")
    parser.add_argument("--port-end", type=int, default=9199, help="end of the port range, exclusive")
    parser.add_argument("--tracker", metavar="HOST:PORT", type=parse_address, help="offer the boards to this tracker")
    add_secret_argument(parser)
    add_tls_arguments(parser)
    add_admission_arguments(parser, DEFAULT_LIMITS)
    parser.add_argument(
        "--max-boards",
        metavar="N",
        type=positive_count,
        help="boards connected at once, waiting or in a session (default: as many as the tracker's limit on the "
        "proxy's information allows with keys of --max-board-key: %d for %d)" % (MAX_BOARDS, MAX_BOARD_KEY),
    )
    parser.add_argument(
        "--max-boards-per-address",
        metavar="N",
        type=positive_count,
        default=MAX_BOARDS_PER_ADDRESS,
        help="boards waiting at once from one address (an IPv6 /64) (default: %d)" % MAX_BOARDS_PER_ADDRESS,
    )
    parser.add_argument(
        "--max-board-key",
        metavar="N",
        type=positive_count,
        default=MAX_BOARD_KEY,
        help="longest key of a board, in characters (default: %d)" % MAX_BOARD_KEY,
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def bounds_from(args: argparse.Namespace) -> BoardBounds:
    """The :class:`BoardBounds` of the options; ``--max-boards`` follows ``--max-board-key`` unless given."""
    total = args.max_boards or boards_within_info(args.max_board_key)
    return BoardBounds(total, args.max_boards_per_address, args.max_board_key)


async def serve(sock: socket.socket, tracker: Optional[Tuple[str, int]], credentials: Credentials = PLAIN,
                limits: Limits = DEFAULT_LIMITS, bounds: Optional[BoardBounds] = None) -> None:  # fmt: skip
    """Serve on the listening ``sock`` (over TLS with the ``credentials``' TLS, which also dials the tracker, and
    asking each peer for their secret) until SIGTERM or
    SIGINT; ``limits`` bound the connections that have proven nothing yet (:mod:`farm.net.gate`), ``bounds`` the
    boards."""
    host, port = sock.getsockname()[:2]
    proxy = Proxy(port, tracker, host, credentials, bounds)
    server = await start_listener(sock, proxy.handle_connection, credentials.tls, "proxy", limits)
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, proxy.stopped.set)
    logger.info("bind to %s:%d", host, port)
    link = asyncio.ensure_future(proxy.run_tracker_link()) if tracker is not None else None
    async with server:
        await proxy.stopped.wait()
    if link is not None:
        link.cancel()
    logger.info("proxy stopped")


def run(args: argparse.Namespace) -> int:
    die_with_launcher()
    configure_logging(args.log_level)
    secret = daemon_secret(args.secret_file, args.host, "proxy")
    tls = daemon_tls(args, listens=True, dials=bool(args.tracker))
    try:
        sock = bind_first_free(args.host, args.port, args.port_end)
    except OSError as exc:
        logger.error("cannot listen: %s", exc)
        return 1
    asyncio.run(serve(sock, args.tracker, Credentials(secret, tls), limits_from(args), bounds_from(args)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.proxy", description="Run a proxy for boards behind NAT.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
