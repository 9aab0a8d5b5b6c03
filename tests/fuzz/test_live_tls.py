"""The live daemons with TLS under a bounded, seeded stream of connections that break TLS, or break the farm's
protocols inside it.

A TLS board, a TLS tracker (with a TLS board registered) and a TLS proxy (with a
TLS board behind it) run as real processes. Each gets TLS_COUNT connections
(fuzz_settings' CONNECTION_COUNT / 3), WORKERS at a time, of: random bytes; a
real ClientHello with bytes flipped, cut short, or followed by silence; a TLS
record header announcing a huge record; a completed TLS handshake followed by
random bytes, a mutated valid opening, or a drip of bytes; each ended by a
close, a reset or silence (this side closes the silent ones at the end).

Afterwards each daemon still runs and serves a normal TLS client, its file
descriptors are back to the count before the stream, its resident memory grew
by less than RSS_GROWTH, it logged refusals for what was not TLS and for failed
handshakes, and its log has no traceback.
"""

from __future__ import annotations

import functools
import random
import socket
import ssl
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
from farm_certs import TlsFiles
from fuzz_settings import CONNECTION_COUNT, SEED, WIDE_GATE

import farm
from conftest import fd_count, python_env, rss, wait_for
from farm.ops.processes import DaemonProcess
from farm.protocol.handshake import encode_hello
from farm.protocol.tracker import encode_magic, encode_message

#: Connections per daemon: a TLS handshake costs far more than a plain opening, so a third of the plain stream's.
TLS_COUNT = max(30, CONNECTION_COUNT // 3)
WORKERS = 8
#: As the plain stream's bound (tests/fuzz/test_live_daemons.py): allocator slack, far below a leak.
RSS_GROWTH = 20 << 20
#: Connections of the stream left open and silent until its end: a board takes 64 handshakes at once and refuses
#: more at accept, which would refuse the normal client served meanwhile.
SILENT_AT_MOST = 24

Address = Tuple[str, int]


@pytest.fixture(scope="module")
def tls_daemons(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[Dict[str, DaemonProcess]]:
    """A TLS board, tracker and proxy (each with a board serving through it), all stopped at the end."""
    directory = tmp_path_factory.mktemp("fuzz-tls")
    env = python_env(PYTHONIOENCODING="utf-8", **tls_files.daemon().as_env())
    env.pop("REMOTEDEV_SECRET_FILE", None)
    started: List[DaemonProcess] = []

    def start(name: str, module: str, *args: str) -> DaemonProcess:
        argv = [sys.executable, "-m", "farm." + module, "--host", "127.0.0.1", *args]
        daemon = DaemonProcess(argv, str(directory / (name + ".log")), env=env)
        started.append(daemon)
        return daemon

    try:
        board = start("board", "server", "--port", "0", "--key", "fuzz", *WIDE_GATE)
        tracker = start("tracker", "tracker", "--port", "0", *WIDE_GATE)
        for daemon in (board, tracker):
            daemon.wait_for_bind()
        at_tracker = "127.0.0.1:%d" % tracker.address[1]
        start("direct-board", "server", "--port", "0", "--key", "direct", "--tracker", at_tracker)
        proxy = start("proxy", "proxy", "--port", "0", "--tracker", at_tracker, *WIDE_GATE)
        proxy.wait_for_bind()
        start("nat-board", "server", "--port", str(proxy.address[1]), "--through-proxy", "--key", "nat")
        with farm.connect_tracker(*tracker.address, tls=tls_files.client()) as observer:  # type: ignore[misc]
            for key in ("direct", "nat"):
                wait_for(lambda k=key: observer.summary()["queue_info"].get(k, {}).get("free"), 30, "a %s board" % key)
        yield {"board": board, "tracker": tracker, "proxy": proxy}
    finally:
        for daemon in reversed(started):
            daemon.stop()


def client_hello(tls_files: TlsFiles) -> bytes:
    """The first flight of a real TLS client of the farm."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = tls_files.client().client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        handshake.do_handshake()
    return outgoing.read()


def flipped(rng: random.Random, data: bytes) -> bytes:
    """``data`` with one to eight bytes changed (never none)."""
    changed = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(len(changed))
        changed[position] ^= rng.randrange(1, 256)
    return bytes(changed)


#: A valid opening of each daemon's protocol, sent inside TLS (then mutated or cut).
OPENINGS = {
    "board": encode_hello("client", "fuzz"),
    "tracker": encode_magic() + encode_message([2, "fuzz-client"]),
    "proxy": encode_hello("client", "nat"),
}


class Stream:
    """Seeded connections against one daemon's address; :meth:`fire` sends one and says how it ended."""

    def __init__(self, address: Address, tls_files: TlsFiles, opening: bytes, seed: int) -> None:
        self.address = address
        self.context = tls_files.client().client_context()
        self.hello = client_hello(tls_files)
        self.opening = opening
        self.seed = seed

    def fire(self, index: int) -> Tuple[str, Optional[socket.socket]]:
        """Send connection ``index``; its kind, and the socket if it is left open (silent) for the end."""
        rng = random.Random("%d-%d" % (self.seed, index))
        kind = rng.choice(["random", "flipped-hello", "cut-hello", "silent-hello", "huge-record",
                           "tls-garbage", "tls-mutated", "tls-drip"])  # fmt: skip
        end = rng.choice(["close", "reset", "silent" if index < SILENT_AT_MOST * 3 else "close"])
        sock = socket.create_connection(self.address, timeout=10)
        try:
            if kind.startswith("tls-"):
                sock = self.context.wrap_socket(sock, server_hostname="127.0.0.1")
                self._inside(sock, kind, rng)
            else:
                sock.sendall(self._outside(kind, rng))
        except OSError:  # the daemon closed it already: a refusal
            end = "close"
        if end == "silent":
            return kind, sock
        if end == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        return kind, None

    def _outside(self, kind: str, rng: random.Random) -> bytes:
        if kind == "random":
            return bytes(rng.randrange(256) for _ in range(rng.randint(1, 600)))
        if kind == "flipped-hello":
            return flipped(rng, self.hello)
        if kind == "cut-hello":
            return self.hello[: rng.randrange(1, len(self.hello))]
        if kind == "silent-hello":
            return self.hello
        return b"\x16\x03\x01\xff\xff" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))  # huge-record

    def _inside(self, sock: socket.socket, kind: str, rng: random.Random) -> None:
        if kind == "tls-garbage":
            sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000))))
        elif kind == "tls-mutated":
            sock.sendall(flipped(rng, self.opening))
        else:  # a valid opening's first bytes (never all of it: that would open a session), dripped
            prefix = self.opening[: rng.randrange(1, len(self.opening))]
            for offset in range(0, len(prefix), 3):
                sock.sendall(prefix[offset : offset + 3])
                time.sleep(0.005)  # pacing the drip: what is measured is the daemon's reading, not a wait


#: The key of the board each daemon's normal client gets, through the tracker (the board's own: directly).
SERVED_KEY = {"board": "fuzz", "tracker": "direct", "proxy": "nat"}


def serve_normally(name: str, daemons: Dict[str, DaemonProcess], tls_files: TlsFiles) -> None:
    """A normal TLS client's session with the board, or through the tracker; returns once the board that served
    is free again (behind the proxy: dialled in again), so that descriptors are counted in the same state."""
    if name == "board":
        with farm.connect(*daemons["board"].address, key="fuzz", tls=tls_files.client()) as session:  # type: ignore[misc]
            session.ping()
        return
    host, port = daemons["tracker"].address  # type: ignore[misc]
    with farm.connect_tracker(host, port, tls=tls_files.client()) as tracker:
        with tracker.request(SERVED_KEY[name], wait=30) as session:
            session.ping()
        key = SERVED_KEY[name]
        wait_for(lambda: tracker.summary()["queue_info"].get(key, {}).get("free"), 30, "a free %s board" % key)


@pytest.mark.parametrize("name", ["board", "tracker", "proxy"])
def test_a_tls_daemon_survives_connections_that_break_tls(
    name: str, tls_daemons: Dict[str, DaemonProcess], tls_files: TlsFiles
) -> None:
    daemon = tls_daemons[name]
    serve = functools.partial(serve_normally, name, tls_daemons, tls_files)
    serve()  # warmed up: the normal path's buffers and imports are counted before the stream
    fds, memory = fd_count(daemon.pid), rss(daemon.pid)
    stream = Stream(daemon.address, tls_files, OPENINGS[name], SEED)  # type: ignore[arg-type]
    with ThreadPoolExecutor(WORKERS) as pool:
        fired = list(pool.map(stream.fire, range(TLS_COUNT)))
    serve()  # while the silent ones still hang on
    for _, sock in fired:
        if sock is not None:
            sock.close()
    assert daemon.process.poll() is None, daemon.log_text()[-3000:]
    wait_for(lambda: fd_count(daemon.pid) <= fds, 30, "%s's descriptors back to %d" % (name, fds))
    serve()
    growth = rss(daemon.pid) - memory
    assert growth < RSS_GROWTH, "%s grew by %.1f MiB over %d connections" % (name, growth / 2**20, TLS_COUNT)
    log = daemon.log_text()
    kinds = {kind for kind, _ in fired}
    assert "Traceback" not in log, log[-3000:]
    if "random" in kinds:
        assert "not TLS" in log, log[-3000:]
    if kinds & {"flipped-hello", "huge-record"}:
        assert "TLS handshake failed" in log or "during the TLS handshake" in log, log[-3000:]
    print("%s: %d connections (%s), fds %d, RSS %+.1f MiB" % (name, TLS_COUNT, len(kinds), fds, growth / 2**20))
