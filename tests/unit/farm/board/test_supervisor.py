"""farm.board.supervisor: the decisions about a session, with the clock passed in; no daemon, no spawner."""

from __future__ import annotations

import select
import socket
from typing import Iterator, Optional

import pytest

from farm.board.config import BoardConfig
from farm.board.session import SessionStatus
from farm.board.supervisor import (
    QUOTA_CHECK_PERIOD,
    ActiveSession,
    bytes_written,
    counted_beyond,
    describe_exit,
    end_message,
    hung_up_while_running,
    reply_cut_short,
    session_time,
)

MB = 1 << 20
CONFIG = BoardConfig(session_quota=8 * MB, session_quota_files=100)


@pytest.fixture
def pair() -> Iterator[socket.socket]:
    ours, theirs = socket.socketpair()
    yield ours
    ours.close()
    theirs.close()


def session(sock: socket.socket, timeout: Optional[float] = None, now: float = 100.0) -> ActiveSession:
    return ActiveSession(sock, "127.0.0.1:5000", "/nonexistent", timeout, SessionStatus(), now=now)


# --- how a process ended ---------------------------------------------------------------------------------------------


def test_describe_exit() -> None:
    assert describe_exit(3 << 8) == ("exited with code 3", None, 3)
    assert describe_exit(0) == ("exited with code 0", None, 0)
    assert describe_exit(11) == ("was killed by signal 11 (SIGSEGV)", 11, None)
    assert describe_exit(9) == ("was killed by signal 9 (SIGKILL)", 9, None)
    assert describe_exit(100) == ("was killed by signal 100 (unknown signal)", 100, None)


# --- the session's time ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked, limit, timeout, says",
    [
        (30.0, 3600.0, 30.0, "the session timeout of 30 s"),
        (30.0, 0.0, 30.0, "the session timeout of 30 s"),
        (None, 0.0, None, ""),
        (None, 60.0, 60.0, "the board's maximum session time of 60 s (--max-session-time; the client asked for none)"),
        (90.0, 60.0, 60.0, "the board's maximum session time of 60 s (--max-session-time; the client asked for 90 s)"),
        (60.0, 60.0, 60.0, "the session timeout of 60 s"),
    ],
)
def test_session_time(asked: Optional[float], limit: float, timeout: Optional[float], says: str) -> None:
    assert session_time(asked, limit) == (timeout, says)


def test_a_session_expires_once_at_its_deadline(pair: socket.socket) -> None:
    active = session(pair, timeout=5.0, now=100.0)
    assert active.deadline == 105.0
    assert not active.expired(104.999)
    assert active.expired(105.0)
    active.timed_out = True  # the supervisor killed it: not twice
    assert not active.expired(200.0)
    assert not session(pair, timeout=None).expired(1e12)


def test_the_quota_is_checked_once_a_period_until_found_over(pair: socket.socket) -> None:
    active = session(pair, now=100.0)
    assert not active.quota_check_due(100.0)
    assert active.quota_check_due(100.0 + QUOTA_CHECK_PERIOD)
    active.over_files = True
    assert not active.quota_check_due(1e9)


# --- what the client is told -----------------------------------------------------------------------------------------


def test_a_session_that_ended_as_asked_ends_without_a_message(pair: socket.socket) -> None:
    active = session(pair)
    active.status.state = SessionStatus.FINISHED
    assert end_message(active, 0, "", CONFIG, 0) == ""


def test_the_reasons_in_their_order(pair: socket.socket) -> None:
    active = session(pair, timeout=5.0)
    active.status.running("calling vadd")
    active.timed_out = True
    active.timeout_reason = "the session timeout of 5 s"
    assert end_message(active, 9, "", CONFIG, 0) == (
        "the session timeout of 5 s expired while calling vadd; the board ended the session"
    )
    active.abandoned = True
    assert end_message(active, 9, "", CONFIG, 0) == "the client left while calling vadd; the board ended the session"
    active.over_files = True
    assert end_message(active, 9, "", CONFIG, 0) == (
        "the session's directory holds more than its quota of 100 files and directories; "
        "the board ended the session while calling vadd"
    )
    active.over_quota = 9 * MB
    assert end_message(active, 9, "", CONFIG, 0) == (
        "the session's directory holds 9 MB, over its quota of 8 MB; the board ended the session while calling vadd"
    )
    active.start_failure = "fork: out of memory"
    assert end_message(active, 0, "", CONFIG, 0) == "the board could not start a session process: fork: out of memory"
    assert end_message(active, 9, "the board daemon shut down", CONFIG, 0) == "the board daemon shut down"


def test_a_crash_and_the_memory_limit(pair: socket.socket) -> None:
    active = session(pair)
    active.status.running("calling crash")
    assert end_message(active, 11, "", CONFIG, 0) == (
        "the board's session process was killed by signal 11 (SIGSEGV) while calling crash"
    )
    active.oom_kills = 2
    assert end_message(active, 9, "", CONFIG, 64 * MB) == (
        "the session went over its memory limit of 64 MB (--session-memory): the kernel killed 2 of its processes, "
        "and the board's session process was killed by signal 9 (SIGKILL) while calling crash"
    )


def test_an_exit_that_did_not_finish_is_not_clean(pair: socket.socket) -> None:
    active = session(pair)  # exit code 0, but the session process never said it finished
    assert end_message(active, 0, "", CONFIG, 0).startswith("the board's session process exited with code 0 while")


# --- the connection --------------------------------------------------------------------------------------------------


def test_a_reply_is_cut_short_only_while_sending(pair: socket.socket) -> None:
    active = session(pair)
    assert not reply_cut_short(active)
    active.status.sending(1000)
    assert bytes_written(pair) is None  # no TCP_INFO on a socket pair: what was written cannot be told
    assert reply_cut_short(active)


def test_bytes_written_counts_an_accepted_tcp_connection() -> None:
    """Acknowledged plus queued: all that was written, whether or not the peer acknowledged it yet."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as client:
            server, _ = listener.accept()
            with server:
                assert bytes_written(server) == 0
                server.sendall(b"x" * 1000)
                assert bytes_written(server) == 1000
                assert client.recv(2000)


def test_a_reply_cut_short_by_one_byte_is_told_on_a_connection_the_board_dialled() -> None:
    """On a connection it dialled (a board behind a proxy) the kernel counts the SYN as an acknowledged byte: the
    session start takes it off, so a reply one byte short of its end is still cut short."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as dialled:
            proxy, _ = listener.accept()
            with proxy:
                dialled.sendall(b"hello")
                assert proxy.recv(5, socket.MSG_WAITALL) == b"hello"
                active = session(dialled)
                active.sent_before = 5
                active.counted_beyond = counted_beyond(dialled, 5)
                assert active.counted_beyond in (0, 1)  # the SYN, where the kernel counts it (Linux does)
                dialled.sendall(b"x" * 1000)
                active.status.sending(5 + 1001)  # the reply ends one byte later than what was written
                assert reply_cut_short(active)
                active.status.sending(5 + 1000)
                assert not reply_cut_short(active)


@pytest.mark.skipif(not hasattr(select, "POLLRDHUP"), reason="POLLRDHUP is Linux's")
def test_a_client_that_hung_up_is_noticed_only_while_code_runs() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        active = session(ours)
        assert not hung_up_while_running(active)
        active.status.running("calling spin")
        assert not hung_up_while_running(active)
        theirs.close()
        assert hung_up_while_running(active)
        active.status.state = SessionStatus.IDLE  # an idle session process sees the end of the stream itself
        assert not hung_up_while_running(active)
