"""The records of ``device_benchmark`` figures: their junit property, their saved form and the table per key."""

from __future__ import annotations

import json
from typing import List

from farm.client.timing import BenchmarkResult
from farm.ops.benchruns import Entry
from pytest_remotedev.benchmarking import Record
from pytest_remotedev.benchrun import key_tables

STATE = {"machine": "x86_64", "cpu": 0, "cpu_count": 2, "governor": "powersave", "load_average": [0.1, 0.1, 0.1]}


def record(test: str, name: str, key: str, results: List[float], state: object = None) -> Record:
    result = BenchmarkResult(results, function=name, board={"key": key, "name": key + "-0"}, state=state)  # type: ignore[arg-type]
    return Record(test, name, key, key + "-0", result.to_dict())


def test_the_property_is_compact_json_of_what_a_reader_needs() -> None:
    figure = record("t.py::test_a[alpha]", "vadd", "alpha", [2e-3, 1e-3, 3e-3], STATE)
    text = figure.property_value()
    assert text == json.dumps(json.loads(text), separators=(",", ":"))  # no padding around separators
    assert json.loads(text) == {
        "test": "t.py::test_a[alpha]",
        "name": "vadd",
        "key": "alpha",
        "board": "alpha-0",
        "median": 2e-3,
        "std": figure.result["std"],
        "noisy": True,
        "noise": figure.noise,
        "emulated": None,
        "samples": [2e-3, 1e-3, 3e-3],
    }
    assert any("governor" in reason for reason in figure.noise)


def test_a_record_survives_the_report_and_the_saved_run() -> None:
    figure = record("t.py::test_a", "short spin", "alpha", [1e-6, 2e-6, 3e-6, 4e-6, 5e-6])
    assert Record.from_dict(json.loads(json.dumps(figure.to_dict()))) == figure
    entry = figure.entry()
    assert entry == Entry("t.py::test_a::short spin", "alpha", "alpha-0", figure.result)
    assert entry.samples == [1e-6, 2e-6, 3e-6, 4e-6, 5e-6]
    assert BenchmarkResult.from_dict(entry.result).median == 3e-6


def test_one_table_per_key_sorted_by_test_with_the_noise_reasons() -> None:
    records = [
        record("t.py::test_b[beta]", "f", "beta", [1e-3, 1e-3]),
        record("t.py::test_b[alpha]", "f", "alpha", [1e-3, 3e-3], STATE),
        record("t.py::test_a[alpha]", "g", "alpha", [2e-6, 2e-6]),
        record("t.py::test_c[alpha]", "h", "alpha", [1e-3, 1e-3], dict(STATE, emulator="qemu-aarch64")),
    ]
    tables = key_tables(records)
    assert list(tables) == ["alpha", "beta"]
    header, rule, first, second, third = tables["alpha"]
    assert header.split() == ["test", "figure", "board", "median", "spread", "noisy"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert first.split()[:6] == ["t.py::test_a[alpha]", "g", "alpha-0", "2", "us", "0.0%"]
    assert first.endswith(" no")
    assert second.split()[:6] == ["t.py::test_b[alpha]", "f", "alpha-0", "2", "ms", "50.0%"]
    assert "yes: the CPU governor is 'powersave'" in second and "the repeats vary by 50.0%" in second
    assert third.split()[:4] == ["t.py::test_c[alpha]", "h", "alpha-0", "(qemu-aarch64)"]
    assert [line.split()[0] for line in tables["beta"][2:]] == ["t.py::test_b[beta]"]
