"""Smoke test of benchmarks/bench_tls.py: it runs end to end and writes its JSON (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT / "benchmarks" / "bench_tls.py"


def test_tls_benchmark_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "--size-mib", "1", "--calls", "100", "--sessions", "4", "--batches", "2",
               "--repeats", "1", "--json", str(out), "--log-level", "WARNING"]  # fmt: skip
    result = subprocess.run(command, cwd=str(tmp_path), capture_output=True, timeout=240)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-4000:]
    assert b"TLS / plain" in result.stdout
    results = json.loads(out.read_text())
    for measure, field in (("sessions", "median_ms"), ("calls", "median_us"), ("upload", "median_mbps"),
                           ("download", "median_mbps")):  # fmt: skip
        for side in ("plain", "tls"):
            value = results["measured"][measure][side][field]
            assert isinstance(value, float) and value > 0, (measure, side, value)
    assert set(results["ratios"]) == {"session_time", "call_time", "upload_rate", "download_rate"}
    assert all(ratio > 0 for ratio in results["ratios"].values())
