"""Smoke test of benchmarks/bench_sessions.py: it runs end to end and writes its JSON (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT / "benchmarks" / "bench_sessions.py"


def test_session_benchmark_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "--before", str(PROJECT), "--after", str(PROJECT), "--rounds", "2",
               "--per-round", "2", "--json", str(out), "--log-level", "WARNING"]  # fmt: skip
    result = subprocess.run(command, cwd=str(tmp_path), capture_output=True, timeout=240)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-4000:]
    assert b"open+close: before / after" in result.stdout
    measured = json.loads(out.read_text())["measured"]
    assert set(measured) == {"before local", "after local"}
    for side in measured.values():
        assert side["sessions"] == 4 and 0 < side["open_ms"] <= side["open_close_ms"], side
