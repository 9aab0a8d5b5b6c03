"""A stranger holds many silent connections to a daemon: are the farm's own peers still served, and what is logged?

    python reliability/attack_unproven.py --daemon tracker --secret --silent 1000 --nofile 1024 --window 25

Starts the daemon (``tracker``, ``proxy`` or ``board``; with ``--secret`` a farm secret, with ``--tls`` TLS) on
127.0.0.1 and lowers its open-file limit to ``--nofile`` (``prlimit``, as ``ulimit -n`` would). A stranger then
opens ``--silent`` connections from ``--attacker`` (127.0.0.2 by default: loopback answers every 127.0.0.0/8
address; with ``--addresses N`` spread over N addresses from there on), says nothing on them, and holds them
open for ``--window`` seconds, opening a new one for each the daemon closes. Meanwhile a member of the farm
(from 127.0.0.1, holding the secret) asks something of the daemon every second: a tracker's SUMMARY, the
proxy's pairing of a board with a client, a board's session. Reports how many of those asks were served and how
fast, and how much the daemon logged during the window (bytes, lines, tracebacks).
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # the shared harness

import harness  # noqa: E402
from harness import Headline, Option, Scenario, Tool, child_env  # noqa: E402

import farm
from farm.net.secret import prove_on_socket
from farm.net.tls import TlsConfig
from farm.ops.processes import DaemonProcess
from farm.protocol.handshake import CODE_SUCCESS, ReplyReader, encode_hello

HOST = "127.0.0.1"


def start_daemon(
    kind: str, directory: Path, secret_file: Optional[str], tls: Optional[Dict[str, str]]
) -> DaemonProcess:
    """The daemon under attack, listening on 127.0.0.1."""
    module = {"tracker": "farm.tracker", "proxy": "farm.proxy", "board": "farm.server"}[kind]
    argv = [sys.executable, "-m", module, "--host", HOST, "--port", "0"]
    if kind == "board":
        argv += ["--key", "attacked"]
    if secret_file:
        argv += ["--secret-file", secret_file]
    if tls:
        argv += ["--tls-cert", tls["cert"], "--tls-key", tls["key"], "--tls-ca", tls["ca"]]
    daemon = DaemonProcess(argv, str(directory / (kind + ".log")), env=child_env())
    daemon.wait_for_bind()
    return daemon


class Stranger(threading.Thread):
    """Silent connections from one source address, kept at a count: each one the daemon closes is opened again."""

    def __init__(self, port: int, source: str, count: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.source = source
        self.count = count
        self.selector = selectors.DefaultSelector()
        self.opened = 0
        self.not_accepted = 0  # connections the daemon's kernel did not accept within a second
        self.closed_by_daemon = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self._top_up()
            self._notice_closes()

    def _top_up(self) -> None:
        while len(self.selector.get_map()) < self.count and not self.stopping.is_set():
            sock = socket.socket()
            sock.bind((self.source, 0))
            sock.settimeout(1.0)
            try:
                sock.connect((HOST, self.port))
            except OSError:
                sock.close()
                self.not_accepted += 1
                return
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
            self.opened += 1

    def _notice_closes(self) -> None:
        for key, _ in self.selector.select(0.05):
            sock = key.fileobj
            try:
                data = sock.recv(4096)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self.selector.unregister(sock)
                sock.close()  # type: ignore[union-attr]
                self.closed_by_daemon += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def member_asks(kind: str, port: int, secret: Optional[bytes], tls: TlsConfig, timeout: float) -> None:
    """What a member of the farm asks of the daemon; raises if it is not served within ``timeout``."""
    if kind == "tracker":
        with farm.connect_tracker(HOST, port, timeout=timeout, secret=secret, tls=tls) as tracker:
            tracker.summary()
    elif kind == "board":
        with farm.connect(HOST, port, key="attacked", connect_timeout=timeout, secret=secret, tls=tls) as session:
            session.system_info()
    else:  # a board and a client meet at the proxy under a key of their own
        key = "attack-%d" % time.monotonic_ns()
        board = _hello_at(port, "server:" + key, secret, tls, timeout)
        client = _hello_at(port, "client:" + key, secret, tls, timeout)
        try:
            for sock in (board, client):
                replies = ReplyReader()
                reply = None
                while reply is None:
                    data = sock.recv(4096)
                    if not data:
                        raise ConnectionError("the proxy closed the connection before pairing")
                    reply = replies.feed(data)
                if reply.code != CODE_SUCCESS:
                    raise ConnectionError("the proxy answered %d" % reply.code)
        finally:
            board.close()
            client.close()


def _hello_at(port: int, text: str, secret: Optional[bytes], tls: TlsConfig, timeout: float) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    if tls.enabled:
        sock = tls.wrap_client(sock, HOST)
    if secret is not None:
        prove_on_socket(sock, secret, timeout)
    role, key = text.split(":", 1)
    sock.sendall(encode_hello(role, key))
    return sock


def attack(workdir: str, args: Any) -> Dict[str, Any]:
    directory = Path(workdir)
    secret_file = None
    secret = None
    if args.secret:
        secret = os.urandom(32).hex().encode()
        secret_file = str(directory / "secret")
        Path(secret_file).write_bytes(secret)
        os.chmod(secret_file, 0o600)
    tls_files = _make_tls(directory) if args.tls else None
    tls = TlsConfig(**tls_files) if tls_files else TlsConfig()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.silent + 1024)), hard))
    daemon = start_daemon(args.daemon, directory, secret_file, tls_files)
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    log_before = os.path.getsize(daemon.log_path)
    first = int(args.attacker.rsplit(".", 1)[1])
    sources = ["%s.%d" % (args.attacker.rsplit(".", 1)[0], first + index) for index in range(args.addresses)]
    strangers = [Stranger(daemon.address[1], source, args.silent // args.addresses) for source in sources]
    asks: List[Dict[str, Any]] = []
    started = time.monotonic()
    for stranger in strangers:
        stranger.start()
    try:
        while started + len(asks) + 1.0 < started + args.window:  # one ask a second, the first after a second
            time.sleep(max(0.0, started + len(asks) + 1.0 - time.monotonic()))
            asks.append(_timed(lambda: member_asks(args.daemon, daemon.address[1], secret, tls, args.timeout)))
        time.sleep(max(0.0, started + args.window - time.monotonic()))
        fds_at_end = len(os.listdir("/proc/%d/fd" % daemon.pid))
        log = Path(daemon.log_path).read_bytes()[log_before:].decode("utf-8", "replace")
        alive = daemon.process.poll() is None
    finally:
        for stranger in strangers:
            stranger.stop()
        daemon.stop()
    served = [ask["seconds"] for ask in asks if ask["served"]]
    return {
        "daemon": args.daemon,
        "secret": args.secret,
        "tls": args.tls,
        "nofile": args.nofile,
        "silent": args.silent,
        "window_s": args.window,
        "addresses": args.addresses,
        "stranger_opened": sum(stranger.opened for stranger in strangers),
        "stranger_not_accepted": sum(stranger.not_accepted for stranger in strangers),
        "closed_by_daemon": sum(stranger.closed_by_daemon for stranger in strangers),
        "daemon_fds_at_end": fds_at_end,
        "asks": len(asks),
        "served": len(served),
        "served_max_s": round(max(served), 3) if served else None,
        "failures": sorted({ask["error"] for ask in asks if not ask["served"]}),
        "daemon_alive": alive,
        "log_bytes": len(log.encode()),
        "log_lines": log.count("\n"),
        "tracebacks": log.count("Traceback"),
    }


def _timed(ask: Callable[[], None]) -> Dict[str, Any]:
    start = time.monotonic()
    try:
        ask()
    except Exception as exc:  # what the member was told, reported as such
        return {"served": False, "error": "%s: %s" % (type(exc).__name__, str(exc)[:200])}
    return {"served": True, "seconds": time.monotonic() - start}


def _make_tls(directory: Path) -> Dict[str, str]:
    files = harness.tls_files(str(directory / "tls"))
    return {"ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)}


FIGURES = (
    "asks",
    "served",
    "served_max_s",
    "failures",
    "stranger_opened",
    "stranger_not_accepted",
    "closed_by_daemon",
    "daemon_fds_at_end",
    "daemon_alive",
    "log_bytes",
    "log_lines",
    "tracebacks",
)


def report(figures: Dict[str, Any], args: Any) -> List[str]:
    title = "%s, %d silent connections from %d address(es), %g s" % (args.daemon, args.silent, args.addresses,
                                                                     args.window)  # fmt: skip
    return harness.table((title, ""), [(name, figures[name]) for name in FIGURES]) + [""]


def headline(results: Dict[str, Any]) -> List[Headline]:
    figures, config = results["scenarios"]["attack"], results["config"]
    counts = (figures["served"], figures["asks"], figures["served_max_s"], figures["tracebacks"])
    outcome = "%d of %d served, slowest %s s; %d tracebacks" % counts
    label = "%d silent connections to the %s" % (config["silent"], config["daemon"])
    return [Headline(label, outcome, target="every member served", met=figures["served"] == figures["asks"])]


TOOL = Tool(
    name="attack_unproven",
    description=__doc__.split("\n\n")[0],
    rounds=None,
    pin="none",
    options={
        "daemon": Option("tracker", "board", "the daemon attacked: tracker, proxy or board", str),
        "secret": Option(False, help="the farm has a secret (the stranger does not hold it)", type=bool),
        "tls": Option(False, help="the daemon speaks TLS (the stranger never starts it)", type=bool),
        "silent": Option(1000, 100, "silent connections the stranger holds"),
        "attacker": Option("127.0.0.2", "127.0.0.2", "the stranger's (first) source address", str),
        "addresses": Option(1, 2, "source addresses the stranger spreads them over"),
        "nofile": Option(1024, 1024, "the daemon's open-file limit"),
        "window": Option(25.0, 4.0, "seconds the attack lasts", float),
        "timeout": Option(5.0, 5.0, "seconds a member waits to be served", float),
    },
    scenarios=[Scenario("attack", attack, report, target="every member served")],
    headline=headline,
    check_args=lambda args: (
        None if args.daemon in ("tracker", "proxy", "board") else "--daemon: tracker, proxy or board"
    ),
)

if __name__ == "__main__":
    sys.exit(harness.main(TOOL))
