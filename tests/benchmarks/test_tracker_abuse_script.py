"""Smoke test of reliability/tracker_abuse.py: two of its attacks run end to end against this checkout's tracker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT / "reliability" / "tracker_abuse.py"


def test_tracker_abuse_script_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "abuse.json"
    command = [sys.executable, str(SCRIPT), "--only", "long-keys", "summary-flood", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    after = json.loads(out.read_text())["after"]
    assert after["long-keys"]["query_exit"] == 0
    assert all("more than 4096" in reply for reply in after["long-keys"]["put_replies"])
    assert after["summary-flood"]["dropped"] is True
    assert after["summary-flood"]["rss_after_mb"] < after["summary-flood"]["rss_before_mb"] + 8
