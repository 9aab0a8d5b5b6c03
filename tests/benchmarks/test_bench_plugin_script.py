"""Smoke test of benchmarks/bench_plugin.py: ``--quick`` runs end to end and writes its JSON (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT / "benchmarks" / "bench_plugin.py"

RUN_FIELDS = ("wall_s", "cpu_s")
HOLD_FIELDS = ("hold_span_s", "busy_s", "lead_in_s", "tail_s")
PHASES = ("pytest_up", "farm_start", "workers_up", "to_first_test", "tests", "workers_down", "finish")


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_plugin_benchmark_script_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--log-level", "WARNING"]
    result = subprocess.run(command, cwd=str(tmp_path), capture_output=True, timeout=240)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-4000:]
    assert b"## Pytest plugin" in result.stdout
    assert b"hold phase / ideal" in result.stdout

    results = json.loads(out.read_text())
    assert set(results) >= {"machine", "config", "ready", "suite"}
    assert results["machine"]["cores"] > 0 and results["machine"]["farm_sources_sha256"]
    config = results["config"]
    assert config["quick"] is True
    tests, hold, boards = config["tests"], config["hold_s"], config["boards"]
    assert (tests, hold, config["workers"], config["repeats"]) == (8, 0.2, 2, 1)

    # (1) the default farm: two boards of key 'local', one behind the proxy
    ready = results["ready"]
    assert (ready["boards"], ready["proxied_boards"], ready["proxy"]) == (2, 1, True)
    assert len(ready["ready_s"]) == len(ready["stop_s"]) == 2
    for name in ("ready", "stop"):
        for field in ("first_s", "median_s", "p90_s", "min_s", "max_s"):
            assert positive(ready[name][field]), (name, field, ready[name])
        assert ready[name]["min_s"] <= ready[name]["median_s"] <= ready[name]["max_s"], ready[name]
    assert isinstance(ready["pass"], bool) and ready["target_s"] == 1.5
    idle = ready["idle_session"]
    assert positive(idle["seconds"]) and len(idle["boards"]) == 2, idle
    assert sorted(board["through_proxy"] for board in idle["boards"]) == [False, True], idle
    for board in idle["boards"]:
        assert 0 <= board["cpu_share"] <= 2.5 and board["cpu_s"] >= 0, board  # a share of one core (two here at most)

    # (2) every inner run passed every test, and its figures are sane
    suite = results["suite"]
    assert suite["all_passed"] is True
    assert suite["hold_overlaps"] == 0
    assert positive(suite["ideal_hold_span_s"]) and positive(suite["startup_baseline_s"])
    variants = {run["variant"] for run in suite["runs"]}
    assert {"hold", "hold0", "xdist_only"} <= variants
    minimal = {"hold_minimal", "hold0_minimal", "xdist_only_minimal"}
    if suite["other_plugins"]:  # other pytest plugins installed: also measured without them
        assert minimal <= variants, variants
    else:
        assert not minimal & variants, variants
    assert len(suite["runs"]) == len(variants) and suite["warmup_runs"] == []  # --quick: one run each, no warm-up
    for run in suite["runs"]:
        where = (run["variant"], run["run"])
        assert run["returncode"] == 0, (where, run.get("output_tail"))
        assert (run["tests"], run["passed"], run["failed"], run["errors"]) == (tests, tests, 0, 0), where
        for field in RUN_FIELDS:
            assert positive(run[field]), (where, field, run[field])
        assert set(run["phases"]) == set(PHASES), (where, run["phases"])
        assert all(isinstance(value, float) for value in run["phases"].values()), (where, run["phases"])
        if run["variant"].startswith("xdist_only"):
            assert run["holds"] == 0, where  # no device fixture: nothing held
            continue
        assert positive(run["phases"]["farm_start"]), (where, run["phases"])  # the controller started a farm
        assert run["holds"] == tests, where  # one board per test
        assert 1 <= run["boards_used"] <= boards, where
        for field in HOLD_FIELDS:
            assert positive(run[field]), (where, field, run[field])
        assert run["hold_span_s"] < run["wall_s"], where
        assert 0 < run["utilisation"] <= 1.05, (where, run["utilisation"])
        assert 0 <= run["queue_wait_max_s"] <= run["queue_wait_total_s"] + 1e-9, where
        if run["variant"].startswith("hold") and not run["variant"].startswith("hold0"):
            assert run["busy_s"] >= 0.99 * tests * hold, where  # each test held its board at least the hold
    for name in ("hold", "hold0", "xdist_only"):
        assert suite["variants"][name]["runs"] == 1
        assert positive(suite["variants"][name]["wall_s"]["median"]), name
    ratios = suite["ratios"]
    assert positive(ratios["hold_span_over_ideal"]["ratio"]), ratios
    assert isinstance(ratios["wall_minus_startup_over_ideal"]["ratio"], float), ratios  # may be < 0 in one quick run
    assert (ratios["wall_minus_startup_over_ideal_without_other_plugins"] is not None) == bool(suite["other_plugins"])
    for entry in ratios.values():
        if entry is not None:
            assert entry["target"] == 1.2 and isinstance(entry["pass"], bool), entry
