"""Smoke tests of the benchmark and reliability tools: each runs end to end, short, and writes its JSON.

No timing is checked: only that each figure is there and has the shape it should. The attacks themselves are
asserted in tests/integration and tests/faults.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

PROJECT = Path(__file__).resolve().parents[2]


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def run_tool(path: str, args: List[str], directory: Path, timeout: float = 300) -> Dict[str, Any]:
    """Run ``path`` with ``args``, expect exit 0 and a report; the JSON it wrote."""
    out = directory / "out.json"
    command = [sys.executable, str(PROJECT / path), *args, "--json", str(out), "--log-level", "WARNING"]
    result = subprocess.run(command, cwd=str(directory), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["machine"]["cores"] > 0 and results["passed"] is True
    assert results["command"].startswith("python " + path) and "every check passed: yes" in result.stdout
    return results


def check_dataplane(results: Dict[str, Any]) -> None:
    sessions, calls, transfers = (results["scenarios"][name] for name in ("sessions", "calls", "transfers"))
    assert set(sessions) >= {"farm", "tls", "before"}
    for side in ("farm", "tls", "before"):
        assert sessions[side]["open_ms"]["rounds"] == 4
        assert 0 < sessions[side]["open_ms"]["median"] <= sessions[side]["open_close_ms"]["median"] * 1.5
    for name in ("raw_pingpong", "farm_noop_signature", "farm_noop_no_signature", "farm_ping", "tls_noop_signature"):
        assert positive(calls[name]["median"]) and calls[name]["min"] <= calls[name]["p99"], name
    for name in ("raw_upload", "farm_upload", "farm_copyfrom", "raw_download", "farm_download", "before_download"):
        assert positive(transfers[name]["median"]), name
    for name in ("upload_vs_raw", "download_vs_raw", "farm_noop_signature_vs_raw_pingpong"):
        assert positive(results["ratios"][name]["ratio"]) and isinstance(results["ratios"][name]["pass"], bool)
    figures = [row["figure"] for row in results["headline"]]
    assert "no-op call round trip" in figures and "open + close: code before" in figures


def check_tracker(results: Dict[str, Any]) -> None:
    tvm = results["machine"]["tvm"] is not None
    assert tvm == (not results["tvm_skipped"]), results["tvm_skipped"]
    request = results["scenarios"]["requests"]
    sides = ["farm", "before"] + (["tvm"] if tvm else [])
    for name in sides + [side + "_kept" for side in sides]:
        assert request[name]["rounds"] == 3 and positive(request[name]["first"]), name
        assert positive(request[name]["free_again_ms"]["median"]), name
    for side in sides:
        assert request[side + "_fresh"]["rounds"] == 1 and positive(request[side + "_fresh"]["median"]), side
    for phase in ("plain", "progress"):
        load = results["scenarios"]["concurrency"][phase]
        assert load["checks"]["pass"] and load["cycles_in_window"] > 0, load["checks"]
    assert load["waiting_messages"] > 0 and load["order"]["arrival_constraints"] > 0
    summary = results["scenarios"]["summary"]
    assert summary["boards"] == 50 and positive(summary["farm"]["median"])
    assert ("summary_tvm_over_farm" in results["ratios"]) == tvm
    assert isinstance(results["ratios"]["request_before_over_farm"]["ratio"], float)


TOOLS: Dict[str, Any] = {
    "tracker": ("benchmarks/bench_tracker.py", ["--quick", "--before", str(PROJECT)], check_tracker),
    "dataplane": ("benchmarks/bench_dataplane.py", ["--quick", "--tls", "--before", str(PROJECT)], check_dataplane),
}


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_tool_runs_and_writes_its_figures(name: str, tmp_path: Path) -> None:
    path, args, check = TOOLS[name]
    check_figures: Callable[[Dict[str, Any]], None] = check
    check_figures(run_tool(path, args, tmp_path))
