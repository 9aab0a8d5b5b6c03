"""``farm bench show|compare`` run as a command on runs the test saves: the tables and the exit statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from conftest import python_env
from farm.ops.benchruns import Entry, save_run


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "farm", "bench", *args]
    return subprocess.run(command, cwd=cwd, env=python_env(), capture_output=True, text=True, timeout=120)


def entries(scale: float, tests: List[str]) -> List[Entry]:
    samples = [scale * (1 + 0.01 * (i % 3)) for i in range(10)]
    board = {"key": "local", "name": "local-0", "address": "127.0.0.1:9090"}
    return [Entry.from_result(test, {"results": samples, "board": board, "noise": []}) for test in tests]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """main and a 3x slower slow; ``.benchmarks/device`` under the returned directory."""
    storage = tmp_path / ".benchmarks" / "device"
    save_run(storage, "main", entries(1e-3, ["t.py::test_add", "t.py::test_gone"]))
    save_run(storage, "slow", entries(3e-3, ["t.py::test_add", "t.py::test_new"]))
    return tmp_path


def test_compare_prints_the_table_and_fails_on_a_regression(runs: Path) -> None:
    done = bench("compare", "main", "slow", "--fail", "median:10%", cwd=runs)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("baseline main (") and "candidate slow (" in lines[0]
    rows = {line.split()[0]: line.split()[-1] for line in lines[3:6]}
    assert lines[6].startswith("t.py::test_add [local]: median 3.03 ms against 1.01 ms in the baseline (+200.0%")
    assert rows == {"t.py::test_add": "REGRESSION", "t.py::test_new": "new", "t.py::test_gone": "gone"}
    assert lines[-1] == "1 regression(s) beyond median:10%"


def test_compare_without_fail_or_below_the_threshold_exits_zero(runs: Path) -> None:
    assert bench("compare", "main", "slow", cwd=runs).returncode == 0
    assert bench("compare", "main", "slow", "--fail", "median:500%", cwd=runs).returncode == 0
    assert bench("compare", "slow", "main", "--fail", "median:10%", cwd=runs).stdout.count("improvement") == 1


def test_compare_reads_another_storage_and_files_by_path(runs: Path, tmp_path: Path) -> None:
    storage = runs / ".benchmarks" / "device"
    done = bench("compare", "main", str(storage / "slow.json"), "--storage", str(storage), cwd=tmp_path.parent)
    assert done.returncode == 0 and "REGRESSION" in done.stdout


def test_show_prints_a_run_and_without_a_name_the_latest(runs: Path) -> None:
    done = bench("show", "main", cwd=runs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("run main: ")
    assert [line.split()[0] for line in done.stdout.splitlines()[3:]] == ["t.py::test_add", "t.py::test_gone"]
    assert "1 ms" in done.stdout and "10 " in done.stdout
    assert bench("show", cwd=runs).stdout.startswith("run slow: ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["compare", "main", "nothing"], "no saved benchmark run 'nothing'"),
        (["compare", "main", "slow", "--fail", "median:ten"], "argument --fail: 'median:ten' is not a benchmark"),
        (["show", "broken"], "broken.json: not JSON"),
        (["compare", "main"], "the following arguments are required: B"),
    ],
)
def test_bad_arguments_and_files_exit_two_with_the_reason(runs: Path, args: List[str], message: str) -> None:
    (runs / ".benchmarks" / "device" / "broken.json").write_text("{")
    done = bench(*args, cwd=runs)
    assert done.returncode == 2 and message in done.stderr and done.stdout == ""
