"""Smoke test of benchmarks/bench_dataplane.py: it runs end to end and writes its JSON (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT / "benchmarks" / "bench_dataplane.py"

CALL_VARIANTS = ("raw_pingpong", "farm_ping", "farm_noop_signature", "farm_noop_no_signature")
TRANSFERS = ("raw_upload", "farm_upload", "farm_copyfrom", "raw_download", "farm_download")
RATIOS = (
    "upload_vs_raw",
    "download_vs_raw",
    "farm_noop_signature_vs_raw_pingpong",
    "farm_noop_no_signature_vs_raw_pingpong",
)


def test_benchmark_script_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--size-mib",
        "1",
        "--calls",
        "200",
        "--repeats",
        "1",
        "--json",
        str(out),
        "--log-level",
        "WARNING",
    ]
    result = subprocess.run(command, cwd=str(tmp_path), capture_output=True, timeout=240)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-4000:]
    assert b"upload / raw" in result.stdout

    results = json.loads(out.read_text())
    assert set(results) >= {"machine", "config", "calls", "transfers", "ratios"}
    assert results["config"]["bytes"] == 1 << 20
    assert results["machine"]["cores"] > 0
    for name in CALL_VARIANTS:
        for field in ("mean_us", "median_us", "min_us"):
            value = results["calls"][name][field]
            assert isinstance(value, float) and value > 0, (name, field, value)
    for name in TRANSFERS:
        for field in ("best_mbps", "median_mbps"):
            value = results["transfers"][name][field]
            assert isinstance(value, float) and value > 0, (name, field, value)
    for name in RATIOS:
        entry = results["ratios"][name]
        assert entry["ratio"] > 0 and entry["target"] > 0, (name, entry)
        assert isinstance(entry["pass"], bool)
