"""TLS on the tracker, the proxy and the tracker client, with real daemons on 127.0.0.1 and the tests' certificates.

Each test starts its own ``python -m farm.tracker`` and ``python -m farm.proxy``
processes (stopped at teardown) with the ``tls_files`` of tests/conftest.py: a
farm CA, the farm's certificate for 127.0.0.1, localhost and farm.test, and a
stranger CA with a certificate of its own. Boards and clients of the proxy are
raw TLS sockets speaking the data-plane handshake, as a board's ProxyDialer
and farm.connect do. Nothing of the package is mocked; waits poll a condition
against a deadline.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import ssl
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
from farm_certs import TlsFiles

from conftest import fd_count, python_env, wait_for
from farm.client.tracker import TrackerClient, TrackerError, connect_tracker
from farm.net.secret import SECRET_ENV, load_secret, prove_on_socket
from farm.net.tls import ENV as TLS_ENV
from farm.net.tls import HANDSHAKE_TIMEOUT, TlsConfig
from farm.ops.processes import DaemonProcess
from farm.protocol.handshake import CODE_SUCCESS, Reply, ReplyReader, encode_hello
from farm.protocol.tracker import Code, MessageReader, encode_magic, encode_message

HOST = "127.0.0.1"
Address = Tuple[str, int]
Starter = Callable[..., DaemonProcess]


@pytest.fixture(autouse=True)
def no_farm_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither this process nor the daemons it starts see a TLS setting or a secret they were not given."""
    for name in [SECRET_ENV, *TLS_ENV.values()]:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    """``start(module, *args, prefix=[...], listens=True)``: ``python -m farm.<module> ARGS``, stopped at teardown;
    waits until it listens unless ``listens`` is false."""
    started: List[DaemonProcess] = []

    def launch(module: str, *args: str, prefix: Sequence[str] = ("-m",), listens: bool = True) -> DaemonProcess:
        argv = [sys.executable, *prefix, "farm.%s" % module, *args]
        daemon = DaemonProcess(argv, str(tmp_path / ("%s-%d.log" % (module, len(started)))), env=python_env())
        started.append(daemon)
        if listens:
            daemon.wait_for_bind()
        return daemon

    yield launch
    for daemon in reversed(started):
        daemon.stop()


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_bytes(os.urandom(32).hex().encode() + b"\n")
    path.chmod(0o600)
    return str(path)


def listening(files: TlsFiles, cert: Optional[str] = None, key: Optional[str] = None) -> List[str]:
    """The options of a daemon that listens with TLS (the farm's certificate unless told otherwise)."""
    return ["--tls-cert", cert or files.cert, "--tls-key", key or files.key]


def start_tls_tracker(start: Starter, files: TlsFiles, *extra: str) -> DaemonProcess:
    return start("tracker", "--port", "0", *listening(files), *extra)


def log_has(daemon: DaemonProcess, pattern: str) -> bool:
    return re.search(pattern, daemon.log_text()) is not None


def tls_socket(address: Address, files: TlsFiles) -> ssl.SSLSocket:
    """A TLS connection to ``address`` that checks the farm's certificate."""
    return files.client().wrap_client(socket.create_connection(address, timeout=10), address[0])


def read_reply(sock: socket.socket) -> Reply:
    """The proxy's answer to a hello."""
    replies = ReplyReader()
    while True:
        data = sock.recv(4096)
        assert data, "the proxy closed the connection instead of answering the hello"
        reply = replies.feed(data)
        if reply is not None:
            assert replies.leftover() == b""
            return reply


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        data = sock.recv(min(1 << 16, size - len(received)))
        assert data, "the connection closed after %d of %d bytes" % (len(received), size)
        received += data
    return bytes(received)


def refused_at_once(address: Address, first_bytes: bytes) -> int:
    """Send ``first_bytes`` on a plain connection and see the daemon end it; the connection's own port."""
    with socket.create_connection(address, timeout=10) as sock:
        port = sock.getsockname()[1]
        sock.sendall(first_bytes)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:  # closed with our bytes unread
            pass
    return port


# --- the tracker ---------------------------------------------------------------------


def test_a_tls_tracker_serves_tls_clients_and_refuses_a_plain_one(start: Starter, tls_files: TlsFiles) -> None:
    tracker = start_tls_tracker(start, tls_files)
    with connect_tracker(*tracker.address, tls=tls_files.client()) as client:
        client.ping()
        assert client.summary() == {"queue_info": {}, "server_info": []}
    with pytest.raises(
        TrackerError, match=r"127\.0\.0\.1:%d reset the connection \(does the tracker use TLS\? set --tls-ca / %s\)"
        % (tracker.address[1], TLS_ENV["ca"]),
    ):  # fmt: skip
        connect_tracker(*tracker.address, tls=TlsConfig())
    wait_for(
        lambda: log_has(tracker, r"refused 127\.0\.0\.1:\d+: it spoke TVM's tracker protocol, not TLS"),
        10,
        "the tracker logs the refusal of the plain client",
    )


@pytest.mark.parametrize(
    "first_bytes, spoken",
    [
        (encode_hello("client", "rasp4"), "TVM's data-plane handshake"),
        (b"GET / HTTP/1.1\r\n\r\n", "no protocol of this farm (first bytes b'GET ')"),
    ],
)
def test_a_tls_tracker_refuses_strangers_naming_what_they_spoke(
    start: Starter, tls_files: TlsFiles, first_bytes: bytes, spoken: str
) -> None:
    tracker = start_tls_tracker(start, tls_files)
    port = refused_at_once(tracker.address, first_bytes)
    expected = "refused 127.0.0.1:%d: it spoke %s, not TLS" % (port, spoken)
    wait_for(lambda: expected in tracker.log_text(), 10, "the tracker logs %r" % expected)


def test_the_farm_secret_is_proved_inside_tls(start: Starter, tls_files: TlsFiles, secret_file: str) -> None:
    tracker = start_tls_tracker(start, tls_files, "--secret-file", secret_file)
    secret = load_secret(secret_file)
    with connect_tracker(*tracker.address, secret=secret, tls=tls_files.client()) as client:
        client.ping()
    with pytest.raises(
        TrackerError, match="closed the connection .*a farm with a secret does so: set %s" % SECRET_ENV
    ):
        connect_tracker(*tracker.address, tls=tls_files.client())  # TLS gets it through to the secret's exchange
    wait_for(
        lambda: log_has(
            tracker, r"refused 127\.0\.0\.1:\d+: .*it spoke TVM's tracker protocol without the farm secret"
        ),
        10,
        "the tracker logs the member without the secret",
    )
    with pytest.raises(TrackerError, match="reset the connection .*does the tracker use TLS"):
        connect_tracker(*tracker.address, secret=secret, tls=TlsConfig())
    wait_for(
        lambda: log_has(tracker, r"it spoke the farm's proof of its secret, not TLS"),
        10,
        "the tracker logs the proof of the secret without TLS",
    )


def test_a_client_trusting_another_ca_is_refused_naming_the_certificate(start: Starter, tls_files: TlsFiles) -> None:
    tracker = start_tls_tracker(start, tls_files)
    with pytest.raises(
        TrackerError,
        match=r"the tracker at 127\.0\.0\.1:%d: TLS handshake with 127\.0\.0\.1 failed: the certificate was refused: "
        "unable to get local issuer certificate" % tracker.address[1],
    ):
        connect_tracker(*tracker.address, tls=tls_files.client(ca=tls_files.other_ca))
    wait_for(
        lambda: log_has(
            tracker,
            r"refused 127\.0\.0\.1:\d+: TLS handshake failed: the other end refused this end's "
            r"certificate \(TLSV1_ALERT_UNKNOWN_CA",
        ),  # fmt: skip
        10,
        "the tracker logs that the client refused its certificate",
    )


def test_a_tracker_whose_certificate_another_ca_signed_is_refused(start: Starter, tls_files: TlsFiles) -> None:
    tracker = start("tracker", "--port", "0", *listening(tls_files, tls_files.other_cert, tls_files.other_key))
    with pytest.raises(TrackerError, match="the certificate was refused: unable to get local issuer certificate"):
        connect_tracker(*tracker.address, tls=tls_files.client())


def test_the_server_name_option_checks_a_name_other_than_the_address_dialled(
    start: Starter, tls_files: TlsFiles
) -> None:
    tracker = start("tracker", "--host", "127.0.0.2", "--port", "0", *listening(tls_files))  # not in the certificate
    assert tracker.address[0] == "127.0.0.2"
    with pytest.raises(TrackerError, match="certificate is not valid for '127.0.0.2'"):
        connect_tracker(*tracker.address, tls=tls_files.client())
    with connect_tracker(*tracker.address, tls=tls_files.client(server_name="farm.test")) as client:
        client.ping()
    with pytest.raises(TrackerError, match="Hostname mismatch, certificate is not valid for 'wrong.test'"):
        connect_tracker(*tracker.address, tls=tls_files.client(server_name="wrong.test"))


@pytest.mark.parametrize(
    "module, options, complaint",
    [
        ("tracker", ["--tls-cert", "{missing}", "--tls-key", "{key}"], "cannot load the TLS certificate {missing} "),
        ("tracker", ["--tls-cert", "{cert}"], "a daemon that listens with TLS needs both --tls-cert and --tls-key"),
        ("proxy", ["--tls-cert", "{cert}", "--tls-key", "{key}", "--tracker", "127.0.0.1:9"], "needs --tls-ca"),
        ("proxy", ["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-ca", "{missing}", "--tracker", "127.0.0.1:9"],
         "cannot load the TLS CA {missing}"),
    ],
)  # fmt: skip
def test_a_daemon_with_an_unusable_tls_setting_exits_2_naming_it(
    start: Starter, tls_files: TlsFiles, tmp_path: Path, module: str, options: List[str], complaint: str
) -> None:
    names = {"missing": str(tmp_path / "missing.pem"), "cert": tls_files.cert, "key": tls_files.key}
    daemon = start(module, "--port", "0", *(option.format(**names) for option in options), listens=False)
    assert daemon.process.wait(timeout=30) == 2
    log = daemon.log_text()
    assert complaint.format(**names) in log
    assert "bind to" not in log


def test_a_flood_of_silent_slow_and_garbage_connections_is_bounded_and_cleared(
    start: Starter, tls_files: TlsFiles
) -> None:
    tracker = start_tls_tracker(start, tls_files)
    baseline = fd_count(tracker.pid)
    held: List[socket.socket] = []
    try:
        for _ in range(20):  # slow: a TLS record header, and then nothing
            sock = socket.create_connection(tracker.address, timeout=10)
            sock.sendall(b"\x16\x03\x01")
            held.append(sock)
        for index in range(20):  # garbage, then gone
            refused_at_once(tracker.address, b"\x00garbage %d" % index)
        held += [socket.create_connection(tracker.address, timeout=10) for _ in range(80)]  # silent
        wait_for(
            lambda: log_has(
                tracker, r"refused 127\.0\.0\.1:\d+: 64 connections from 127\.0\.0\.1 have proven nothing"
            ),
            10,
            "the tracker refuses connections beyond the address's share",
        )
        # The tracker ends every handshake that did not finish in time, while this end still holds them open.
        wait_for(lambda: fd_count(tracker.pid) <= baseline, HANDSHAKE_TIMEOUT + 10, "the tracker's fds to go back")
        with connect_tracker(*tracker.address, tls=tls_files.client()) as client:
            client.ping()
    finally:
        for sock in held:
            sock.close()
    log = tracker.log_text()
    assert len(re.findall(r"no TLS handshake within 10 s", log)) == 64
    assert len(re.findall(r"it spoke no protocol of this farm", log)) == 20
    assert tracker.process.poll() is None


def test_the_tracker_pauses_accepting_when_out_of_file_descriptors(start: Starter, tls_files: TlsFiles) -> None:
    limited = "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)); sys.argv[0] = 'x';"
    limited += " runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
    tracker = start("tracker", "--port", "0", *listening(tls_files), prefix=["-c", limited])
    held = []
    try:
        for _ in range(45):  # more than its file descriptors: it accepts until it has none left
            held.append(socket.create_connection(tracker.address, timeout=10))
        wait_for(
            lambda: log_has(
                tracker,
                r"the tracker cannot accept connections \(\[Errno 24\] Too many open files\); "
                r"pausing for 1 s",
            ),  # fmt: skip
            10,
            "the tracker runs out of file descriptors",
        )
    finally:
        for sock in held:
            sock.close()
    with connect_tracker(*tracker.address, tls=tls_files.client()) as client:  # after its pause, it serves again
        client.ping()
    assert tracker.process.poll() is None


def test_a_tvm_board_handed_to_a_tls_client_is_an_error_naming_why(start: Starter, tls_files: TlsFiles) -> None:
    tracker = start_tls_tracker(start, tls_files)
    with tls_socket(tracker.address, tls_files) as board:  # registers as TVM's board server does, inside TLS
        board.sendall(encode_magic())
        messages = MessageReader(expect_magic=True)
        replies: List[Any] = messages.feed(recv_exactly(board, 4))
        for message in ([Code.UPDATE_INFO, {"key": "server:old", "addr": [None, 9091]}],
                        [Code.PUT, "old", [9091, "old:0123456789"], None]):  # fmt: skip
            board.sendall(encode_message(message))
            while not replies:
                replies = messages.feed(board.recv(4096))
            assert replies.pop(0) == Code.SUCCESS
        with connect_tracker(*tracker.address, tls=tls_files.client()) as client:
            if importlib.util.find_spec("tvm"):  # the client asks for TVM's boards too, and gets this one
                expected = r"board 127\.0\.0\.1:9091 speaks TVM's RPC, whose client cannot use TLS"
            else:
                expected = "the boards of key 'old' speak tvm, and this client speaks farm"
            with pytest.raises(TrackerError, match=expected):
                client.request("old", wait=10)


def test_farm_status_reads_a_tls_tracker_with_the_tls_ca(start: Starter, tls_files: TlsFiles) -> None:
    tracker = start_tls_tracker(start, tls_files)
    where = "%s:%d" % tracker.address

    def status(*options: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "farm", "status", "--tracker", where, *options]
        return subprocess.run(command, env=python_env(**(env or {})), capture_output=True, text=True, timeout=60)

    shown = status("--tls-ca", tls_files.ca)
    assert shown.returncode == 0, shown.stderr
    assert "Tracker address %s" % where in shown.stdout and "Server List" in shown.stdout
    from_env = status("--json", env={TLS_ENV["ca"]: tls_files.ca})
    assert from_env.returncode == 0, from_env.stderr
    assert '"server_info": []' in from_env.stdout
    refused = status()
    assert refused.returncode == 1
    assert "does the tracker use TLS? set --tls-ca / %s" % TLS_ENV["ca"] in refused.stderr


# --- the proxy -----------------------------------------------------------------------


def test_a_tls_proxy_pairs_tls_boards_and_clients_and_registers_with_a_tls_tracker(
    start: Starter, tls_files: TlsFiles, secret_file: str
) -> None:
    secret = load_secret(secret_file)
    tracker = start_tls_tracker(start, tls_files, "--secret-file", secret_file)
    proxy = start("proxy", "--port", "0", "--tracker", "%s:%d" % tracker.address, *listening(tls_files),
                  "--tls-ca", tls_files.ca, "--secret-file", secret_file)  # fmt: skip
    proxy.wait_for_log(re.compile("registered with the tracker at"))
    client = TrackerClient(*tracker.address, secret=secret, tls=tls_files.client())
    board = tls_socket(proxy.address, tls_files)  # a board behind NAT, as its ProxyDialer dials
    try:
        assert prove_on_socket(board, secret) == b""
        board.sendall(encode_hello("server", "nat -protocol=farm"))

        def offered() -> List[Dict[str, Any]]:
            summary = client.summary()
            return summary["server_info"] if summary["queue_info"].get("nat", {}).get("free") == 1 else []

        (entry,) = wait_for(offered, 10, "the proxy to offer the board to the tracker")
        assert entry["key"] == "server:proxy[nat]" and entry["addr"] == list(proxy.address)
        assignment = client.request_board("nat", wait=10)
        assert (assignment.host, assignment.port, assignment.protocol) == (*proxy.address, "farm")
        with tls_socket(proxy.address, tls_files) as user:  # the client the tracker handed the board to
            assert prove_on_socket(user, secret) == b""
            user.sendall(encode_hello("client", assignment.matchkey, 30))
            assert read_reply(user) == Reply(CODE_SUCCESS, "server:nat -protocol=farm")
            assert read_reply(board) == Reply(CODE_SUCCESS, "client:%s -timeout=30" % assignment.matchkey)
            upstream, downstream = os.urandom(3 << 20), os.urandom(5 << 20)  # more than the proxy buffers
            with ThreadPoolExecutor(1) as reader:
                reading = reader.submit(recv_exactly, board, len(upstream))
                user.sendall(upstream)
                assert reading.result(timeout=30) == upstream
                reading = reader.submit(recv_exactly, user, len(downstream))
                board.sendall(downstream)
                assert reading.result(timeout=30) == downstream
            board.close()  # the board ends the session: the proxy ends the client's connection too
            user.settimeout(10)
            assert user.recv(100) == b""
        wait_for(lambda: log_has(proxy, r"client 127\.0\.0\.1:\d+ and board 127\.0\.0\.1:\d+ are done"), 10, "the end")
    finally:
        board.close()
        client.close()
    port = refused_at_once(proxy.address, encode_hello("server", "nat"))  # a board without TLS
    expected = "refused 127.0.0.1:%d: it spoke TVM's data-plane handshake, not TLS" % port
    wait_for(lambda: expected in proxy.log_text(), 10, "the proxy logs the refusal of the plain board")


def test_a_tls_proxy_that_does_not_trust_the_trackers_certificate_says_so(start: Starter, tls_files: TlsFiles) -> None:
    tracker = start("tracker", "--port", "0", *listening(tls_files, tls_files.other_cert, tls_files.other_key))
    proxy = start("proxy", "--port", "0", "--tracker", "%s:%d" % tracker.address, *listening(tls_files),
                  "--tls-ca", tls_files.ca)  # fmt: skip
    proxy.wait_for_log(
        re.compile(r"WARNING farm\.proxy: tracker link: TLS handshake with 127\.0\.0\.1:%d failed: the certificate "
                   r"was refused: unable to get local issuer certificate; retrying" % tracker.address[1])
    )  # fmt: skip
