"""``farm query``'s tables (farm.client.query.format_summary): TVM's layout to the byte, and ``--wide``."""

from __future__ import annotations

from typing import Any, Dict

from farm.client.query import format_summary, omitted_note

SUMMARY: Dict[str, Any] = {
    "server_info": [
        {"key": "server:rasp4", "addr": ["10.0.0.2", 9090], "state": "held", "held_by": "ci-42", "since": 1000.0},
        {"key": "server:rasp4", "addr": ["10.0.0.1", 9090], "state": "free", "held_by": None, "since": None},
        {"key": "server:jetson-orin", "addr": ["10.0.0.3", 9091], "state": "busy", "held_by": None, "since": None},
    ],
    "queue_info": {
        "rasp4": {"free": 1, "pending": 2, "total": 2},
        "jetson-orin": {"free": 0, "pending": 0, "total": 1},
        "nightly": {"free": 0, "pending": 1, "total": 0},
        "gone": {"free": 0, "pending": 0, "total": 0},
        "proxied": {"free": 2, "pending": 0, "total": 3},  # boards behind a proxy: not in the Server List
    },
}

#: What TVM 0.27's ``TrackerSession.text_summary`` makes of SUMMARY (its query tool prints it and a line end).
TVM_RULE = "-" * 35  # TVM's title is 34 characters; it measures it with its line end
TVM_TEXT = "\n".join(
    [
        "Server List",
        "------------------------------",
        "server-address           key",
        "------------------------------",
        "10.0.0.3:9091            server:jetson-orin",
        "10.0.0.2:9090            server:rasp4",
        "10.0.0.1:9090            server:rasp4",
        "------------------------------",
        "",
        "Queue Status",
        TVM_RULE,
        "key           total  free  pending",
        TVM_RULE,
        "jetson-orin   1      0     0      ",
        "nightly       0      0     1      ",  # "proxied": no board in the Server List, none pending: not shown
        "rasp4         2      1     2      ",
        TVM_RULE,
        "",
    ]
)


def test_the_default_tables_are_tvms_to_the_byte() -> None:
    assert format_summary(SUMMARY, now=1060.0) == TVM_TEXT


def test_an_empty_tracker_as_tvm_shows_it() -> None:
    rule = "-" * len("key   total  free  pending\n")
    expected = ["Server List", "-" * 30, "server-address           key", "-" * 30, "-" * 30, "", "Queue Status"]
    expected += [rule, "key   total  free  pending", rule, rule, ""]
    assert format_summary({"server_info": [], "queue_info": {}}) == "\n".join(expected)


def test_wide_adds_the_holder_and_the_trackers_own_counts() -> None:
    lines = format_summary(SUMMARY, now=1060.0, wide=True).splitlines()
    assert "10.0.0.2:9090            server:rasp4    held by ci-42 for 60 s" in lines
    assert "10.0.0.1:9090            server:rasp4" in lines
    assert "proxied       3      2     0      " in lines
    assert len(lines) == len(TVM_TEXT.splitlines()) + 1


def test_peers_text_is_escaped_in_both_layouts() -> None:
    summary = {"server_info": [{"key": "server:a\nb", "addr": ["h\x1b", 1], "state": "held", "held_by": "x\ny"}]}
    for wide in (False, True):
        text = format_summary(summary, wide=wide)
        assert "\x1b" not in text and "server:a\\x0ab" in text and "h\\x1b:1" in text
    assert "held by x\\x0ay" in format_summary(summary, wide=True)


def test_what_the_summary_left_out_is_named_apart_from_the_tables() -> None:
    assert omitted_note(SUMMARY) == ""
    note = omitted_note({"omitted": {"queue_info": 3, "server_info": 0}})
    assert note == "3 key(s) and 0 board(s) not shown: the summary reached the tracker's size limit"
