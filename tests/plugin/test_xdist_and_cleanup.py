"""The plugin under pytest-xdist and at the end of a run, in pytest processes of their own.

- Parallel workers share boards through the tracker's queue: on one board,
  the holds of every test follow one another (the board's own clock says so),
  and with two keys each test gets a board of its key.
- However a run ends (normally, Ctrl-C, a crashed worker, ``-x``, the
  controller killed), none of the processes it started stays behind. Each
  inner run carries a unique ``REMOTEDEV_TEST_TAG`` in its environment, which
  the farm's daemons and xdist's workers inherit, so they are found in /proc.
- The queue display: a line of its own, from the xdist controller's watcher
  and from a waiting test of a plain run.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

import pytest

import farm
from conftest import processes_with_env, reachable_temp, wait_for
from farm.ops.inventory import load_inventory
from farm.ops.launcher import FarmStack

TAG_ENV = "REMOTEDEV_TEST_TAG"
NOTES_ENV = "REMOTEDEV_TEST_NOTES"

ONE_BOARD = "tracker: {port: 0}\nboards:\n  - {key: alpha, count: 1}\n"
WITH_PROXY = "tracker: {port: 0}\nproxy: {port: 0}\nboards:\n"
ONE_PROXIED_BOARD = WITH_PROXY + "  - {key: alpha, count: 1, proxy: true}\n"
PAIR = WITH_PROXY + "  - {key: alpha, count: 1}\n  - {key: alpha, count: 1, proxy: true}\n"
TWO_KEYS = WITH_PROXY + "  - {key: alpha, count: 1}\n  - {key: beta, count: 2, proxy: true}\n"

WAITING_LINE = "remotedev: waiting for boards: alpha: * test* at position*"


def tagged_processes(tag: str) -> Dict[int, str]:
    """Live processes of the run tagged ``REMOTEDEV_TEST_TAG=tag``: pid -> command line."""
    return processes_with_env("REMOTEDEV_TEST_TAG", tag)


#: The inner runs' conftest: ``note(label, **extra)`` writes NOTES/<test>-<label>.json with the tagged processes
#: of the run at that moment and ``extra`` (written whole, then renamed, so the outer test never reads half a file).
INNER_CONFTEST = (
    "import json, os, pathlib\nfrom typing import Dict\n\nimport pytest\n\n\n"
    + textwrap.dedent(inspect.getsource(processes_with_env))
    + "\n\n"
    + textwrap.dedent(inspect.getsource(tagged_processes))
    + textwrap.dedent(
        """

        @pytest.fixture
        def note(request):
            def write(label, **extra):
                notes = pathlib.Path(os.environ["REMOTEDEV_TEST_NOTES"])
                path = notes / ("%s-%s.json" % (request.node.name, label))
                seen = tagged_processes(os.environ["REMOTEDEV_TEST_TAG"])
                data = dict(extra, pid=os.getpid(), tagged={str(pid): cmd for pid, cmd in seen.items()})
                path.with_suffix(".tmp").write_text(json.dumps(data))
                path.with_suffix(".tmp").rename(path)

            return write
        """
    )
)


def roles(processes: Dict[int, str]) -> Dict[str, int]:
    """How many of ``processes`` are farm trackers, proxies and board servers (a board is several processes)."""
    counts = {"tracker": 0, "proxy": 0, "server": 0}
    for cmdline in processes.values():
        for role in counts:
            if "-m farm.%s " % role in cmdline + " ":
                counts[role] += 1
    return counts


def kill_tagged(tag: str) -> None:
    """SIGKILL whatever a failed test left behind (only processes of this test's run carry its tag)."""
    for pid in tagged_processes(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def assert_none_tagged(tag: str, timeout: float = 10.0) -> None:
    """Every process of the run is gone within ``timeout`` seconds."""
    left: Dict[int, str] = {}

    def none_left() -> bool:
        left.clear()
        left.update(tagged_processes(tag))
        return not left

    try:
        wait_for(none_left, timeout, "no process of the run remains")
    except pytest.fail.Exception:
        pytest.fail("processes of the run still there after %g s: %r" % (timeout, left))


@pytest.fixture
def tag(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The unique tag of this test's inner run, in the environment the run inherits (so does NOTES, where
    the inner tests' ``note`` writes); afterwards, whatever of the run is left is killed.

    TMPDIR points to a directory of the test's own, which the sessions of the bundled farm's boards (run as
    nobody) can enter, so the farm's logs (kept after a failing run) go there too.
    """
    value = uuid.uuid4().hex
    (pytester.path / "notes").mkdir()
    monkeypatch.setenv(TAG_ENV, value)
    monkeypatch.setenv(NOTES_ENV, str(pytester.path / "notes"))
    with reachable_temp() as temp:
        monkeypatch.setenv("TMPDIR", str(temp))
        pytester.makeconftest(INNER_CONFTEST)
        yield value
        kill_tagged(value)


def read_note(pytester: pytest.Pytester, name: str) -> Dict[str, Any]:
    """What an inner test noted (``note(label, ...)`` there; ``name`` is ``<test>-<label>``)."""
    return json.loads((pytester.path / "notes" / (name + ".json")).read_text())


def roles_noted(pytester: pytest.Pytester, name: str) -> Dict[str, int]:
    """:func:`roles` of the tagged processes an inner test saw."""
    return roles({int(pid): cmd for pid, cmd in read_note(pytester, name)["tagged"].items()})


def holds_in_junit(path: Path) -> List[Dict[str, str]]:
    """Every hold recorded in a junit XML file: its properties, with ``test`` (the test's name) added."""
    holds = []
    for case in ET.parse(str(path)).getroot().iter("testcase"):
        groups: List[Dict[str, str]] = []
        for prop in case.iter("property"):
            name, value = prop.get("name", ""), prop.get("value", "")
            if name == "device_key":
                groups.append({"test": case.get("name", "")})
            if name.startswith("device_") and groups:
                groups[-1][name] = value
        holds.extend(groups)
    return holds


def assert_no_overlap(holds: Sequence[Dict[str, str]]) -> None:
    """The holds of one board, by the board's clock: each ends before the next starts."""
    intervals = sorted((float(h["device_held_from"]), float(h["device_held_until"]), h["test"]) for h in holds)
    for start, end, test in intervals:
        assert start <= end, "hold of %s ends before it starts: %r" % (test, (start, end))
    for (_, end, first), (start, _, second) in zip(intervals, intervals[1:]):
        assert end <= start, "%s held the board until %.6f, but %s had it from %.6f" % (first, end, second, start)


def status_lines(lines: Sequence[str]) -> List[str]:
    """The lines that mention the queue display, each of which must be a line of its own."""
    found = [line for line in lines if "waiting for boards" in line]
    for line in found:
        assert line.startswith("remotedev: waiting for boards: "), "status line glued to other output: %r" % line
    return found


def start_inner(pytester: pytest.Pytester, args: Sequence[str], output: Path) -> subprocess.Popen:
    """``python -m pytest ARGS`` in the test's directory, in a session of its own (so a group can be signalled)."""
    with open(output, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=str(pytester.path),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_inner(process: subprocess.Popen) -> None:
    """Kill an inner run that is still going (its process group: the run and its xdist workers)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


# --- sharing boards under pytest-xdist ---------------------------------------------------------------


@pytest.mark.slow
def test_xdist_workers_take_turns_on_one_board(pytester: pytest.Pytester, tag: str) -> None:
    inventory = pytester.makefile(".yaml", farm=ONE_BOARD)
    [(board, _)] = load_inventory(str(inventory)).named_boards()
    pytester.makepyfile(
        test_hold="""
        import time
        import pytest

        @pytest.mark.parametrize("n", range(9))
        def test_hold(device, n):
            device.ping()
            device.run(time.sleep, 0.2)
        """
    )
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-n", "3", "--farm", "farm.yaml", "--junitxml", str(junit), "-p", "no:cacheprovider", "test_hold.py",
        timeout=120,
    )  # fmt: skip
    result.assert_outcomes(passed=9)

    holds = holds_in_junit(junit)
    assert sorted(h["test"] for h in holds) == sorted("test_hold[%d]" % n for n in range(9))  # one hold per test
    assert {h["device_id"] for h in holds} == {board}
    assert {h["device_key"] for h in holds} == {"alpha"}
    assert_no_overlap(holds)
    waits = sorted(float(h["device_queue_wait"]) for h in holds)
    assert sum(wait > 0.05 for wait in waits) >= 2, "the workers never queued for the board: waits %r" % waits
    assert_none_tagged(tag)


def test_xdist_two_keys_each_test_on_a_board_of_its_key(pytester: pytest.Pytester, tag: str) -> None:
    inventory = pytester.makefile(".yaml", farm=TWO_KEYS)
    names = {key: {name for name, group in load_inventory(str(inventory)).named_boards() if group.key == key}
             for key in ("alpha", "beta")}  # fmt: skip
    pytester.makepyfile(
        test_keys="""
        import time
        import pytest

        @pytest.mark.device("alpha")
        @pytest.mark.parametrize("n", range(4))
        def test_alpha(device, n):
            device.ping()
            device.run(time.sleep, 0.2)

        @pytest.mark.device("beta")
        @pytest.mark.parametrize("n", range(6))
        def test_beta(device, n):
            device.ping()
            device.run(time.sleep, 0.2)
        """
    )
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-n", "4", "--farm", "farm.yaml", "--junitxml", str(junit), "-p", "no:cacheprovider", "test_keys.py",
        timeout=120,
    )  # fmt: skip
    result.assert_outcomes(passed=10)

    holds = holds_in_junit(junit)
    assert len(holds) == 10
    by_key: Dict[str, List[Dict[str, str]]] = {"alpha": [], "beta": []}
    for hold in holds:
        key = hold["test"].split("[")[0][len("test_") :]
        assert hold["device_key"] == key, hold
        assert hold["device_id"] in names[key], "%s held %s, not a board of %s %r" % (
            hold["test"], hold["device_id"], key, sorted(names[key]),
        )  # fmt: skip
        by_key[key].append(hold)
    assert len(by_key["alpha"]) == 4 and len(by_key["beta"]) == 6
    assert {h["device_id"] for h in by_key["alpha"]} == names["alpha"]  # its only board
    beta_boards = {h["device_id"] for h in by_key["beta"]}
    for board in {h["device_id"] for h in holds}:
        assert_no_overlap([h for h in holds if h["device_id"] == board])

    result.stdout.fnmatch_lines(["*remotedev: boards by key*"])
    summary = "\n".join(result.outlines)
    assert re.search(r"^alpha\s+4\s+1\s", summary, re.M), summary
    assert re.search(r"^beta\s+6\s+%d\s" % len(beta_boards), summary, re.M), summary
    assert_none_tagged(tag)


# --- nothing left behind, however the run ends ----------------------------------------------------------


HOLDING_TESTS = """
import time

def test_one(device, note):
    device.ping()
    note("holding")

def test_two(device, note):
    device.run(time.sleep, 0.1)
    note("holding")
"""


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_normal_end_leaves_no_process(pytester: pytest.Pytester, tag: str, xdist: List[str]) -> None:
    pytester.makefile(".yaml", farm=PAIR)
    pytester.makepyfile(test_normal=HOLDING_TESTS)
    result = pytester.runpytest_subprocess(*xdist, "--farm", "farm.yaml", "-p", "no:cacheprovider", "test_normal.py",
                                           timeout=120)  # fmt: skip
    result.assert_outcomes(passed=2)
    for name in ("test_one-holding", "test_two-holding"):
        counts = roles_noted(pytester, name)
        assert counts["tracker"] == 1 and counts["proxy"] == 1 and counts["server"] >= 2, read_note(pytester, name)
    assert_none_tagged(tag)


#: One test holds the board and blocks (BLOCK); under xdist the other waits in the queue for it meanwhile.
BLOCKING_TESTS = """
import os, pathlib, time

def test_holds_the_board(device, farm, note):
    device.ping()
    note("holding", tracker=farm.tracker_address)
    BLOCK

def test_queued_behind(remote_device):
    holding = pathlib.Path(os.environ["REMOTEDEV_TEST_NOTES"]) / "test_holds_the_board-holding.json"
    deadline = time.monotonic() + 60
    while not holding.exists():
        assert time.monotonic() < deadline, "test_holds_the_board never held the board"
        time.sleep(0.02)
    remote_device().ping()
"""
#: Interrupted long before the end.
BOARD_CALL = "device.run(time.sleep, 60)"
HOST_LOOP = "deadline = time.monotonic() + 60\n    while time.monotonic() < deadline:\n        time.sleep(0.05)"


def start_blocked_run(pytester: pytest.Pytester, tag: str, args: Sequence[str], output: Path) -> subprocess.Popen:
    """Start an inner run of BLOCKING_TESTS on one board behind the proxy.

    Returns once a test holds the board (and, under xdist, the other test waits in the queue for it), after
    checking that the run's processes are there to be found.
    """
    process = start_inner(pytester, [*args, "--farm", "farm.yaml", "test_blocked.py"], output)
    try:
        holding = pytester.path / "notes" / "test_holds_the_board-holding.json"
        wait_for(lambda: holding.exists() or process.poll() is not None, 60, "a test holds the board")
        assert process.poll() is None, output.read_text()
        if "-n" in args:
            host, port = read_note(pytester, "test_holds_the_board-holding")["tracker"].rsplit(":", 1)
            with farm.connect_tracker(host, int(port)) as tracker:

                def queued() -> Any:
                    return tracker.summary()["queue_info"].get("alpha", {}).get("waiters")

                wait_for(queued, 60, "test_queued_behind waits in the queue")
        running = tagged_processes(tag)
        assert process.pid in running
        counts = roles(running)
        assert counts["tracker"] == 1 and counts["proxy"] == 1 and counts["server"] >= 1, running
        if "-n" in args:
            assert len(running) - sum(counts.values()) >= 3, running  # pytest and its two workers
    except BaseException:
        stop_inner(process)
        raise
    return process


@pytest.mark.parametrize(
    "xdist, to_group, block",
    [([], False, BOARD_CALL), (["-n", "2"], True, HOST_LOOP)],
    ids=["plain-pid-during-board-call", "xdist-process-group"],
)
def test_ctrl_c_leaves_no_process(
    pytester: pytest.Pytester, tag: str, xdist: List[str], to_group: bool, block: str
) -> None:
    pytester.makefile(".yaml", farm=ONE_PROXIED_BOARD)
    pytester.makepyfile(test_blocked=BLOCKING_TESTS.replace("BLOCK", block))
    output = pytester.path / "output.txt"
    process = start_blocked_run(pytester, tag, xdist, output)
    try:
        if to_group:
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        else:
            os.kill(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pytest.fail("pytest did not end within 40 s of SIGINT:\n%s" % output.read_text())
        text = output.read_text()
        assert code == pytest.ExitCode.INTERRUPTED, text
        assert "KeyboardInterrupt" in text
        assert_none_tagged(tag)
    finally:
        stop_inner(process)


def test_crashed_worker_leaves_no_process_and_frees_its_board(pytester: pytest.Pytester, tag: str) -> None:
    pytester.makefile(".yaml", farm=ONE_PROXIED_BOARD)
    pytester.makepyfile(
        test_crash="""
        import os, pathlib, signal, time

        def test_crash(device, note):
            device.ping()
            note("holding")
            os.kill(os.getpid(), signal.SIGKILL)

        def test_after(remote_device):
            crashed = pathlib.Path(os.environ["REMOTEDEV_TEST_NOTES"]) / "test_crash-holding.json"
            deadline = time.monotonic() + 60
            while not crashed.exists():  # the other worker holds the one board, then dies holding it
                assert time.monotonic() < deadline, "test_crash never held the board"
                time.sleep(0.02)
            board = remote_device()
            board.ping()
        """
    )
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "-n", "2", "--farm", "farm.yaml", "--device-wait", "30", "--junitxml", str(junit), "-p", "no:cacheprovider",
        "test_crash.py", timeout=120,
    )  # fmt: skip
    result.stdout.fnmatch_lines(["*crashed while running*test_crash*"])
    result.assert_outcomes(passed=1, failed=1)
    assert [h["test"] for h in holds_in_junit(junit)] == ["test_after"]
    counts = roles_noted(pytester, "test_crash-holding")
    assert counts["tracker"] == 1 and counts["proxy"] == 1 and counts["server"] >= 1
    assert_none_tagged(tag)


def test_exitfirst_leaves_no_process(pytester: pytest.Pytester, tag: str) -> None:
    pytester.makefile(".yaml", farm=PAIR)
    pytester.makepyfile(
        test_x="""
        def test_first_fails(device, note):
            device.ping()
            note("holding")
            assert False, "the first failure"

        def test_second(device):
            device.ping()

        def test_third(device):
            device.ping()
        """
    )
    result = pytester.runpytest_subprocess("-x", "--farm", "farm.yaml", "-p", "no:cacheprovider", "test_x.py",
                                           timeout=120)  # fmt: skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    counts = roles_noted(pytester, "test_first_fails-holding")
    assert counts["tracker"] == 1 and counts["proxy"] == 1 and counts["server"] >= 2
    assert_none_tagged(tag)


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist-controller"])
def test_killed_pytest_leaves_no_process(pytester: pytest.Pytester, tag: str, xdist: List[str]) -> None:
    pytester.makefile(".yaml", farm=ONE_PROXIED_BOARD)
    pytester.makepyfile(test_blocked=BLOCKING_TESTS.replace("BLOCK", BOARD_CALL))
    output = pytester.path / "output.txt"
    process = start_blocked_run(pytester, tag, xdist, output)
    try:
        os.kill(process.pid, signal.SIGKILL)  # no cleanup at all: the daemons go through PR_SET_PDEATHSIG
        assert process.wait(timeout=10) == -signal.SIGKILL
        assert_none_tagged(tag)
    finally:
        stop_inner(process)


# --- the queue display ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_xdist_waiting_line_stands_on_its_own(pytester: pytest.Pytester, tag: str) -> None:
    pytester.makefile(".yaml", farm=ONE_BOARD)
    pytester.makepyfile(
        test_slow="""
        import time
        import pytest

        @pytest.mark.parametrize("n", range(2))
        def test_slow(device, n):
            device.run(time.sleep, 5)
        """
    )
    # one board for two workers: the second test waits 5 s, past the 3 s after which the line is shown
    result = pytester.runpytest_subprocess("-n", "2", "--farm", "farm.yaml", "-p", "no:cacheprovider", "test_slow.py",
                                           timeout=120)  # fmt: skip
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([WAITING_LINE])
    assert status_lines(result.outlines)
    assert_none_tagged(tag)


def test_plain_run_shows_waiting_line_while_an_outside_client_holds_the_board(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    inventory = tmp_path / "farm.yaml"
    inventory.write_text(ONE_BOARD)
    stack = FarmStack(load_inventory(str(inventory)), str(tmp_path / "farm-logs"))
    stack.start()
    tracker = session = process = None
    try:
        tracker = farm.connect_tracker(*stack.tracker_address)
        session = tracker.request("alpha", user="outside holder")
        session.ping()
        pytester.makepyfile(
            test_wait="""
            def test_waits(device):
                device.ping()
            """
        )
        output = pytester.path / "output.txt"
        process = start_inner(pytester, ["--tracker", "%s:%d" % stack.tracker_address, "test_wait.py"], output)
        wait_for(lambda: "remotedev: waiting for boards:" in output.read_text() or process.poll() is not None, 15,
                 "the inner run says it waits")  # fmt: skip
        assert process.poll() is None, output.read_text()
        session.close()  # the waiting test gets the board now
        tracker.close()
        code = process.wait(timeout=20)
        text = output.read_text()
        assert code == pytest.ExitCode.OK, text
        lines = text.splitlines()
        pytest.LineMatcher(lines).fnmatch_lines(["remotedev: waiting for boards: alpha: 1 test at position 1 of 1 *"])
        assert status_lines(lines)
    finally:
        if session is not None:
            session.close()
        if tracker is not None:
            tracker.close()
        if process is not None:
            stop_inner(process)
        stack.stop()
