"""farm.board.config: the board daemon's options become one BoardConfig; nonsense stops the daemon at start."""

from __future__ import annotations

import argparse
from typing import List

import pytest

from farm.board import confine
from farm.board.config import (
    DEFAULT_MAX_SESSION_TIME,
    MAX_PENDING_HANDSHAKES,
    BoardConfig,
    add_arguments,
    board_config,
    session_limits,
)
from farm.net.credentials import PLAIN, Credentials
from farm.net.gate import Limits

MB = 1 << 20


def parse(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_the_defaults_of_the_options_are_those_of_the_config() -> None:
    assert board_config(parse([]), PLAIN) == BoardConfig()
    assert BoardConfig().max_session_time == DEFAULT_MAX_SESSION_TIME
    assert BoardConfig().unproven == Limits(MAX_PENDING_HANDSHAKES, BoardConfig().max_pending_per_address, 10.0)


def test_every_option_reaches_the_config() -> None:
    argv = [
        "--host", "127.0.0.2", "--port", "0", "--port-end", "100", "--key", "rasp4", "--name", "b1",
        "--work-dir", "/srv/sessions", "--tracker", "127.0.0.1:9190", "--custom-addr", "10.0.0.9",
        "--max-message-size", "4096", "--handshake-timeout", "2.5", "--max-unproven", "8",
        "--max-unproven-per-address", "2", "--session-quota", "3", "--session-quota-files", "50",
        "--max-session-time", "60",
    ]  # fmt: skip
    credentials = Credentials(b"s" * 32, None)
    config = board_config(parse(argv), credentials)
    assert config == BoardConfig(
        host="127.0.0.2",
        port=0,
        port_end=100,
        key="rasp4",
        name="b1",
        work_dir="/srv/sessions",
        tracker=("127.0.0.1", 9190),
        custom_addr="10.0.0.9",
        credentials=credentials,
        max_message_size=4096,
        handshake_timeout=2.5,
        max_pending=8,
        max_pending_per_address=2,
        session_quota=3 * MB,
        session_quota_files=50,
        max_session_time=60.0,
    )
    assert config.unproven == Limits(8, 2, 2.5)
    assert board_config(parse(["--through-proxy"]), PLAIN).through_proxy


def test_the_config_is_frozen() -> None:
    config = BoardConfig()
    with pytest.raises(AttributeError):
        config.key = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--session-quota", "-1"], "'-1' is not a number of MB (0 or more)"),
        (["--session-quota", "1.5"], "'1.5' is not a number of MB (0 or more)"),
        (["--session-quota-files", "many"], "'many' is not a whole number (0 or more)"),
        (["--session-processes", "-2"], "'-2' is not a whole number (0 or more)"),
        (["--session-memory", "lots"], "'lots' is not a number of MB (0 or more)"),
        (["--max-session-time", "-5"], "'-5' is not a number of seconds (0 or more)"),
        (["--max-session-time", "inf"], "'inf' is not a number of seconds (0 or more)"),
        (["--max-unproven", "0"], "'0' is not a whole number (1 or more)"),
        (["--tracker", "nowhere"], "--tracker"),
    ],
)
def test_nonsense_is_refused_with_what_was_expected(argv: List[str], says: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse(argv)
    assert says in capsys.readouterr().err


def test_session_limits() -> None:
    args = parse(["--session-memory", "64", "--session-processes", "5", "--session-open-files", "0"])
    assert session_limits(args) == confine.Limits(processes=5, open_files=0, memory=64 * MB)
    defaults = session_limits(parse([]))
    assert defaults == confine.Limits(memory=confine.default_memory())


def test_the_secret_stays_out_of_the_configs_text() -> None:
    config = BoardConfig(key="rasp4", credentials=Credentials(b"very secret bytes", None))
    assert "very secret" not in repr(config) and "rasp4" in repr(config)
