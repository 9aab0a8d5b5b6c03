"""Smoke test of benchmarks/bench_tracker.py: it runs end to end and writes its JSON (no timing checks).

The TVM side runs when ``import tvm`` works here, and is skipped by the script (with the reason in
its JSON) when it does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT / "benchmarks" / "bench_tracker.py"


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_tracker_benchmark_script_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--repeats",
        "3",
        "--cold-repeats",
        "1",
        "--clients",
        "10",
        "--boards",
        "2",
        "--duration",
        "2",
        "--fake-boards",
        "50",
        "--summary-repeats",
        "3",
        "--json",
        str(out),
        "--log-level",
        "WARNING",
    ]
    result = subprocess.run(command, cwd=str(tmp_path), capture_output=True, timeout=240)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-4000:]
    assert b"(a) request to ready session" in result.stdout

    results = json.loads(out.read_text())
    assert set(results) >= {"machine", "config", "request", "concurrency", "summary", "ratios", "tvm_skipped"}
    assert results["machine"]["cores"] > 0
    tvm = results["machine"]["tvm"] is not None
    assert tvm == (not results["tvm_skipped"]), results["tvm_skipped"]

    sides = ["farm", "tvm"] if tvm else ["farm"]
    for side in sides + [side + "_kept" for side in sides]:
        entry = results["request"][side]
        for field in ("first_ms", "median_ms", "min_ms", "max_ms", "board_free_again_median_ms"):
            assert positive(entry[field]), (side, field, entry[field])
        assert entry["repeats"] == 3
    for side in sides:
        assert positive(results["request"][side]["fresh_process_median_ms"]), results["request"][side]

    load = results["concurrency"]
    assert load["clients"] == 10 and load["boards"] == 2
    assert load["pass"] is True
    for phase in ("plain", "progress"):
        entry = load[phase]
        assert positive(entry["cycles_per_s"]) and positive(entry["cycles_in_window"]), (phase, entry)
        checks = entry["checks"]
        assert (checks["final_total"], checks["final_free"], checks["final_pending"]) == (2, 2, 0), checks
        assert checks["boards_all_free"] and checks["every_request_logged"] and checks["order_ok"], checks
        assert checks["error_count"] == 0 and checks["stuck_clients"] == [], checks
    order = load["progress"]["order"]
    assert order["priority_violations"] == 0 and order["arrival_order_violations"] == 0, order
    assert positive(order["priority_constraints"] + order["arrival_constraints"]), order

    summary = results["summary"]
    assert summary["boards"] == 50
    for name in ["farm"] + (["tvm", "farm_client_tvm_tracker"] if tvm else []):
        for field in ("median_ms", "min_ms", "max_ms"):
            assert positive(summary[name][field]), (name, field, summary[name])
    for which in sides:
        assert positive(summary[which + "_tracker"]["summary_bytes"]), summary

    for name, entry in results["ratios"].items():
        assert positive(entry["ratio"]), (name, entry)
    if tvm:
        expected = {
            "request_median_tvm_over_farm",
            "request_first_tvm_over_farm",
            "request_kept_connection_median_tvm_over_farm",
            "request_fresh_process_tvm_over_farm",
            "summary_median_tvm_over_farm",
            "summary_median_tvm_tracker_farm_client_over_farm",
        }
        assert expected <= set(results["ratios"])
