"""Peers' words reach the host as text and data only: ``farm status`` escapes them; hostile trackers are clear errors.

Real processes: a tracker with boards and clients whose keys, addresses and
user names hold newlines and terminal escape codes; and a fake tracker that
answers with hostile JSON.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from conftest import python_env, wait_for
from farm.client.tracker import TrackerError, connect_tracker
from farm.ops.processes import DaemonProcess
from farm.protocol.tracker import Code, encode_magic, encode_message

Address = Tuple[str, int]

#: A key that, printed raw, would end its row, add a forged one and clear the screen.
EVIL_KEY = "evil\nforged-key   1      1     0      \x1b[2J\x1b[H"
EVIL_USER = "mallory\nforged-holder\x1b]0;title\x07\x9b31m"
EVIL_HOST = "10.0.0.1\nforged-server\u2028"


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Address]:
    argv = [sys.executable, "-m", "farm.tracker", "--host", "127.0.0.1", "--port", "0"]
    with DaemonProcess(argv, str(tmp_path / "tracker.log"), env=python_env()) as daemon:
        yield daemon.wait_for_bind()


def _queue_raw(address: Address, message: list) -> socket.socket:
    """A bare tracker connection that sent ``message`` and stays open (a request that waits its turn)."""
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(encode_magic())
    echoed = b""
    while len(echoed) < 4:
        echoed += sock.recv(4 - len(echoed))
    sock.sendall(encode_message(message))
    return sock


def _status(address: Address, *command: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", *command, "--host", address[0], "--port", str(address[1])]
    return subprocess.run(argv, capture_output=True, text=True, env=python_env(), timeout=60)


def test_farm_status_escapes_control_characters_that_peers_supply(tracker: Address) -> None:
    board = connect_tracker(*tracker)
    clients: List[object] = [board]
    try:
        info = {"key": "server:" + EVIL_KEY, "addr": [EVIL_HOST, 9999], "protocol": "farm"}
        assert board.call([Code.UPDATE_INFO, info]) == Code.SUCCESS
        assert board.call([Code.PUT, EVIL_KEY, [9999, EVIL_KEY + ":1"], "127.0.0.1"]) == Code.SUCCESS
        holder = connect_tracker(*tracker)
        clients.append(holder)
        assert holder.request_board(EVIL_KEY, user=EVIL_USER).matchkey == EVIL_KEY + ":1"  # held by EVIL_USER
        farm_only = {"protocols": ["farm"]}
        clients.append(_queue_raw(tracker, [Code.REQUEST, EVIL_KEY, EVIL_USER, 0, farm_only]))  # one waits for it
        clients.append(_queue_raw(tracker, [Code.REQUEST, EVIL_KEY + "2", "x", 0, dict(farm_only, wait_for_key=True)]))

        def both_queued() -> bool:
            queues = holder.summary()["queue_info"]
            return all(queues.get(key, {}).get("pending") == 1 for key in (EVIL_KEY, EVIL_KEY + "2"))

        wait_for(both_queued, 10, "both requests are queued")
        for command in (("farm.query", "--wide"), ("farm", "status", "-w")):  # with the holders: peers' text too
            done = _status(tracker, *command)
            assert done.returncode == 0, done.stderr
            text = done.stdout
            assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]", text), repr(text)
            assert not re.search("^forged", text, re.M), text
            lines = text.splitlines()
            servers = lines[lines.index("Server List") + 4 : lines.index("Queue Status") - 2]
            expected_server = (
                "10.0.0.1\\x0aforged-server\\u2028:9999    server:evil\\x0aforged-key   1      1     0      "
                "\\x1b[2J\\x1b[H    held by mallory\\x0aforged-holder\\x1b]0;title\\x07\\x9b31m for "
            )
            assert len(servers) == 1 and re.fullmatch(re.escape(expected_server) + r"\d+ s", servers[0]), text
            queues = lines[lines.index("Queue Status") + 4 : -2]  # then the rule and TVM's blank line
            assert [line.split()[0] for line in queues] == ["evil\\x0aforged-key"] * 2, text
            assert re.match(r"^evil\\x0aforged-key +1 +1 +0 +\\x1b\[2J\\x1b\[H +1 +0 +1 *$", queues[0]), text
        raw = json.loads(_status(tracker, "farm.query", "--json").stdout)  # the raw summary is JSON: escaped too
        assert EVIL_KEY in raw["queue_info"]
    finally:
        for client in clients:
            client.close()  # type: ignore[attr-defined]


# --- a hostile tracker -----------------------------------------------------------------

#: A fake tracker: echoes the magic, then answers every message with the contents of the file argv[1], as is.
FAKE_TRACKER = r"""
import socket, struct, sys, threading
with open(sys.argv[1], "rb") as source:
    reply = source.read()
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)

def serve(conn):
    with conn:
        def read(n):
            data = b""
            while len(data) < n:
                more = conn.recv(n - len(data))
                if not more:
                    raise EOFError
                data += more
            return data
        try:
            conn.sendall(read(4))
            while True:
                read(struct.unpack("<i", read(4))[0])
                conn.sendall(struct.pack("<i", len(reply)) + reply)
        except (EOFError, OSError):
            pass

while True:
    connection, _ = server.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""


@pytest.fixture
def fake_tracker(tmp_path: Path) -> Iterator:
    started: List[subprocess.Popen] = []

    def start(reply: bytes) -> Address:
        (tmp_path / "reply").write_bytes(reply)
        argv = [sys.executable, "-c", FAKE_TRACKER, str(tmp_path / "reply")]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=python_env())
        started.append(process)
        return "127.0.0.1", int(process.stdout.readline())  # type: ignore[union-attr]

    yield start
    for process in started:
        process.kill()
        process.wait()


HOSTILE_SUMMARIES = {
    "deep nesting": (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    "huge number": (b"[0, " + b"9" * 100000 + b"]", "not valid JSON"),
    "not an object": (b"[0, [1, 2]]", "the tracker's summary is a JSON list, not an object"),
    "servers not objects": (b'[0, {"server_info": [1]}]', "server_info that is not a list of objects"),
    "queues not objects": (b'[0, {"queue_info": {"k": 1}}]', "queue_info that is not an object of objects"),
    "count not a number": (b'[0, {"queue_info": {"k": {"free": "x"}}}]', "queue 'k': free is 'x', not an integer"),
    "waiters not objects": (b'[0, {"queue_info": {"k": {"waiters": [3]}}}]', "waiters is not a list"),
    "long garbage": (json.dumps([1, "x" * 500000]).encode(), "unexpected SUMMARY reply [1, 'xxx"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SUMMARIES))
def test_a_hostile_trackers_summary_is_a_clear_error(fake_tracker, case: str) -> None:  # type: ignore[no-untyped-def]
    reply, expected = HOSTILE_SUMMARIES[case]
    address = fake_tracker(reply)
    with connect_tracker(*address) as client, pytest.raises(TrackerError) as info:
        client.summary()
    assert expected in str(info.value) and len(str(info.value)) < 600, str(info.value)[:1000]
    done = _status(address, "farm.query")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("farm query: ") and expected in done.stderr, done.stderr


HOSTILE_ASSIGNMENTS = {
    "an object": b'[0, {"a": 1, "b": 2, "c": 3}]',
    "port not a number": b'[0, ["127.0.0.1", "80; rm -rf", "k:1"]]',
    "port out of range": b'[0, ["127.0.0.1", 70000, "k:1"]]',
    "port infinite": b'[0, ["127.0.0.1", 1e400, "k:1"]]',
    "host not text": b'[0, [["127.0.0.1"], 80, "k:1"]]',
    "protocol not text": b'[0, ["127.0.0.1", 80, "k:1", {"tvm": 1}]]',
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ASSIGNMENTS))
def test_a_hostile_trackers_assignment_is_a_clear_error(fake_tracker, case: str) -> None:  # type: ignore[no-untyped-def]
    address = fake_tracker(HOSTILE_ASSIGNMENTS[case])
    with connect_tracker(*address) as client, pytest.raises(TrackerError, match="unexpected REQUEST reply"):
        client.request_board("k", wait=10)
