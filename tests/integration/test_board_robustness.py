"""Board robustness on real processes at 127.0.0.1: reloads, uploads, a dead watchdog, limits, resets.

Every board is a child process started by the fixtures in tests/conftest.py: ``python -m
farm.server``, and for every test that applies to a board without Python, the native board
(docs/native-board.md; the sanitized build where there is one). Nothing of the package is
replaced or mocked. Waits poll a condition against a deadline instead of sleeping.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
from farm_certs import TlsFiles

import farm
from conftest import BoardServer, every_board_server, python_board_only, python_env, read_until_closed, wait_for
from farm.ops.processes import DaemonProcess
from farm.ops.toolchain import compile_shared
from farm.protocol.framing import HEADER, Frame, FrameReader, encode_frame
from farm.protocol.handshake import CODE_SUCCESS, ReplyReader, encode_hello
from farm.protocol.ops import Op

pytestmark = every_board_server
KEY = "test"
Address = Tuple[str, int]

LIBRARY_SOURCES = {
    "libversion1.so": "int version(void) { return 1; }\n",
    "libversion2.so": "int version(void) { return 2; }\nint other(void) { return 7; }\n",
    # Through a pointer the compiler cannot see is NULL: a literal NULL store lets it drop the constructor.
    "libboom.so": "static int *volatile nowhere;\n"
    "__attribute__((constructor)) static void boom(void) { *nowhere = 1; }\n",
}


# --- helpers -------------------------------------------------------------------------


def proc_stat(pid: int) -> Optional[List[str]]:
    """The fields of /proc/PID/stat after the command name (state first), or None if there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs: no such process, or a zombie nobody reaped yet."""
    fields = proc_stat(pid)
    return fields is None or fields[0] == "Z"


def wait_gone(pid: int, what: str, timeout: float = 5.0) -> None:
    wait_for(lambda: process_gone(pid), timeout, "%s %d is gone" % (what, pid))


def children_of(pid: int) -> List[int]:
    """Child processes of ``pid``: from /proc/PID/task/*/children where the kernel has it, else by parent id."""
    found = set()
    listings = glob.glob("/proc/%d/task/*/children" % pid)
    if listings:
        for listing in listings:
            try:
                with open(listing) as handle:
                    found.update(int(child) for child in handle.read().split())
            except FileNotFoundError:
                pass  # a thread that just ended
        return sorted(found)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields is not None and int(fields[1]) == pid:
                found.add(int(entry))
    return sorted(found)


def open_files_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of ``pid``."""
    with open("/proc/%d/limits" % pid) as handle:
        for line in handle:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-files limit in /proc/%d/limits" % pid)


def board_alive(daemon: DaemonProcess) -> bool:
    return daemon.process.poll() is None


def try_connect(address: Address) -> Optional[farm.RemoteSession]:
    try:
        return farm.connect(*address, key=KEY)
    except farm.BoardBusyError:
        return None


def assert_board_serves(daemon: DaemonProcess, timeout: float = 5.0) -> None:
    """The daemon process still runs and a normal client session works on it."""
    assert board_alive(daemon), "the board daemon exited:\n" + daemon.log_text()[-3000:]
    address = daemon.address
    assert address is not None
    session = wait_for(lambda: try_connect(address), timeout, "the board at %s:%d accepts a session" % address)
    with session:
        session.ping()
        assert session.system_info()["key"] == KEY
    assert board_alive(daemon), "the board daemon exited:\n" + daemon.log_text()[-3000:]


def frame_bytes(op: int, request_id: int = 1, meta: Optional[dict] = None, payload: bytes = b"") -> bytes:
    return b"".join(bytes(part) for part in encode_frame(op, request_id, meta, payload))


def raw_session(address: Address) -> Tuple[socket.socket, bytes]:
    """A raw socket past a successful handshake, and any bytes that came after the reply."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(encode_hello("client", KEY))
    reader = ReplyReader()
    reply = None
    while reply is None:
        data = sock.recv(4096)
        assert data, "the board closed the connection during the handshake"
        reply = reader.feed(data)
    assert reply.code == CODE_SUCCESS, reply
    return sock, reader.leftover()


def frames_until_closed(sock: socket.socket, initial: bytes = b"", timeout: float = 10.0) -> List[Frame]:
    """Every frame the peer sends until it closes; fails if it stays open for ``timeout`` seconds."""
    return FrameReader().feed(initial + read_until_closed(sock, timeout))


def next_frame(sock: socket.socket, reader: FrameReader, pending: List[Frame]) -> Frame:
    """The next frame on a raw session (``pending`` holds frames already parsed)."""
    while not pending:
        data = sock.recv(65536)
        assert data, "the board closed the connection"
        pending.extend(reader.feed(data))
    return pending.pop(0)


@pytest.fixture(scope="module")
def libraries(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Small shared libraries of this module, built with the system C compiler: name -> path."""
    out = tmp_path_factory.mktemp("robustness-libraries")
    built = {}
    for name, text in LIBRARY_SOURCES.items():
        source = out / (name[:-3] + ".c")
        source.write_text(text)
        built[name] = Path(compile_shared([source], out / name))
    return built


# --- re-uploading a loaded library ------------------------------------------------------


@pytest.mark.parametrize("remove_first", [False, True], ids=["overwrite", "remove-then-upload"])
def test_reupload_of_a_loaded_library_loads_the_new_code(
    remote: farm.RemoteSession, libraries: Dict[str, Path], remove_first: bool
) -> None:
    assert remote.upload(libraries["libversion1.so"], "libk.so") == "libk.so"
    old = remote.load_module("libk.so")
    assert old.get_function("version", "int version(void)")() == 1
    if remove_first:
        remote.remove("libk.so")
        assert "libk.so" not in remote.listdir()
    assert remote.upload(libraries["libversion2.so"], "libk.so") == "libk.so"
    new = remote.load_module("libk.so")
    assert new.id != old.id
    assert new.get_function("version", "int version(void)")() == 2
    assert new.get_function("other", "int other(void)")() == 7
    # A new lookup in the old module (another spelling, so not the client's cache) still finds the old code.
    assert old.get_function("version", "int version()")() == 1
    with pytest.raises(farm.RemoteError, match="has no function 'other'"):
        old.get_function("other", "int other(void)")
    remote.ping()
    assert remote.listdir() == ["libk.so"], "a temporary upload or load name was left behind"


# --- uploads stream into a file ----------------------------------------------------------


def test_large_upload_round_trips_and_leaves_no_temporary_file(remote: farm.RemoteSession) -> None:
    data = os.urandom(8 << 20)
    assert remote.upload(data, "big.bin") == "big.bin"
    assert remote.download("big.bin") == data
    assert remote.listdir(".") == ["big.bin"]


@pytest.mark.parametrize(
    "name, error_type",
    [
        pytest.param("../x", "PathEscapeError", id="outside"),
        pytest.param(".", "PathEscapeError", id="the-directory-itself"),
        pytest.param("plain/x", "FileExistsError", id="below-a-file"),
    ],
)
def test_refused_upload_leaves_no_temporary_file(remote: farm.RemoteSession, name: str, error_type: str) -> None:
    session_dir = remote.system_info()["session_dir"]
    remote.upload(b"contents", "plain")
    with pytest.raises(farm.RemoteError) as caught:
        remote.upload(b"z" * 100000, name)
    assert not isinstance(caught.value, farm.SessionLostError)
    assert caught.value.remote_type == error_type, caught.value
    assert remote.listdir(".") == ["plain"], "the refused upload left a file behind"
    assert not os.path.exists(os.path.join(os.path.dirname(session_dir), "x"))
    assert remote.download("plain") == b"contents"


# --- the watchdog dies ---------------------------------------------------------------------


@python_board_only  # the native daemon has no watchdog process: it enforces the session timeout itself
def test_board_serves_after_its_watchdog_was_killed(
    board_factory: Callable[..., DaemonProcess], kernels: Dict[str, Path]
) -> None:
    daemon = board_factory(key=KEY)
    children = children_of(daemon.pid)
    assert len(children) == 2, "before any session the daemon's children are its spawner and watchdog: %r" % children
    # The watchdog takes a process group of its own; the spawner stays in the daemon's.
    (watchdog,) = wait_for(lambda: [c for c in children if os.getpgid(c) == c], 10, "the watchdog's own group")
    os.kill(watchdog, signal.SIGKILL)
    wait_gone(watchdog, "the watchdog")

    first = farm.connect(*daemon.address, key=KEY)
    try:
        first.ping()
        with pytest.raises(farm.BoardBusyError):
            farm.connect(*daemon.address, key=KEY)
        first.ping()
    finally:
        first.close()
    with farm.connect(*daemon.address, key=KEY) as second:  # close() returned once the board was free
        second.ping()

    with farm.connect(*daemon.address, key=KEY, session_timeout=1) as session:
        pid = session.system_info()["pid"]
        session.upload(kernels["libmisbehave.so"])
        spin = session.load_module("libmisbehave.so").get_function("spin_forever", "void spin_forever(void)")
        with pytest.raises(farm.SessionLostError) as caught:
            spin()
    assert caught.value.timed_out, caught.value
    wait_gone(pid, "the timed-out session process")
    assert "watchdog process is gone" in daemon.log_text()
    assert_board_serves(daemon)


# --- out of file descriptors ---------------------------------------------------------------


def test_board_survives_running_out_of_file_descriptors(
    board_factory: Callable[..., DaemonProcess], board_server: BoardServer, tmp_path: Path
) -> None:
    server = board_server.program or sys.executable
    wrapper = tmp_path / "board-with-48-files"
    wrapper.write_text(
        "#!%s\n"
        "import os, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))\n"
        "os.execv(%r, [%r] + sys.argv[1:])\n" % (sys.executable, server, server)
    )
    wrapper.chmod(0o755)
    # The wrapper runs in place of the Python (``-m farm.server`` follows) or of the native daemon.
    start = {"program": str(wrapper)} if board_server.native else {"python": str(wrapper)}
    # Its share of pending handshakes per address above its descriptors, so that these run out first.
    daemon = board_factory(key=KEY, extra=["--max-unproven-per-address", "64"], **start)
    assert open_files_limit(daemon.pid) == 48
    clients: List[socket.socket] = []
    try:
        for _ in range(80):
            clients.append(socket.create_connection(daemon.address, timeout=10))
        wait_for(lambda: "cannot accept connections" in daemon.log_text(), 10, "the board pauses accepting")
        assert board_alive(daemon), daemon.log_text()[-3000:]
    finally:
        for client in clients:
            client.close()
    with farm.connect(*daemon.address, key=KEY, connect_timeout=10) as session:
        session.ping()
    assert board_alive(daemon), daemon.log_text()[-3000:]


# --- frames refused by the session --------------------------------------------------------------


def test_whole_frame_over_the_message_size_limit_is_refused(board_factory: Callable[..., DaemonProcess]) -> None:
    daemon = board_factory(key=KEY, extra=["--max-message-size", "1024"])
    sock, leftover = raw_session(daemon.address)
    sock.sendall(frame_bytes(Op.UPLOAD, 5, {"name": "x"}, b"a" * 3000))  # one write: the reader's fast path
    frames = frames_until_closed(sock, leftover)
    assert [(frame.op, frame.request_id) for frame in frames] == [(Op.ERROR, 5), (Op.SESSION_END, 0)], frames
    message = frames[0].meta["message"]
    assert "limit" in message and "1024" in message and "3000" in message, message
    assert frames[0].meta["type"] == "ProtocolError"
    with farm.connect(*daemon.address, key=KEY) as session:
        assert "x" not in session.listdir(".")
        assert session.listdir(".") == []
    assert_board_serves(daemon)


def test_refused_frame_error_carries_its_own_request_id(board_factory: Callable[..., DaemonProcess]) -> None:
    daemon = board_factory(key=KEY)
    bad = b"{nope"
    sock, leftover = raw_session(daemon.address)
    sock.sendall(frame_bytes(Op.PING, 7) + HEADER.pack(b"RD", 1, Op.PING, 42, len(bad), 0) + bad)
    frames = frames_until_closed(sock, leftover)
    expected = [(Op.RESULT, 7), (Op.ERROR, 42), (Op.SESSION_END, 0)]  # the session ended after the bad frame
    assert [(frame.op, frame.request_id) for frame in frames] == expected, frames
    assert "JSON" in frames[1].meta["message"], frames[1].meta
    assert frames[1].meta["type"] == "ProtocolError"
    assert_board_serves(daemon)


# --- error replies ------------------------------------------------------------------------------


@python_board_only  # run() raises it: the native board's is below, from a lookup of a huge name
def test_huge_non_ascii_error_message_keeps_the_session(remote: farm.RemoteSession) -> None:
    with pytest.raises(farm.RemoteError) as caught:
        remote.run(lambda: (_ for _ in ()).throw(ValueError("\U0001f600" * 100000)))
    error = caught.value
    assert not isinstance(error, farm.SessionLostError), error
    assert error.remote_type == "ValueError"
    message = error.args[0]
    assert "characters cut" in message
    assert "\U0001f600" * 100 in message
    assert len(message) < 100000
    remote.ping()


def test_huge_non_ascii_name_in_an_error_is_cut_by_characters(
    remote: farm.RemoteSession, libraries: Dict[str, Path]
) -> None:
    """A lookup of a function named by 80,000 characters outside ASCII (one and two UTF-16 units each): the error
    keeps the first and last 16 Ki characters of its message whole and counts the characters cut between."""
    remote.upload(libraries["libversion1.so"], "libname.so")
    module = remote.load_module("libname.so")
    name = "\u00e9\U0001f600" * 40000
    with pytest.raises(farm.RemoteError) as caught:
        module.get_function(name, "int f(void)")
    assert not isinstance(caught.value, farm.SessionLostError), caught.value
    assert caught.value.remote_type == "FarmError"
    whole, half = "libname.so has no function %r" % name, 16 << 10
    cut = "\n[... %d characters cut ...]\n" % (len(whole) - 2 * half)
    assert caught.value.args[0] == "FarmError: " + whole[:half] + cut + whole[-half:]
    assert module.get_function("version", "int version(void)")() == 1


# --- the client resets the connection mid-reply ----------------------------------------------------


def test_client_reset_in_the_middle_of_a_large_reply(board_factory: Callable[..., DaemonProcess]) -> None:
    daemon = board_factory(key=KEY)
    size = 50 << 20
    sock, leftover = raw_session(daemon.address)
    reader = FrameReader()
    pending = reader.feed(leftover)
    try:
        sock.sendall(frame_bytes(Op.ARRAY_EMPTY, 1, {"shape": [size], "dtype": "uint8"}))
        reply = next_frame(sock, reader, pending)
        assert (reply.op, reply.request_id) == (Op.RESULT, 1), reply
        sock.sendall(frame_bytes(Op.ARRAY_READ, 2, {"id": reply.meta["id"]}))
        received = 0
        while received < 16 << 10:  # a few KiB of the 50 MB reply
            data = sock.recv(4096)
            assert data, "the board closed the connection before sending the array"
            received += len(data)
        assert received < size
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        sock.close()
    wait_for(lambda: "ended after" in daemon.log_text(), 10, "the board logs the end of the session")
    log = daemon.log_text()
    assert "session process failed" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert_board_serves(daemon)


# --- a crash while loading a library ----------------------------------------------------------------


def test_crash_in_a_library_constructor_names_load_module(
    board_factory: Callable[..., DaemonProcess], libraries: Dict[str, Path]
) -> None:
    daemon = board_factory(key=KEY)
    with farm.connect(*daemon.address, key=KEY) as session:
        pid = session.system_info()["pid"]
        session.upload(libraries["libboom.so"])
        with pytest.raises(farm.SessionLostError) as caught:
            session.load_module("libboom.so")
    message = str(caught.value)
    assert "LOAD_MODULE" in message and "SIGSEGV" in message, message
    assert "libboom.so" in message, message
    assert caught.value.signal == signal.SIGSEGV
    wait_gone(pid, "the crashed session process")
    assert_board_serves(daemon)


# --- a client that leaves in the middle of a call --------------------------------------

#: ``python CLIENT HOST PORT KEY [LIBRARY]``: the call leaves a file named "running" in the session's directory,
#: which the client prints, and waits. It is ``sleep_long()`` through run(), or with LIBRARY (a board without
#: Python) the kernel ``mark_and_pause()`` of libfaults.so.
INTERRUPTED_CLIENT = """
import sys, time
import farm


def sleep_long():
    open("running", "w").close()
    time.sleep(120)


remote = farm.connect(sys.argv[1], int(sys.argv[2]), key=sys.argv[3])
print(remote.system_info()["session_dir"], flush=True)
if len(sys.argv) > 4:
    remote.upload(sys.argv[4])
    call = remote.load_module("libfaults.so").get_function("mark_and_pause", "void mark_and_pause(void)")
else:
    call = lambda: remote.run(sleep_long)
try:
    call()
except KeyboardInterrupt:
    remote.close()  # must not wait for the board to finish the call
    print("closed:", remote.closed, flush=True)
    try:
        remote.ping()
    except farm.SessionLostError as exc:
        print("lost:", exc, flush=True)
"""


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_client_that_leaves_mid_call_frees_the_board(
    board_factory: Callable[..., DaemonProcess],
    board_server: BoardServer,
    kernels: Dict[str, Path],
    tmp_path: Path,
    how: str,
) -> None:
    """Ctrl-C (or a kill) during a long call: the client closes at once and the board ends the session."""
    daemon = board_factory(key=KEY)
    leave_mid_call(daemon, board_server, kernels["libfaults.so"], tmp_path, how, python_env())


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_client_that_leaves_mid_call_under_tls_frees_the_board(
    board_factory: Callable[..., DaemonProcess],
    board_server: BoardServer,
    kernels: Dict[str, Path],
    tmp_path: Path,
    how: str,
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same under TLS: the daemon, which holds the client's connection, sees it go."""
    tls_env = tls_files.daemon().as_env()
    for name, value in tls_env.items():
        monkeypatch.setenv(name, value)
    daemon = board_factory(key=KEY, env=python_env(**tls_env))
    leave_mid_call(daemon, board_server, kernels["libfaults.so"], tmp_path, how, python_env(**tls_env))


def first_line(path: Path) -> Optional[str]:
    """The first line of the file once it is written whole, without its newline."""
    line, newline, _ = path.read_text().partition("\n")
    return line if newline else None


def leave_mid_call(
    daemon: DaemonProcess, board_server: BoardServer, library: Path, tmp_path: Path, how: str, env: Dict[str, str]
) -> None:
    """Signal a client process (INTERRUPTED_CLIENT) in its call, and check that the board ended the session."""
    host, port = daemon.address
    script, output = tmp_path / "client.py", tmp_path / "client.out"
    script.write_text(INTERRUPTED_CLIENT)
    call = "mark_and_pause() from libfaults.so" if board_server.native else "sleep_long()"
    with open(output, "w") as out:
        argv = [sys.executable, str(script), host, str(port), KEY, *([str(library)] if board_server.native else [])]
        client = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        session_dir = wait_for(lambda: first_line(output), 30, "the client has a session")
        wait_for((Path(session_dir) / "running").exists, 30, "the board to run the call")
        client.send_signal(getattr(signal, how))
        client.wait(timeout=60)
    finally:
        client.kill()
        client.wait()
    if how == "SIGINT":
        text = output.read_text()
        assert "closed: True" in text, text
        assert (
            "lost: the session on board 'test' at %s:%d was abandoned in the middle of a request" % (host, port)
            in text
        )
    # Long before the 120 s call would end, the board is free for the next client.
    ended = "the client left while running %s; the board ended the session" % call  # once reaped: it is free
    wait_for(lambda: ended in daemon.log_text(), 10, "the board to end the session")
    assert "left while running %s; killing the session" % call in daemon.log_text()
    with farm.connect(host, port, key=KEY, connect_timeout=5) as remote:
        remote.ping()
