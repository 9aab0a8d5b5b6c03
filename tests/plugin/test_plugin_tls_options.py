"""The plugin's TLS options: where each comes from, the inventory's ``tls`` block as the fallback, the checks at
configure time, and the environment every client, worker and daemon of the run gets.

No farm is started: the inner runs either only configure, or run tests that use no board.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from farm_certs import TlsFiles

from farm.net.tls import ENV
from pytest_remotedev.options import Settings

#: Options of every inner run: hypothesis's plugin costs about a second per run and is not needed there.
INNER = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")
OTHER_VARIABLES = ("REMOTEDEV_TRACKER", "REMOTEDEV_FARM", "REMOTEDEV_SECRET_FILE", "TVM_TRACKER_HOST")
ONE_BOARD = "tracker: {port: 0}\nboards:\n  - {key: alpha, count: 1}\n"
TRACKER = ("--tracker", "farm.example:9190")  # a run that only dials: no inventory, no daemons of its own
#: An inner test that writes the TLS variables it sees (in its worker, under xdist) to the file ENV_DUMP names.
DUMP_TEST = """
import json, os

def test_environment():
    names = %r
    seen = {name: os.environ.get(name) for name in names}
    with open(os.environ["ENV_DUMP"] + "." + os.environ.get("PYTEST_XDIST_WORKER", "main"), "w") as handle:
        json.dump(seen, handle)
""" % (sorted(ENV.values()),)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, reachable_tmp: Path) -> None:
    """No TLS or farm setting leaks in from the caller's environment; undone after each test."""
    for name in (*ENV.values(), *OTHER_VARIABLES):
        monkeypatch.setenv(name, "")  # recorded, so that the delenv below and the plugin's writes are undone
        monkeypatch.delenv(name)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # the inner run is no worker, whatever runs this one
    temp = reachable_tmp  # the inner farms' work directories, which their sessions (run as nobody) enter
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))


@pytest.fixture
def certs(pytester: pytest.Pytester, tls_files: TlsFiles) -> Dict[str, str]:
    """Copies of the farm's files under the inner run's directory, three of each (cmd, env, ini), by role."""
    directory = pytester.mkdir("certs")
    copies = {}
    for role in ("cert", "key", "ca"):
        for source in ("cmd", "env", "ini"):
            copies["%s_%s" % (role, source)] = shutil.copy(
                getattr(tls_files, role), directory / ("%s.%s" % (role, source))
            )
    return {name: str(path) for name, path in copies.items()}


def settings_of(pytester: pytest.Pytester, *args: str) -> Settings:
    """The plugin's resolved settings for a run with ``args`` (configured only: no test runs, no farm starts)."""
    config = pytester.parseconfigure(*INNER, *args)
    return config.pluginmanager.get_plugin("remotedev-run").settings


def write_ini(pytester: pytest.Pytester, **values: str) -> None:
    pytester.makeini("[pytest]\n" + "".join("%s = %s\n" % item for item in values.items()))


def tls_of(settings: Settings) -> Tuple[Optional[str], ...]:
    return settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name


# --- precedence: command line > environment > ini file > default, as every option ---------------


@pytest.mark.parametrize("given", ["all", "env+ini", "ini", "none"])
def test_precedence_of_each_tls_setting(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, certs: Dict[str, str], given: str
) -> None:
    args: List[str] = []
    if given == "all":
        args = ["--tls-cert", certs["cert_cmd"], "--tls-key", certs["key_cmd"], "--tls-ca", certs["ca_cmd"]]
        args += ["--tls-server-name", "cmd.test"]
    if given in ("all", "env+ini"):
        for name, value in (("cert", certs["cert_env"]), ("key", certs["key_env"]), ("ca", certs["ca_env"])):
            monkeypatch.setenv(ENV[name], value)
        monkeypatch.setenv(ENV["server_name"], "env.test")
    if given != "none":
        write_ini(
            pytester,
            remotedev_tls_cert=certs["cert_ini"],
            remotedev_tls_key=certs["key_ini"],
            remotedev_tls_ca=certs["ca_ini"],
            remotedev_tls_server_name="ini.test",
        )
    settings = settings_of(pytester, *args)
    source = {"all": "cmd", "env+ini": "env", "ini": "ini"}.get(given)
    if source is None:
        assert tls_of(settings) == (None, None, None, None) and settings.tls is None
        assert {settings.sources["tls_" + name] for name in ENV} == {"default"}
        return
    expected = tuple(certs["%s_%s" % (role, source)] for role in ("cert", "key", "ca")) + ("%s.test" % source,)
    assert tls_of(settings) == expected
    where = {
        "cmd": lambda name: "--tls-" + name.replace("_", "-"),
        "env": lambda name: ENV[name],
        "ini": lambda name: "ini remotedev_tls_" + name,
    }[source]
    assert [settings.sources["tls_" + name] for name in ENV] == [where(name) for name in ENV]
    assert settings.tls is not None and settings.tls.ca == expected[2]
    assert settings.inventory is not None and settings.inventory.tls is not None
    assert settings.inventory.tls.as_env() == settings.tls.as_env()  # the run's own farm's daemons get the same


@pytest.mark.parametrize("value", ["sub/ca.pem", "system"])
def test_ini_paths_are_relative_to_the_ini_file_and_system_is_a_name(
    pytester: pytest.Pytester, tls_files: TlsFiles, value: str
) -> None:
    sub = pytester.mkdir("sub")
    shutil.copy(tls_files.ca, sub / "ca.pem")
    write_ini(pytester, remotedev_tls_ca=value)
    settings = settings_of(pytester, *TRACKER)
    expected = str(pytester.path / value) if value != "system" else "system"
    assert (settings.tls_ca, settings.sources["tls_ca"]) == (expected, "ini remotedev_tls_ca")
    assert settings.tls is not None


def test_command_line_paths_are_the_working_directorys(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, certs: Dict[str, str]
) -> None:
    monkeypatch.chdir(Path(certs["ca_cmd"]).parent)
    settings = settings_of(pytester, *TRACKER, "--tls-ca", "ca.cmd")
    assert settings.tls_ca == certs["ca_cmd"]


# --- the inventory's tls block ----------------------------------------------------------------------


def inventory_with_tls(pytester: pytest.Pytester, tls_files: TlsFiles) -> Path:
    block = "tls: {cert: %s, key: %s, ca: %s, server_name: farm.test}\n" % (
        tls_files.cert,
        tls_files.key,
        tls_files.ca,
    )
    return pytester.makefile(".yaml", farm=ONE_BOARD + block)


def test_the_inventorys_tls_is_used_when_the_run_gives_none(pytester: pytest.Pytester, tls_files: TlsFiles) -> None:
    inventory = inventory_with_tls(pytester, tls_files)
    settings = settings_of(pytester, "--farm", str(inventory))
    assert tls_of(settings) == (tls_files.cert, tls_files.key, tls_files.ca, "farm.test")
    assert {settings.sources["tls_" + name] for name in ENV} == {"inventory %s" % inventory}


def test_the_runs_options_override_the_inventorys_field_by_field(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tls_files: TlsFiles, certs: Dict[str, str]
) -> None:
    inventory = inventory_with_tls(pytester, tls_files)
    monkeypatch.setenv(ENV["server_name"], "localhost")
    settings = settings_of(pytester, "--farm", str(inventory), "--tls-ca", certs["ca_cmd"])
    assert tls_of(settings) == (tls_files.cert, tls_files.key, certs["ca_cmd"], "localhost")
    assert [settings.sources["tls_" + name] for name in ENV] == [
        "inventory %s" % inventory,
        "inventory %s" % inventory,
        "--tls-ca",
        ENV["server_name"],
    ]
    assert settings.inventory is not None and settings.inventory.tls is not None
    assert settings.inventory.tls.as_env() == settings.tls.as_env()  # type: ignore[union-attr]


def test_with_a_tracker_the_inventory_is_not_read(pytester: pytest.Pytester, tls_files: TlsFiles) -> None:
    inventory = inventory_with_tls(pytester, tls_files)
    settings = settings_of(pytester, "--farm", str(inventory), *TRACKER)
    assert settings.tls is None and settings.inventory is None


# --- the environment of the run ---------------------------------------------------------------------------


def dumps(directory: Path) -> Dict[str, Dict[str, Optional[str]]]:
    import json

    return {path.suffix[1:]: json.loads(path.read_text()) for path in directory.glob("env.*")}


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_the_options_reach_every_process_of_the_run_as_variables(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, certs: Dict[str, str], workers: List[str]
) -> None:
    monkeypatch.setenv("ENV_DUMP", str(pytester.path / "env"))
    pytester.makepyfile(test_env=DUMP_TEST + "\n\ndef test_second():\n    test_environment()\n")
    args = ["--tls-ca", certs["ca_cmd"], "--tls-server-name", "farm.test", "--tls-cert", certs["cert_cmd"]]
    args += ["--tls-key", certs["key_cmd"]]
    result = pytester.runpytest_subprocess(*INNER, *TRACKER, *args, *workers, timeout=120)
    result.assert_outcomes(passed=2)
    seen = dumps(pytester.path)
    assert set(seen) == ({"gw0", "gw1"} if workers else {"main"})
    expected = {
        "REMOTEDEV_TLS_CA": certs["ca_cmd"],
        "REMOTEDEV_TLS_SERVER_NAME": "farm.test",
        "REMOTEDEV_TLS_CERT": certs["cert_cmd"],
        "REMOTEDEV_TLS_KEY": certs["key_cmd"],
    }
    assert all(values == expected for values in seen.values()), seen


def test_the_inventorys_tls_reaches_the_run_when_it_gives_none(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tls_files: TlsFiles
) -> None:
    monkeypatch.setenv("ENV_DUMP", str(pytester.path / "env"))
    inventory = inventory_with_tls(pytester, tls_files)
    pytester.makepyfile(test_env=DUMP_TEST)
    result = pytester.runpytest_subprocess(*INNER, "--farm", str(inventory), timeout=120)
    result.assert_outcomes(passed=1)  # the test uses no board: the farm is never started
    assert dumps(pytester.path)["main"] == tls_files.daemon(server_name="farm.test").as_env()


def test_the_variables_are_restored_after_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, certs: Dict[str, str]
) -> None:
    monkeypatch.setenv(ENV["server_name"], "before.test")
    monkeypatch.setenv("ENV_DUMP", str(pytester.path / "env"))
    pytester.makepyfile(test_env=DUMP_TEST)
    result = pytester.runpytest_inprocess(
        *INNER, *TRACKER, "--tls-ca", certs["ca_cmd"], "--tls-server-name", "in.test"
    )
    result.assert_outcomes(passed=1)
    assert dumps(pytester.path)["main"][ENV["server_name"]] == "in.test"
    assert os.environ.get(ENV["server_name"]) == "before.test"
    assert ENV["ca"] not in os.environ


def test_the_header_names_the_ca_and_its_source(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, certs: Dict[str, str]
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    monkeypatch.setenv(ENV["server_name"], "farm.test")
    result = pytester.runpytest_inprocess(*INNER, *TRACKER, "--tls-ca", certs["ca_cmd"])
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "remotedev: farm at tracker farm.example:9190 (from --tracker); key the farm's only key; "
            "TLS, CA %s (from --tls-ca), server name farm.test (from REMOTEDEV_TLS_SERVER_NAME)" % certs["ca_cmd"]
        ]
    )


# --- bad configuration: a usage error, one line, before any test ----------------------------------------


@pytest.mark.parametrize(
    "args, env, ini, expected",
    [
        (["--tls-ca", "/no/such/ca.pem", *TRACKER], {}, {}, "--tls-ca from --tls-ca: no such file /no/such/ca.pem"),
        ([*TRACKER], {ENV["ca"]: "/no/ca.pem"}, {}, "--tls-ca from REMOTEDEV_TLS_CA: no such file /no/ca.pem"),
        (
            [*TRACKER],
            {},
            {"remotedev_tls_ca": "missing.pem"},
            "--tls-ca from ini remotedev_tls_ca: no such file {dir}/missing.pem",
        ),
        (["--tls-cert", "{dir}"], {}, {}, "--tls-cert from --tls-cert: no such file {dir}"),
        (["--tls-server-name", "two words", *TRACKER], {}, {}, "'two words' is not a host name"),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{key}", *TRACKER],
            {},
            {},
            "TLS for connecting to the farm (--tls-cert from --tls-cert, --tls-key from --tls-key): "
            "connecting with TLS needs --tls-ca",
        ),
        (
            ["--tls-ca", "{ca}"],
            {},
            {},
            "TLS for the run's own farm (--tls-ca from --tls-ca): "
            "a daemon that listens with TLS needs both --tls-cert and --tls-key",
        ),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{other_key}", "--tls-ca", "{ca}"],
            {},
            {},
            "TLS for the run's own farm (--tls-cert from --tls-cert, --tls-key from --tls-key, --tls-ca from "
            "--tls-ca): cannot load the TLS certificate {cert} with its key {other_key}: ",
        ),
        (
            ["--tls-ca", "{key}", *TRACKER],
            {},
            {},
            "TLS for connecting to the farm (--tls-ca from --tls-ca): cannot load the TLS CA {key}: ",
        ),
        (["--farm", "{dir}/bad-tls.yaml"], {}, {}, "bad-tls.yaml:7: tls.ca: expected an existing, readable file"),
    ],
    ids=[
        "ca-missing",
        "ca-env-missing",
        "ca-ini-missing",
        "cert-a-directory",
        "server-name",
        "no-ca-to-connect",
        "own-farm-without-certificate",
        "key-of-another-certificate",
        "ca-not-a-certificate",
        "inventory-names-a-missing-file",
    ],
)
def test_bad_tls_stops_the_run_with_one_line(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tls_files: TlsFiles,
    args: List[str],
    env: Dict[str, str],
    ini: Dict[str, str],
    expected: str,
) -> None:
    names = dict(tls_files._asdict(), dir=str(pytester.path))
    pytester.makefile(
        ".yaml",
        **{"bad-tls": ONE_BOARD + "tls:\n  cert: %s\n  key: %s\n  ca: absent.pem\n" % (tls_files.cert, tls_files.key)},
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if ini:
        write_ini(pytester, **ini)
    pytester.makepyfile("def test_never_runs(): raise AssertionError('ran despite a bad configuration')")
    result = pytester.runpytest_inprocess(*INNER, *[arg.format(**names) for arg in args])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ERROR: pytest-remotedev: ")
    assert expected.format(**names) in lines[0], lines[0]
    assert "ran despite" not in result.stdout.str() + result.stderr.str()
