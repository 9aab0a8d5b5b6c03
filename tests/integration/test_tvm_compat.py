"""Apache TVM's own RPC pieces against ours, all as real processes on 127.0.0.1.

TVM's tracker and board server (``tvm.exec.rpc_server``) run as child processes, each in
its own process group and stopped at teardown; TVM's client and query tool (its ``main``,
the tool's whole code, with its arguments) run in this process, the client in a thread
with a deadline so that a request that is never answered fails the test instead of
hanging it. Waits poll a condition against a deadline.

Needs the project's ``tvm`` extra (``pip install -e ".[tvm]"``); the module is skipped
only where ``import tvm`` fails.
"""

from __future__ import annotations

import contextlib
import gc
import io
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import pytest

try:
    import tvm
    from tvm import rpc as tvm_rpc
    from tvm.exec import query_rpc_tracker
    from tvm.rpc.client import RPCSession
except ImportError as exc:  # the tvm extra is not installed (or needs Python 3.10+)
    pytest.skip("Apache TVM is not importable (%s); install the tvm extra" % exc, allow_module_level=True)

import farm
from conftest import BoardServer, check_sanitizer_log, every_board_server, in_thread, python_env, wait_for
from farm.client.tracker import NoBoardError, TrackerError
from farm.ops.processes import DaemonProcess

Address = Tuple[str, int]
VADD = "void vadd(const float *a, const float *b, float *c, int64_t n)"
HOST = "127.0.0.1"


# --- helpers -------------------------------------------------------------------------


def summary_of(address: Address) -> Optional[Dict[str, Any]]:
    """A tracker's summary (ours or TVM's) over a connection of its own; None while it cannot be reached."""
    try:
        with farm.connect_tracker(address[0], address[1], timeout=5) as client:
            return client.summary()
    except TrackerError:
        return None


def key_state(summary: Optional[Dict[str, Any]], key: str) -> Optional[Tuple[int, int, int]]:
    """``(total, free, pending)`` of ``key``, counted as TVM's query tool counts them."""
    if summary is None:
        return None
    queue_info = summary["queue_info"].get(key, {})
    total = sum(1 for server in summary["server_info"] if server.get("key") == "server:" + key)
    return total, queue_info.get("free", 0), queue_info.get("pending", 0)


def board_entry(summary: Optional[Dict[str, Any]], address: Address) -> Optional[Dict[str, Any]]:
    """The summary's entry of the board listening at ``address``."""
    if summary is None:
        return None
    return next((s for s in summary["server_info"] if tuple(s.get("addr", ())) == tuple(address)), None)


def port_range(span: int = 200) -> Tuple[int, int]:
    """A port the system calls free now, and the end of a range after it.

    TVM's tracker and server take ``--port P --port-end E`` and bind the first free port
    of the range (port 0 is not accepted); they log which one.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    return port, min(port + span, 65536)


def query_tool(address: Address) -> Tuple[Set[Tuple[str, str]], Dict[str, Tuple[int, int, int]], str]:
    """Run TVM's ``query_rpc_tracker`` (in this process: TVM imports in seconds): its server list, queue status
    per key, and the text."""
    argv, sys.argv = sys.argv, ["query_rpc_tracker", "--host", address[0], "--port", str(address[1])]
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            query_rpc_tracker.main()
    finally:
        sys.argv = argv
    text = out.getvalue()
    assert "Server List" in text and "Queue Status" in text, text
    servers_part, queue_part = text.split("Queue Status", 1)
    servers = set(re.findall(r"^(\S+:\d+)\s+(server:\S+)\s*$", servers_part, re.MULTILINE))
    queue = {
        key: (int(total), int(free), int(pending))
        for key, total, free, pending in re.findall(r"^(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", queue_part, re.MULTILINE)
    }
    return servers, queue, text


def use_tvm_session(session: Any) -> None:
    """Prove a TVM RPC session works: a built-in remote function, a file round trip and an array round trip."""
    assert session.get_function("rpc.test.addone")(41) == 42
    payload = bytearray(b"\x00\x01tvm round trip\xff" * 64)
    session.upload(payload, "probe.bin")
    assert bytes(session.download("probe.bin")) == bytes(payload)
    x = np.linspace(-3, 3, 257, dtype=np.float32)
    remote = tvm.runtime.tensor(x, session.cpu())
    np.testing.assert_array_equal(remote.numpy(), x)


def close_tvm_session(holder: List[Any]) -> None:
    """TVM sessions close when the last reference goes; ``holder`` holds the only one."""
    holder.clear()
    gc.collect()


def run_vadd(session: farm.RemoteSession, library: Path) -> None:
    session.upload(library)
    vadd = session.load_module(library.name).get_function("vadd", signature=VADD)
    x = np.arange(4096, dtype=np.float32)
    a, b, c = session.array(x), session.array(2 * x), session.empty(x.shape, "float32")
    vadd(a, b, c, x.size)
    np.testing.assert_array_equal(c.numpy(), 3 * x)


# --- fixtures ------------------------------------------------------------------------


class Processes:
    """Child processes of one test: trackers and boards, ours and TVM's; all stopped at teardown."""

    def __init__(self, directory: Path, server: BoardServer) -> None:
        self.directory = directory
        self.server = server  # what our boards run
        self.started: List[DaemonProcess] = []

    def _start(self, name: str, argv: List[str], env: Optional[Dict[str, str]] = None) -> DaemonProcess:
        log = self.directory / ("%s-%d.log" % (name, len(self.started)))
        daemon = DaemonProcess(argv, str(log), env=env or python_env())
        self.started.append(daemon)
        daemon.wait_for_bind(timeout=30)
        return daemon

    def our_tracker(self) -> Address:
        daemon = self._start("tracker", [sys.executable, "-m", "farm.tracker", "--host", HOST, "--port", "0"])
        assert daemon.address is not None
        return daemon.address

    def tvm_tracker(self) -> Address:
        first, end = port_range()
        argv = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", HOST, "--port", str(first)]
        daemon = self._start("tvm-tracker", [*argv, "--port-end", str(end)])  # logs "bind to HOST:PORT"
        assert daemon.address is not None
        return daemon.address

    def our_board(self, key: str, tracker: Address) -> Address:
        program = [self.server.program] if self.server.program else [sys.executable, "-m", "farm.server"]
        argv = [*program, "--host", HOST, "--port", "0", "--key", key, "--tracker", "%s:%d" % tracker]
        daemon = self._start("board", argv, python_env(**self.server.env))
        assert daemon.address is not None
        self._wait_registered(tracker, daemon.address, key)
        return daemon.address

    def tvm_board(self, key: str, tracker: Address) -> Address:
        first, end = port_range()
        argv = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", HOST, "--port", str(first)]
        argv += ["--port-end", str(end), "--tracker", "%s:%d" % tracker, "--key", key]
        daemon = self._start("tvm-board", argv)
        assert daemon.address is not None
        self._wait_registered(tracker, daemon.address, key)
        return daemon.address

    def _wait_registered(self, tracker: Address, board: Address, key: str) -> None:
        def offered() -> bool:
            summary = summary_of(tracker)
            entry = board_entry(summary, board)
            if entry is None or entry.get("key") != "server:" + key:
                return False
            if "state" in entry:  # our tracker says which board is free
                return entry["state"] == "free"
            return key_state(summary, key)[1] >= 1  # TVM's counts free boards per key (one per key here)

        wait_for(offered, 30, "the board at %s:%d offers key %r to the tracker" % (board + (key,)))

    def stop(self) -> None:
        for daemon in reversed(self.started):
            daemon.stop()


@pytest.fixture
def procs(tmp_path: Path, board_server: BoardServer) -> Iterator[Processes]:
    processes = Processes(tmp_path, board_server)
    yield processes
    processes.stop()
    for daemon in processes.started:
        check_sanitizer_log(daemon)


# --- TVM's query tool and board server with our tracker -------------------------------


@every_board_server
def test_tvm_query_tool_reads_our_tracker_with_our_board_and_a_tvm_board(procs: Processes) -> None:
    tracker = procs.our_tracker()
    ours = procs.our_board("mixed", tracker)
    theirs = procs.tvm_board("mixed", tracker)

    servers, queue, text = query_tool(tracker)

    assert ("%s:%d" % ours, "server:mixed") in servers, text
    assert ("%s:%d" % theirs, "server:mixed") in servers, text
    assert len(servers) == 2, text
    assert queue == {"mixed": (2, 2, 0)}, text  # total, free, pending


def test_tvm_client_gets_a_working_session_on_a_tvm_board_through_our_tracker(procs: Processes) -> None:
    tracker = procs.our_tracker()
    board = procs.tvm_board("tvmkey", tracker)

    holder: List[Any] = []

    def request() -> None:
        client = tvm_rpc.connect_tracker(*tracker)
        try:
            holder.append(client.request("tvmkey", priority=1, session_timeout=60))
        finally:
            client.close()

    in_thread(request, 30, "TVM's request for 'tvmkey' through our tracker")
    assert isinstance(holder[0], RPCSession)
    entry = board_entry(summary_of(tracker), board)
    assert entry is not None and (entry["protocol"], entry["state"]) == ("tvm", "held"), entry
    assert key_state(summary_of(tracker), "tvmkey") == (1, 0, 0)

    use_tvm_session(holder[0])
    close_tvm_session(holder)

    wait_for(lambda: (board_entry(summary_of(tracker), board) or {}).get("state") == "free", 20,
             "the TVM board is free again after its session closed")  # fmt: skip
    assert key_state(summary_of(tracker), "tvmkey") == (1, 1, 0)


# --- our board and client with TVM's tracker ------------------------------------------


@every_board_server
def test_our_board_serves_our_client_through_tvm_tracker(procs: Processes, kernels: Dict[str, Path]) -> None:
    tracker = procs.tvm_tracker()
    board = procs.our_board("farmkey", tracker)

    with farm.connect_tracker(*tracker) as client, client.request("farmkey", session_timeout=60) as remote:
        assert isinstance(remote, farm.RemoteSession)
        assert remote.system_info()["key"] == "farmkey"
        run_vadd(remote, kernels["libvadd.so"])
        servers, queue, text = query_tool(tracker)
        assert ("%s:%d" % board, "server:farmkey") in servers, text
        assert queue.get("farmkey") == (1, 0, 0), text  # held by this session

    wait_for(lambda: key_state(summary_of(tracker), "farmkey") == (1, 1, 0), 20,
             "our board offers itself to TVM's tracker again after the session")  # fmt: skip
    servers, queue, text = query_tool(tracker)
    assert ("%s:%d" % board, "server:farmkey") in servers, text
    assert queue.get("farmkey") == (1, 1, 0), text


# --- which client gets which board on our tracker --------------------------------------


def test_our_client_gets_a_tvm_session_for_a_key_only_tvm_boards_serve(procs: Processes) -> None:
    tracker = procs.our_tracker()
    board = procs.tvm_board("tvmonly", tracker)

    holder: List[Any] = []

    def request() -> None:
        with farm.connect_tracker(*tracker) as client:
            holder.append(client.request("tvmonly", session_timeout=60))

    in_thread(request, 30, "our client's request for 'tvmonly'")
    assert isinstance(holder[0], RPCSession), "expected TVM's RPCSession, got %r" % (holder[0],)
    assert hasattr(holder[0], "cpu")
    use_tvm_session(holder[0])
    close_tvm_session(holder)

    wait_for(lambda: (board_entry(summary_of(tracker), board) or {}).get("state") == "free", 20,
             "the TVM board is free again after its session closed")  # fmt: skip


def test_tvm_client_is_refused_a_key_only_our_boards_serve(procs: Processes) -> None:
    tracker = procs.our_tracker()
    board = procs.our_board("farmonly", tracker)

    def request() -> Any:
        client = tvm_rpc.connect_tracker(*tracker)
        try:
            return client.request("farmonly", priority=1, session_timeout=10, max_retry=2)
        finally:
            client.close()

    with pytest.raises(RuntimeError, match="speak farm, and this client speaks tvm"):
        in_thread(request, 30, "TVM's request for 'farmonly'")

    summary = summary_of(tracker)
    entry = board_entry(summary, board)
    assert entry is not None and (entry["protocol"], entry["state"]) == ("farm", "free"), entry
    assert key_state(summary, "farmonly") == (1, 1, 0)
    with farm.connect_tracker(*tracker) as client, client.request("farmonly", session_timeout=30, wait=10) as remote:
        remote.ping()  # the board was not touched


# --- our client with TVM's tracker: what TVM's tracker does not tell ------------------


def test_our_client_through_tvm_tracker_gets_a_tvm_session_on_a_tvm_board(procs: Processes) -> None:
    """TVM's tracker answers REQUEST with ``[host, port, matchkey]`` only, so the client must learn the
    board's protocol elsewhere: the board's UPDATE_INFO in the summary has ``"protocol": "farm"`` for
    our boards and no ``protocol`` for TVM's."""
    tracker = procs.tvm_tracker()
    procs.tvm_board("tvmboard", tracker)

    def request() -> Tuple[type, Any]:
        with farm.connect_tracker(*tracker) as client:
            session = client.request("tvmboard", session_timeout=3)
        if isinstance(session, RPCSession):
            return RPCSession, session.get_function("rpc.test.addone")(1)
        session.close()  # our protocol on TVM's board: returns when TVM ends the session at its timeout
        return type(session), None

    kind, answer = in_thread(request, 30, "our client's request for 'tvmboard' through TVM's tracker")
    assert kind is RPCSession, "a TVM board handed out by TVM's tracker was opened as a %s" % kind.__name__
    assert answer == 2


def test_our_client_wait_is_kept_with_tvm_tracker(procs: Processes) -> None:
    """TVM's tracker ignores the options of REQUEST (``wait`` among them) and never answers FAIL."""
    tracker = procs.tvm_tracker()

    def request() -> Any:
        with farm.connect_tracker(*tracker) as client:
            return client.request_board("nobody-serves-this", wait=1)

    started = time.monotonic()
    with pytest.raises(NoBoardError):
        in_thread(request, 6, "our request with wait=1 through TVM's tracker")
    assert time.monotonic() - started < 6


# --- a TVM board behind our proxy --------------------------------------------------------


def start_our_proxy(procs: Processes, tracker: Address) -> Address:
    """Our proxy, offering the boards that dial it to ``tracker``."""
    argv = [sys.executable, "-m", "farm.proxy", "--host", HOST, "--port", "0", "--tracker", "%s:%d" % tracker]
    daemon = procs._start("proxy", argv)
    assert daemon.address is not None
    return daemon.address


def start_tvm_board_behind(procs: Processes, key: str, proxy: Address, tracker: Address) -> DaemonProcess:
    """TVM's board server dialling out to ``proxy`` (``--through-proxy``); returns once the tracker offers it.

    In that mode TVM's server listens nowhere and logs no ``bind to`` line: the tracker's
    summary, polled against a deadline, says when the proxy has offered it.
    """
    argv = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", proxy[0], "--port", str(proxy[1])]
    log = procs.directory / ("tvm-board-behind-proxy-%d.log" % len(procs.started))
    daemon = DaemonProcess([*argv, "--through-proxy", "--key", key], str(log), env=python_env())
    procs.started.append(daemon)
    wait_for(lambda: proxy_offers(tracker, proxy, key) or daemon.process.poll() is not None, 30,
             "the proxy offers TVM's board of key %r to our tracker" % key)  # fmt: skip
    assert daemon.process.poll() is None, "TVM's board server exited:\n" + daemon.log_text()[-4000:]
    return daemon


def proxy_offers(tracker: Address, proxy: Address, key: str) -> bool:
    """Whether the tracker lists the proxy as ``server:proxy[KEY]`` with a free TVM board of ``key``."""
    summary = summary_of(tracker)
    entry = board_entry(summary, proxy)
    if summary is None or entry is None:
        return False
    free = summary["queue_info"].get(key, {}).get("free", 0)
    return entry.get("key") == "server:proxy[%s]" % key and entry.get("protocol") == "tvm" and free == 1


def test_tvm_board_behind_our_proxy_serves_tvm_client_and_ours_through_our_tracker(procs: Processes) -> None:
    tracker = procs.our_tracker()
    proxy = start_our_proxy(procs, tracker)
    start_tvm_board_behind(procs, "tvmnat", proxy, tracker)

    holder: List[Any] = []

    def tvm_request() -> None:
        client = tvm_rpc.connect_tracker(*tracker)
        try:
            holder.append(client.request("tvmnat", priority=1, session_timeout=60))
        finally:
            client.close()

    in_thread(tvm_request, 30, "TVM's request for 'tvmnat' through our tracker")
    assert isinstance(holder[0], RPCSession)
    entry = board_entry(summary_of(tracker), proxy)
    assert entry is not None and entry["state"] == "held", entry  # the proxy's only board is in a session
    in_thread(lambda: use_tvm_session(holder[0]), 30, "TVM's session through our proxy")
    close_tvm_session(holder)

    # TVM's board dials the proxy again after the session; then our client gets it as a TVM session.
    wait_for(lambda: proxy_offers(tracker, proxy, "tvmnat"), 20, "TVM's board is offered again after its session")

    def our_request() -> None:
        with farm.connect_tracker(*tracker) as client:
            holder.append(client.request("tvmnat", session_timeout=60, wait=20))

    in_thread(our_request, 30, "our client's request for 'tvmnat'")
    assert isinstance(holder[0], RPCSession), "expected TVM's RPCSession, got %r" % (holder[0],)
    in_thread(lambda: use_tvm_session(holder[0]), 30, "our client's TVM session through our proxy")
    close_tvm_session(holder)
    wait_for(lambda: proxy_offers(tracker, proxy, "tvmnat"), 20, "TVM's board is offered again after our session")


# --- a client without TVM -------------------------------------------------------------

WITHOUT_TVM = """
import sys
sys.modules["tvm"] = None  # as if apache-tvm were not installed
import farm
try:
    farm.connect_tracker(%r, %d).request(%r, wait=10)
except farm.TrackerError as exc:
    print(type(exc).__name__, exc)
else:
    print("no error")
"""


@pytest.mark.parametrize("tracker_kind", ["ours", "tvm"])
def test_a_client_without_tvm_gets_a_clear_error_for_a_tvm_board(procs: Processes, tracker_kind: str) -> None:
    """Our tracker refuses at once (the client speaks farm only); through TVM's, the client says what to install."""
    tracker = procs.our_tracker() if tracker_kind == "ours" else procs.tvm_tracker()
    procs.tvm_board("tvmonly", tracker)
    script = WITHOUT_TVM % (tracker[0], tracker[1], "tvmonly")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=python_env()
    )
    assert result.returncode == 0, result.stderr
    if tracker_kind == "ours":
        assert result.stdout.startswith("NoBoardError"), result.stdout
        assert "speak tvm" in result.stdout and "speaks farm" in result.stdout, result.stdout
    else:
        assert result.stdout.startswith("TrackerError"), result.stdout
        assert "install apache-tvm" in result.stdout, result.stdout
