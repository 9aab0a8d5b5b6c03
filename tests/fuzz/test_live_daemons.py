"""The live daemons under a bounded, seeded stream of malformed connections.

A board server (the Python one, the native one and, on x86_64, the native one
under AddressSanitizer and UBSan), a tracker and a proxy run as real processes,
each started once for the module. Each daemon gets CONNECTION_COUNT connections (fuzz_settings:
150 in CI, more with ``FARM_FUZZ_PROFILE=long``), WORKERS at a time, of random
bytes, valid openings then garbage, mutated valid openings, huge length fields,
valid openings, some dripped a few bytes at a time with pauses, ended by a
close, a reset (SO_LINGER 0), a half-close that leaves the socket open, or by
saying nothing more; then a burst of IDLE_BURST connections that say nothing.

The daemon's own sans-IO reader, run here on the same bytes, says what it must
do with each: close it at once (the bytes break the protocol), close it by its
handshake timeout (it waits for more), or keep it (the handshake completed:
this side closes it). Afterwards the daemon still runs and serves a normal
client, every connection it had to close it closed, its file descriptors are
back to the count before the stream, its resident memory grew by less than
RSS_GROWTH, it logged the protocol's own reason for the connections it refused,
and its log has no traceback. ``FARM_FUZZ_SEED`` replays another stream.
"""

from __future__ import annotations

import math
import random
import re
import selectors
import socket
import struct
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
from fuzz_settings import CONNECTION_COUNT, IDLE_BURST, SEED, WIDE_GATE
from fuzz_streams import Fields, cut, edit, mutate, random_bytes, random_json, random_mutations

import farm
from conftest import (
    NATIVE_CHECKED,
    BoardServer,
    board_server_named,
    check_sanitizer_log,
    fd_count,
    python_env,
    rss,
    wait_for,
)
from farm.board.config import HANDSHAKE_TIMEOUT  # a board's, without --handshake-timeout
from farm.errors import ProtocolError
from farm.ops.processes import DaemonProcess
from farm.protocol.calls import TAGS, encode_call
from farm.protocol.framing import HEADER, encode_frame
from farm.protocol.handshake import RPC_MAGIC, HelloReader, encode_hello
from farm.protocol.ops import Op
from farm.protocol.tracker import MAX_MESSAGE, Code, MessageReader, encode_magic, encode_message
from farm.proxy.server import HELLO_TIMEOUT
from farm.tracker.server import MAGIC_TIMEOUT

#: Connections in flight at once.
WORKERS = 8
#: How much a daemon's resident memory may grow over its stream. Nothing of a closed connection may stay; what
#: can is allocator slack: buffers the C allocator keeps after freeing them (a tracker message takes up to
#: MAX_MESSAGE, 1 MiB, a few times over while decoded; an asyncio read 64 KiB per connection, WORKERS + the burst
#: at once) and Python's own free lists. 20 MiB is several times that, and far below a leak of 150+ connections'
#: buffers or of a 64 MiB payload.
RSS_GROWTH = 20 << 20
#: The board's --max-message-size here: payload lengths around it and 2 GiB are both in the stream.
MAX_PAYLOAD = 64 << 20
#: Connections of the stream left silent for the daemon's timeout to close: a board takes MAX_PENDING
#: handshakes at once and refuses more at accept, which would be most of the stream if they piled up.
SILENT_AT_MOST = 32
#: Seconds beyond a daemon's own timeout for it to have closed what it must.
GRACE = 10.0
VADD = "void vadd(const float *a, const float *b, float *c, int64_t n)"
ENDS = ("close", "reset", "half-close", "silent")

Address = Tuple[str, int]

# --- the daemons -------------------------------------------------------------------------------------


def daemon_env() -> Dict[str, str]:
    """This checkout's farm, UTF-8 logs (reasons quote what peers sent), no farm secret: plain TVM handshakes."""
    env = python_env(PYTHONIOENCODING="utf-8")
    env.pop("REMOTEDEV_SECRET_FILE", None)
    return env


def where(daemon: DaemonProcess) -> str:
    assert daemon.address is not None
    return "%s:%d" % daemon.address


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., DaemonProcess]]:
    """``start(name, *args)``: ``python -m farm.server`` (name ``*board``) or ``farm.NAME``, logging to NAME.log,
    once it listens (a board through a proxy: once it waits there); all are stopped at the end of the module.
    ``start(name, *args, server=BoardServer)`` starts that board server instead."""
    directory = tmp_path_factory.mktemp("fuzz-farm")
    started: List[DaemonProcess] = []

    def start(name: str, *args: str, server: Optional[BoardServer] = None) -> DaemonProcess:
        module = "server" if name.endswith("board") else name
        program = [server.program] if server and server.program else [sys.executable, "-m", "farm." + module]
        env = {**daemon_env(), **(server.env if server else {})}
        started.append(
            DaemonProcess([*program, "--host", "127.0.0.1", *args], str(directory / (name + ".log")), env=env)
        )
        if "--through-proxy" in args:
            started[-1].wait_for_log(re.compile("waiting at the proxy"))
        else:
            started[-1].wait_for_bind()
        return started[-1]

    yield start
    for daemon in reversed(started):
        daemon.stop()


@pytest.fixture(scope="module", params=["python", NATIVE_CHECKED])
def board(
    request: pytest.FixtureRequest, daemons: Callable[..., DaemonProcess], native_builds: Dict[bool, str]
) -> Iterator[DaemonProcess]:
    """A board on its own, key ``fuzz``: a valid hello opens a session. The Python board, and the native ones."""
    server = board_server_named(request.param, native_builds)
    args = ("--port", "0", "--key", "fuzz", "--max-message-size", str(MAX_PAYLOAD), *WIDE_GATE)
    daemon = daemons(request.param + "-board", *args, server=server)
    yield daemon
    daemon.stop()
    check_sanitizer_log(daemon)


@pytest.fixture(scope="module")
def tracker(daemons: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A tracker with a board of key ``direct`` registered."""
    daemon = daemons("tracker", "--port", "0", *WIDE_GATE)
    daemons("direct-board", "--port", "0", "--key", "direct", "--tracker", where(daemon))
    return daemon


@pytest.fixture(scope="module")
def proxy(daemons: Callable[..., DaemonProcess], tracker: DaemonProcess) -> DaemonProcess:
    """A proxy offering to the tracker a board of key ``nat`` that dialled out to it."""
    daemon = daemons("proxy", "--port", "0", "--tracker", where(tracker), *WIDE_GATE)
    port = str(daemon.address[1])  # type: ignore[index]
    daemons("nat-board", "--port", port, "--through-proxy", "--key", "nat")
    return daemon


# --- normal clients ------------------------------------------------------------------------------------


def exercise(session: Any, library: Path) -> None:
    """What a normal client does: ping, upload a library, call into it on arrays, read the result back."""
    session.ping()
    session.upload(library)
    vadd = session.load_module(library.name).get_function("vadd", signature=VADD)
    values = np.arange(4096, dtype=np.float32)
    a, c = session.array(values), session.empty(values.shape, "float32")
    vadd(a, a, c, values.size)
    np.testing.assert_array_equal(c.numpy(), 2 * values)


def free_boards(observer: Any, key: str) -> int:
    """Free boards of ``key``, as the summary a tracker client (``observer``) gets says."""
    return observer.summary()["queue_info"].get(key, {}).get("free", 0)


def through_tracker(tracker: DaemonProcess, key: str, library: Path) -> Callable[[], None]:
    """A normal client: a session on a board of ``key`` handed out by the tracker, exercised."""

    def serve() -> None:
        with farm.connect_tracker(*tracker.address) as client:  # type: ignore[misc]
            assert set(client.summary()) == {"queue_info", "server_info"}
            with client.request(key, session_timeout=60, wait=30) as session:
                exercise(session, library)

    return serve


# --- the stream ----------------------------------------------------------------------------------------


@dataclass
class Shot:
    """One connection of the stream: what it sends, in how many pieces with what pause between, how it ends."""

    kind: str
    data: bytes
    pieces: List[bytes]
    pause: float
    end: str


@dataclass
class Record:
    """What became of one connection: the daemon's verdict as its own reader gives it, and what it did."""

    port: int
    kind: str
    end: str
    verdict: str  # "refused" (close at once), "waiting" (close by the timeout), "past" (the handshake completed)
    reason: str = ""
    closed_by_daemon: Optional[bool] = None


class Target:
    """A daemon under fuzz: valid openings of a conversation with it, huge lengths, and its reader's verdict."""

    name = ""

    def opening(self, rng: random.Random) -> Tuple[bytes, Fields]:
        """The first bytes of a valid conversation, and where their length fields are."""
        raise NotImplementedError

    def huge(self, rng: random.Random) -> bytes:
        """A valid start whose next length field is absurd: 2 GiB, negative, past the limit."""
        raise NotImplementedError

    def verdict(self, data: bytes) -> Tuple[str, str]:
        """What the daemon must do with a connection that sent ``data``: see :class:`Record`."""
        raise NotImplementedError

    def shot(self, rng: random.Random) -> Shot:
        """One connection of the stream, drawn with ``rng``."""
        kind = rng.choice(["random", "opening+garbage", "mutated", "huge-length", "opening", "silent"])
        if kind == "random":
            data = random_bytes(rng, int(2 ** rng.uniform(0, 13)))
        elif kind == "huge-length":
            data = self.huge(rng)
        elif kind == "silent":
            data = b""
        else:
            opening, fields = self.opening(rng)
            if kind == "opening+garbage":
                data = opening[: rng.randint(0, len(opening))] + random_bytes(rng, int(2 ** rng.uniform(0, 12)))
            elif kind == "mutated":
                data = mutate(opening, fields, random_mutations(rng, rng.randint(1, 4)))
            else:
                data = opening
        dripped = rng.random() < 0.15 and len(data) > 1
        pieces = cut(data, [rng.randrange(len(data)) for _ in range(rng.randint(1, 5))]) if dripped else [data]
        end = "silent" if kind == "silent" else rng.choices(ENDS, weights=[6, 2, 2, 1])[0]
        return Shot(kind, data, pieces, rng.uniform(0.01, 0.08) if dripped else 0.0, end)


def hello_verdict(data: bytes, check_timeout: bool) -> Tuple[str, str]:
    """The verdict of a board or proxy on ``data``: its hello reader's, and the board's ``-timeout`` check.

    The proxy passes ``-timeout`` on to the board without reading it.
    """
    try:
        hello = HelloReader().feed(data)
        if hello is not None and check_timeout:
            hello.timeout  # noqa: B018  (ProtocolError for a malformed -timeout)
    except ProtocolError as exc:
        return "refused", str(exc)
    return ("waiting", "") if hello is None else ("past", "")


def token(rng: random.Random, longest: int = 24) -> str:
    """A key no real board here has: ``fz`` and up to ``longest - 2`` more characters (log-uniform)."""
    length = min(longest - 2, int(2 ** rng.uniform(0, math.log2(longest))))
    return "fz" + "".join(rng.choice("abcdefghij:._-\u00e9") for _ in range(length))


def board_frame(rng: random.Random) -> bytes:
    """A request frame as a client might send one, or one with an unknown op (never RUN: no pickles here)."""
    op = rng.choice([op for op in Op if op != Op.RUN] + [0, 16, 63, 200])
    meta = rng.choice(
        [
            {},
            {"name": token(rng)},
            {"name": rng.choice(["../up", "/etc/hostname", ".", "a/b/c"])},
            {"id": rng.randrange(4)},
            {"shape": [rng.randrange(64)], "dtype": rng.choice(["float32", "int8", "bogus"])},
            {"module": rng.randrange(3), "name": "vadd", "signature": rng.choice(["", VADD, "int f("])},
            {"release": [1, rng.choice([2, "x", None])]},
            random_json(rng),
        ]
    )
    meta = meta if isinstance(meta, dict) else {"value": meta}
    payload = random_bytes(rng, rng.choice([0, 0, 8, 100, 5000]))
    if op == Op.CALL:
        tags = "".join(rng.choice(TAGS) for _ in range(rng.randrange(5)))
        payload = encode_call(rng.randrange(4), tags, [0] * len(tags))
    return b"".join(bytes(piece) for piece in encode_frame(op, rng.randrange(2**32), meta, payload))


class BoardTarget(Target):
    """A board's hello (key ``fuzz``: a session; others: a mismatch), then request frames."""

    name = "board"

    def opening(self, rng: random.Random) -> Tuple[bytes, Fields]:
        key = rng.choice(["fuzz", "fuzz", "", "other", token(rng)])
        data = encode_hello("client", key, rng.choice([None, None, 30, 0.5]))
        fields = [(4, 4)]
        for _ in range(rng.randrange(5)):
            fields += [(len(data) + 8, 4), (len(data) + 12, 8)]
            data += board_frame(rng)
        return data, fields

    def huge(self, rng: random.Random) -> bytes:
        if rng.random() < 0.4:
            return struct.pack("<iI", RPC_MAGIC, rng.choice([2**31 - 1, 2**31, 2**32 - 1, 4097]))
        meta_length, payload_length = rng.choice(
            [(1 << 31, 0), (2**32 - 1, 0), (0, 1 << 31), (0, 2**64 - 1), (0, MAX_PAYLOAD + 1), (0, MAX_PAYLOAD - 1)]
        )
        op = rng.choice([Op.PING, Op.UPLOAD, Op.ARRAY_NEW, Op.ARRAY_WRITE, Op.CALL])
        return encode_hello("client", "fuzz") + HEADER.pack(b"RD", 1, op, 1, meta_length, payload_length)

    def verdict(self, data: bytes) -> Tuple[str, str]:
        return hello_verdict(data, check_timeout=True)


def tracker_message(rng: random.Random) -> Any:
    """A request as the tracker reads them, with random keys; a third of them with a field edited at random."""
    key = token(rng)
    message = rng.choice(
        [
            [Code.PING],
            [Code.SUMMARY],
            [Code.GET_PENDING_MATCHKEYS],
            [Code.STOP, key],
            [Code.PUT, key, [rng.randrange(1, 65536), key + ":0.5"], None, {"protocol": "farm"}],
            [Code.REQUEST, key, "fuzz", rng.randint(-3, 3), {"wait": rng.uniform(0, 0.5), "protocols": ["farm"]}],
            [Code.REQUEST, key, "fuzz", 0, {"wait_for_key": True, "progress": True}],
            [Code.UPDATE_INFO, {"addr": [None, rng.randrange(65536)], "key": "server:" + key, "protocol": "farm"}],
        ]
    )
    if rng.random() < 0.33:
        message = edit(message, [(rng.randrange(64), random_json(rng))])
    return message


class TrackerTarget(Target):
    """The tracker magic, then requests, a third of them with a field of another type."""

    name = "tracker"

    def opening(self, rng: random.Random) -> Tuple[bytes, Fields]:
        data = encode_magic()
        fields = [(0, 4)]
        for _ in range(rng.randrange(6)):
            fields.append((len(data), 4))
            data += encode_message(tracker_message(rng))
        return data, fields

    def huge(self, rng: random.Random) -> bytes:
        return encode_magic() + struct.pack("<I", rng.choice([2**31 - 1, 2**31, 2**32 - 1, MAX_MESSAGE + 1, 0]))

    def verdict(self, data: bytes) -> Tuple[str, str]:
        reader = MessageReader(expect_magic=True)
        try:
            reader.feed(data)
        except ProtocolError as exc:
            return "refused", str(exc)
        return ("past", "") if reader.magic_seen else ("waiting", "")


class ProxyTarget(Target):
    """A board's or a client's hello (with a key no board has), or one of neither."""

    name = "proxy"

    def opening(self, rng: random.Random) -> Tuple[bytes, Fields]:
        role = rng.choice(["server", "server", "client", "observer"])
        text = "%s:%s" % (role, token(rng, rng.choice([24, 24, 4000])))
        text += rng.choice(["", " -timeout=30", " -protocol=farm", " -protocol=" + token(rng)])
        data = text.encode()
        return struct.pack("<ii", RPC_MAGIC, len(data)) + data, [(4, 4)]

    def huge(self, rng: random.Random) -> bytes:
        return struct.pack("<iI", RPC_MAGIC, rng.choice([2**31 - 1, 2**31, 2**32 - 1, 4097]))

    def verdict(self, data: bytes) -> Tuple[str, str]:
        return hello_verdict(data, check_timeout=False)


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes ``sock`` (end of stream or reset) within ``timeout`` seconds; what it sends is read."""
    deadline = time.monotonic() + timeout
    try:
        for _ in range(1 << 16):  # a daemon that talks forever fails the test too
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sock.settimeout(left)
            if not sock.recv(65536):
                return True
    except socket.timeout:
        return False
    except ConnectionError:
        return True
    return False


def fire(
    address: Address, shot: Shot, target: Target, may_stay: Callable[[], bool]
) -> Tuple[Record, Optional[socket.socket]]:
    """Make the connection of ``shot``; the socket back if it is to stay open until the daemon closes it.

    A connection that is to go silent and wait for the daemon's timeout closes instead unless ``may_stay()``.
    """
    sock = socket.create_connection(address, timeout=10.0)
    record = Record(sock.getsockname()[1], shot.kind, shot.end, *target.verdict(shot.data))
    if record.end == "silent" and record.verdict != "past" and not may_stay():
        record.end = "close"
    try:
        for index, piece in enumerate(shot.pieces):
            if index:
                time.sleep(shot.pause)  # the pause is part of the input: bytes that come slowly
            sock.sendall(piece)
    except OSError:
        pass  # the daemon closed first, as it may once the bytes broke the protocol
    if record.end == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        return record, None
    if record.end == "half-close":
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return record, sock
    if record.end == "silent" and record.verdict != "past":
        return record, sock
    if record.verdict == "refused":
        record.closed_by_daemon = closed_within(sock, 10.0)
    sock.close()
    return record, None


def wait_all_closed(parked: List[Tuple[Record, socket.socket]], timeout: float) -> List[Record]:
    """Wait until the daemon has closed every parked socket; the records of those still open after ``timeout``."""
    selector = selectors.DefaultSelector()
    for record, sock in parked:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, record)
    deadline = time.monotonic() + timeout
    try:
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(min(1.0, max(0.0, deadline - time.monotonic()))):
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""  # reset: closed too
                if not data:
                    key.data.closed_by_daemon = True
                    selector.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]
        return [key.data for key in selector.get_map().values()]
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()


@dataclass
class Run:
    """A daemon's stream: every connection's record, how long it and the wait for the closes took, what was left."""

    records: List[Record]
    seconds: float
    waited: float
    open_after: List[Record]


def run_stream(target: Target, address: Address, timeout: float) -> Run:
    """The stream of CONNECTION_COUNT connections, then the idle burst; waits for the daemon to close its part."""
    started = time.monotonic()
    silent = threading.BoundedSemaphore(SILENT_AT_MOST)

    def one(index: int) -> Tuple[Record, Optional[socket.socket]]:
        rng = random.Random("%d-%s-%d" % (SEED, target.name, index))
        return fire(address, target.shot(rng), target, lambda: silent.acquire(blocking=False))

    with ThreadPoolExecutor(WORKERS) as pool:
        fired = list(pool.map(one, range(CONNECTION_COUNT)))
    parked = [(record, sock) for record, sock in fired if sock is not None]
    streamed = time.monotonic()
    burst = []
    for _ in range(IDLE_BURST):
        sock = socket.create_connection(address, timeout=10.0)
        burst.append((Record(sock.getsockname()[1], "idle-burst", "silent", "waiting"), sock))
    open_after = wait_all_closed(parked + burst, timeout + GRACE)
    records = [record for record, _ in fired + burst]
    return Run(records, streamed - started, time.monotonic() - streamed, open_after)


def survive(
    target: Target,
    daemon: DaemonProcess,
    timeout: float,
    settled: Callable[[], bool],
    serve: Callable[[], None],
) -> Run:
    """The stream at ``daemon``, then every check of the module docstring but the log's reasons; the run.

    The descriptor count is taken before any client of ours, while ``settled()``; the memory after a first
    normal client (``serve``), so that what it loads belongs to the baseline.
    """
    fds = wait_for(lambda: settled() and fd_count(daemon.pid), 30, "the %s to settle" % target.name)
    back = "the %s's descriptors back at %d" % (target.name, fds)
    serve()
    wait_for(lambda: settled() and fd_count(daemon.pid) == fds, 30, back)
    memory = rss(daemon.pid)
    run = run_stream(target, daemon.address, timeout)  # type: ignore[arg-type]
    assert not run.open_after, "the %s kept %d connections open %g s past its timeout: %s" % (
        target.name,
        len(run.open_after),
        GRACE,
        run.open_after[:5],
    )
    refused_open = [record for record in run.records if record.closed_by_daemon is False]
    assert not refused_open, "bytes that break the protocol, yet the %s kept the connection: %s" % (
        target.name,
        refused_open[:5],
    )
    assert daemon.process.poll() is None, "the %s died:\n%s" % (target.name, daemon.log_text()[-3000:])
    wait_for(lambda: settled() and fd_count(daemon.pid) == fds, 30, back)
    serve()
    wait_for(lambda: settled() and fd_count(daemon.pid) == fds, 30, back)
    growth = rss(daemon.pid) - memory
    report(target.name, run, fds, memory, growth)
    assert growth < RSS_GROWTH, "the %s grew by %.1f MiB" % (target.name, growth / (1 << 20))
    assert "Traceback" not in daemon.log_text(), daemon.log_text()[-4000:]
    return run


def report(name: str, run: Run, fds: int, memory: int, growth: int) -> None:
    """One line for the figures: connections by verdict, times, descriptors and memory."""
    verdicts = dict(Counter(record.verdict for record in run.records))
    mib = 1 << 20
    print(
        "\n%s: %d connections (%s) in %.1f s, all closed %.1f s later; fds %d before and after; "
        "RSS %.1f MiB before, %+.2f MiB after"
        % (name, len(run.records), verdicts, run.seconds, run.waited, fds, memory / mib, growth / mib)
    )


def lines_by_port(log: str) -> Dict[int, List[str]]:
    """Log lines that name a peer at 127.0.0.1, by its port."""
    found: Dict[int, List[str]] = {}
    for line in log.splitlines():
        for port in re.findall(r"127\.0\.0\.1:(\d+)\b", line):
            found.setdefault(int(port), []).append(line)
    return found


# --- the tests -----------------------------------------------------------------------------------------

BOARD_CLOSED = re.compile(
    r"bad handshake from|closed the connection during the handshake|handshake (from|reply to) \S+ (failed|timed out)|"
    r"key mismatch from|refusing|session from \S+ ended"
)


def board_settled(board: DaemonProcess) -> Callable[[], bool]:
    """Whether every session the board started has ended (its log says so)."""

    def settled() -> bool:
        log = board.log_text()
        return len(re.findall(r"session from \S+ started", log)) == len(re.findall(r"session from \S+ ended", log))

    return settled


@pytest.mark.slow
def test_the_board_survives_malformed_connections(board: DaemonProcess, kernels: Dict[str, Path]) -> None:
    """The board: every connection's end is logged, a refused one's with its hello reader's reason."""
    host, port = board.address  # type: ignore[misc]

    def serve() -> None:
        with farm.connect(host, port, key="fuzz", session_timeout=60) as session:
            exercise(session, kernels["libvadd.so"])

    run = survive(BoardTarget(), board, HANDSHAKE_TIMEOUT, board_settled(board), serve)
    by_port = lines_by_port(board.log_text())
    for record in run.records:
        lines = by_port.get(record.port, [])
        assert any(BOARD_CLOSED.search(line) for line in lines), "no closing line for %s: %s" % (record, lines)
        if record.verdict == "refused" and record.end != "reset":
            expected = "bad handshake from 127.0.0.1:%d: %s; closing" % (record.port, record.reason)
            assert any(expected in line for line in lines), "%s: not in %s" % (record, lines)


@pytest.mark.slow
def test_the_tracker_survives_malformed_connections(tracker: DaemonProcess, kernels: Dict[str, Path]) -> None:
    """The tracker: refused connections are logged with a reason; a silent one goes once the magic is overdue."""
    serve = through_tracker(tracker, "direct", kernels["libvadd.so"])
    with farm.connect_tracker(*tracker.address) as observer:  # type: ignore[misc]  (connected all along: counted)
        run = survive(TrackerTarget(), tracker, MAGIC_TIMEOUT, lambda: free_boards(observer, "direct") == 1, serve)
    by_port = lines_by_port(tracker.log_text())
    for record in run.records:
        lines = by_port.get(record.port, [])
        closing = [line for line in lines if "closing the connection from 127.0.0.1:%d:" % record.port in line]
        if record.verdict == "refused" and record.end != "reset":
            assert closing, "%s: no closing line with a reason in %s" % (record, lines)
        if record.verdict == "waiting" and record.end == "silent":
            assert any("no tracker magic within" in line for line in closing), (record, lines)


@pytest.mark.slow
def test_the_proxy_survives_malformed_connections(
    proxy: DaemonProcess, tracker: DaemonProcess, kernels: Dict[str, Path]
) -> None:
    """The proxy: each connection without a valid hello is logged with its hello reader's reason."""
    serve = through_tracker(tracker, "nat", kernels["libvadd.so"])
    with farm.connect_tracker(*tracker.address) as observer:  # type: ignore[misc]
        run = survive(ProxyTarget(), proxy, HELLO_TIMEOUT, lambda: free_boards(observer, "nat") == 1, serve)
    # The proxy's line names no peer: compare the reasons it logged with those its reader gives, as multisets.
    logged = Counter(re.findall(r"closing a connection without a valid hello: (.*)$", proxy.log_text(), re.M))
    expected: Counter = Counter()
    resets = 0
    for record in run.records:
        if record.end == "reset":
            resets += 1
        elif record.verdict == "refused":
            expected[record.reason] += 1
        elif record.verdict == "waiting":
            expected["timed out" if record.end == "silent" else "the peer closed the connection before its hello"] += 1
    assert not expected - logged, "reasons expected and not logged: %s" % (expected - logged)
    assert sum(logged.values()) <= sum(expected.values()) + resets, logged - expected
