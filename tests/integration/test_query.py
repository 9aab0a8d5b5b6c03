"""``farm query`` against TVM's ``query_rpc_tracker``: one real tracker, both tools, the same bytes.

The tracker is our ``python -m farm.tracker``; one of our board daemons and light peers speaking the
tracker protocol (boards of TVM's kind and ours, clients holding boards and waiting for them) give it
held boards, free ones and queued requests. Both tools run as child processes against it. TVM's
``TrackerSession.text_summary`` is also run on arbitrary summaries as the reference for our tables.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tvm.rpc.client import TrackerSession
except ImportError as exc:  # the tvm extra is not installed (or needs Python 3.10+)
    pytest.skip("Apache TVM is not importable (%s); install the tvm extra" % exc, allow_module_level=True)

from conftest import python_env, wait_for
from farm.client.query import format_summary
from farm.client.tracker import connect_tracker
from farm.ops.processes import DaemonProcess
from farm.protocol.tracker import Code, MessageReader, encode_magic, encode_message

HOST = "127.0.0.1"
Address = Tuple[str, int]


class LightPeer:
    """A bare connection speaking the tracker protocol, as TVM's boards and clients do."""

    def __init__(self, address: Address) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.reader = MessageReader(expect_magic=True)
        self.messages: List[Any] = []
        self.sock.sendall(encode_magic())
        while not self.reader.magic_seen:
            self._receive_some()

    def _receive_some(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the tracker closed the connection")
        self.messages += self.reader.feed(data)

    def send(self, *message: Any) -> None:
        self.sock.sendall(encode_message(list(message)))

    def call(self, *message: Any) -> Any:
        self.send(*message)
        while not self.messages:
            self._receive_some()
        return self.messages.pop(0)


class Farm:
    """Our tracker, one of our board daemons and light peers; all closed at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.daemons: List[DaemonProcess] = []
        self.peers: List[LightPeer] = []
        self.address = self._start("tracker", "farm.tracker", "--host", HOST, "--port", "0")

    def _start(self, name: str, *argv: str) -> Address:
        log = self.directory / ("%s-%d.log" % (name, len(self.daemons)))
        daemon = DaemonProcess([sys.executable, "-m", *argv], str(log), env=python_env())
        self.daemons.append(daemon)
        address = daemon.wait_for_bind(timeout=30)
        assert address is not None
        return address

    def summary(self) -> Dict[str, Any]:
        with connect_tracker(*self.address, timeout=5) as client:
            return client.summary()

    def our_board(self, key: str) -> Address:
        board = self._start("board", "farm.server", "--host", HOST, "--port", "0", "--key", key,
                            "--tracker", "%s:%d" % self.address)  # fmt: skip
        wait_for(lambda: self.summary()["queue_info"].get(key, {}).get("free"), 30, "the board offers %r" % key)
        return board

    def peer(self) -> LightPeer:
        self.peers.append(LightPeer(self.address))
        return self.peers[-1]

    def light_board(self, key: str, port: int, protocol: str = "") -> None:
        """A board that registers and offers itself (TVM's kind without ``protocol``)."""
        board = self.peer()
        info: Dict[str, Any] = {"key": "server:" + key, "addr": [None, port]}
        if protocol:
            info["protocol"] = protocol
        assert board.call(Code.UPDATE_INFO, info) == Code.SUCCESS
        assert board.call(Code.PUT, key, [str(port), "%s:%d" % (key, port)], None) == Code.SUCCESS

    def hold(self, key: str, user: str, protocols: List[str]) -> None:
        reply = self.peer().call(Code.REQUEST, key, user, 0, {"protocols": protocols})
        assert reply[0] == Code.SUCCESS, reply

    def queue(self, key: str, user: str, **options: Any) -> None:
        self.peer().send(Code.REQUEST, key, user, 0, dict(options, protocols=["farm", "tvm"]))

    def close(self) -> None:
        for peer in self.peers:
            peer.sock.close()
        for daemon in reversed(self.daemons):
            daemon.stop()


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    setup = Farm(tmp_path)
    try:
        yield setup
    finally:
        setup.close()


def run(*argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, timeout=60, env=python_env())
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done


def test_farm_query_prints_the_bytes_tvms_query_tool_prints(farm: Farm) -> None:
    farm.light_board("rasp4", 9101, "farm")
    farm.light_board("rasp4", 9102, "farm")
    farm.light_board("a-much-longer-key", 9103)  # TVM's kind
    farm.light_board("a-much-longer-key", 9104)
    farm.hold("rasp4", "ci-1", ["farm"])
    farm.hold("rasp4", "ci-2", ["farm"])
    farm.hold("a-much-longer-key", "tvm-user", ["tvm"])
    farm.hold("a-much-longer-key", "tvm-user-2", ["tvm"])
    farm.our_board("rasp4")  # free: nobody is handed it (a board would offer an unused one again, later)
    farm.queue("a-much-longer-key", "behind")
    farm.queue("nightly", "early", wait_for_key=True)

    def settled() -> bool:
        queues = farm.summary()["queue_info"]
        return [queues.get(key, {}).get("pending") for key in ("a-much-longer-key", "nightly")] == [1, 1]

    wait_for(settled, 10, "both requests are queued")
    port = str(farm.address[1])
    theirs = run("tvm.exec.query_rpc_tracker", "--host", HOST, "--port", port).stdout
    ours = run("farm.query", "--host", HOST, "--port", port).stdout
    for row in ("a-much-longer-key   2      0     1      ", "nightly             0      0     1      ",
                "rasp4               3      1     0      "):  # fmt: skip
        assert row.encode() + b"\n" in theirs, theirs
    assert ours == theirs

    wide = run("farm.query", "--host", HOST, "--port", port, "--wide").stdout.decode()
    for holder in ("ci-1", "ci-2", "tvm-user", "tvm-user-2"):
        assert "    held by %s for " % holder in wide, wide


@settings(max_examples=200, deadline=None)
@given(
    servers=st.lists(
        st.tuples(st.sampled_from(["rasp4", "k", "a-much-longer-key", "z9"]), st.integers(1, 65535)), max_size=6
    ),
    queues=st.dictionaries(
        st.sampled_from(["rasp4", "k", "a-much-longer-key", "z9", "waited-for-only"]),
        st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)),
        max_size=5,
    ),
)
def test_our_tables_are_tvms_text_summary_for_any_summary(
    servers: List[Tuple[str, int]], queues: Dict[str, Tuple[int, int, int]]
) -> None:
    summary = {
        "server_info": [{"key": "server:" + key, "addr": ["10.0.0.1", port]} for key, port in servers],
        "queue_info": {key: {"free": free, "pending": pending, "total": total} for key, (free, pending, total) in
                       queues.items()},
    }  # fmt: skip

    class Session:
        def summary(self) -> Dict[str, Any]:
            return summary

    assert format_summary(summary) == TrackerSession.text_summary(Session())
