"""The plugin's options: where each setting comes from, what the header says, and bad configuration.

Each test runs pytest inside pytest (``pytester``): inline where the run only needs this process
(``os.environ`` is read at configure time, so ``monkeypatch.setenv`` reaches it), in a subprocess
where the environment of a real process matters. Runs that only configure or print the header never
start a farm: the plugin starts its own farm on the first test that needs a board.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from farm.ops.benchruns import save_run
from farm.ops.inventory import DEFAULT_INVENTORY
from farm.ops.regression import FailSpec
from pytest_remotedev.benchrun import BENCHMARK_PLUGIN
from pytest_remotedev.options import DEFAULT_DEVICE_WAIT, Settings

#: Options of every inner run: hypothesis's plugin costs about a second per run and is not needed there.
INNER = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")
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
    "REMOTEDEV_BENCHMARK_SAVE",
    "REMOTEDEV_BENCHMARK_STORAGE",
    "REMOTEDEV_BENCHMARK_COMPARE",
    "REMOTEDEV_BENCHMARK_FAIL",
)
ONE_BOARD = "tracker: {port: 0}\nboards:\n  - {key: alpha, count: 1}\n"
TWO_KEYS = "tracker: {port: 0}\ndefault_key: alpha\nboards:\n  - {key: alpha, count: 1}\n  - {key: beta, count: 1}\n"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, reachable_tmp: Path) -> None:
    """No setting of the plugin leaks in from the caller's environment; farm logs kept by inner runs land here."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    temp = reachable_tmp  # the inner farms' work directories, which their sessions (run as nobody) enter
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))


def settings_of(pytester: pytest.Pytester, *args: str) -> Settings:
    """The plugin's resolved settings for a run with ``args`` (configured only: no test runs, no farm starts)."""
    config = pytester.parseconfigure(*INNER, *args)
    return config.pluginmanager.get_plugin("remotedev-run").settings


def header_of(result: pytest.RunResult) -> str:
    """The run's ``remotedev:`` header line (fails if there is not exactly one)."""
    lines = [line for line in result.stdout.lines if line.startswith("remotedev: ")]
    assert len(lines) == 1, result.stdout.str()
    return lines[0]


def error_lines(result: pytest.RunResult) -> List[str]:
    return [line for line in result.stderr.lines if line.strip()]


def write_ini(pytester: pytest.Pytester, **values: str) -> None:
    body = "".join("%s = %s\n" % item for item in values.items())
    pytester.makeini("[pytest]\n" + body)


# --- precedence: command line > environment > ini file > default ---------------------------


# dest, command line (flag, value), env (name, value), ini (name, value), parsed command line/env/ini values
PRECEDENCE = [
    (
        "device_key",
        ("--device-key", "kc"),
        ("REMOTEDEV_DEVICE_KEY", "ke"),
        ("device_key", "ki"),
        ("kc", "ke", "ki"),
        None,
    ),
    (
        "device_wait",
        ("--device-wait", "1.5"),
        ("REMOTEDEV_DEVICE_WAIT", "2"),
        ("device_wait", "3"),
        (1.5, 2.0, 3.0),
        DEFAULT_DEVICE_WAIT,
    ),
    (
        "tracker",
        ("--tracker", "cmd.example:1001"),
        ("REMOTEDEV_TRACKER", "env.example:1002"),
        ("remotedev_tracker", "ini.example:1003"),
        (("cmd.example", 1001), ("env.example", 1002), ("ini.example", 1003)),
        None,
    ),
    (
        "device_priority",
        ("--device-priority", "7"),
        ("REMOTEDEV_DEVICE_PRIORITY", "-2"),
        ("device_priority", "3"),
        (7, -2, 3),
        0,
    ),
    (
        "session_timeout",
        ("--device-session-timeout", "4"),
        ("REMOTEDEV_SESSION_TIMEOUT", "5"),
        ("device_session_timeout", "6.5"),
        (4.0, 5.0, 6.5),
        None,
    ),
    (
        "device_strict",
        ("--device-strict", None),
        ("REMOTEDEV_DEVICE_STRICT", "no"),
        ("device_strict", "yes"),
        (True, False, True),
        False,
    ),
    (
        "benchmark_save",
        ("--device-benchmark-save", "cmd"),
        ("REMOTEDEV_BENCHMARK_SAVE", "env"),
        ("device_benchmark_save", "ini"),
        ("cmd", "env", "ini"),
        None,
    ),
]


@pytest.mark.parametrize("dest, cmdline, env, ini, values, default", PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
@pytest.mark.parametrize("given", ["all", "env+ini", "ini", "none"])
def test_precedence_of_each_setting(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    dest: str,
    cmdline: Tuple[str, Optional[str]],
    env: Tuple[str, str],
    ini: Tuple[str, str],
    values: Tuple[object, object, object],
    default: object,
    given: str,
) -> None:
    args: List[str] = []
    if given == "all":
        args = [cmdline[0]] if cmdline[1] is None else list(cmdline)
    if given in ("all", "env+ini"):
        monkeypatch.setenv(*env)
    if given != "none":
        write_ini(pytester, **{ini[0]: ini[1]})
    settings = settings_of(pytester, *args)
    expected = {
        "all": (values[0], cmdline[0]),
        "env+ini": (values[1], env[0]),
        "ini": (values[2], "ini %s" % ini[0]),
        "none": (default, "default"),
    }[given]
    assert (getattr(settings, dest), settings.sources[dest]) == expected


def test_defaults_and_the_embedded_inventory(pytester: pytest.Pytester) -> None:
    settings = settings_of(pytester)
    assert settings.tracker is None
    assert settings.farm == DEFAULT_INVENTORY and settings.sources["farm"] == "default"
    assert settings.inventory is not None
    assert settings.inventory.board_counts() == {"local": 2}
    assert settings.inventory.default_key == "local"
    assert (settings.device_wait, settings.device_priority, settings.session_timeout) == (DEFAULT_DEVICE_WAIT, 0, None)
    assert settings.device_strict is False


def test_session_timeout_zero_means_none(pytester: pytest.Pytester) -> None:
    settings = settings_of(pytester, "--device-session-timeout", "0")
    assert settings.session_timeout is None
    assert settings.sources["session_timeout"] == "--device-session-timeout"


def test_farm_precedence_and_ini_path_relative_to_the_ini_file(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = pytester.mkdir("sub")
    (sub / "ini.yaml").write_text(ONE_BOARD)
    env_file = pytester.makefile(".yaml", env=TWO_KEYS)
    cmd_file = pytester.makefile(".yaml", cmd=ONE_BOARD.replace("alpha", "gamma"))
    write_ini(pytester, remotedev_farm="sub/ini.yaml")

    settings = settings_of(pytester)
    assert Path(settings.farm) == pytester.path / "sub" / "ini.yaml"
    assert settings.sources["farm"] == "ini remotedev_farm"
    assert settings.inventory is not None and settings.inventory.board_counts() == {"alpha": 1}

    monkeypatch.setenv("REMOTEDEV_FARM", str(env_file))
    settings = settings_of(pytester)
    assert (settings.farm, settings.sources["farm"]) == (str(env_file), "REMOTEDEV_FARM")
    assert settings.inventory is not None and settings.inventory.board_counts() == {"alpha": 1, "beta": 1}

    settings = settings_of(pytester, "--farm", str(cmd_file))
    assert (settings.farm, settings.sources["farm"]) == (str(cmd_file), "--farm")
    assert settings.inventory is not None and settings.inventory.board_counts() == {"gamma": 1}


def test_benchmark_storage_and_the_run_compared_with(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of(pytester)
    assert Path(settings.benchmark_storage) == pytester.path / ".benchmarks" / "device"  # in the rootdir
    assert (settings.benchmark_compare, settings.benchmark_fail) == (None, None)

    write_ini(pytester, device_benchmark_storage="sub/runs")
    storage = pytester.path / "sub" / "runs"
    older, newer = save_run(storage, "older", []), save_run(storage, "newer", [])
    os.utime(older, (1_000_000, 1_000_000))  # the latest is the most recently written

    def baseline(*args: str) -> str:
        config = pytester.parseconfigure(*INNER, *args)
        assert Path(config.pluginmanager.get_plugin("remotedev-run").settings.benchmark_storage) == storage
        return config.pluginmanager.get_plugin(BENCHMARK_PLUGIN).baseline_path

    assert baseline("--device-benchmark-compare") == str(newer)
    assert baseline("--device-benchmark-compare=older") == str(older)
    assert baseline("--device-benchmark-fail=median:10%") == str(newer)
    monkeypatch.setenv("REMOTEDEV_BENCHMARK_COMPARE", "older")
    assert baseline("--device-benchmark-fail=min:0.002") == str(older)
    settings = settings_of(pytester, "--device-benchmark-fail=min:0.002")
    assert (settings.benchmark_compare, settings.benchmark_fail) == ("older", FailSpec("min", 0.002, False))
    assert baseline() == str(older)  # compared, with nothing failing


def test_tvm_tracker_variables(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    write_ini(pytester, remotedev_tracker="ini.example:1003")
    monkeypatch.setenv("TVM_TRACKER_HOST", "tvm.example")
    settings = settings_of(pytester)
    assert settings.tracker == ("tvm.example", 9190)  # TVM's default port; beats the ini file
    assert settings.sources["tracker"] == "TVM_TRACKER_HOST/TVM_TRACKER_PORT"
    assert settings.inventory is None  # a tracker was given: no inventory is loaded

    monkeypatch.setenv("TVM_TRACKER_PORT", "9555")
    assert settings_of(pytester).tracker == ("tvm.example", 9555)

    monkeypatch.setenv("REMOTEDEV_TRACKER", "env.example:1002")
    settings = settings_of(pytester)
    assert (settings.tracker, settings.sources["tracker"]) == (("env.example", 1002), "REMOTEDEV_TRACKER")

    settings = settings_of(pytester, "--tracker", "cmd.example:1001")
    assert (settings.tracker, settings.sources["tracker"]) == (("cmd.example", 1001), "--tracker")


def test_tvm_port_alone_is_ignored(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TVM_TRACKER_PORT", "9555")
    settings = settings_of(pytester)
    assert settings.tracker is None and settings.sources["tracker"] == "default"


# --- the header line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, expected",
    [
        ("all", "key kc (from --device-key)"),
        ("env+ini", "key ke (from REMOTEDEV_DEVICE_KEY)"),
        ("ini", "key ki (from ini device_key)"),
        ("none", "key alpha, the farm's default"),
    ],
)
def test_header_names_the_key_and_its_source(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    inventory = pytester.makefile(".yaml", farm=ONE_BOARD)
    if given != "none":
        write_ini(pytester, device_key="ki")
    if given in ("all", "env+ini"):
        monkeypatch.setenv("REMOTEDEV_DEVICE_KEY", "ke")
    args = ["--device-key", "kc"] if given == "all" else []
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*INNER, "--farm", str(inventory), *args)
    result.assert_outcomes(passed=1)
    assert header_of(result) == "remotedev: own farm from %s (from --farm); %s" % (inventory, expected)


@pytest.mark.parametrize(
    "given, expected",
    [
        ("cmdline", "farm at tracker cmd.example:1001 (from --tracker)"),
        ("env", "farm at tracker env.example:1002 (from REMOTEDEV_TRACKER)"),
        ("tvm", "farm at tracker tvm.example:1004 (from TVM_TRACKER_HOST/TVM_TRACKER_PORT)"),
        ("ini", "farm at tracker ini.example:1003 (from ini remotedev_tracker)"),
    ],
)
def test_header_names_the_tracker_and_its_source(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    write_ini(pytester, remotedev_tracker="ini.example:1003")
    if given in ("cmdline", "env", "tvm"):
        monkeypatch.setenv("TVM_TRACKER_HOST", "tvm.example")
        monkeypatch.setenv("TVM_TRACKER_PORT", "1004")
    if given in ("cmdline", "env"):
        monkeypatch.setenv("REMOTEDEV_TRACKER", "env.example:1002")
    args = ["--tracker", "cmd.example:1001"] if given == "cmdline" else []
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*INNER, *args)
    result.assert_outcomes(passed=1)  # no test needs a board: the tracker is never asked
    assert header_of(result) == "remotedev: %s; key the farm's only key" % expected


def test_header_of_the_default_farm(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*INNER)
    result.stdout.fnmatch_lines(
        ["remotedev: own farm from *farm.local.yaml (from default); key local, the farm's default"]
    )
    assert header_of(result) == "remotedev: own farm from %s (from default); key local, the farm's default" % (
        DEFAULT_INVENTORY
    )


def test_environment_of_a_real_process(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a subprocess: the environment beats the ini file, and the tests really get boards of that key."""
    write_ini(pytester, device_key="alpha", remotedev_farm="nowhere.yaml")  # both overridden below
    inventory = pytester.makefile(".yaml", farm=TWO_KEYS)
    monkeypatch.setenv("REMOTEDEV_FARM", str(inventory))
    monkeypatch.setenv("REMOTEDEV_DEVICE_KEY", "beta")
    monkeypatch.setenv("REMOTEDEV_DEVICE_WAIT", "7")
    pytester.makepyfile(
        """
        def test_board_of_the_environment_key(device, request):
            settings = request.config.pluginmanager.get_plugin("remotedev-run").settings
            assert settings.device_wait == 7.0
            assert device.key == "beta"
        """
    )
    result = pytester.runpytest_subprocess(*INNER, timeout=120)
    result.assert_outcomes(passed=1)
    assert header_of(
        result
    ) == "remotedev: own farm from %s (from REMOTEDEV_FARM); key beta (from REMOTEDEV_DEVICE_KEY)" % (inventory)


# --- bad configuration: one line naming the problem and where it came from -------------------


BAD_INVENTORY = "tracker: {port: 0}\nboards:\n  - {key: alpha, count: 1, colour: red}\n"


@pytest.mark.parametrize(
    "args, env, ini, expected",
    [
        (["--tracker", "nonsense"], {}, {}, ["--tracker from --tracker", "'nonsense' is not HOST:PORT"]),
        (["--tracker", "host:0"], {}, {}, ["--tracker from --tracker", "port in 1..65535"]),
        (["--farm", "/no/such.yaml"], {}, {}, ["--farm from --farm", "no inventory file /no/such.yaml"]),
        (["--device-wait", "-1"], {}, {}, ["--device-wait from --device-wait", "'-1' is not a number of seconds"]),
        (
            ["--device-session-timeout", "-5"],
            {},
            {},
            ["--device-session-timeout from --device-session-timeout", "'-5' is not a number of seconds"],
        ),
        ([], {"REMOTEDEV_DEVICE_WAIT": "abc"}, {}, ["--device-wait from REMOTEDEV_DEVICE_WAIT", "'abc'"]),
        (
            [],
            {"REMOTEDEV_DEVICE_STRICT": "maybe"},
            {},
            ["from REMOTEDEV_DEVICE_STRICT", "'maybe' is not true or false"],
        ),
        (
            [],
            {"TVM_TRACKER_HOST": "tvm.example", "TVM_TRACKER_PORT": "abc"},
            {},
            ["--tracker from TVM_TRACKER_HOST/TVM_TRACKER_PORT", "tvm.example:abc"],
        ),
        ([], {}, {"device_wait": "soon"}, ["--device-wait from ini device_wait", "'soon'"]),
        ([], {}, {"device_priority": "high"}, ["from ini device_priority", "'high' is not a whole number"]),
        (["--device-key", "a:b"], {}, {}, ["--device-key from --device-key", "'a:b' is not a board key"]),
        (
            ["--farm", "bad.yaml"],
            {},
            {},
            ["bad.yaml:3: boards[0].colour: unknown field 'colour'", "(from --farm)"],
        ),
        (
            [],
            {"REMOTEDEV_FARM": "bad.yaml"},
            {},
            ["bad.yaml:3: boards[0].colour: unknown field 'colour'", "(from REMOTEDEV_FARM)"],
        ),
        ([], {}, {"remotedev_farm": "missing.yaml"}, ["--farm from ini remotedev_farm", "missing.yaml"]),
    ],
    ids=[
        "tracker-nonsense",
        "tracker-port-0",
        "farm-missing",
        "wait-negative",
        "session-timeout-negative",
        "wait-env-not-a-number",
        "strict-env-not-a-flag",
        "tvm-port-not-a-number",
        "wait-ini-not-a-number",
        "priority-ini-not-a-number",
        "key-with-colon",
        "inventory-unknown-field",
        "inventory-from-env-unknown-field",
        "farm-ini-missing",
    ],
)
def test_bad_configuration_stops_the_run_with_one_line(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: List[str],
    env: dict,
    ini: dict,
    expected: List[str],
) -> None:
    pytester.makefile(".yaml", bad=BAD_INVENTORY)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if ini:
        write_ini(pytester, **ini)
    pytester.makepyfile("def test_never_runs(): raise AssertionError('ran despite a bad configuration')")
    result = pytester.runpytest(*INNER, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("ERROR: pytest-remotedev: ")
    for part in expected:
        assert part in lines[0]
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "ran despite" not in output


def test_bad_environment_in_a_real_process(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTEDEV_DEVICE_WAIT", "abc")
    pytester.makepyfile("def test_never_runs(): pass")
    result = pytester.runpytest_subprocess(*INNER, timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = error_lines(result)
    assert lines == [lines[0]] and lines[0].startswith(
        "ERROR: pytest-remotedev: --device-wait from REMOTEDEV_DEVICE_WAIT"
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_tracker_given_skips_the_inventory(pytester: pytest.Pytester) -> None:
    """With a tracker, the inventory (here a broken one) is not read: the run is not stopped by it."""
    bad = pytester.makefile(".yaml", bad=BAD_INVENTORY)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*INNER, "--tracker", "127.0.0.1:9", "--farm", str(bad))
    result.assert_outcomes(passed=1)
    assert header_of(result).startswith("remotedev: farm at tracker 127.0.0.1:9 (from --tracker)")


def test_options_are_documented_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*INNER, "--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["remote boards (pytest-remotedev):"])
    for flag in (
        "--tracker=HOST:PORT",
        "--farm=PATH",
        "--device-key=KEY",
        "--device-wait=SECONDS",
        "--device-priority=N",
        "--device-session-timeout=SECONDS",
        "--device-strict",
    ):
        result.stdout.fnmatch_lines(["*%s*" % flag])
    for ini in ("remotedev_tracker", "remotedev_farm", "device_key", "device_wait", "device_strict"):
        result.stdout.fnmatch_lines(["  %s (*):*" % ini])


def test_device_session_timeout_next_to_pytest_timeout(pytester: pytest.Pytester) -> None:
    """pytest-timeout's --session-timeout (a limit on the whole run) is not the boards' session timeout."""
    pytester.makepyfile(
        """
        import os

        def test_settings(request):
            settings = request.config.pluginmanager.get_plugin("remotedev-run").settings
            expected = os.environ["EXPECTED"]
            assert settings.session_timeout == (float(expected) if expected else None)
        """
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EXPECTED", "")
        assert pytester.runpytest(*INNER, "--session-timeout", "100").ret == 0
        patch.setenv("EXPECTED", "4")
        result = pytester.runpytest(*INNER, "--device-session-timeout", "4", "--session-timeout", "100")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
