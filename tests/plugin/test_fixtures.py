"""The plugin's fixtures, markers and reports, in pytest runs inside pytest against real farms.

Each inner run brings up its own farm from a small inventory (a tracker and one or two boards, no
proxy) unless it is pointed at one started here with :class:`farm.ops.launcher.FarmStack`. Nothing of the
farm is replaced or mocked. Functions a test sends to a board are lambdas or built-ins, so that
cloudpickle sends them by value (the inner test modules cannot be imported on a board).
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from conftest import wait_for
from farm.client.tracker import TrackerClient
from farm.ops.inventory import load_inventory
from farm.ops.launcher import FarmStack
from pytest_remotedev.report import PROPERTY_NAMES

#: Options of every inner run: hypothesis's plugin costs about a second per run and is not needed there.
INNER = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider", "-p", "no:randomly")
ENV_VARS = (
    "REMOTEDEV_TRACKER",
    "REMOTEDEV_FARM",
    "REMOTEDEV_DEVICE_KEY",
    "REMOTEDEV_DEVICE_WAIT",
    "REMOTEDEV_DEVICE_PRIORITY",
    "REMOTEDEV_SESSION_TIMEOUT",
    "REMOTEDEV_DEVICE_STRICT",
    "TVM_TRACKER_HOST",
    "TVM_TRACKER_PORT",
)
ONE_BOARD = "tracker: {port: 0}\nboards:\n  - {key: alpha, count: 1}\n"
TWO_BOARDS = "tracker: {port: 0}\nboards:\n  - {key: alpha, count: 2}\n"
TWO_KEYS = "tracker: {port: 0}\ndefault_key: alpha\nboards:\n  - {key: alpha, count: 1}\n  - {key: beta, count: 1}\n"
ADDRESS = re.compile(r"^127\.0\.0\.1:\d+$")

Case = Dict[str, object]


@pytest.fixture(autouse=True)
def temp_dir(monkeypatch: pytest.MonkeyPatch, reachable_tmp: Path) -> Path:
    """No setting of the plugin leaks in from the environment; the inner farms' log directories land here."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    temp = reachable_tmp  # the inner farms' work directories, which their sessions (run as nobody) enter
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def inventory(pytester: pytest.Pytester, text: str = ONE_BOARD) -> str:
    return str(pytester.makefile(".yaml", farm=text))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inline run of the tests written with ``pytester``; its junit XML is at ``junit.xml``."""
    return pytester.runpytest(*INNER, "--junitxml", str(pytester.path / "junit.xml"), *args)


def junit_cases(pytester: pytest.Pytester) -> Dict[str, Case]:
    """The junit XML of the last run: per test name, its properties (a list of pairs), outcome, message, time."""
    root = ET.parse(pytester.path / "junit.xml").getroot()
    cases: Dict[str, Case] = {}
    for case in root.iter("testcase"):
        properties = [(p.get("name"), p.get("value")) for p in case.iter("property")]
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome, message = tag, (element.get("message") or "") + "\n" + (element.text or "")
        cases[case.get("name", "")] = {
            "properties": properties,
            "outcome": outcome,
            "message": message,
            "time": float(case.get("time", "0")),
        }
    return cases


def holds(case: Case) -> List[Dict[str, str]]:
    """The groups of ``device_*`` properties of a test case, one per board it held."""
    properties = case["properties"]
    assert isinstance(properties, list)
    names = [name for name, _ in properties]
    assert len(names) % len(PROPERTY_NAMES) == 0, names
    groups = [dict(properties[i : i + len(PROPERTY_NAMES)]) for i in range(0, len(properties), len(PROPERTY_NAMES))]
    for index in range(0, len(names), len(PROPERTY_NAMES)):
        assert tuple(names[index : index + len(PROPERTY_NAMES)]) == PROPERTY_NAMES
    return groups


def farm_dirs(temp: Path) -> List[Path]:
    return sorted(temp.glob("remotedev-farm-*"))


def group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def external_farm(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Tuple[str, int]]:
    """A farm started here (not by the inner run) from the inventory text in the test's parameter."""
    path = tmp_path / "external.yaml"
    path.write_text(getattr(request, "param", TWO_KEYS))
    stack = FarmStack(load_inventory(str(path)), str(tmp_path / "external-logs"))
    stack.start()
    try:
        yield stack.tracker_address
    finally:
        stack.stop()


def free_counts(tracker: Tuple[str, int]) -> Dict[str, int]:
    with TrackerClient(*tracker) as client:
        queues = client.summary().get("queue_info", {})
    return {key: int(queue.get("free", 0)) for key, queue in queues.items()}


# --- markers ------------------------------------------------------------------------------------


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*INNER, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.device(key): run this test on a board of KEY*"])
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.device("alpha")
        def test_positional():
            pass

        @pytest.mark.device(key="alpha")
        class TestKeyword:
            def test_in_class(self):
                pass
        """
    )
    result = pytester.runpytest(*INNER, "--strict-markers", "-W", "error::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=2)


def test_marker_forms_choose_the_key(pytester: pytest.Pytester) -> None:
    farm = inventory(pytester, TWO_KEYS)
    pytester.makepyfile(
        test_marked_module="""
        import pytest

        pytestmark = pytest.mark.device("beta")

        def test_module_marker(device):
            assert device.key == "beta"

        @pytest.mark.device("alpha")
        def test_positional_beats_module(device):
            assert device.key == "alpha"

        @pytest.mark.device(key="alpha")
        def test_keyword(device):
            assert device.key == "alpha"

        @pytest.mark.device(key="alpha")
        class TestClass:
            def test_class_marker(self, device):
                assert device.key == "alpha"

            @pytest.mark.device("beta")
            def test_closest_marker_wins(self, device):
                assert device.key == "beta"

        def test_factory_key_beats_marker(remote_device):
            assert remote_device(key="alpha").key == "alpha"
        """,
        test_unmarked_module="""
        def test_default_key(device):
            assert device.key == "alpha"
        """,
    )
    result = run(pytester, "--farm", farm, "--strict-markers")
    result.assert_outcomes(passed=7)
    cases = junit_cases(pytester)
    assert holds(cases["test_module_marker"])[0]["device_key"] == "beta"
    assert holds(cases["test_closest_marker_wins"])[0]["device_id"] == "beta-0"
    assert holds(cases["test_default_key"])[0]["device_id"] == "alpha-0"


MALFORMED = """
    import pytest

    @pytest.mark.device(1, 2)
    def test_two_args(device):
        pass

    @pytest.mark.device("alpha", key="alpha")
    def test_both_forms(device):
        pass

    @pytest.mark.device(key=7)
    def test_not_text(device):
        pass
"""


@pytest.mark.parametrize("options", [(), ("--device-key", "alpha")], ids=["plain", "device-key"])
def test_malformed_marker_is_a_usage_error(pytester: pytest.Pytester, options: Tuple[str, ...]) -> None:
    pytester.makepyfile(MALFORMED)
    result = pytester.runpytest(*INNER, "--farm", inventory(pytester), *options)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if line.strip()]
    assert len(lines) == 1
    assert re.match(r"ERROR: .*::test_\w+: @pytest.mark.device takes one key, as device\('rasp4'\)", lines[0])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


# --- one test, every key -------------------------------------------------------------------------

EACH_KEY = """
    import pytest

    @pytest.mark.device(keys="all")
    def test_every_key(device, device_key):
        assert device.key == device_key

    @pytest.mark.device(keys=["beta"])
    class TestListed:
        def test_listed(self, device):
            assert device.key == "beta"

        def test_key_only(self, device_key):
            assert device_key == "beta"
"""


def test_device_keys_all_runs_the_test_once_per_key_of_the_farm(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(EACH_KEY)
    result = run(pytester, "--farm", inventory(pytester, TWO_KEYS), "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["*::test_every_key[[]alpha[]] PASSED*", "*::test_every_key[[]beta[]] PASSED*"], consecutive=True
    )
    cases = junit_cases(pytester)
    assert [holds(cases["test_every_key[%s]" % key])[0]["device_key"] for key in ("alpha", "beta")] == [
        "alpha",
        "beta",
    ]


def test_device_keys_under_device_key(pytester: pytest.Pytester) -> None:
    """keys='all' narrows to the run's key; a listed key other than the run's is skipped, both keys named."""
    pytester.makepyfile(EACH_KEY)
    result = run(pytester, "--farm", inventory(pytester, TWO_KEYS), "--device-key", "alpha", "-v", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*::test_every_key[[]alpha[]] PASSED*"])
    assert "test_every_key[beta]" not in result.stdout.str()
    skipped = "SKIPPED [[]2[]] * test is for key 'beta'; this run is for key 'alpha' (--device-key)"
    result.stdout.fnmatch_lines([skipped])


def test_device_keys_all_with_an_existing_tracker(pytester: pytest.Pytester, external_farm: Tuple[str, int]) -> None:
    pytester.makepyfile(EACH_KEY)
    result = run(pytester, "--tracker", "%s:%d" % external_farm, "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*::test_every_key[[]alpha[]] PASSED*", "*::test_every_key[[]beta[]] PASSED*"])


def test_device_keys_needs_a_device(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.device(keys="all")
        def test_no_device():
            pass
        """
    )
    result = run(pytester, "--farm", inventory(pytester, TWO_KEYS))
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error
    result.stdout.fnmatch_lines(["*test_no_device: @pytest.mark.device(keys=...) needs a test that uses the device*"])


@pytest.mark.parametrize("keys", ["'every'", "[]", "['alpha', 3]"])
def test_malformed_device_keys_is_a_usage_error(pytester: pytest.Pytester, keys: str) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.device(keys=%s)
        def test_bad(device):
            pass
        """
        % keys
    )
    result = pytester.runpytest(*INNER, "--farm", inventory(pytester, TWO_KEYS))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *::test_bad: @pytest.mark.device takes one key, * device(keys='all'); *"])


# --- building for the board a test got --------------------------------------------------------------


def test_build_for_builds_for_the_board_once(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTEDEV_CACHE", str(pytester.path / "cache"))
    pytester.makefile(".c", twice="int twice(int x) { return 2 * x; }\n")
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.parametrize("attempt", [1, 2])
        def test_build_upload_call(device, build_for, attempt):
            library = build_for(device, ["twice.c"])
            assert os.path.dirname(library).endswith(os.path.join("cache", "artifacts", "x86_64-linux-gnu"))
            device.upload(library)
            twice = device.load_module(os.path.basename(library)).get_function("twice", "int twice(int x)")
            assert twice(21) == 42

        def test_compile_error_fails_the_test(device, build_for, tmp_path):
            broken = tmp_path / "broken.c"
            broken.write_text("int broken(void) { return }\\n")
            build_for(device, [broken])
        """
    )
    result = run(pytester, "--farm", inventory(pytester))
    result.assert_outcomes(passed=2, failed=1)
    built = list((pytester.path / "cache" / "artifacts" / "x86_64-linux-gnu").glob("twice-*.so"))
    assert len(built) == 1  # the second test found it in the cache
    message = str(junit_cases(pytester)["test_compile_error_fails_the_test"]["message"])
    assert re.search(r"building .*broken\.c for the board \(x86_64\): .* failed with code 1", message), message
    assert "Traceback" not in message


# --- keys the farm does not serve ---------------------------------------------------------------


UNSERVED = """
    import pytest

    @pytest.mark.device("gamma")
    def test_marked_for_gamma(device):
        raise AssertionError("got a board of a key the farm does not serve")

    def test_factory_for_gamma(remote_device):
        remote_device(key="gamma")
        raise AssertionError("got a board of a key the farm does not serve")

    def test_served(device):
        assert device.run(sum, [1, 2]) == 3
"""


def test_unserved_key_is_skipped_naming_the_keys(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(UNSERVED)
    result = run(pytester, "--farm", inventory(pytester), "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        ["SKIPPED * no board of key 'gamma' in the farm at 127.0.0.1:*; its keys: alpha (1)"] * 2,
        consecutive=True,
    )


@pytest.mark.parametrize("source", ["--device-strict", "REMOTEDEV_DEVICE_STRICT", "ini device_strict"])
def test_unserved_key_fails_when_strict(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    pytester.makepyfile(UNSERVED)
    args = ["--farm", inventory(pytester)]
    if source == "--device-strict":
        args.append(source)
    elif source == "REMOTEDEV_DEVICE_STRICT":
        monkeypatch.setenv(source, "1")
    else:
        pytester.makeini("[pytest]\ndevice_strict = true\n")
    result = run(pytester, *args)
    cases = junit_cases(pytester)
    assert {name: case["outcome"] for name, case in cases.items()} == {
        "test_marked_for_gamma": "error",  # the device fixture failed in setup
        "test_factory_for_gamma": "failure",
        "test_served": "passed",
    }
    for name in ("test_marked_for_gamma", "test_factory_for_gamma"):
        message = str(cases[name]["message"])
        assert re.search(r"no board of key 'gamma' in the farm at 127\.0\.0\.1:\d+; its keys: alpha \(1\) ", message)
        assert "(--device-strict)" in message and "does not serve" not in message
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("source", ["--device-key", "REMOTEDEV_DEVICE_KEY"])
def test_tests_for_another_key_are_skipped(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.device("alpha")
        def test_for_alpha(device):
            raise AssertionError("ran in a run for key beta")

        @pytest.mark.device("alpha")
        class TestForAlpha:
            def test_in_class(self):
                raise AssertionError("ran in a run for key beta")

        @pytest.mark.device("beta")
        def test_for_beta(device):
            assert device.key == "beta"

        def test_unmarked(device):
            assert device.key == "beta"
        """
    )
    args = ["--farm", inventory(pytester, TWO_KEYS), "-rs"]
    if source == "--device-key":
        args += ["--device-key", "beta"]
    else:
        monkeypatch.setenv(source, "beta")
    result = run(pytester, *args)
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(
        ["SKIPPED * test is for key 'alpha'; this run is for key 'beta' (%s)" % source] * 2, consecutive=True
    )


# --- boards are released, whatever happens -----------------------------------------------------


def test_board_released_after_a_failing_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_fails_holding_a_board(device):
            assert device.run(sum, [1, 2]) == 3
            assert False, "the test failed while holding the board"

        def test_raises_holding_a_board(remote_device):
            remote_device()
            raise RuntimeError("boom")

        @pytest.fixture
        def broken(device):
            raise RuntimeError("the fixture broke after taking the board")

        def test_fixture_breaks_holding_a_board(broken):
            pass

        def test_next_gets_the_board(device):
            assert device.run(sum, [4, 5]) == 9
        """
    )
    result = run(pytester, "--farm", inventory(pytester), "--device-wait", "5")
    result.assert_outcomes(passed=1, failed=2, errors=1)
    cases = junit_cases(pytester)
    for case in cases.values():
        (hold,) = holds(case)
        assert hold["device_id"] == "alpha-0"
    assert float(holds(cases["test_next_gets_the_board"])[0]["device_queue_wait"]) < 5


def test_two_boards_in_one_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_takes_both(remote_device):
            first, second = remote_device(), remote_device()
            assert (first.host, first.port) != (second.host, second.port)
            assert first.run(sum, [1]) == 1 and second.run(sum, [2]) == 2
            assert False, "fails while holding both boards"

        def test_takes_both_again(remote_device):
            first, second = remote_device(wait=5), remote_device(wait=5)
            assert (first.host, first.port) != (second.host, second.port)
        """
    )
    result = run(pytester, "--farm", inventory(pytester, TWO_BOARDS))
    result.assert_outcomes(passed=1, failed=1)
    cases = junit_cases(pytester)
    for name in ("test_takes_both", "test_takes_both_again"):
        groups = holds(cases[name])
        assert len(groups) == 2
        assert {group["device_id"] for group in groups} == {"alpha-0", "alpha-1"}
        assert len({group["device_address"] for group in groups}) == 2
    result.stdout.fnmatch_lines(["*- remotedev: boards by key -*", "key *", "alpha  2  *2  *"])


def test_board_lost_mid_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os
        import signal
        import time

        def test_session_process_exits(device):
            device.run(os._exit, 3)

        def test_works_after_the_exit(device):
            assert device.run(sum, [1, 2]) == 3

        def test_session_process_killed(device):
            device.run(lambda: os.kill(os.getpid(), signal.SIGKILL))

        def test_works_after_the_kill(device):
            assert device.run(sum, [1, 2]) == 3

        def test_session_timeout(remote_device):
            board = remote_device(session_timeout=1)
            board.run(time.sleep, 5)

        def test_works_after_the_timeout(device):
            assert device.run(sum, [1, 2]) == 3
        """
    )
    result = run(pytester, "--farm", inventory(pytester), "--device-wait", "10")
    result.assert_outcomes(passed=3, failed=3)
    cases = junit_cases(pytester)
    what = {
        "test_session_process_exits": "exited with code 3 while running _exit()",
        "test_session_process_killed": "killed by signal 9 (SIGKILL) while running <lambda>()",
        "test_session_timeout": "the session timeout of 1 s expired while running sleep()",
    }
    for name, happened in what.items():
        case = cases[name]
        (hold,) = holds(case)
        first_line = str(case["message"]).splitlines()[0]
        assert first_line.startswith("farm.errors.SessionLostError: session on board 'alpha'"), first_line
        assert " (%s) at %s ended: " % (hold["device_id"], hold["device_address"]) in first_line
        assert happened in first_line
    for name in ("test_works_after_the_exit", "test_works_after_the_kill", "test_works_after_the_timeout"):
        assert cases[name]["outcome"] == "passed"


def test_settings_reach_the_boards(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session timeout from the environment and the queue wait from the ini file are the ones applied."""
    monkeypatch.setenv("REMOTEDEV_SESSION_TIMEOUT", "1")
    pytester.makeini("[pytest]\ndevice_wait = 1\n")
    pytester.makepyfile(
        """
        import time

        def test_session_timeout_from_the_environment(device):
            device.run(time.sleep, 5)

        def test_wait_from_the_ini_file(remote_device):
            remote_device(session_timeout=60)  # beats the environment's 1 s, which would free the board
            remote_device()
        """
    )
    result = run(pytester, "--farm", inventory(pytester))
    result.assert_outcomes(failed=2)
    cases = junit_cases(pytester)
    assert "the session timeout of 1 s expired" in str(cases["test_session_timeout_from_the_environment"]["message"])
    assert "freed within 1 s" in str(cases["test_wait_from_the_ini_file"]["message"])


# --- waiting in the queue ---------------------------------------------------------------------


def test_waiting_past_the_limit_fails_with_the_trackers_message(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_second_board_of_a_one_board_farm(remote_device):
            remote_device()
            remote_device(wait=1)

        @pytest.fixture
        def first(remote_device):
            return remote_device()

        @pytest.fixture
        def second(first, remote_device):
            return remote_device(wait=1)

        def test_fixture_waits_too_long(second):
            pass

        def test_board_free_again(device):
            assert device.run(sum, [1, 2]) == 3
        """
    )
    result = run(pytester, "--farm", inventory(pytester), "--device-wait", "30")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    cases = junit_cases(pytester)
    assert cases["test_second_board_of_a_one_board_farm"]["outcome"] == "failure"
    assert cases["test_fixture_waits_too_long"]["outcome"] == "error"  # in setup
    for name in ("test_second_board_of_a_one_board_farm", "test_fixture_waits_too_long"):
        message = str(cases[name]["message"]).splitlines()[0]
        match = re.search(r"waited ([\d.]+) s for a board of key 'alpha': ", message)
        assert match and float(match.group(1)) >= 0.9, message
        assert "no board of key 'alpha' freed within 1 s" in message
        assert re.search(r"\(\d+ requests? ahead\)", message), message
        assert cases[name]["time"] >= 0.9
        (hold,) = holds(cases[name])  # the first board, recorded and released
        assert hold["device_id"] == "alpha-0"
    assert float(holds(cases["test_board_free_again"])[0]["device_queue_wait"]) < 1


# --- reports ---------------------------------------------------------------------------------------


def test_junit_properties_and_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time

        def test_first(device):
            assert device.run(sum, [1]) == 1

        def test_second(device):
            device.run(time.sleep, 0.2)

        def test_no_board():
            pass
        """
    )
    start = __import__("time").time()
    result = run(pytester, "--farm", inventory(pytester))
    end = __import__("time").time()
    result.assert_outcomes(passed=3)
    cases = junit_cases(pytester)
    assert cases["test_no_board"]["properties"] == []
    previous_until = start
    for name in ("test_first", "test_second"):
        (hold,) = holds(cases[name])
        assert hold["device_key"] == "alpha" and hold["device_id"] == "alpha-0"
        assert ADDRESS.match(hold["device_address"]), hold
        wait, held = float(hold["device_queue_wait"]), float(hold["device_held"])
        held_from, held_until = float(hold["device_held_from"]), float(hold["device_held_until"])
        assert 0 <= wait < 5
        assert previous_until <= held_from <= held_until <= end
        assert held == pytest.approx(held_until - held_from, abs=1e-5)
        previous_until = held_until
    assert float(holds(cases["test_second"])[0]["device_held"]) >= 0.2
    lines = result.stdout.lines
    index = next(i for i, line in enumerate(lines) if re.match(r"^-+ remotedev: boards by key -+$", line))
    assert lines[index + 1].split() == ["key", "tests", "boards", "queue", "wait", "total", "longest", "busy",
                                        "utilisation"]  # fmt: skip
    assert re.match(r"^alpha +2 +1 +[\d.]+ s +[\d.]+ s +[\d.]+ s +\d+%$", lines[index + 2]), lines[index + 2]


def test_no_board_no_farm_no_summary(pytester: pytest.Pytester, temp_dir: Path) -> None:
    pytester.makepyfile("def test_plain(): pass")
    result = run(pytester, "--farm", inventory(pytester))
    result.assert_outcomes(passed=1)
    assert "boards by key" not in result.stdout.str()
    assert farm_dirs(temp_dir) == []  # nothing was started


# --- the farm fixture --------------------------------------------------------------------------------


def test_bundled_farm(pytester: pytest.Pytester, temp_dir: Path) -> None:
    path = inventory(pytester)
    record = pytester.path / "farm.json"
    pytester.makepyfile(
        """
        import json

        def test_farm(farm):
            assert farm.bundled is True
            assert farm.keys == {"alpha": 1}
            assert farm.default_key == "alpha"
            assert farm.inventory == %r
            assert [board["name"] for board in farm.boards] == ["alpha-0"]
            with open(%r, "w") as handle:
                json.dump(farm.to_json(), handle)

        def test_same_farm_for_every_test(farm, device):
            assert device.port and farm.boards[0]["key"] == "alpha"
        """
        % (path, str(record))
    )
    result = run(pytester, "--farm", path)
    result.assert_outcomes(passed=2)
    described = json.loads(record.read_text())
    pids = [board["pid"] for board in described["boards"]]
    assert pids and all(isinstance(pid, int) for pid in pids)
    wait_for(lambda: all(group_gone(pid) for pid in pids), 10, "the bundled farm's boards are gone")
    host, port = described["tracker"]
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=2).close()  # the tracker is gone too
    assert farm_dirs(temp_dir) == []  # a passing run leaves no logs behind


def test_failed_run_keeps_the_farm_logs(pytester: pytest.Pytester, temp_dir: Path) -> None:
    pytester.makepyfile("def test_fails(device):\n    assert False\n")
    result = run(pytester, "--farm", inventory(pytester))
    result.assert_outcomes(failed=1)
    (kept,) = farm_dirs(temp_dir)
    assert {path.name for path in kept.iterdir()} >= {"tracker.log", "alpha-0.log"}
    result.stdout.fnmatch_lines(["remotedev: the bundled farm's logs are kept in %s" % kept])


@pytest.mark.parametrize("external_farm", [TWO_KEYS], indirect=True)
def test_farm_of_an_existing_tracker(pytester: pytest.Pytester, external_farm: Tuple[str, int]) -> None:
    host, port = external_farm
    pytester.makepyfile(
        """
        import pytest

        def test_farm(farm):
            assert farm.bundled is False
            assert farm.tracker == (%r, %d)
            assert farm.keys == {"alpha": 1, "beta": 1}
            assert farm.default_key is None  # two keys: the farm has no default

        @pytest.mark.device("beta")
        def test_marked(device):
            assert device.key == "beta"

        def test_no_key(device):
            raise AssertionError("got a board without a key")

        @pytest.mark.device("gamma")
        def test_unserved(device):
            raise AssertionError("got a board of a key the farm does not serve")
        """
        % (host, port)
    )
    result = run(pytester, "--tracker", "%s:%d" % external_farm, "-rs")
    result.assert_outcomes(passed=2, errors=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED * no board of key 'gamma' in the farm at %s:%d; its keys: alpha (1), beta (1)" % (host, port)]
    )
    message = str(junit_cases(pytester)["test_no_key"]["message"])
    assert "no board key for this test: mark it @pytest.mark.device('KEY') or pass --device-key" in message
    assert "(the farm at %s:%d serves alpha (1), beta (1))" % (host, port) in message
    # the run stopped nothing of the farm it did not start, and gave its boards back
    wait_for(lambda: free_counts(external_farm) == {"alpha": 1, "beta": 1}, 10, "both boards are free again")


@pytest.mark.parametrize("external_farm", [ONE_BOARD], indirect=True)
def test_only_key_of_an_existing_tracker_is_the_default(
    pytester: pytest.Pytester, external_farm: Tuple[str, int]
) -> None:
    pytester.makepyfile(
        """
        def test_default_key(farm, device):
            assert farm.default_key == "alpha" and not farm.bundled
            assert device.key == "alpha"
        """
    )
    result = run(pytester, "--tracker", "%s:%d" % external_farm)
    result.assert_outcomes(passed=1)
    (hold,) = holds(junit_cases(pytester)["test_default_key"])
    assert hold["device_id"] == "alpha-0"


def test_unreachable_tracker_fails_the_tests_that_need_it(pytester: pytest.Pytester) -> None:
    with socket.socket() as unused:  # bound, never listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        pytester.makepyfile(
            """
            def test_needs_a_board(device):
                pass

            def test_needs_none():
                pass
            """
        )
        result = run(pytester, "--tracker", "127.0.0.1:%d" % port)
    result.assert_outcomes(passed=1, errors=1)
    message = str(junit_cases(pytester)["test_needs_a_board"]["message"])
    assert "pytest-remotedev: cannot reach the tracker at 127.0.0.1:%d" % port in message
    assert "Traceback" not in message
