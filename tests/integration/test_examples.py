"""The example suite, run as the README says: on the embedded default farm and on the emulated one, with xdist.

Each run is a separate ``pytest`` process from the project's root; its junit
XML says which tests ran on which key. The emulated run needs the emulators
(``farm emulators install``; the project's CI installs them first) and fails,
saying so, without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import require_emulators

#: Each test runs code under qemu-user or a whole example suite: seconds to minutes.
pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
#: Tests of examples/test_kernels.py and examples/test_benchmarks.py per key.
TESTS_PER_KEY = 15


def run_examples(tmp_path: Path, *args: str) -> Tuple[subprocess.CompletedProcess, List[Dict[str, str]]]:
    """``pytest examples -n 4 ARGS`` from the project root; its result and, per test, its outcome and properties."""
    junit = tmp_path / "junit.xml"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("REMOTEDEV_", "TVM_TRACKER"))}
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", "examples", "-n", "4", "-p", "no:cacheprovider",
               "--junitxml", str(junit), "-rs", *args]  # fmt: skip
    result = subprocess.run(command, cwd=str(PROJECT), env=env, capture_output=True, text=True, timeout=600)
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        record = {prop.get("name", ""): prop.get("value", "") for prop in case.iter("property")}
        record["name"] = case.get("name", "")
        failed = [tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None]
        record["outcome"] = failed[0] if failed else "passed"
        cases.append(record)
    return result, cases


def test_main_job_on_the_default_farm(tmp_path: Path) -> None:
    result, cases = run_examples(tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert Counter(case["outcome"] for case in cases) == {"passed": TESTS_PER_KEY}
    assert {case["device_key"] for case in cases} == {"local"}
    assert "remotedev: boards by key" in result.stdout
    assert "remotedev: device benchmarks of key local" in result.stdout
    assert "%d passed" % TESTS_PER_KEY in result.stdout


def test_main_job_on_the_emulated_farm(tmp_path: Path) -> None:
    require_emulators("the emulated farm's boards")
    result, cases = run_examples(tmp_path, "--farm", "emulated")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert Counter(case["outcome"] for case in cases) == {"passed": 3 * TESTS_PER_KEY}
    keys = Counter(case["device_key"] for case in cases)
    assert keys == {key: TESTS_PER_KEY for key in ("local", "aarch64", "armhf")}
    for case in cases:
        assert case["name"].split("[")[1].startswith(case["device_key"]), case  # the id says the key it ran on
    assert {case["device_id"] for case in cases if case["device_key"] == "armhf"} == {"armhf-0"}
    summary = result.stdout[result.stdout.index("remotedev: boards by key") :]
    assert all("\n%s " % key in summary for key in ("local", "aarch64", "armhf")), summary
    benchmarks = [case for case in cases if case.get("device_benchmark")]
    assert Counter(case["device_key"] for case in benchmarks) == {key: 3 for key in ("local", "aarch64", "armhf")}
    assert all("remotedev: device benchmarks of key %s" % key in result.stdout for key in ("aarch64", "armhf"))
    for case in benchmarks:  # a figure taken under qemu says so
        emulated = json.loads(case["device_benchmark"])["emulated"]
        assert (emulated or "").startswith("qemu-") == (case["device_key"] != "local"), case


def test_main_job_on_the_native_farm(tmp_path: Path) -> None:
    """The example suite on native boards (no Python on the board) of every architecture: this machine's, and
    aarch64 and armhf under qemu-user."""
    require_emulators("the native farm's emulated boards")
    result, cases = run_examples(tmp_path, "--farm", "native")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    keys = Counter(case["device_key"] for case in cases)
    assert keys == {key: TESTS_PER_KEY for key in ("native", "native-aarch64", "native-armhf")}
    assert Counter(case["outcome"] for case in cases) == {"passed": 3 * TESTS_PER_KEY}
