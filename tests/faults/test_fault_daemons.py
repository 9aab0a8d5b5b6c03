"""Faults of the farm's processes: boards killed or hung, clients killed, the tracker and the proxy restarted.

Each scenario runs a whole farm (tests/faults/fault_farm.py), injects the fault
into real processes with signals, and ends with :func:`assert_farm_whole`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Callable, Dict, Iterator

import pytest
from farm_certs import TlsFiles
from fault_farm import HOLDING, QUEUED, FaultFarm, assert_farm_whole, fault_farms, in_background, pause_in_call

import farm
from conftest import NATIVE_CHECKED, board_server_named, wait_for
from farm.client.session import SESSION_END_GRACE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TWO_BOARDS = "tracker: {port: 0}\nboards:\n  - {key: k, count: 2}\n"
PROXIED = "tracker: {port: 0}\nproxy: {port: 0}\nboards:\n  - {key: k}\n  - {key: nat, count: 2, proxy: true}\n"


@pytest.fixture(params=["python-plain", "python-tls", NATIVE_CHECKED + "-plain", NATIVE_CHECKED + "-tls"])
def start(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tls_files: TlsFiles,
    native_builds: Dict[bool, str],
) -> Iterator[Callable[..., FaultFarm]]:
    """Each scenario on a plain farm and on one with TLS on every connection (the daemons, the test's clients
    and the client processes it spawns all take it from the environment), of Python boards and of native ones."""
    server, transport = request.param.rsplit("-", 1)
    if transport == "tls":
        for name, value in tls_files.daemon().as_env().items():
            monkeypatch.setenv(name, value)
    with fault_farms(tmp_path, monkeypatch, board_server_named(server, native_builds)) as starter:
        yield starter


def test_board_daemon_killed_mid_call(start: Callable[..., FaultFarm], kernels: Dict[str, Path]) -> None:
    """SIGKILL to a board daemon whose session runs a call and has forked a child: the client hears of it at
    once, the session process and the child die, the dead daemon's directories go, the launcher restarts it."""
    faulty = start(TWO_BOARDS, supervised=True)
    session = faulty.request("k")
    name = session.system_info()["name"]
    session.upload(kernels["libmisbehave.so"])
    child = session.load_module("libmisbehave.so").get_function("fork_sleeper", "int fork_sleeper(void)")()
    assert child > 0 and child in faulty.strays()
    call = pause_in_call(session, kernels)

    os.kill(faulty.board(name).pid, signal.SIGKILL)
    error = call.exception(timeout=10)
    says = r"connection to board 'k' at 127\.0\.0\.1:%d lost while waiting for a reply" % session.port
    assert_farm_whole(faulty, error, farm.SessionLostError, [says], restarted=[name])
    with pytest.raises(farm.SessionLostError, match=says):
        session.ping()  # the session stays lost


def test_hung_board_sigstop_then_sigcont(start: Callable[..., FaultFarm], kernels: Dict[str, Path]) -> None:
    """SIGSTOP to a board daemon and its session mid-call: nothing on the farm notices (the tracker shows the
    board held), but its client does, by the silence past its session timeout; the other board serves on.
    After SIGCONT the board ends the expired session and is back in the pool."""
    faulty = start(TWO_BOARDS)
    session_timeout = 2.0
    session = faulty.request("k", session_timeout=session_timeout)
    info = session.system_info()
    call = pause_in_call(session, kernels)
    hung = [faulty.board(info["name"]).pid, info["pid"]]  # the daemon's process group and the session's
    for group in hung:
        os.killpg(group, signal.SIGSTOP)
    try:
        began = time.monotonic()
        with faulty.client().request("k", session_timeout=30, wait=5) as other:
            assert other.system_info()["name"] != info["name"]
        entry = next(s for s in faulty.summary()["server_info"] if s["name"] == info["name"])  # type: ignore[index]
        assert entry["state"] == "held", entry  # the tracker cannot tell a hung board from a busy one
        error = call.exception(timeout=session_timeout + SESSION_END_GRACE + 10)
        waited = time.monotonic() - began
    finally:
        # The session first: a daemon resumed first may end the expired session before it is resumed.
        for group in reversed(hung):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGCONT)
    assert waited < session_timeout + SESSION_END_GRACE + 2, waited
    says = [r"board 'k' at 127\.0\.0\.1:%d went silent while waiting for a reply" % session.port, r"timeout of 2 s"]
    assert_farm_whole(faulty, error, farm.SessionLostError, says)
    assert "reached its timeout of 2 s; killing it" in faulty.board(info["name"]).log_text()


def test_clients_killed_while_holding_a_board_and_while_queued(
    start: Callable[..., FaultFarm], kernels: Dict[str, Path]
) -> None:
    """SIGKILL to a client queued for a board, then to one holding a board mid-call: the request leaves the
    queue, the board ends the session at once and is offered again."""
    faulty = start(TWO_BOARDS)
    holder, holder_output = faulty.spawn(HOLDING, "k", str(kernels["libfaults.so"]))
    session_dir = Path(wait_for(lambda: holder_output.read_text().strip(), 30, "the holder has a board"))
    wait_for((session_dir / "running").exists, 10, "the holder's call runs")
    mine = faulty.request("k")
    waiter, waiter_output = faulty.spawn(QUEUED, "k")
    wait_for(lambda: "queued 0" in waiter_output.read_text(), 30, "the waiter queues")
    assert faulty.state("k") == {"total": 2, "free": 0, "pending": 1}

    waiter.kill()
    waiter.wait()
    faulty.wait(lambda: faulty.state("k").get("pending") == 0, 5, "the dead waiter's request leaves the queue")
    holder.kill()
    holder.wait()
    faulty.wait(lambda: faulty.state("k").get("free") == 1, 5, "the dead holder's board is offered again")
    mine.close()
    assert_farm_whole(faulty)
    logs = "".join(faulty.board(name).log_text() for name in ("k-0", "k-1"))
    assert "the client left while running mark_and_pause() from libfaults.so; the board ended the session" in logs


def test_tracker_restarted_while_boards_are_held_and_clients_queued(start: Callable[..., FaultFarm]) -> None:
    """SIGKILL to the tracker with both boards held and two clients queued: the queued clients are told the
    tracker is gone, the held sessions go on; the launcher restarts the tracker on its port, the boards
    register again, and a client that queues again is served."""
    faulty = start(TWO_BOARDS, supervised=True)
    held = [faulty.request("k", session_timeout=60) for _ in range(2)]
    queued = [in_background(faulty.client().request_board, "k", 0, "waiter-%d" % n, 30.0) for n in range(2)]
    faulty.wait(lambda: faulty.state("k").get("pending") == 2, 5, "two clients queue")
    assert faulty.stack.tracker is not None
    os.kill(faulty.stack.tracker.process.pid, signal.SIGKILL)
    errors = [call.exception(timeout=10) for call in queued]

    faulty.wait(lambda: faulty.state("k").get("total") == 2, 15, "both boards register with the new tracker")
    for session in held:
        session.ping()  # the data plane does not need the tracker
    again = in_background(faulty.request, "k")
    faulty.wait(lambda: faulty.state("k").get("pending") == 1, 5, "a client queues again")
    held[0].close()
    again.result(timeout=10).ping()
    for session in [held[1], again.result()]:
        session.close()
    says = [r"lost the tracker at 127\.0\.0\.1:%d while waiting for a board of 'k' \(the request went with it\)"
            % faulty.tracker[1]]  # fmt: skip
    for error in errors:
        assert_farm_whole(faulty, error, farm.TrackerError, says, restarted=["tracker"])


def test_proxy_killed_while_sessions_run_through_it(start: Callable[..., FaultFarm], kernels: Dict[str, Path]) -> None:
    """SIGKILL to the proxy while one session through it runs a call and another is idle: both clients are told,
    the board with a direct session does not notice, the launcher restarts the proxy on its port and the
    boards behind it dial in again and serve."""
    faulty = start(PROXIED, supervised=True)
    running = faulty.request("nat")
    call = pause_in_call(running, kernels)
    idle = faulty.request("nat")
    idle.ping()
    direct = faulty.request("k")
    assert faulty.stack.proxy is not None
    os.kill(faulty.stack.proxy.process.pid, signal.SIGKILL)

    error = call.exception(timeout=10)
    with pytest.raises(farm.SessionLostError, match=r"board 'nat' at 127\.0\.0\.1:%d lost" % idle.port):
        idle.ping()
    direct.ping()
    direct.close()
    says = [r"connection to board 'nat' at 127\.0\.0\.1:%d lost while waiting for a reply" % running.port]
    assert_farm_whole(faulty, error, farm.SessionLostError, says, restarted=["proxy"])
    with faulty.client().request("nat", session_timeout=30, wait=5) as again:
        again.ping()
