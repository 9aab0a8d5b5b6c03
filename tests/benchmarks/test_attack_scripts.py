"""Smoke tests of reliability/attack_unproven.py and reliability/attack_proxy_boards.py: they run end to end, short,
and write their JSON (the attacks themselves are asserted in tests/integration/test_gates.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, out: Path) -> dict:
    command = [sys.executable, str(PROJECT / "reliability" / name), *args, "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_silent_connection_attack_script_reports_who_was_served_and_what_was_logged(tmp_path: Path) -> None:
    args = ["--daemon", "board", "--secret", "--silent", "100", "--addresses", "2", "--window", "4"]
    result = run_script("attack_unproven.py", *args, out=tmp_path / "unproven.json")
    assert result["daemon"] == "board" and result["addresses"] == 2
    assert result["asks"] == 3 and result["served"] == 3 and result["failures"] == []
    assert result["stranger_opened"] >= 100 and result["tracebacks"] == 0 and result["daemon_alive"]


def test_the_proxy_boards_attack_script_reports_whether_the_proxy_stays_registered(tmp_path: Path) -> None:
    args = ["--boards", "3", "--key-length", "4000", "--settle", "1"]
    result = run_script("attack_proxy_boards.py", *args, out=tmp_path / "proxy.json")
    assert result["proxy_registered"] and result["near_free"] == 1
    assert result["long_boards_refused"] == 3 and result["tracker_dropped_the_proxy"] == []
