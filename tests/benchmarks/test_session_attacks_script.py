"""Smoke test of reliability/session_attacks.py: two quick attacks end to end on this checkout's board, JSON out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "reliability" / "session_attacks.py"


def test_open_files_and_detached_process_attacks(tmp_path: Path) -> None:
    results = tmp_path / "attacks.json"
    argv = [sys.executable, str(SCRIPT), "--only", "open-files", "--only", "detached-ended", "--json", str(results),
            "--", "--session-open-files", "100"]  # fmt: skip
    finished = subprocess.run(argv, cwd=str(tmp_path), capture_output=True, timeout=120)
    assert finished.returncode == 0, finished.stderr.decode(errors="replace")[-4000:]
    figures = json.loads(results.read_text())
    assert figures["board_options"] == ["--session-open-files", "100"]
    assert 0 < figures["open-files"]["opened"] < 100
    assert figures["detached-ended"] == {"survivor_alive_after_s": None}
    assert b"open-files" in finished.stdout and b"detached-ended" in finished.stdout
