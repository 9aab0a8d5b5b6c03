"""Smoke test of benchmarks/bench_farm.py: ``--quick`` runs end to end and writes its JSON (no timing checks).

It needs the emulators (``farm emulators install``), as the emulated-board tests do: without them it fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT / "benchmarks" / "bench_farm.py"

KEYS = ("local", "aarch64", "armhf")
KERNEL_SOURCES = ["conv2d_relu.c", "matmul.c", "reduce.c", "vadd.c"]
VARIANTS = {"local": ("local",), "aarch64": ("aarch64",), "armhf": ("armhf",), "emulated": KEYS, "default": ("local",)}


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def check_spread(row: Dict[str, Any], count: int, where: object) -> None:
    """A median (min-max) of ``count`` positive values, in order."""
    assert len(row["values"]) == count, (where, row)
    assert all(positive(value) for value in row["values"]), (where, row)
    assert row["min"] <= row["median"] <= row["max"], (where, row)


def check_bringup(bringup: Dict[str, Any]) -> None:
    inventories = bringup["inventories"]
    assert (inventories["emulated"]["boards"], inventories["emulated"]["keys"]) == (4, sorted(KEYS))
    assert (inventories["local"]["boards"], inventories["local"]["keys"]) == (2, ["local"])
    for name, entry in inventories.items():
        check_spread(entry["start_s"], 1, name)
        check_spread(entry["stop_s"], 1, name)
    check_spread(bringup["ratio_emulated_over_local"], 1, "ratio")
    probes = bringup["probes"]
    assert positive(probes["pack_server_s"])
    assert set(probes["pythons"]) == {"host", "aarch64", "armhf"}
    for name, row in probes["pythons"].items():
        assert set(row) == {"start_s", "import_server_s", "import_server_cached_s"}, name
        assert all(positive(value) for value in row.values()), (name, row)


def check_suite(suite: Dict[str, Any]) -> None:
    assert suite["all_passed"] is True
    assert suite["warmup_runs"] == []  # --quick: no warm-up
    assert sorted(run["variant"] for run in suite["runs"]) == sorted(VARIANTS)  # one run of each
    for run in suite["runs"]:
        keys = VARIANTS[run["variant"]]
        where = (run["variant"], run["run"], run.get("output_tail"))
        assert run["passed"] is True and run["returncode"] == 0, where
        assert run["tests"] == 12 * len(keys) and run["outcomes"] == {"passed": 12 * len(keys)}, where
        assert sorted(run["keys"]) == sorted(keys), where
        assert positive(run["wall_s"]), where
        for key, entry in run["keys"].items():
            assert (entry["tests"], entry["passed"]) == (12, 12), (where, key)
            assert positive(entry["call_s"]) and positive(entry["held_s"]) and entry["queue_wait_s"] >= 0, (where, key)
            assert entry["call_s"] < entry["held_s"], (where, key)  # each test's call runs inside its board's hold
    for name, entry in suite["variants"].items():
        assert entry["runs"] == 1 and entry["tests"] == 12 * len(VARIANTS[name]), name
        check_spread(entry["wall_s"], 1, name)
        assert sorted(entry["keys"]) == sorted(VARIANTS[name]), name
    assert set(suite["ratios"]) == {"aarch64_over_local", "armhf_over_local"}
    for name, row in suite["ratios"].items():
        for kind in ("call", "held", "call_in_whole_suite"):
            check_spread(row[kind], 1, (name, kind))
        assert len(row["wall_extra_s"]["values"]) == 1, name  # a difference: may be negative in one quick run


def check_cache(cache: Dict[str, Any]) -> None:
    assert [Path(source).name for source in cache["sources"]] == KERNEL_SOURCES
    assert set(cache["arches"]) == {"x86_64", "aarch64", "armhf"}
    for arch, row in cache["arches"].items():
        assert row["compiler"] and row["compiler_version"], arch
        for name in ("miss_s", "hit_s", "miss_over_hit"):
            check_spread(row[name], 2, (arch, name))


def run_quick(directory: Path) -> Tuple[str, Dict[str, Any]]:
    """``bench_farm.py --quick --json`` in ``directory``, time-bounded: its report and its JSON results."""
    out = directory / "bench.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--json", str(out), "--log-level", "WARNING"]
    done = subprocess.run(command, cwd=str(directory), capture_output=True, timeout=280)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    return done.stdout.decode(), json.loads(out.read_text())


def test_farm_benchmark_script_runs_and_writes_json(tmp_path: Path) -> None:
    report, results = run_quick(tmp_path)
    assert "## Farm: bring-up, example suite, artifact cache" in report and "aarch64 / local" in report
    assert set(results) >= {"machine", "config", "bringup", "suite", "cache", "load_average", "elapsed_s"}
    assert results["machine"]["cores"] > 0 and results["machine"]["farm_sources_sha256"]
    assert set(results["machine"]["emulated_pythons"]) == {"aarch64", "armhf"}
    config = results["config"]
    assert config["quick"] is True
    repeats = [config[name] for name in ("bringup_repeats", "suite_repeats", "warmup", "cache_repeats")]
    assert repeats == [1, 1, 0, 2], config
    check_bringup(results["bringup"])
    check_suite(results["suite"])
    check_cache(results["cache"])
    assert len(results["load_average"]["before"]) == len(results["load_average"]["after"]) == 3
