"""The run's ``device_benchmark`` figures: compared where they are taken, then collected, shown and saved.

Where each thing happens, so that it also holds under pytest-xdist:

- The baseline (``--device-benchmark-compare``/``-fail``) is found once, by the controller (or a plain
  run), and handed to the workers by path, so that every process compares with the same file.
- Each figure is compared in the process that took it, as soon as it is taken (the decision is
  deterministic: :mod:`farm.ops.regression`). With ``--device-benchmark-fail``, a regression fails the
  test's call report there, before the report leaves the worker: the test shows as failed everywhere
  (terminal, junit XML, exit code), with one line per slower figure.
- The whole records ride on each test's teardown report to the controller, which prints the tables and
  saves the run (``--device-benchmark-save``) once, at the end.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, Generator, List, Optional, Tuple

import pytest

from farm.ops.benchruns import BenchRunError, Entry, find_run, format_seconds, read_run, save_run, text_table
from farm.ops.regression import Comparison, compare_entries, format_comparison

from .benchmarking import REPORT_ATTRIBUTE, DeviceBenchmark, Record
from .options import LATEST_RUN, Settings

#: The name :class:`BenchmarkRun` is registered under.
BENCHMARK_PLUGIN = "remotedev-benchmark"
#: The entry of xdist's ``workerinput`` that carries the baseline's path.
WORKERINPUT_KEY = "remotedev-benchmark"
#: Where a test's ``device_benchmark`` keeps its figures.
FIXTURE_KEY = pytest.StashKey[DeviceBenchmark]()


class BenchmarkRun:
    """This process's part of the run's benchmarks (a plugin object registered at configure)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.is_worker = hasattr(config, "workerinput")
        comparing = settings.benchmark_compare is not None or settings.benchmark_fail is not None
        if self.is_worker:
            self.baseline_path: Optional[str] = config.workerinput[WORKERINPUT_KEY]["baseline"]  # type: ignore[attr-defined]
        else:
            self.baseline_path = self._find_baseline() if comparing else None
        self._baseline: Optional[Dict[Tuple[str, str], Entry]] = None
        self.records: List[Record] = []  # the controller's: every test's, from the reports
        self.saved: Optional[str] = None
        self.save_failure: Optional[str] = None

    def _find_baseline(self) -> str:
        wanted = self.settings.benchmark_compare
        name = None if wanted in (None, LATEST_RUN) else wanted
        try:
            return str(find_run(self.settings.benchmark_storage, name))
        except BenchRunError as exc:
            flag = "--device-benchmark-compare" if self.settings.benchmark_compare else "--device-benchmark-fail"
            raise pytest.UsageError("pytest-remotedev: %s: %s" % (flag, exc)) from None

    def baseline(self) -> Dict[Tuple[str, str], Entry]:
        """The baseline's entries by (test, key), read on first use in this process."""
        if self._baseline is None:
            assert self.baseline_path is not None
            self._baseline = read_run(self.baseline_path).by_ident()
        return self._baseline

    def compare(self, record: Record) -> Optional[Comparison]:
        """``record`` against the baseline's figure of the same test and key (None when not comparing)."""
        if self.baseline_path is None:
            return None
        entry = record.entry()
        comparison = compare_entries(self.baseline().get(entry.ident), entry, self.settings.benchmark_fail)
        if record.first_timing is None:
            return comparison
        timed_again = "; timed again: a first timing read as a regression (%s %s)" % (
            comparison.spec.statistic,
            format_seconds(record.first_timing),
        )
        return replace(comparison, note=comparison.note + timed_again)

    # --- pytest-xdist, in the controller ------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKERINPUT_KEY] = {"baseline": self.baseline_path}

    # --- in the process that runs the test -------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report: pytest.TestReport = yield
        benchmark = item.stash.get(FIXTURE_KEY, None)
        if benchmark is None:
            return report
        if report.when == "call" and report.passed and self.settings.benchmark_fail is not None:
            slower = [(record, comparison) for record, comparison in benchmark.comparisons if comparison.regression]
            if slower:
                report.outcome = "failed"
                report.longrepr = "\n".join(
                    "device_benchmark %r on %s got slower: %s" % (record.name, record.board, comparison.message())
                    for record, comparison in slower
                )
        if report.when == "teardown":
            setattr(report, REPORT_ATTRIBUTE, [record.to_dict() for record in benchmark.records])
        return report

    # --- in the controller (or a plain run) -----------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.is_worker and report.when == "teardown":
            self.records.extend(Record.from_dict(data) for data in getattr(report, REPORT_ATTRIBUTE, ()))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Save the run's figures once, before the terminal summary reports where."""
        name = self.settings.benchmark_save
        if self.is_worker or name is None:
            return
        if session.exitstatus == pytest.ExitCode.INTERRUPTED:  # a part of the run must not replace a whole one
            self.save_failure = "the run was interrupted: its device_benchmark figures are not saved as %r" % name
            return
        try:
            path = save_run(self.settings.benchmark_storage, name, [r.entry() for r in self.records],
                            self.config.rootpath)  # fmt: skip
            self.saved = "saved %d device_benchmark figures as run %r in %s" % (len(self.records), name, path)
        except BenchRunError as exc:
            self.save_failure = "could not save the device_benchmark figures: %s" % exc
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        for key, lines in key_tables(self.records).items():
            terminalreporter.write_sep("-", "remotedev: device benchmarks of key %s" % key)
            for line in lines:
                terminalreporter.write_line(line)
        if self.baseline_path is not None and self.records:
            terminalreporter.write_sep("-", "remotedev: device benchmarks against %s" % self.baseline_path)
            comparisons = [comparison for comparison in map(self.compare, self.records) if comparison is not None]
            for line in format_comparison(comparisons).splitlines():
                terminalreporter.write_line(line)
        if self.saved is not None:
            terminalreporter.write_line("remotedev: %s" % self.saved)
        if self.save_failure is not None:
            terminalreporter.write_line("remotedev: %s" % self.save_failure, red=True)


def key_tables(records: List[Record]) -> Dict[str, List[str]]:
    """Per key, the lines of its table: test, figure, board (and its emulator), median, spread (CV) and the noisy
    flag with why."""
    header = ("test", "figure", "board", "median", "spread", "noisy")
    rows: Dict[str, List[Tuple[str, ...]]] = {}
    for record in sorted(records, key=lambda r: (r.key, r.test, r.name)):
        noisy = "yes: " + "; ".join(record.noise) if record.noise else "no"
        board = "%s (%s)" % (record.board, record.emulated) if record.emulated else record.board
        row = (record.test, record.name, board, format_seconds(record.median),
               "%.1f%%" % (100 * record.spread), noisy)  # fmt: skip
        rows.setdefault(record.key, []).append(row)
    return {key: text_table(header, key_rows).splitlines() for key, key_rows in sorted(rows.items())}
