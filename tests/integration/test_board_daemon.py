"""The board daemon as a real process on 127.0.0.1: its command line, crashes, timeouts, abuse.

Every board here is a ``python -m farm.server`` child process started by the fixtures in
tests/conftest.py (or, for the command-line checks, directly), and where marked also the native
board (``farm build-server``); nothing of the package is replaced or mocked. Waits poll a condition
against a deadline instead of sleeping.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
from farm_certs import TlsFiles

import farm
from conftest import (
    NATIVE_CHECKED,
    NATIVE_SERVERS,
    board_server_named,
    every_board_server,
    python_env,
    read_until_closed,
    wait_for,
)
from farm.net.tls import ENV as TLS_ENV
from farm.ops.processes import DaemonProcess
from farm.protocol.calls import encode_call
from farm.protocol.framing import HEADER, Frame, FrameReader, encode_frame
from farm.protocol.handshake import CODE_SUCCESS, RPC_MAGIC, ReplyReader, encode_hello
from farm.protocol.ops import Op

PROJECT = Path(__file__).resolve().parents[2]
KEY = "test"
VADD_SIG = "void vadd(const float *a, const float *b, float *c, int64_t n)"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Address = Tuple[str, int]


# --- helpers -------------------------------------------------------------------------


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs: no such process, or a zombie waiting for its (new) parent."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


def wait_gone(pid: int, what: str, timeout: float = 5.0) -> None:
    wait_for(lambda: process_gone(pid), timeout, "%s %d is gone" % (what, pid))


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of ``pid`` so far, in clock ticks."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def board_alive(daemon: DaemonProcess) -> bool:
    return daemon.process.poll() is None


def try_connect(address: Address, key: str = KEY) -> Optional[farm.RemoteSession]:
    try:
        return farm.connect(*address, key=key)
    except farm.BoardBusyError:
        return None


def connect_when_free(address: Address, timeout: float = 5.0, key: str = KEY) -> farm.RemoteSession:
    """A new session, as soon as the board stops answering busy (within ``timeout`` seconds)."""
    return wait_for(lambda: try_connect(address, key), timeout, "the board at %s:%d accepts a session" % address)


def assert_board_serves(daemon: DaemonProcess, timeout: float = 5.0) -> None:
    """The daemon process still runs and a normal client session works on it."""
    assert board_alive(daemon), "the board daemon exited:\n" + daemon.log_text()[-3000:]
    with connect_when_free(daemon.address, timeout) as session:
        session.ping()
        assert session.system_info()["key"] == KEY
    assert board_alive(daemon), "the board daemon exited:\n" + daemon.log_text()[-3000:]


def frame_bytes(op: int, request_id: int = 1, meta: Optional[dict] = None, payload: bytes = b"") -> bytes:
    return b"".join(bytes(part) for part in encode_frame(op, request_id, meta, payload))


def raw_session(address: Address, key: str = KEY, with_hello: bytes = b"") -> Tuple[socket.socket, bytes]:
    """A raw socket past a successful handshake, and any bytes that came after the reply.

    ``with_hello`` is sent in the same write as the hello, before the reply.
    """
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(encode_hello("client", key) + with_hello)
    reader = ReplyReader()
    reply = None
    while reply is None:
        data = sock.recv(4096)
        assert data, "the board closed the connection during the handshake"
        reply = reader.feed(data)
    assert reply.code == CODE_SUCCESS, reply
    return sock, reader.leftover()


def frames_until_closed(sock: socket.socket, initial: bytes = b"", timeout: float = 10.0) -> List[Frame]:
    return FrameReader().feed(initial + read_until_closed(sock, timeout))


def still_open(sock: socket.socket) -> bool:
    """True while the peer has neither closed nor sent anything."""
    sock.setblocking(False)
    try:
        return not sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def misbehave(session: farm.RemoteSession, kernels: dict, name: str, signature: str) -> farm.RemoteFunction:
    session.upload(kernels["libmisbehave.so"])
    return session.load_module("libmisbehave.so").get_function(name, signature)


class Background:
    """Call ``function`` in a thread; ``result()`` joins it and returns its exception, if any."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.error: Optional[BaseException] = None
        self._function = function
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._function()
        except BaseException as exc:  # handed to the test by result()
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 15.0) -> Optional[BaseException]:
        self._thread.join(timeout)
        assert self.done, "the call did not return within %g s" % timeout
        return self.error


def wait_until_spinning(pid: int, before: int, call: Background) -> None:
    """Wait until ``pid`` has burnt 0.2 s of CPU more than ``before``: only a spinning call does that."""
    wait_for(lambda: call.done or cpu_ticks(pid) - before >= CLOCK_TICKS // 5, 15, "process %d spins" % pid)
    assert not call.done, "the call returned instead of spinning: %r" % call.error


@pytest.fixture
def board(
    request: pytest.FixtureRequest,
    board_factory: Callable[..., DaemonProcess],
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
    native_builds: Dict[bool, str],
) -> DaemonProcess:
    """A board; with ``@EVERY_BOARD`` also one under TLS, whose CA the test's clients take from the environment, and
    the native ones."""
    variant = getattr(request, "param", "plain")
    if variant == "tls":
        monkeypatch.setenv(TLS_ENV["ca"], tls_files.ca)
        return board_factory(key=KEY, env=python_env(**tls_files.daemon().as_env()))
    if variant == "native-tls":  # the native board under TLS: its relay, as the Python board's
        monkeypatch.setenv(TLS_ENV["ca"], tls_files.ca)
        server = board_server_named(NATIVE_CHECKED, native_builds)
        env = python_env(**server.env, **tls_files.daemon().as_env())
        return board_factory(key=KEY, env=env, **server.start_options())
    if variant in NATIVE_SERVERS:
        server = board_server_named(variant, native_builds)
        return board_factory(key=KEY, env=python_env(**server.env), **server.start_options())
    return board_factory(key=KEY)


#: Run a test on a plain board, on one under TLS (where the daemon relays the session's bytes), and on the native
#: board, plain and under TLS (where it relays as the Python board does).
EVERY_BOARD = pytest.mark.parametrize("board", ["plain", "tls", NATIVE_CHECKED, "native-tls"], indirect=True)


@pytest.fixture
def project_daemons(tmp_path: Path) -> Iterator[Callable[[List[str]], DaemonProcess]]:
    """Start ``python -m farm.server ARGS`` exactly as given (no options added); stopped at teardown."""
    started: List[DaemonProcess] = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")])))

    def start(args: List[str]) -> DaemonProcess:
        log = tmp_path / ("daemon-%d.log" % len(started))
        daemon = DaemonProcess([sys.executable, "-m", "farm.server", *args], str(log), env=env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def listening_addresses(port: int) -> List[str]:
    """Local addresses (hex, as in /proc/net/tcp) of TCP sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


# --- the command line ----------------------------------------------------------------


def test_server_logs_the_address_it_listens_on(board: DaemonProcess) -> None:
    match = re.search(r"bind to 127\.0\.0\.1:(\d+)", board.log_text())
    assert match, board.log_text()
    port = int(match.group(1))
    assert board.address == ("127.0.0.1", port)
    with farm.connect("127.0.0.1", port, key=KEY) as session:
        session.ping()


def test_port_range_skips_a_taken_port(board_factory: Callable[..., DaemonProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        first = taken.getsockname()[1]
        daemon = board_factory(port=first, extra=["--port-end", str(first + 20)])
        host, port = daemon.address
        assert host == "127.0.0.1"
        assert first < port < first + 20
        assert "bind to 127.0.0.1:%d" % port in daemon.log_text()
        with farm.connect(host, port, key=KEY) as session:
            assert session.system_info()["key"] == KEY


def test_default_host_is_loopback(project_daemons: Callable[[List[str]], DaemonProcess]) -> None:
    daemon = project_daemons(["--port", "0", "--key", KEY])
    host, port = daemon.wait_for_bind()
    assert host == "127.0.0.1"
    assert listening_addresses(port) == ["0100007F"], "the board must listen on 127.0.0.1 only"
    with farm.connect(host, port, key=KEY) as session:
        session.ping()


def run_server_expecting_failure(args: List[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    command = [sys.executable, "-m", "farm.server", *args]
    return subprocess.run(command, env=env, cwd=str(PROJECT), capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("port", [70000, -1])
def test_port_outside_the_tcp_range_is_reported(port: int) -> None:
    result = run_server_expecting_failure(["--port", str(port), "--port-end", str(port + 10)])
    assert result.returncode == 1, result.stderr
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_port_range_past_65535_is_reported_not_a_traceback() -> None:
    """With port 65535 taken, ``--port 65535 --port-end 65537`` has no free port: a clean error, exit 1."""
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 65535))
            taken.listen(1)
        except OSError:
            pytest.skip("port 65535 is in use by another process, so this test cannot hold it")
        result = run_server_expecting_failure(["--port", "65535", "--port-end", "65537"])
    assert result.returncode == 1, result.stderr
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


# --- the session process crashes -------------------------------------------------------

CRASHES = [
    pytest.param("segfault", "void segfault(void)", (), signal.SIGSEGV, None, id="segfault"),
    pytest.param("do_abort", "void do_abort(void)", (), signal.SIGABRT, None, id="abort"),
    pytest.param("exit_with", "void exit_with(int code)", (3,), None, 3, id="exit-3"),
    pytest.param("exit_with", "void exit_with(int code)", (0,), None, 0, id="exit-0"),
    pytest.param("raise_signal", "void raise_signal(int n)", (int(signal.SIGKILL),), signal.SIGKILL, None, id="kill"),
    pytest.param("raise_signal", "void raise_signal(int n)", (int(signal.SIGTERM),), signal.SIGTERM, None, id="term"),
    # The native session process handles SIGHUP, its signal for a daemon that died; any other SIGHUP is as ever.
    pytest.param("raise_signal", "void raise_signal(int n)", (int(signal.SIGHUP),), signal.SIGHUP, None, id="hup"),
]


def assert_recovered(daemon: DaemonProcess, session_dir: str, old_pid: int) -> None:
    """The daemon outlived the crash, takes a new session within 1 s, and removed the session directory."""
    assert board_alive(daemon), daemon.log_text()[-3000:]
    with connect_when_free(daemon.address, timeout=1.0) as session:
        assert session.system_info()["pid"] != old_pid
    wait_for(lambda: not os.path.exists(session_dir), 5, "the session directory %s is removed" % session_dir)
    assert board_alive(daemon)


@pytest.mark.parametrize("name, signature, args, signum, exit_code", CRASHES)
@EVERY_BOARD
def test_crash_is_reported_and_the_board_recovers(
    board: DaemonProcess,
    kernels: dict,
    name: str,
    signature: str,
    args: tuple,
    signum: Optional[int],
    exit_code: Optional[int],
) -> None:
    with farm.connect(*board.address, key=KEY) as session:
        info = session.system_info()
        assert os.path.isdir(info["session_dir"])
        function = misbehave(session, kernels, name, signature)
        with pytest.raises(farm.SessionLostError) as caught:
            function(*args)
        with pytest.raises(farm.SessionLostError):
            session.ping()  # the session stays lost
    error = caught.value
    message = str(error)
    assert "%s() from libmisbehave.so" % name in message
    if signum is not None:
        assert signal.Signals(signum).name in message
        assert (error.signal, error.exit_code) == (signum, None)
    else:
        assert "exited with code %d" % exit_code in message
        assert (error.signal, error.exit_code) == (None, exit_code)
    assert not error.timed_out
    assert_recovered(board, info["session_dir"], info["pid"])


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@EVERY_BOARD
def test_session_process_killed_from_outside_while_idle(board: DaemonProcess, signum: int) -> None:
    for _attempt in range(3):  # the report must not depend on how fast the kill follows the last reply
        with farm.connect(*board.address, key=KEY) as session:
            info = session.system_info()
            pid = info["pid"]
            assert pid != os.getpid()
            os.kill(pid, signum)
            wait_gone(pid, "the session process")
            with pytest.raises(farm.SessionLostError) as caught:
                session.ping()
        message = str(caught.value)
        assert signal.Signals(signum).name in message
        assert "waiting for a request" in message
        assert (caught.value.signal, caught.value.exit_code) == (signum, None)
        assert_recovered(board, info["session_dir"], pid)


@EVERY_BOARD
def test_session_process_killed_from_outside_while_running(board: DaemonProcess, kernels: dict) -> None:
    with farm.connect(*board.address, key=KEY) as session:
        info = session.system_info()
        pid = info["pid"]
        spin = misbehave(session, kernels, "spin_forever", "void spin_forever(void)")
        before = cpu_ticks(pid)
        call = Background(spin)
        wait_until_spinning(pid, before, call)
        os.kill(pid, signal.SIGKILL)
        error = call.result()
    assert isinstance(error, farm.SessionLostError), repr(error)
    assert "SIGKILL" in str(error) and "spin_forever() from libmisbehave.so" in str(error)
    assert error.signal == signal.SIGKILL
    assert_recovered(board, info["session_dir"], pid)


# --- session timeout -----------------------------------------------------------------------


@EVERY_BOARD
def test_session_timeout_ends_a_spinning_call(board: DaemonProcess, kernels: dict) -> None:
    with farm.connect(*board.address, key=KEY, session_timeout=1) as session:
        info = session.system_info()
        spin = misbehave(session, kernels, "spin_forever", "void spin_forever(void)")
        started = time.monotonic()
        with pytest.raises(farm.SessionLostError) as caught:
            spin()
        elapsed = time.monotonic() - started
    error = caught.value
    assert error.timed_out
    assert "timeout" in str(error) and "expired" in str(error)
    assert "spin_forever()" in str(error)
    assert 0.5 <= elapsed < 10, elapsed
    assert "timeout 1 s" in board.log_text()
    assert_recovered(board, info["session_dir"], info["pid"])


@EVERY_BOARD
def test_session_timeout_that_does_not_expire(board: DaemonProcess, kernels: dict) -> None:
    x = np.arange(64, dtype=np.float32)
    with farm.connect(*board.address, key=KEY, session_timeout=60) as session:
        session.upload(kernels["libvadd.so"])
        vadd = session.load_module("libvadd.so").get_function("vadd", VADD_SIG)
        a, b, c = session.array(x), session.array(x * 2), session.empty(x.shape, "float32")
        vadd(a, b, c, x.size)
        np.testing.assert_array_equal(c.numpy(), x * 3)
    assert session.closed
    assert "timeout 60 s" in board.log_text()
    assert "expired" not in board.log_text()
    with farm.connect(*board.address, key=KEY) as again:  # free at once: close() waits for the board
        again.ping()


def test_non_finite_session_timeout_does_not_make_the_daemon_spin(board: DaemonProcess) -> None:
    """``-timeout=nan`` in the handshake: refused, or accepted without the daemon busy-looping."""
    text = ("client:%s -timeout=nan" % KEY).encode()
    sock = socket.create_connection(board.address, timeout=10)
    try:
        sock.sendall(RPC_MAGIC.to_bytes(4, "little") + len(text).to_bytes(4, "little") + text)
        reader = ReplyReader()
        reply = None
        while reply is None:
            data = sock.recv(4096)
            if not data:
                break
            reply = reader.feed(data)
        if reply is None or reply.code != CODE_SUCCESS:
            assert read_until_closed(sock) == b"", "a refused hello must be followed by a close"
        else:
            before = cpu_ticks(board.pid)
            window_end = time.monotonic() + 1.0
            for request_id in range(1, 1000):  # keep the session busy for a one-second window
                sock.sendall(frame_bytes(Op.PING, request_id))
                frames: List[Frame] = []
                frame_reader = FrameReader()
                while not frames:
                    frames = frame_reader.feed(sock.recv(4096))
                assert frames[0].op == Op.RESULT
                if time.monotonic() >= window_end:
                    break
                time.sleep(0.02)
            used = (cpu_ticks(board.pid) - before) / CLOCK_TICKS
            assert used < 0.3, "the daemon used %.2f s of CPU in 1 s with a session of timeout nan" % used
    finally:
        sock.close()
    assert_board_serves(board)


# --- children of the session -------------------------------------------------------------


@pytest.mark.parametrize("ending", ["close", "crash"])
@EVERY_BOARD
def test_forked_children_die_with_the_session(board: DaemonProcess, kernels: dict, ending: str) -> None:
    with farm.connect(*board.address, key=KEY) as session:
        session_pid = session.system_info()["pid"]
        fork_sleeper = misbehave(session, kernels, "fork_sleeper", "int fork_sleeper(void)")
        child = fork_sleeper()
        assert isinstance(child, int) and child > 0
        assert not process_gone(child)
        assert os.getpgid(child) == session_pid
        if ending == "crash":
            with pytest.raises(farm.SessionLostError, match="SIGSEGV"):
                session.load_module("libmisbehave.so").get_function("segfault", "void segfault(void)")()
    wait_gone(child, "the forked child")
    wait_gone(session_pid, "the session process")
    assert_board_serves(board)


# --- one session at a time, keys -------------------------------------------------------------


@EVERY_BOARD
def test_second_client_is_refused_while_busy(board: DaemonProcess) -> None:
    first = farm.connect(*board.address, key=KEY)
    try:
        first.ping()
        with pytest.raises(farm.BoardBusyError) as caught:
            farm.connect(*board.address, key=KEY)
        message = str(caught.value)
        assert "busy" in message
        assert repr(KEY) in message and "%s:%d" % board.address in message
        first.ping()  # the refusal did not disturb the running session
    finally:
        first.close()
    with farm.connect(*board.address, key=KEY) as second:  # no retry: close() returns once the board is free
        second.ping()


@EVERY_BOARD
def test_key_mismatch_is_refused(board: DaemonProcess) -> None:
    with pytest.raises(farm.HandshakeError) as caught:
        farm.connect(*board.address, key="another-board")
    assert not isinstance(caught.value, farm.BoardBusyError)
    assert "mismatch" in str(caught.value)
    assert_board_serves(board, timeout=1.0)


# --- malformed input before and during the handshake --------------------------------------------


@every_board_server
def test_wrong_handshake_magic(board: DaemonProcess) -> None:
    sock = socket.create_connection(board.address, timeout=10)
    sock.sendall((0x12345).to_bytes(4, "little") + (11).to_bytes(4, "little") + b"client:test")
    assert read_until_closed(sock) == b""
    assert_board_serves(board)


@every_board_server
def test_huge_handshake_key_length(board: DaemonProcess) -> None:
    sock = socket.create_connection(board.address, timeout=10)
    sock.sendall(RPC_MAGIC.to_bytes(4, "little") + (2**31 - 1).to_bytes(4, "little") + b"client:test")
    started = time.monotonic()
    assert read_until_closed(sock) == b""
    assert time.monotonic() - started < 5, "the board waited for the key instead of refusing its length"
    assert_board_serves(board)


@pytest.mark.parametrize("sent", [b"", RPC_MAGIC.to_bytes(4, "little")], ids=["nothing", "magic-only"])
def test_silent_peer_does_not_block_the_board(board_factory: Callable[..., DaemonProcess], sent: bytes) -> None:
    daemon = board_factory(key=KEY, extra=["--handshake-timeout", "1"])
    connected = time.monotonic()
    silent = socket.create_connection(daemon.address, timeout=10)
    try:
        silent.sendall(sent)
        with farm.connect(*daemon.address, key=KEY, connect_timeout=5) as session:
            session.ping()
        assert still_open(silent), "the silent peer was dropped before its handshake timeout"
        with farm.connect(*daemon.address, key=KEY, connect_timeout=5) as session:
            session.ping()
        assert read_until_closed(silent) == b""
        assert time.monotonic() - connected >= 0.9, "the silent peer was dropped before its handshake timeout"
    finally:
        silent.close()
    assert_board_serves(daemon)


@every_board_server
def test_garbage_after_a_valid_handshake(board: DaemonProcess) -> None:
    rng = random.Random(20240611)
    garbage = b"\x00\xff" + bytes(rng.getrandbits(8) for _ in range(4094))
    sock, _ = raw_session(board.address)
    sock.sendall(garbage)
    frames = FrameReader().feed(read_until_closed(sock))
    assert all(frame.op in (Op.ERROR, Op.SESSION_END) for frame in frames), frames
    assert_board_serves(board)


@every_board_server
@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(frame_bytes(Op.PING)[:11], id="in-the-header"),
        pytest.param(frame_bytes(Op.LISTDIR, 1, {"name": "."})[: HEADER.size + 3], id="in-the-metadata"),
        pytest.param(frame_bytes(Op.UPLOAD, 1, {"name": "f"}, b"x" * 1000)[:-10], id="in-the-payload"),
    ],
)
def test_truncated_frame_then_close(board: DaemonProcess, sent: bytes) -> None:
    sock, _ = raw_session(board.address)
    sock.sendall(sent)
    sock.shutdown(socket.SHUT_WR)
    frames = FrameReader().feed(read_until_closed(sock))
    assert not any(frame.op == Op.RESULT for frame in frames), frames
    assert_board_serves(board)


def error_frame(frames: List[Frame]) -> Frame:
    assert frames, "the board closed the connection without an ERROR frame"
    assert frames[0].op == Op.ERROR == 65, frames
    # Then only the daemon's notice that the session ended normally (after a protocol error).
    assert [(f.op, f.meta["message"]) for f in frames[1:]] == [(Op.SESSION_END, "")], frames
    return frames[0]


@every_board_server
def test_oversized_payload_is_refused_with_an_error_frame(board_factory: Callable[..., DaemonProcess]) -> None:
    daemon = board_factory(key=KEY, extra=["--max-message-size", "1024"])
    sock, leftover = raw_session(daemon.address)
    sock.sendall(HEADER.pack(b"RD", 1, Op.UPLOAD, 7, 0, 4096))
    error = error_frame(frames_until_closed(sock, leftover))
    assert "1024" in error.meta["message"] and "4096" in error.meta["message"]
    assert "limit" in error.meta["message"]
    assert error.meta["type"] == "ProtocolError"
    assert_board_serves(daemon)


_CALL = encode_call(1, "i", [5])  # a well-formed CALL payload: function 1, one int64
BAD_FRAMES = [
    pytest.param(HEADER.pack(b"XX", 1, Op.PING, 1, 0, 0), "magic", id="bad-magic"),
    pytest.param(HEADER.pack(b"RD", 99, Op.PING, 1, 0, 0), "version", id="bad-version"),
    pytest.param(HEADER.pack(b"RD", 1, Op.PING, 1, 5, 0) + b"{nope", "JSON", id="invalid-json"),
    pytest.param(HEADER.pack(b"RD", 1, Op.PING, 1, 2, 0) + b"\xff\xfe", "JSON", id="invalid-utf8-json"),
    pytest.param(HEADER.pack(b"RD", 1, Op.PING, 1, 5, 0) + b"[1,2]", "object", id="json-not-an-object"),
    pytest.param(frame_bytes(99), "unknown operation 99", id="unknown-op"),
    pytest.param(frame_bytes(Op.RESULT), "unknown operation 64", id="reply-op-as-request"),
    pytest.param(frame_bytes(Op.ARRAY_EMPTY, 1, {"shape": "abc", "dtype": "float32"}), "shape", id="shape-str"),
    pytest.param(frame_bytes(Op.ARRAY_EMPTY, 1, {"shape": [2, -1], "dtype": "float32"}), "shape", id="shape-neg"),
    pytest.param(frame_bytes(Op.ARRAY_EMPTY, 1, {"shape": [2], "dtype": 4}), "dtype", id="dtype-int"),
    pytest.param(frame_bytes(Op.UPLOAD, 1, {"name": 5}, b"data"), "name", id="upload-name-int"),
    pytest.param(frame_bytes(Op.CALL, 1, None, b"\x01"), "shorter", id="call-payload-short"),
    pytest.param(frame_bytes(Op.CALL, 1, None, _CALL[:6] + b"z" + _CALL[7:]), "tags", id="call-bad-tag"),
    pytest.param(frame_bytes(Op.CALL, 1, None, _CALL[:-3]), "expected", id="call-payload-cut"),
    pytest.param(frame_bytes(Op.GET_FUNCTION, 1, {"module": [1], "name": "f"}), "module", id="module-list"),
    pytest.param(frame_bytes(Op.ARRAY_READ, 1, {"id": 1.5}), "id", id="array-id-float"),
    pytest.param(frame_bytes(Op.PING, 1, {"release": "x"}), "release", id="release-str"),
    pytest.param(frame_bytes(Op.ARRAY_WRITE, 1, {"id": [1]}, b"\0" * 8), "id", id="array-write-id-list"),
]


@every_board_server
@pytest.mark.parametrize("sent, complaint", BAD_FRAMES)
def test_malformed_frame_gets_an_error_frame_and_a_close(board: DaemonProcess, sent: bytes, complaint: str) -> None:
    sock, leftover = raw_session(board.address)
    sock.sendall(sent)
    error = error_frame(frames_until_closed(sock, leftover))
    assert complaint in error.meta["message"], error.meta
    assert error.meta["type"] == "ProtocolError", error.meta
    assert_board_serves(board)


@every_board_server
@pytest.mark.parametrize(
    "sent, complaint",
    [
        pytest.param(HEADER.pack(b"XX", 1, Op.PING, 1, 0, 0), "magic", id="bad-magic"),
        pytest.param(HEADER.pack(b"RD", 1, Op.UPLOAD, 1, 0, 1 << 40), "limit", id="oversized"),
    ],
)
def test_malformed_frame_sent_with_the_handshake(board: DaemonProcess, sent: bytes, complaint: str) -> None:
    """A client may send its first frame right behind the hello, before the reply: same answer as after it."""
    sock, leftover = raw_session(board.address, with_hello=sent)
    error = error_frame(frames_until_closed(sock, leftover))
    assert complaint in error.meta["message"], error.meta
    assert "session process failed" not in board.log_text()
    assert_board_serves(board)


# --- stopping the daemon during a session --------------------------------------------------------


@EVERY_BOARD
def test_sigterm_to_the_daemon_during_an_idle_session(board: DaemonProcess) -> None:
    session = farm.connect(*board.address, key=KEY)
    try:
        info = session.system_info()
        work_dir = os.path.dirname(info["session_dir"])
        assert os.path.isdir(work_dir)
        board.process.send_signal(signal.SIGTERM)
        assert board.process.wait(timeout=10) == 0, board.log_text()[-3000:]
        with pytest.raises(farm.SessionLostError) as caught:
            session.ping()
    finally:
        session.close()
    assert "shut down" in str(caught.value)
    wait_gone(info["pid"], "the session process")
    assert not os.path.exists(info["session_dir"])
    assert not os.path.exists(work_dir)


@EVERY_BOARD
def test_sigterm_to_the_daemon_during_a_running_call(board: DaemonProcess, kernels: dict) -> None:
    with farm.connect(*board.address, key=KEY) as session:
        info = session.system_info()
        spin = misbehave(session, kernels, "spin_forever", "void spin_forever(void)")
        before = cpu_ticks(info["pid"])
        call = Background(spin)
        wait_until_spinning(info["pid"], before, call)
        board.process.send_signal(signal.SIGTERM)
        error = call.result()
        assert board.process.wait(timeout=10) == 0, board.log_text()[-3000:]
    assert isinstance(error, farm.SessionLostError), repr(error)
    assert "shut down" in str(error)
    wait_gone(info["pid"], "the session process")
    assert not os.path.exists(os.path.dirname(info["session_dir"]))


@every_board_server
def test_sigkill_to_the_daemon_takes_the_session_process_along(
    board_factory: Callable[..., DaemonProcess], reachable_tmp: Path
) -> None:
    daemon = board_factory(key=KEY, extra=["--work-dir", str(reachable_tmp / "work")])
    with farm.connect(*daemon.address, key=KEY) as session:
        pid = session.system_info()["pid"]
        assert not process_gone(pid)
        daemon.process.kill()
        assert daemon.process.wait(timeout=10) == -signal.SIGKILL
        wait_gone(pid, "the session process")
        with pytest.raises(farm.SessionLostError):
            session.ping()


@every_board_server
def test_sigkill_to_the_daemon_takes_forked_children_along(
    board_factory: Callable[..., DaemonProcess], reachable_tmp: Path, kernels: dict
) -> None:
    """A child the session forked must not outlive the board: it would keep the client's connection open."""
    daemon = board_factory(key=KEY, extra=["--work-dir", str(reachable_tmp / "work")])
    session = farm.connect(*daemon.address, key=KEY)
    child = 0
    try:
        pid = session.system_info()["pid"]
        child = misbehave(session, kernels, "fork_sleeper", "int fork_sleeper(void)")()
        assert child > 0 and not process_gone(child)
        daemon.process.kill()
        assert daemon.process.wait(timeout=10) == -signal.SIGKILL
        wait_gone(pid, "the session process")
        wait_gone(child, "the child forked by the session")
        with pytest.raises(farm.SessionLostError):
            session.ping()
    finally:
        if child > 0 and not process_gone(child):
            os.kill(child, signal.SIGKILL)  # the process this test made the session fork
        session.close()
