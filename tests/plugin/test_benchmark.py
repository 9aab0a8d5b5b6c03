"""The ``device_benchmark`` fixture and the ``--device-benchmark-*`` options, in pytest runs inside pytest.

Each inner run brings up its own farm (or, for a TVM board, uses one started here) and times kernels it
builds itself from tests/kernels/timed.c with the real compiler (``build_for``). Figures are checked within
loose bounds only: these tests prove the plumbing, not the machine's speed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from conftest import python_env, wait_for
from farm.client.tracker import TrackerClient
from farm.ops.benchruns import read_run
from farm.ops.inventory import load_inventory
from farm.ops.launcher import FarmStack
from farm.ops.processes import DaemonProcess

INNER = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider", "-p", "no:randomly")
TIMED = Path(__file__).resolve().parents[1] / "kernels" / "timed.c"
ONE_BOARD = "tracker: {port: 0}\nboards:\n  - {key: alpha, count: 1}\n"
TWO_KEYS = "tracker: {port: 0}\ndefault_key: alpha\nboards:\n  - {key: alpha, count: 1}\n  - {key: beta, count: 1}\n"
ENV_VARS = ("REMOTEDEV_TRACKER", "REMOTEDEV_FARM", "REMOTEDEV_DEVICE_KEY", "TVM_TRACKER_HOST", "TVM_TRACKER_PORT",
            "REMOTEDEV_BENCHMARK_SAVE", "REMOTEDEV_BENCHMARK_STORAGE", "REMOTEDEV_BENCHMARK_COMPARE",
            "REMOTEDEV_BENCHMARK_FAIL")  # fmt: skip

#: The inner runs' ``timed`` fixture: timed.c built for the test's board with the flags in TIMED_FLAGS.
INNER_CONFTEST = """
import os

import pytest


@pytest.fixture
def timed(device, build_for):
    flags = os.environ.get("TIMED_FLAGS", "-O2").split()
    library = build_for(device, [%r], flags=flags)
    device.upload(library)
    return device.load_module(os.path.basename(library))
""" % str(TIMED)

SPIN = "void spin_ns(int64_t ns)"
#: The flags of a deliberately slowed build of timed.c.
SLOWED = "-O2 -DLCG_ROUNDS=64"
LCG = "uint64_t lcg_steps(int64_t n)"


@pytest.fixture(autouse=True)
def temp_dir(monkeypatch: pytest.MonkeyPatch, reachable_tmp: Path, pytester: pytest.Pytester) -> Path:
    """No setting leaks in from the environment; the inner farms' logs land where boards can reach."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TMPDIR", str(reachable_tmp))
    monkeypatch.setenv("REMOTEDEV_CACHE", str(pytester.path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(reachable_tmp))
    pytester.makeconftest(INNER_CONFTEST)
    return reachable_tmp


def run(pytester: pytest.Pytester, *args: str, farm: str = ONE_BOARD) -> pytest.RunResult:
    """An inline run with its own farm; its junit XML is at ``junit.xml``."""
    inventory = pytester.makefile(".yaml", farm=farm)
    junit = str(pytester.path / "junit.xml")
    return pytester.runpytest(*INNER, "--farm", str(inventory), "--junitxml", junit, *args)


def properties(pytester: pytest.Pytester) -> Dict[str, List[Tuple[str, str]]]:
    """The properties of each test of the last run's junit XML, per test name."""
    return {
        case.get("name", ""): [(p.get("name", ""), p.get("value", "")) for p in case.iter("property")]
        for case in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    }


def figures(pytester: pytest.Pytester) -> Dict[str, List[Dict[str, Any]]]:
    """The ``device_benchmark`` properties of the last run's junit XML, decoded, per test name."""
    return {
        test: [json.loads(value) for name, value in found if name == "device_benchmark"]
        for test, found in properties(pytester).items()
    }


def failure_messages(pytester: pytest.Pytester) -> Dict[str, str]:
    """The failure text of each failed test of the last run's junit XML."""
    messages = {}
    for case in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase"):
        failure = case.find("failure")
        if failure is not None:
            messages[case.get("name", "")] = (failure.get("message") or "") + "\n" + (failure.text or "")
    return messages


# --- the fixture ------------------------------------------------------------------------------------


def test_a_kernel_of_known_cost_reads_within_its_bounds(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_cost="""
        def within_bounds(result, seconds):
            # A spin cannot return before its time: with the per-call overhead the method subtracted added back,
            # no figure is below it (that overhead is calibrated on a busy machine too, so it is not assumed small).
            assert min(result.results) + result.overhead_s >= 0.99 * seconds, result
            # The upper bound only catches wrong units and a broken loop, not a slow machine.
            assert result.median <= 10 * seconds + 2e-3, result

        def test_spin(device, timed, device_benchmark):
            spin = timed.get_function("spin_ns", %r)
            result = device_benchmark(spin, 200_000, repeat=8)
            assert result.repeat == 8 and len(result.results) == 8 and result.number >= 10
            assert result.method == "board-python"
            within_bounds(result, 200e-6)
            second = device_benchmark(spin, 20_000, name="short spin", number=5, repeat=6, min_repeat_ms=0)
            assert second.number == 5 and len(second.results) == 6
            within_bounds(second, 20e-6)
        """
        % SPIN
    )
    result = run(pytester, "-rA")
    result.assert_outcomes(passed=1)
    [long, short] = figures(pytester)["test_spin"]
    assert (long["name"], short["name"]) == ("spin_ns", "short spin")
    for figure, seconds in ((long, 200e-6), (short, 20e-6)):
        assert figure["test"] == "test_cost.py::test_spin" and figure["key"] == "alpha"
        assert figure["board"] == "alpha-0" and len(figure["samples"]) in (6, 8)
        assert 0 < figure["median"] <= 10 * seconds + 2e-3, figure  # in seconds, as the result's
    result.stdout.fnmatch_lines(
        [
            "*- remotedev: device benchmarks of key alpha -*",
            "test*figure*board*median*spread*noisy",
            "test_cost.py::test_spin*short spin*alpha-0*us*%*",
            "test_cost.py::test_spin*spin_ns*alpha-0*us*%*",
        ]
    )


def test_bad_arguments_are_an_error_before_anything_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
        import farm
        import pytest

        @pytest.fixture
        def counted(timed):
            return timed.get_function("counted", "void counted(void)")

        @pytest.fixture
        def call_count(timed):
            return timed.get_function("call_count", "int64_t call_count(void)")

        @pytest.mark.parametrize(
            "options, message",
            [
                ({"number": -1}, "number is -1; it must be between 1 and"),
                ({"repeat": 0}, "repeat is 0; it must be between 1 and"),
                ({"min_repeat_ms": -5}, "min_repeat_ms is -5; it must be between 0 and"),
                ({"number": 2.5}, "number must be an integer, not 2.5"),
                ({"f_preproc": "flush_everything"}, "f_preproc 'flush_everything' is not one this board offers"),
            ],
        )
        def test_bad_counts(device_benchmark, counted, call_count, options, message):
            with pytest.raises(farm.ArgumentError, match=message):
                device_benchmark(counted, **options)
            assert call_count() == 0

        def test_arguments_against_the_signature(device_benchmark, counted, call_count):
            with pytest.raises(farm.ArgumentError):
                device_benchmark(counted, 5)  # counted takes no argument
            assert call_count() == 0

        def test_not_a_remote_function(device_benchmark):
            with pytest.raises(farm.ArgumentError, match="time a farm.RemoteFunction"):
                device_benchmark(len, [1, 2])

        def test_one_name_twice(device_benchmark, counted, call_count):
            device_benchmark(counted, number=1, repeat=2, min_repeat_ms=0)
            ran = call_count()
            with pytest.raises(farm.ArgumentError, match="already has a figure named 'counted'"):
                device_benchmark(counted, number=1, repeat=2, min_repeat_ms=0)
            assert call_count() == ran > 0

        def test_uncaught(device_benchmark, counted):
            device_benchmark(counted, repeat=0)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=8, failed=1)
    assert [name for name, found in figures(pytester).items() if found] == ["test_one_name_twice"]
    message = failure_messages(pytester)["test_uncaught"]
    assert "ArgumentError: time_evaluator: repeat is 0; it must be between 1 and" in message, message


#: A process that spins on one CPU for at most two minutes (should the test that started it die).
SPINNER = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
print("spinning", flush=True)
end = time.monotonic() + 120
while time.monotonic() < end:
    pass
"""


def test_a_busy_loop_beside_the_board_makes_figures_noisy(pytester: pytest.Pytester) -> None:
    """A process spinning on the CPU the loop is pinned to takes turns with it: a repeat that fits in one time
    slice runs alone, one that does not waits a whole slice of the spinner's, so the repeats spread well past
    the noise threshold (and the load average, if it has caught up, says so too). The load average alone
    reacts over tens of seconds, too slowly to rely on here."""
    pytester.makepyfile(
        test_busy="""
        import subprocess
        import sys

        SPINNER = %r

        def test_busy(device, timed, device_benchmark):
            steps = timed.get_function("lcg_steps", %r)
            spinner = subprocess.Popen([sys.executable, "-c", SPINNER, "0"], stdout=subprocess.PIPE, text=True)
            try:
                assert spinner.stdout.readline() == "spinning\\n"
                result = device_benchmark(steps, 1_000_000, number=1, repeat=30, min_repeat_ms=0, pin_cpu=0)
            finally:
                spinner.kill()
                spinner.wait()
            assert result.cpu == 0
        """
        % (SPINNER, LCG)
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    [figure] = figures(pytester)["test_busy"]
    assert figure["noisy"] and figure["noise"], figure
    result.stdout.fnmatch_lines(["test_busy.py::test_busy*lcg_steps*alpha-0*yes: *"])


# --- saving, comparing, failing ----------------------------------------------------------------------

#: number=1: ``number`` grows until a repeat lasts min_repeat_ms, and a call of the slowed build lasts longer alone.
LCG_TEST = (
    """
def test_lcg(device, timed, device_benchmark):
    device_benchmark(timed.get_function("lcg_steps", %r), 300_000, number=1)
"""
    % LCG
)

SPIN_TEST = (
    """
def test_spin(device, timed, device_benchmark):
    device_benchmark(timed.get_function("spin_ns", %r), 100_000)
"""
    % SPIN
)


def test_a_slower_build_is_a_regression_and_fails_its_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_lcg=LCG_TEST)
    storage = pytester.path / "runs"
    result = run(pytester, "--device-benchmark-storage", str(storage), "--device-benchmark-save", "base")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["remotedev: saved 1 device_benchmark figures as run 'base' in */runs/base.json"])
    [entry] = read_run(storage / "base.json").entries
    assert (entry.test, entry.key, entry.board) == ("test_lcg.py::test_lcg::lcg_steps", "alpha", "alpha-0")
    assert len(entry.samples) == 20 and entry.result["state"] is not None

    # The same source built to do its steps 64 times over: a gap that contention on a busy CI machine (which
    # has inflated a short baseline repeat tenfold) cannot close; -O0 against -O2 is only about twice as slow.
    monkeypatch.setenv("TIMED_FLAGS", SLOWED)
    result = run(pytester, "--device-benchmark-storage", str(storage), "--device-benchmark-compare=base",
                 "--device-benchmark-fail=median:10%")  # fmt: skip
    result.assert_outcomes(failed=1)
    message = failure_messages(pytester)["test_lcg"]
    assert "device_benchmark 'lcg_steps' on alpha-0 got slower: median " in message, message
    assert "regression" in message and "median:10%" in message, message
    result.stdout.fnmatch_lines(
        ["*- remotedev: device benchmarks against */runs/base.json -*", "test_lcg.py::test_lcg::lcg_steps*REGRESSION"]
    )
    assert len(read_run(storage / "base.json").entries) == 1  # compared, not saved over


def test_the_same_build_compared_with_itself_is_never_a_regression(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_spin=SPIN_TEST)
    result = run(pytester, "--device-benchmark-save", "same")
    result.assert_outcomes(passed=1)
    saved = pytester.path / ".benchmarks" / "device" / "same.json"  # the default storage, in the rootdir
    assert saved.is_file()
    for attempt in range(3):
        result = run(pytester, "--device-benchmark-compare", "--device-benchmark-fail", "median:10%")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*- remotedev: device benchmarks against */same.json -*"])
        rows = [line.split() for line in result.outlines if line.startswith("test_spin.py::test_spin::spin_ns ")]
        [row] = [row for row in rows if row[1] == "alpha"]  # the table's row, not a line saying why under it
        assert row[-1] in ("same", "improvement", "noisy"), "attempt %d: %s" % (attempt, row)


#: Both kernels timed on one CPU (PIN_CPU), so that processes spinning on it take the timing loop's CPU.
PINNED_TEST = """
import os


def test_spin(device, timed, device_benchmark):
    device_benchmark(timed.get_function("spin_ns", %r), 100_000, pin_cpu=int(os.environ["PIN_CPU"]))


def test_lcg(device, timed, device_benchmark):
    device_benchmark(timed.get_function("lcg_steps", %r), 300_000, number=1, pin_cpu=int(os.environ["PIN_CPU"]))
""" % (SPIN, LCG)


@contextlib.contextmanager
def spinning_on(cpu: int, processes: int) -> Iterator[None]:
    """``processes`` processes spinning on ``cpu`` until the block ends."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", SPINNER, str(cpu)], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    try:
        for spinner in spinners:
            assert spinner.stdout is not None and spinner.stdout.readline() == "spinning\n"
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
            if spinner.stdout is not None:
                spinner.stdout.close()


def test_a_busy_board_is_not_read_as_a_slower_build_and_a_slower_build_still_is(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes spin on the CPU the kernels are timed on through the compared run: spin_ns (which runs until
    the clock has moved on 100 us) takes far longer in wall time but no more time on a CPU, so it is noise and its
    test passes; the slowed build of lcg_steps, 64 times the work, is still a regression under the same load."""
    pytester.makepyfile(test_pinned=PINNED_TEST)
    monkeypatch.setenv("PIN_CPU", str(min(os.sched_getaffinity(0))))
    run(pytester, "--device-benchmark-save", "base").assert_outcomes(passed=2)
    monkeypatch.setenv("TIMED_FLAGS", SLOWED)
    with spinning_on(min(os.sched_getaffinity(0)), processes=2):
        result = run(pytester, "--device-benchmark-compare", "--device-benchmark-fail", "median:10%")
    result.assert_outcomes(passed=1, failed=1)
    assert list(failure_messages(pytester)) == ["test_lcg"]
    [spin] = [line.split() for line in result.outlines if line.startswith("test_pinned.py::test_spin::spin_ns  ")]
    # noisy on a quiet baseline ("... other processes took the CPU"); the same when the baseline was slowed too
    assert spin[-1] in ("noisy", "same"), spin
    result.stdout.fnmatch_lines(["test_pinned.py::test_lcg::lcg_steps*REGRESSION"])


#: A board busy during the first timing only: slow_at_first's first SLOW_CALLS calls (the warm-up and 1 x 10 runs
#: of the first timing, min_repeat_ms=0 keeps number at 1) spin 20x longer. SLOW_CALLS=0: quiet throughout.
#: Ten repeats, not five: with five, one baseline repeat slowed by a busy machine leaves p above 0.01.
AT_FIRST_TEST = """
import os


def test_at_first(device, timed, device_benchmark):
    slow = timed.get_function("slow_at_first", "void slow_at_first(int64_t s, int64_t slow, int64_t fast)")
    device_benchmark(slow, int(os.environ["SLOW_CALLS"]), 2_000_000, 100_000, number=1, repeat=10, min_repeat_ms=0)
"""


def test_a_regression_is_timed_again_before_it_fails_a_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A figure slow only in its first timing (the board was busy) reads as a regression; timed again, it is not,
    and the test passes, its line saying so."""
    pytester.makepyfile(test_at_first=AT_FIRST_TEST)
    monkeypatch.setenv("SLOW_CALLS", "0")
    run(pytester, "--device-benchmark-save", "quiet").assert_outcomes(passed=1)
    monkeypatch.setenv("SLOW_CALLS", "11")
    result = run(pytester, "--device-benchmark-compare", "--device-benchmark-fail", "median:10%")
    result.assert_outcomes(passed=1)
    # the same, or noise when the machine is busy: either way the first timing is named
    result.stdout.fnmatch_lines(["*: *; timed again: a first timing read as a regression (median * ms)"])
    [figure] = figures(pytester)["test_at_first"]
    assert figure["median"] < 1e-3, figure  # the second timing's figure is the one kept


def test_a_run_that_cannot_be_saved_says_so_and_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_spin=SPIN_TEST)
    blocked = pytester.path / "blocked"
    blocked.write_text("a file where the storage directory would be\n")
    result = run(pytester, "--device-benchmark-storage", str(blocked), "--device-benchmark-save", "base")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(["remotedev: could not save the device_benchmark figures: *blocked*"])


def test_options_are_checked_before_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_never_runs(): raise AssertionError('ran despite a bad option')")
    cases = [
        (("--device-benchmark-fail", "median:ten"), "--device-benchmark-fail from --device-benchmark-fail: *"),
        (("--device-benchmark-fail", "max:10%"), "*unknown statistic 'max'*"),
        (("--device-benchmark-save", "../x"), "*'../x' cannot name a saved run*"),
        (("--device-benchmark-compare=nothing",), "*--device-benchmark-compare: no saved benchmark run 'nothing'*"),
        (("--device-benchmark-fail=median:5%",), "*--device-benchmark-fail: *: no saved benchmark runs"),
    ]
    for args, line in cases:
        result = run(pytester, *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, args
        result.stderr.fnmatch_lines(["ERROR: pytest-remotedev: " + line])


# --- under pytest-xdist, on every key -----------------------------------------------------------------


def test_xdist_every_key_in_the_tables_and_the_saved_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figures travel from the workers to the controller, which shows and saves them all; a regression
    fails its test in the worker that took the figure."""
    pytester.makepyfile(
        test_keys="""
        import pytest

        pytestmark = pytest.mark.device(keys="all")

        @pytest.mark.parametrize("steps", [100_000, 200_000])
        def test_lcg(device, timed, device_benchmark, steps):
            device_benchmark(timed.get_function("lcg_steps", %r), steps, repeat=8, min_repeat_ms=2)
        """
        % LCG
    )
    inventory = pytester.makefile(".yaml", farm=TWO_KEYS)
    junit = pytester.path / "junit.xml"
    xdist = ("-n", "2", *INNER, "--farm", str(inventory), "--junitxml", str(junit))
    result = pytester.runpytest_subprocess(*xdist, "--device-benchmark-save", "xd", timeout=180)
    result.assert_outcomes(passed=4)
    expected = {("test_keys.py::test_lcg[%s-%d]::lcg_steps" % (key, steps), key) for key in ("alpha", "beta")
                for steps in (100000, 200000)}  # fmt: skip
    run_file = read_run(pytester.path / ".benchmarks" / "device" / "xd.json")
    assert {(entry.test, entry.key) for entry in run_file.entries} == expected
    assert {entry.key: entry.board for entry in run_file.entries} == {"alpha": "alpha-0", "beta": "beta-0"}
    for key in ("alpha", "beta"):
        result.stdout.fnmatch_lines(["*- remotedev: device benchmarks of key %s -*" % key])
        rows = [line for line in result.outlines if line.startswith("test_keys.py::test_lcg[%s-" % key)]
        assert len(rows) == 2 and all("%s-0" % key in row for row in rows), result.outlines
    keys = sorted(figure["key"] for found in figures(pytester).values() for figure in found)
    assert keys == ["alpha", "alpha", "beta", "beta"]

    monkeypatch.setenv("TIMED_FLAGS", SLOWED)
    result = pytester.runpytest_subprocess(*xdist, "--device-benchmark-fail=median:10%", timeout=180)
    result.assert_outcomes(failed=4)
    assert all("got slower" in message for message in failure_messages(pytester).values())
    regressions = [line for line in result.outlines if line.startswith("test_keys.py::test_lcg[")]
    assert len([line for line in regressions if line.endswith("REGRESSION")]) == 4, result.outlines


# --- a TVM board -----------------------------------------------------------------------------------------


def free_port_range(span: int = 100) -> Tuple[int, int]:
    """A port free now and the end of a range after it (TVM's server binds the first free one of a range)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return port, min(port + span, 65536)


@pytest.fixture
def tvm_farm(tmp_path: Path) -> Iterator[Tuple[str, int]]:
    """Our tracker with one board of ours (key alpha) and TVM's own board server (key tvm), all stopped after."""
    # not imported here: the pytester fixture takes whatever a test imports out of sys.modules after it, and TVM
    # cannot be imported a second time in one process (ml_dtypes would register its types twice)
    if importlib.util.find_spec("tvm") is None:
        pytest.skip("Apache TVM is not installed; install the tvm extra")
    path = tmp_path / "farm.yaml"
    path.write_text(ONE_BOARD)
    stack = FarmStack(load_inventory(str(path)), str(tmp_path / "logs"))
    stack.start()
    tracker = stack.tracker_address
    first, end = free_port_range()
    argv = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(first),
            "--port-end", str(end), "--tracker", "%s:%d" % tracker, "--key", "tvm"]  # fmt: skip
    server = DaemonProcess(argv, str(tmp_path / "tvm-server.log"), env=python_env())
    try:
        server.wait_for_bind(timeout=60)

        def offered() -> bool:
            with TrackerClient(*tracker) as client:
                return int(client.summary().get("queue_info", {}).get("tvm", {}).get("free", 0)) >= 1

        wait_for(offered, 60, "TVM's board server offers key 'tvm' to the tracker")
        yield tracker
    finally:
        server.stop()
        stack.stop()


def test_a_tvm_board_is_timed_by_tvm(pytester: pytest.Pytester, tvm_farm: Tuple[str, int]) -> None:
    pytester.makepyfile(
        test_tvm="""
        import os

        import numpy as np
        import pytest
        import tvm
        from tvm import te

        @pytest.mark.device("tvm")
        def test_vadd(device, device_benchmark, tmp_path):
            a, b = te.placeholder((4096,), name="a"), te.placeholder((4096,), name="b")
            c = te.compute((4096,), lambda i: a[i] + b[i], name="c")
            path = str(tmp_path / "vadd_tvm.so")
            function = te.create_prim_func([a, b, c]).with_attr("global_symbol", "vadd")
            tvm.compile(function, target="llvm").export_library(path)
            device.upload(path)
            module = device.load_module("vadd_tvm.so")
            x = np.arange(4096, dtype="float32")
            tensors = [tvm.runtime.tensor(value, device.cpu()) for value in (x, 2 * x, np.zeros_like(x))]
            result = device_benchmark((module, "vadd"), *tensors, repeat=5, min_repeat_ms=1)
            assert result.method == "tvm" and len(result.results) == 5
            np.testing.assert_array_equal(tensors[2].numpy(), 3 * x)
        """
    )
    junit = str(pytester.path / "junit.xml")
    # in a process of its own, so that TVM is not imported in this one (see tvm_farm)
    result = pytester.runpytest_subprocess(*INNER, "--tracker", "%s:%d" % tvm_farm, "--junitxml", junit)
    result.assert_outcomes(passed=1)
    [figure] = figures(pytester)["test_vadd"]
    assert (figure["key"], figure["name"]) == ("tvm", "vadd")
    [hold] = [value for name, value in properties(pytester)["test_vadd"] if name == "device_id"]
    assert figure["board"] == hold and 0 < figure["median"] < 1, figure
    with TrackerClient(*tvm_farm) as client:  # where the TVM board listens, as the tracker lists it
        [address] = [board["addr"] for board in client.summary()["server_info"] if board["key"] == "server:tvm"]
    assert hold == "%s:%d" % tuple(address), hold
    result.stdout.fnmatch_lines(["*- remotedev: device benchmarks of key tvm -*", "test_tvm.py::test_vadd*vadd*"])
