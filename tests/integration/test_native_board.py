"""What is particular to the native board server (C, no Python on the board), on real processes at 127.0.0.1.

The protocol it shares with the Python board is tested against both in test_session_api.py,
test_time_evaluator.py and test_board_daemon.py; here: the farm secret, the session's memory,
the tracker link and the proxy with a secret, a build without TLS, the upload quota
and ``farm build-server``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
from farm_certs import TlsFiles

import farm
from conftest import (
    NATIVE_SERVERS,
    BoardServer,
    check_sanitizer_log,
    parent_of,
    python_env,
    require_emulators,
    wait_for,
)
from farm.net.secret import SECRET_ENV
from farm.ops.emulators import sysroot
from farm.ops.inventory import parse_inventory
from farm.ops.launcher import FarmStack
from farm.ops.native import build_server, host_server
from farm.ops.processes import DaemonProcess
from farm.ops.targets import EMULATED, TARGETS, host_target
from farm.ops.toolchain import build_shared, compile_shared, toolchain_for
from farm.protocol.handshake import encode_hello

pytestmark = pytest.mark.board_servers(*NATIVE_SERVERS)
KEY = "test"
VADD = Path(__file__).resolve().parents[2] / "farm" / "ops" / "kernels" / "vadd.c"
VADD_SIG = "void vadd(const float *a, const float *b, float *c, int64_t n)"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(os.urandom(24).hex().encode() + b"\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def locked_board(board_factory: Callable[..., DaemonProcess], secret_file: Path) -> DaemonProcess:
    return board_factory(key=KEY, extra=["--secret-file", str(secret_file)])


def test_a_member_holding_the_secret_is_admitted(
    locked_board: DaemonProcess, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, str(secret_file))
    with farm.connect(*locked_board.address, key=KEY) as session:
        session.ping()
        assert session.system_info()["server"] == "native"


def test_a_client_without_the_secret_is_refused_and_told_what_to_set(
    locked_board: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(farm.HandshakeError, match="set %s" % SECRET_ENV):
        farm.connect(*locked_board.address, key=KEY, connect_timeout=10)
    wait_for(
        lambda: "it spoke TVM's data-plane handshake without the farm secret" in locked_board.log_text(),
        10,
        "the board logs the refusal",
    )


def test_a_client_with_another_secret_is_refused(locked_board: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(farm.HandshakeError, match="does not hold this farm's secret"):
        farm.connect(*locked_board.address, key=KEY, secret=os.urandom(24).hex().encode(), connect_timeout=10)
    with socket.create_connection(locked_board.address, timeout=10) as sock:
        sock.sendall(encode_hello("client", KEY))  # a TVM client: closed without a word
        assert sock.recv(100) == b""


#: Mappings larger than this are skipped: AddressSanitizer's shadow reserves terabytes, and holds no bytes of ours.
LARGEST_MAPPING = 1 << 30


def _locked(daemon: str, secret_file: Path, tmp_path: Path) -> DaemonProcess:
    """``python -m farm.DAEMON`` with the farm secret, on a free port."""
    argv = [sys.executable, "-m", "farm." + daemon, "--host", "127.0.0.1", "--port", "0"]
    return DaemonProcess(
        [*argv, "--secret-file", str(secret_file)], str(tmp_path / (daemon + ".log")), env=python_env()
    )


def test_a_locked_board_registers_with_a_locked_tracker(
    board_factory: Callable[..., DaemonProcess], secret_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The board proves the secret to the tracker as a connector, then registers; a member gets it through it."""
    with _locked("tracker", secret_file, tmp_path) as tracker:
        tracker_address = tracker.wait_for_bind()
        board = board_factory(
            key=KEY, extra=["--secret-file", str(secret_file), "--tracker", "%s:%d" % tracker_address]
        )
        wait_for(lambda: "registered with the tracker" in board.log_text(), 10, "the board registers")
        monkeypatch.setenv(SECRET_ENV, str(secret_file))
        # wait_for_key: the board logs its registration once the tracker took its connection, before its offer
        with farm.connect_tracker(*tracker_address) as client:
            with client.request(KEY, wait=10, wait_for_key=True) as session:
                assert session.system_info()["server"] == "native"
                assert session.port == board.address[1]  # type: ignore[index]


FAULT_SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* Preloaded into a daemon: realloc fails above FAIL_REALLOC_OVER bytes in the process it was loaded into (not in
 * those it forks); dlopen fails, as for a missing library, for names that start with FAIL_DLOPEN_PREFIX. */
static pid_t target;
static size_t limit;
static const char *refused;
__attribute__((constructor)) static void init(void) {
    const char *value = getenv("FAIL_REALLOC_OVER");
    limit = value ? strtoul(value, NULL, 10) : 0;
    refused = getenv("FAIL_DLOPEN_PREFIX");
    target = getpid();
}
void *realloc(void *old, size_t size) {
    static void *(*real)(void *, size_t);
    if (!real) real = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    return limit && size > limit && getpid() == target ? NULL : real(old, size);
}
void *dlopen(const char *file, int mode) {
    static void *(*real)(const char *, int);
    if (!real) real = (void *(*)(const char *, int))dlsym(RTLD_NEXT, "dlopen");
    if (refused && *refused && file && !strncmp(file, refused, strlen(refused)))
        return real("/nonexistent/for-the-test.so", mode); /* fails, and dlerror() says why */
    return real(file, mode);
}
"""


@pytest.fixture
def fault_shim(tmp_path: Path) -> Path:
    """A library to preload into a daemon that makes allocations or the loading of libraries fail on purpose."""
    source = tmp_path / "faultshim.c"
    source.write_text(FAULT_SHIM_SOURCE)
    return Path(compile_shared([source], tmp_path / "libfaultshim.so", libraries=["-ldl"]))


class InjectingRelay:
    """Relays connections to ``target``; on the first, once the target's first 4 bytes (the tracker's magic) went
    back, it sends ``injected`` to the client too."""

    def __init__(self, target: Tuple[str, int], injected: bytes) -> None:
        self.target, self.injected, self.connections = target, injected, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                self.connections += 1
                server = socket.create_connection(self.target)
                inject = self.injected if self.connections == 1 else b""
                threading.Thread(target=self._pipe, args=(client, server, b""), daemon=True).start()
                threading.Thread(target=self._pipe, args=(server, client, inject), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, inject: bytes) -> None:
        with contextlib.suppress(OSError):
            if inject:
                sink.sendall(source.recv(4, socket.MSG_WAITALL) + inject)
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.board_servers("native")  # under ASan its runtime must come first, before any preloaded library
def test_a_tracker_link_that_runs_out_of_memory_reconnects(
    board_factory: Callable[..., DaemonProcess], tmp_path: Path, fault_shim: Path
) -> None:
    """A reply the tracker link has no memory for (realloc fails above 512 KiB) loses the connection, not the link:
    the board reconnects with empty buffers and registers, rather than dropping every later reply in silence."""
    tracker = DaemonProcess([sys.executable, "-m", "farm.tracker", "--host", "127.0.0.1", "--port", "0"],
                            str(tmp_path / "tracker.log"), env=python_env())  # fmt: skip
    with tracker:
        address = tracker.wait_for_bind()
        long_reply = (600 << 10).to_bytes(4, "little") + b"x" * (600 << 10)  # under the 1 MiB a reply may have
        relay = InjectingRelay(address, long_reply)
        env = dict(python_env(), LD_PRELOAD=str(fault_shim), FAIL_REALLOC_OVER=str(512 << 10))
        board = board_factory(key=KEY, extra=["--tracker", "%s:%d" % relay.address], env=env)
        wait_for(lambda: "no memory for what the tracker sent; reconnecting" in board.log_text(), 15, "the loss")
        wait_for(lambda: relay.connections >= 2, 15, "the board dials the tracker again")
        after_the_loss = lambda: board.log_text().partition("no memory for what the tracker sent")[2]  # noqa: E731
        wait_for(lambda: "registered with the tracker" in after_the_loss(), 15, "the board registers again")
        # wait_for_key: the board logs its registration once the tracker took its connection, before its offer
        with farm.connect_tracker(*address) as client, client.request(KEY, wait=10, wait_for_key=True) as session:
            assert session.system_info()["server"] == "native"


@pytest.mark.board_servers("native")  # under ASan its runtime must come first, before any preloaded library
def test_a_proxy_link_that_runs_out_of_memory_dials_again(
    board_server: BoardServer, tmp_path: Path, fault_shim: Path
) -> None:
    """What the proxy sends that the link has no memory for (realloc fails above 8 KiB; 16 KiB come after the first
    pairing's reply code) loses that connection, not the link: the board dials again with an empty buffer, waits at
    the proxy, and the next client gets a session through it."""
    argv = [sys.executable, "-m", "farm.proxy", "--host", "127.0.0.1", "--port", "0"]
    with contextlib.ExitStack() as stack:
        proxy = stack.enter_context(DaemonProcess(argv, str(tmp_path / "proxy.log"), env=python_env()))
        address = proxy.wait_for_bind()
        relay = InjectingRelay(address, b"x" * (16 << 10))
        env = python_env(**board_server.env, LD_PRELOAD=str(fault_shim), FAIL_REALLOC_OVER=str(8 << 10))
        assert board_server.program is not None
        argv = [board_server.program, "--host", relay.address[0], "--port", str(relay.address[1]), "--key", KEY]
        board = DaemonProcess([*argv, "--through-proxy"], str(tmp_path / "board.log"), env=env)
        stack.enter_context(board)
        wait_for(lambda: "waiting at the proxy" in board.log_text(), 15, "the board waits at the proxy")
        with pytest.raises((farm.HandshakeError, farm.SessionLostError)):  # its pairing brought the 16 KiB
            with farm.connect(*address, key=KEY, connect_timeout=10) as lost:
                lost.system_info()
        wait_for(lambda: "no memory for what the proxy sent" in board.log_text(), 15, "the loss")
        after_the_loss = lambda: board.log_text().partition("no memory for what the proxy sent")[2]  # noqa: E731
        wait_for(lambda: "waiting at the proxy" in after_the_loss(), 15, "the board waits at the proxy again")
        assert relay.connections >= 2
        with farm.connect(*address, key=KEY, connect_timeout=10) as session:
            assert session.system_info()["server"] == "native"


def test_a_locked_board_waits_at_a_locked_proxy(
    board_server: BoardServer, secret_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a proxy the board proves the secret as the side that dials, then says its key and waits."""
    assert board_server.program is not None
    with _locked("proxy", secret_file, tmp_path) as proxy:
        host, port = proxy.wait_for_bind()
        argv = [board_server.program, "--host", host, "--port", str(port), "--key", KEY, "--through-proxy"]
        argv += ["--secret-file", str(secret_file)]
        with DaemonProcess(argv, str(tmp_path / "board.log"), env=python_env(**board_server.env)) as board:
            board.wait_for_log(re.compile("waiting at the proxy"))
            monkeypatch.setenv(SECRET_ENV, str(secret_file))
            with farm.connect(host, port, key=KEY) as session:
                assert session.system_info()["server"] == "native"
    check_sanitizer_log(board)


def _memory_holds(pid: int, needles: Dict[str, bytes]) -> List[str]:
    """Which of ``needles`` are somewhere in the readable memory of process ``pid`` (read as root, from here)."""
    found = []
    with open("/proc/%d/maps" % pid) as maps, open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for fields in (line.split() for line in maps):
            if not fields[1].startswith("r") or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(value, 16) for value in fields[0].split("-"))
            if end - start > LARGEST_MAPPING:
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            found += [name for name, needle in needles.items() if needle in data]
    return sorted(set(found))


def test_the_session_process_starts_without_the_secret(
    locked_board: DaemonProcess, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon read the secret and proved it on this very connection; the session process holds no copy of it
    (nor of the proof's key schedule), while what the session was sent is found the same way. Nor does the session
    spawner that forked it, the daemon's child forked before the daemon read the secret, which holds the session's
    order (the session directory's name among it) until the session started."""
    monkeypatch.setenv(SECRET_ENV, str(secret_file))
    secret = secret_file.read_bytes().rstrip(b"\n")
    marker = b"marker of this session: " + os.urandom(16).hex().encode()
    with farm.connect(*locked_board.address, key=KEY) as session:
        kept = session.array(np.frombuffer(marker, np.uint8))
        info = session.system_info()
        pid, spawner = info["pid"], parent_of(info["pid"])
        assert parent_of(spawner) == locked_board.pid
        found = _memory_holds(pid, {"secret": secret, "marker": marker})
        order = os.path.basename(info["session_dir"]).encode()
        in_spawner = _memory_holds(spawner, {"secret": secret, "order": order})
        assert kept.numpy().tobytes() == marker
    assert found == ["marker"], found
    assert in_spawner == ["order"], in_spawner


def test_under_tls_neither_the_session_nor_the_spawner_holds_the_key(
    board_factory: Callable[..., DaemonProcess],
    secret_file: Path,
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon reads the TLS key after it forked the spawner, and keeps the client's TLS connection, relaying
    plain bytes to the session process: neither holds the key (nor a line of its PEM), nor the secret, while the
    marker the session was sent, through TLS and the relay, is found the same way."""
    monkeypatch.setenv(SECRET_ENV, str(secret_file))
    env = python_env(**tls_files.daemon().as_env())
    board = board_factory(key=KEY, extra=["--secret-file", str(secret_file)], env=env)
    pem = Path(tls_files.key).read_bytes()
    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    needles = {"secret": secret_file.read_bytes().rstrip(b"\n"), "key": pem}
    needles.update(("key line %d" % number, line) for number, line in enumerate(lines))
    marker = b"marker of this session: " + os.urandom(16).hex().encode()
    with farm.connect(*board.address, key=KEY, tls=tls_files.client()) as session:
        kept = session.array(np.frombuffer(marker, np.uint8))
        info = session.system_info()
        pid, spawner = info["pid"], parent_of(info["pid"])
        assert parent_of(spawner) == board.pid
        found = _memory_holds(pid, {**needles, "marker": marker})
        in_spawner = _memory_holds(spawner, {**needles, "order": os.path.basename(info["session_dir"]).encode()})
        assert kept.numpy().tobytes() == marker
    assert found == ["marker"], found
    assert in_spawner == ["order"], in_spawner


def test_a_dead_spawner_stops_the_daemon(board_factory: Callable[..., DaemonProcess]) -> None:
    """A daemon whose session spawner died starts no other (forked from the daemon now, it would hold the secret):
    its session dies with the spawner, the client is told the board stopped, and the daemon exits 1 for its
    supervisor to start it again."""
    daemon = board_factory(key=KEY)
    session = farm.connect(*daemon.address, key=KEY)
    pid = session.system_info()["pid"]
    spawner = parent_of(pid)
    os.kill(spawner, signal.SIGKILL)
    assert daemon.process.wait(timeout=30) == 1
    assert "the session spawner (pid %d) is gone" % spawner in daemon.log_text()
    with pytest.raises(farm.SessionLostError, match="the board daemon shut down"):
        session.ping()
    session.close()


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting for its (new) parent."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_a_session_whose_spawner_is_killed_takes_its_process_group_along(
    board_factory: Callable[..., DaemonProcess], reachable_tmp: Path, kernels: Dict[str, Path]
) -> None:
    """With the daemon stopped, so that neither it nor the end of the session's cgroup can act: the session process
    whose spawner is killed (its parent-death signal, SIGHUP) kills its whole process group, so that no child it
    forked keeps the client's connection open."""
    daemon = board_factory(key=KEY, extra=["--work-dir", str(reachable_tmp / "work")])
    with farm.connect(*daemon.address, key=KEY) as session, contextlib.ExitStack() as cleanup:
        pid = session.system_info()["pid"]
        spawner = parent_of(pid)
        session.upload(kernels["libmisbehave.so"])
        child = session.load_module("libmisbehave.so").get_function("fork_sleeper", "int fork_sleeper(void)")()
        assert child > 0
        cleanup.callback(lambda: _gone(child) or os.kill(child, signal.SIGKILL))  # what the test made it fork
        assert os.getpgid(child) == pid
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            os.kill(spawner, signal.SIGKILL)
            wait_for(lambda: _gone(pid) and _gone(child), 10, "the session process and its child are gone")
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        assert daemon.process.wait(timeout=30) == 1
        with pytest.raises(farm.SessionLostError):
            session.ping()


@pytest.fixture(scope="module")
def without_tls() -> str:
    """The native board built without TLS, as for a target where OpenSSL is not found."""
    return host_server(tls=False)


@pytest.mark.parametrize("option", ["--tls-cert", "--tls-key", "--tls-ca", "--tls-server-name"])
def test_a_build_without_tls_refuses_the_tls_options(without_tls: str, option: str) -> None:
    argv = [without_tls, "--port", "0", option, "value"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=python_env())
    assert result.returncode == 2
    assert "%s: this farm-board was built without TLS (OpenSSL was not found" % option in result.stderr
    assert "docs/native-board.md" in result.stderr


@pytest.mark.board_servers("native")  # under ASan its runtime must come first, before any preloaded library
def test_a_board_without_openssl_refuses_tls_naming_the_library(
    board_server: BoardServer, fault_shim: Path, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """OpenSSL is loaded only when TLS is asked for: a board that cannot load it stops and says which library."""
    env = dict(python_env(**tls_files.daemon().as_env()), LD_PRELOAD=str(fault_shim), FAIL_DLOPEN_PREFIX="libssl")
    result = subprocess.run([board_server.program, "--port", "0"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2, result.stderr
    assert "TLS needs OpenSSL on the board: cannot load libssl.so.3 (nor libssl.so.1.1)" in result.stderr
    assert "/nonexistent/for-the-test.so" in result.stderr  # dlopen's own words follow
    del env["FAIL_DLOPEN_PREFIX"]  # the same board with its OpenSSL serves TLS
    with DaemonProcess([board_server.program, "--port", "0", "--key", KEY], str(tmp_path / "board.log"), env) as board:
        board.wait_for_bind()
        with farm.connect(*board.address, key=KEY, tls=tls_files.client()) as session:
            assert session.system_info()["server"] == "native"


def _processes_of(pid: int) -> List[int]:
    """A process and its children (the daemon and its session spawner)."""
    with open("/proc/%d/task/%d/children" % (pid, pid)) as children:
        return [pid, *(int(child) for child in children.read().split())]


def test_an_idle_board_without_tls_does_not_map_openssl(board_factory: Callable[..., DaemonProcess]) -> None:
    """OpenSSL is loaded only when TLS is given: a board without it maps neither libssl nor libcrypto."""
    daemon = board_factory(key=KEY)
    with farm.connect(*daemon.address, key=KEY) as session:
        session.ping()
    for pid in _processes_of(daemon.pid):
        with open("/proc/%d/maps" % pid) as maps:
            mapped = [line for line in maps if "libssl" in line or "libcrypto" in line]
        assert mapped == [], (pid, mapped)


def _limits_of(pid: int) -> Dict[str, str]:
    """Soft limits of a process, by the name /proc/PID/limits gives each."""
    with open("/proc/%d/limits" % pid) as limits:
        rows = limits.read().splitlines()[1:]
    return {row[:26].strip(): row[26:].split()[0] for row in rows}


def test_sessions_run_as_the_session_user_within_their_limits(board_factory: Callable[..., DaemonProcess]) -> None:
    """A daemon started as root (as the tests are) runs sessions as nobody; a session's processes are bounded."""
    daemon = board_factory(key=KEY, extra=["--session-quota", "3", "--session-open-files", "200"])
    with farm.connect(*daemon.address, key=KEY) as session:
        pid = session.system_info()["pid"]
        with open("/proc/%d/status" % pid) as status:
            uid = next(int(line.split()[1]) for line in status if line.startswith("Uid:"))
        limits = _limits_of(pid)
    assert uid == (pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid())
    assert (limits["Max file size"], limits["Max open files"], limits["Max core file size"]) == ("3145728", "200", "0")


def test_an_unknown_session_user_stops_the_daemon(board_server: BoardServer) -> None:
    assert board_server.program is not None
    argv = [board_server.program, "--port", "0", "--session-user", "no-such-user-here"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=python_env(**board_server.env))
    assert result.returncode == 2
    expected = "the session user 'no-such-user-here' does not exist" if os.geteuid() == 0 else "needs a daemon started"
    assert expected in result.stderr, result.stderr


def test_a_build_without_tls_refuses_tls_from_the_environment(without_tls: str) -> None:
    env = python_env(REMOTEDEV_TLS_CERT="cert.pem")
    result = subprocess.run([without_tls, "--port", "0"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2
    assert "$REMOTEDEV_TLS_CERT is set, but this farm-board was built without TLS" in result.stderr


def test_an_upload_over_the_quota_is_refused_and_the_session_goes_on(
    board_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = board_factory(key=KEY, extra=["--session-quota", "1"])
    with farm.connect(*daemon.address, key=KEY) as session:
        session.upload(b"x" * 600_000, target="first")
        with pytest.raises(farm.RemoteError, match="over its quota of 1 MB") as info:
            session.upload(b"y" * 600_000, target="second")
        assert info.value.remote_type == "QuotaError"
        session.upload(b"z" * 600_000, target="first")  # replacing a file counts only the difference
        assert session.listdir() == ["first"] and session.download("first") == b"z" * 600_000


def test_a_directory_that_outgrows_the_quota_ends_the_session(
    board_factory: Callable[..., DaemonProcess], kernels: Dict[str, Path]
) -> None:
    daemon = board_factory(key=KEY, extra=["--session-quota", "2"])
    with farm.connect(*daemon.address, key=KEY) as session:
        session.upload(kernels["libfaults.so"])
        module = session.load_module("libfaults.so")
        write_and_pause = module.get_function("write_files_and_pause", "long write_files_and_pause(int, long)")
        with pytest.raises(farm.SessionLostError, match="over its quota of 2 MB; the board ended the session while "
                           r"running write_files_and_pause\(\) from libfaults.so"):  # fmt: skip
            write_and_pause(3, 1 << 20)
    with farm.connect(*daemon.address, key=KEY, connect_timeout=5) as session:
        session.ping()


def test_a_client_that_leaves_mid_call_frees_the_board(
    board_factory: Callable[..., DaemonProcess], kernels: Dict[str, Path]
) -> None:
    daemon = board_factory(key=KEY)
    session = farm.connect(*daemon.address, key=KEY)
    session.upload(kernels["libmisbehave.so"])
    spin = session.load_module("libmisbehave.so").get_function("spin_forever", "void spin_forever(void)")

    def run_call() -> None:
        with contextlib.suppress(farm.FarmError, OSError):  # the session is lost when its client goes
            spin()

    call = threading.Thread(target=run_call, daemon=True)
    pid = session.system_info()["pid"]
    before = _cpu_seconds(pid)
    call.start()
    wait_for(lambda: _cpu_seconds(pid) - before >= 0.2, 10, "the session process to spin in the call")
    session._conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes, the call runs on
    ended = "the client left while running spin_forever() from libmisbehave.so; the board ended the session"
    wait_for(lambda: ended in daemon.log_text(), 10, "the board to end the session")
    call.join(10)
    session.close()
    with farm.connect(*daemon.address, key=KEY, connect_timeout=5) as again:
        again.ping()


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_farm_build_server_writes_one_executable(tmp_path: Path) -> None:
    target = host_target()
    assert target is not None, "this machine's architecture is unknown to the farm"
    command = [sys.executable, "-m", "farm.ops.cli", "build-server", "--arch", target.name, "-o", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, env=python_env())
    assert first.returncode == 0, first.stderr
    assert "TLS built in (OpenSSL, loaded at run time when TLS is given)" in first.stderr, first.stderr
    built = Path(first.stdout.strip())
    assert built == tmp_path / "farm-board" and os.access(built, os.X_OK)
    version = subprocess.run([str(built), "--version"], capture_output=True, text=True, timeout=30)
    assert version.stdout.strip() == "farm-board %s" % farm.__version__
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=python_env())
    assert again.returncode == 0 and Path(again.stdout.strip()) == built


@pytest.mark.slow
@pytest.mark.parametrize("arch", EMULATED)
def test_the_daemon_built_for_another_architecture_serves_under_qemu(arch: str, tmp_path: Path) -> None:
    """``farm build-server --arch aarch64|armhf`` (libffi fetched for the target), run under qemu-user with the
    target's userland that ``farm emulators install`` provides; without the emulators this fails, saying so."""
    require_emulators("the cross-built native boards")
    root = sysroot(arch)
    toolchain = toolchain_for(arch)
    server, library = build_server(toolchain), build_shared([VADD], toolchain)
    argv = [TARGETS[arch].qemu, "-L", root, server, "--port", "0", "--key", KEY]
    with DaemonProcess(argv, str(tmp_path / "board.log")) as daemon:
        with farm.connect(*daemon.wait_for_bind(60), key=KEY) as session:
            info = session.system_info()
            assert (info["server"], info["state"]["emulator"]) == ("native", TARGETS[arch].qemu)
            session.upload(library, target="libvadd.so")
            vadd = session.load_module("libvadd.so").get_function("vadd", VADD_SIG)
            x = np.arange(64, dtype=np.float32)
            a, c = session.array(x), session.empty(64, "float32")
            vadd(a, a, c, 64)
            np.testing.assert_array_equal(c.numpy(), x * 2)
            result = vadd.time_evaluator(number=5, repeat=2)(a, a, c, 64)
            assert result.method == "board-native" and result.emulated == TARGETS[arch].qemu


MIXED_FARM = """
tracker: {port: 0}
proxy: {port: 0}
boards:
  - {key: mixed, server: native}
  - {key: mixed}
  - {key: nat, server: native, proxy: true}
"""


def _servers_of(stack: FarmStack, key: str, count: int) -> List[str]:
    """``system_info()["server"]`` of ``count`` boards of ``key``, held at once through the farm's tracker."""
    with farm.connect_tracker(*stack.tracker_address) as client, contextlib.ExitStack() as held:
        sessions = [held.enter_context(client.request(key, wait=10)) for _ in range(count)]
        return sorted(session.system_info()["server"] for session in sessions)


def test_an_inventory_mixes_native_and_python_boards_under_one_key(tmp_path: Path) -> None:
    """``server: native`` in an inventory: a native board beside a Python one under one key, and one behind the
    proxy; clients tell them apart only by system_info()."""
    with FarmStack(parse_inventory(MIXED_FARM, "mixed.yaml"), str(tmp_path / "farm")) as stack:
        stack.start(timeout=60)
        assert _servers_of(stack, "mixed", 2) == ["native", "python"]
        assert _servers_of(stack, "nat", 1) == ["native"]


@pytest.mark.slow
def test_an_inventory_runs_emulated_native_boards(tmp_path: Path) -> None:
    """``server: native`` with ``start: emulated``: the daemon built for the target, under qemu-user."""
    require_emulators("the emulated native boards")
    text = "tracker: {port: 0}\nboards:\n" + "".join(
        "  - {key: %s, server: native, start: emulated, arch: %s}\n" % (arch, arch) for arch in EMULATED
    )
    with FarmStack(parse_inventory(text, "emulated-native.yaml"), str(tmp_path / "farm")) as stack:
        stack.start(timeout=120)
        for arch in EMULATED:
            with farm.connect_tracker(*stack.tracker_address) as client, client.request(arch, wait=10) as session:
                info = session.system_info()
                assert (info["server"], info["state"]["emulator"]) == ("native", TARGETS[arch].qemu)
