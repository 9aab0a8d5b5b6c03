"""Unit tests of saved benchmark runs: the file format, names, the latest run, atomic replacement and the errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

from farm.client.timing import BenchmarkResult
from farm.ops.benchruns import (
    DEFAULT_STORAGE,
    FORMAT,
    BenchRunError,
    Entry,
    find_run,
    format_run,
    format_seconds,
    git_commit,
    load_run,
    read_run,
    save_run,
)


def result(samples: List[float], key: str = "local", name: str = "local-0", noise: Any = ()) -> Dict[str, Any]:
    """A BenchmarkResult.to_dict() with the fields the runs read."""
    return {
        "results": samples,
        "median": sorted(samples)[len(samples) // 2],
        "number": 10,
        "repeat": len(samples),
        "board": {"key": key, "name": name, "address": "127.0.0.1:9090"},
        "noise": list(noise),
        "function": "vadd",
    }


def entries() -> List[Entry]:
    return [
        Entry.from_result("t.py::test_add", result([1e-3, 1.1e-3, 0.9e-3])),
        Entry.from_result("t.py::test_add", result([2e-3, 2e-3]), key="aarch64", board="qemu-0"),
    ]


def test_a_saved_run_reads_back_whole(tmp_path: Path) -> None:
    path = save_run(tmp_path, "main", entries(), checkout=tmp_path)
    assert path == tmp_path / "main.json"
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["name"] == "main"
    assert set(data) == {"format", "name", "created", "commit", "dirty", "machine", "results"}
    assert data["results"][1] == {
        "test": "t.py::test_add",
        "key": "aarch64",
        "board": "qemu-0",
        "result": result([2e-3, 2e-3]),
    }
    run = load_run(tmp_path, "main")
    assert run.path == path and run.entries == entries()
    assert set(run.by_ident()) == {("t.py::test_add", "local"), ("t.py::test_add", "aarch64")}
    assert run.entries[0].samples == [1e-3, 1.1e-3, 0.9e-3]


def test_a_benchmark_result_is_saved_whole_and_reads_back_as_one(tmp_path: Path) -> None:
    state = {"governor": "powersave", "load_average": [0.1, 0.1, 0.1], "cpu_count": 2}
    board = {"key": "rasp4", "name": "rasp4-1", "address": "10.0.0.7:9090"}
    measured = BenchmarkResult([2e-3, 2.1e-3, 1.9e-3], function="vadd_f32", board=board, number=50, state=state)
    save_run(tmp_path, "main", [Entry.from_result("t.py::test_vadd", measured)])
    (entry,) = load_run(tmp_path, "main").entries
    assert (entry.test, entry.key, entry.board) == ("t.py::test_vadd", "rasp4", "rasp4-1")
    again = BenchmarkResult.from_dict(entry.result)
    assert again.to_dict() == measured.to_dict() and again.noisy and entry.samples == list(measured.results)


def test_the_key_and_board_come_from_the_result() -> None:
    entry = Entry.from_result("t.py::test_x", result([1.0], key="rasp4", name="rasp4-2"))
    assert (entry.key, entry.board) == ("rasp4", "rasp4-2")


def test_saving_a_name_again_replaces_the_run_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    save_run(tmp_path, "nightly", entries())
    save_run(tmp_path, "nightly", entries()[:1])
    assert [path.name for path in tmp_path.iterdir()] == ["nightly.json"]
    assert len(load_run(tmp_path, "nightly").entries) == 1


def test_the_commit_is_recorded_in_a_git_checkout_and_null_outside(tmp_path: Path) -> None:
    outside = save_run(tmp_path / "runs", "a", [], checkout=tmp_path)
    assert json.loads(outside.read_text())["commit"] is None
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(checkout)]
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    (checkout / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "f"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert git_commit(checkout) == (head, False)
    (checkout / "f").write_text("2")
    run = load_run(tmp_path / "runs", save_run(tmp_path / "runs", "b", [], checkout=checkout).name[:-5])
    assert (run.commit, run.dirty) == (head, True)


def test_without_a_name_the_latest_run_is_found(tmp_path: Path) -> None:
    older, newer = save_run(tmp_path, "zeta", []), save_run(tmp_path, "alpha", [])
    os.utime(older, ns=(10**18, 10**18))
    os.utime(newer, ns=(2 * 10**18, 2 * 10**18))
    assert find_run(tmp_path) == newer
    assert load_run(tmp_path).name == "alpha"


def test_a_run_is_found_by_name_by_file_name_or_by_path(tmp_path: Path) -> None:
    path = save_run(tmp_path / "store", "main", [])
    assert find_run(tmp_path / "store", "main") == path
    assert find_run(tmp_path / "store", "main.json") == path
    assert find_run(tmp_path / "elsewhere", str(path)) == path


def test_a_missing_run_names_the_storage_and_the_runs_there(tmp_path: Path) -> None:
    save_run(tmp_path, "main", [])
    with pytest.raises(BenchRunError, match=r"no saved benchmark run 'feature' \(in .*: main\)"):
        load_run(tmp_path, "feature")
    with pytest.raises(BenchRunError, match="no saved benchmark runs"):
        load_run(tmp_path / "empty")


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a saved benchmark run"),
        ('{"format": 99, "name": "x"}', "format 99 of saved runs is not supported"),
        ('{"format": 1, "name": "x", "created": "t"}', "missing or malformed field"),
        ('{"format": 1, "name": "x", "created": "t", "results": [{"test": "t"}]}', "missing or malformed field"),
        (
            '{"format": 1, "name": "x", "created": "t", "results": [{"test": "t", "key": "k", "board": "b", '
            '"result": {"results": ["fast"]}}]}',
            "malformed field (the results of t on k are not a list of seconds)",
        ),
    ],
)
def test_a_broken_file_is_a_clear_error_naming_it(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(BenchRunError) as info:
        read_run(path)
    assert str(info.value).startswith(str(path)) and problem in str(info.value)


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../up", "a b"])
def test_a_name_that_cannot_be_a_file_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BenchRunError, match="cannot name a saved run"):
        save_run(tmp_path, name, [])
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_storage_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(BenchRunError, match="cannot save the run"):
        save_run(tmp_path / "file", "main", [])


def test_a_result_that_is_not_json_is_a_clear_error_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(BenchRunError, match="cannot save the run: Object of type object is not JSON serializable"):
        save_run(tmp_path, "main", [Entry("t", "k", "b", {"results": [1.0], "extra": object()})])
    assert list(tmp_path.iterdir()) == []


def test_the_default_storage_is_relative_to_the_current_directory(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    assert save_run(None, "main", []) == Path(DEFAULT_STORAGE) / "main.json"
    assert (tmp_path / ".benchmarks" / "device" / "main.json").is_file()


def test_show_lists_median_spread_repeats_and_noise(tmp_path: Path) -> None:
    noisy = result([1e-3] * 4 + [2e-3], noise=["the CPU governor is 'powersave', not 'performance'"])
    save_run(tmp_path, "main", [Entry.from_result("t.py::test_a", noisy), *entries()[:1]])
    text = format_run(load_run(tmp_path, "main"))
    lines = text.splitlines()
    assert lines[0].startswith("run main: ") and lines[1].split() == [
        "test", "key", "board", "median", "spread", "repeats", "noisy"]  # fmt: skip
    assert lines[3].split()[:7] == ["t.py::test_a", "local", "local-0", "1", "ms", "33.3%", "5"]
    assert lines[3].endswith("yes: the CPU governor is 'powersave', not 'performance'")
    assert lines[4].split()[3:7] == ["1", "ms", "8.2%", "3"] and lines[4].endswith("no")


@pytest.mark.parametrize(
    "seconds, text", [(None, "-"), (2.5, "2.5 s"), (1.234e-3, "1.23 ms"), (4.2e-6, "4.2 us"), (3e-9, "3 ns")]
)
def test_seconds_are_shown_with_a_unit(seconds: Any, text: str) -> None:
    assert format_seconds(seconds) == text
