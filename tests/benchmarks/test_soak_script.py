"""Smoke test of reliability/soak.py: one quick soak (about 20 s) runs end to end; its report's shape and checks.

No timing is checked, only that the farm came through whole: no board lost, no unexpected error, no process left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "reliability" / "soak.py"
KEYS = {"soak-a": 2, "soak-b": 2, "soak-c": 2}


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """The JSON results of ``soak.py --quick``, once its exit status and printed report are checked."""
    where = tmp_path_factory.mktemp("soak")
    results = where / "soak.json"
    argv = [sys.executable, str(SCRIPT), "--quick", "--log-level", "WARNING", "--json", str(results)]
    finished = subprocess.run(argv, cwd=str(where), capture_output=True, timeout=120)
    assert finished.returncode == 0, finished.stderr.decode(errors="replace")[-4000:]
    assert b"### Soak: 6 clients" in finished.stdout and b"Checks: all passed" in finished.stdout
    return json.loads(results.read_text())


def test_report_has_every_section(soak: Dict[str, Any]) -> None:
    sections = {"machine", "config", "served", "errors", "latency", "chaos", "boards", "tracker_memory", "clients"}
    assert set(soak) >= sections | {"processes_left", "daemon_logs", "load_average", "checks", "pass", "elapsed_s"}
    assert soak["config"]["quick"] is True and soak["config"]["clients"] == 6
    assert soak["pass"] is True and all(soak["checks"].values()), soak["checks"]


def test_requests_were_served_on_every_key(soak: Dict[str, Any]) -> None:
    served = soak["served"]
    assert served["served"] > 0 and served["cycles_completed"] > 0, served
    assert set(served["served_per_key"]) == set(KEYS) and sum(served["served_per_key"].values()) == served["served"]
    latency = soak["latency"]
    assert latency["overall"]["count"] == served["served"]
    assert sum(row["count"] for row in latency["by_priority"].values()) == served["served"]
    assert latency["overall"]["p50_ms"] <= latency["overall"]["p99_ms"] <= latency["overall"]["max_ms"]


def test_errors_are_all_expected_and_accounted_for(soak: Dict[str, Any]) -> None:
    errors = soak["errors"]
    assert errors["unexpected"] == 0, errors["by_kind"]
    assert errors["expected"] == sum(entry["count"] for entry in errors["by_kind"].values())
    assert soak["served"]["requests"] == soak["served"]["cycles_completed"] + errors["expected"]
    assert soak["clients"] == {"started": 6, "reported": 6}


def test_farm_comes_through_whole(soak: Dict[str, Any]) -> None:
    boards, chaos = soak["boards"], soak["chaos"]
    assert boards["lost"] == 0 and boards["settled"] is True, boards
    assert boards["expected"] == boards["registered"] == KEYS
    whole = {"total": 2, "free": 2, "pending": 0, "registered": 2}
    assert boards["final_state"] == {key: whole for key in KEYS}, boards["final_state"]
    assert chaos["kills"] >= 1 and chaos["restarts"] == chaos["kills"] and chaos["unplanned_restarts"] == 0, chaos
    assert soak["processes_left"] == [], soak["processes_left"]
    memory = soak["tracker_memory"]
    assert memory["samples"] >= 2 and 0 < memory["rss_kb_start"] <= memory["rss_kb_peak"], memory
