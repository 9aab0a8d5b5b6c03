"""TLS configuration: TlsConfig from the environment and the options, its checks, and how ``farm up`` and the
launcher hand it to the daemons (no daemon is started here)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

import pytest
from farm_certs import TlsFiles

from farm.net.tls import ENV, SYSTEM_CA, TlsConfig, add_tls_arguments, daemon_tls
from farm.ops import up
from farm.ops.inventory import parse_inventory
from farm.ops.launcher import FarmStack

ONE_BOARD = "tracker: {port: 0}\nboards: [{key: k}]\n"


@pytest.fixture(autouse=True)
def no_tls_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No REMOTEDEV_TLS_* of the caller's; whatever a test (or farm up) sets is undone after it."""
    for name in ENV.values():
        monkeypatch.setenv(name, "")  # recorded, so that the delenv below and later writes are undone
        monkeypatch.delenv(name)


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_tls_arguments(parser)
    return parser.parse_args(argv)


# --- from the environment and the options --------------------------------------------------------


def test_from_env_reads_each_variable() -> None:
    environ = {
        "REMOTEDEV_TLS_CERT": "/c.pem",
        "REMOTEDEV_TLS_KEY": "/k.pem",
        "REMOTEDEV_TLS_CA": "/ca.pem",
        "REMOTEDEV_TLS_SERVER_NAME": "farm.lab",
        "REMOTEDEV_SECRET_FILE": "/s",
    }
    tls = TlsConfig.from_env(environ)
    assert (tls.cert, tls.key, tls.ca, tls.server_name) == ("/c.pem", "/k.pem", "/ca.pem", "farm.lab")
    assert tls.enabled


def test_from_env_defaults_to_os_environ_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not TlsConfig.from_env().enabled
    monkeypatch.setenv("REMOTEDEV_TLS_CA", "/ca.pem")
    monkeypatch.setenv("REMOTEDEV_TLS_CERT", "")
    tls = TlsConfig.from_env()
    assert (tls.ca, tls.cert, tls.enabled) == ("/ca.pem", None, True)


@pytest.mark.parametrize(
    "fields, enabled",
    [
        ({}, False),
        ({"server_name": "farm.lab"}, False),
        ({"ca": "x"}, True),
        ({"cert": "x"}, True),
        ({"key": "x"}, True),
    ],
)
def test_tls_is_on_when_a_file_is_named(fields: Dict[str, str], enabled: bool) -> None:
    assert TlsConfig(**fields).enabled is enabled


def test_options_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TlsConfig.from_args(parse_args()).as_env() == {}
    monkeypatch.setenv("REMOTEDEV_TLS_CA", "/env-ca.pem")
    monkeypatch.setenv("REMOTEDEV_TLS_SERVER_NAME", "env.lab")
    tls = TlsConfig.from_args(parse_args("--tls-server-name", "cmd.lab", "--tls-cert", "c.pem", "--tls-key", "k.pem"))
    assert (tls.cert, tls.key, tls.ca, tls.server_name) == ("c.pem", "k.pem", "/env-ca.pem", "cmd.lab")


def test_as_env_carries_only_what_is_set_and_round_trips() -> None:
    assert TlsConfig().as_env() == {}
    tls = TlsConfig(ca="/ca.pem", server_name="farm.lab")
    assert tls.as_env() == {"REMOTEDEV_TLS_CA": "/ca.pem", "REMOTEDEV_TLS_SERVER_NAME": "farm.lab"}
    full = TlsConfig("/c.pem", "/k.pem", "/ca.pem", "farm.lab")
    again = TlsConfig.from_env(full.as_env())
    assert [getattr(again, name) for name in ENV] == [getattr(full, name) for name in ENV]


# --- check(): what a process needs, loaded now --------------------------------------------------------


def test_check_loads_what_each_role_needs(tls_files: TlsFiles) -> None:
    tls_files.daemon().check(listens=True, dials=True)  # the proxy and the boards
    TlsConfig(cert=tls_files.cert, key=tls_files.key).check(listens=True, dials=False)  # the tracker
    tls_files.client().check(listens=False, dials=True)  # clients
    TlsConfig(ca=SYSTEM_CA).check(listens=False, dials=True)
    TlsConfig().check(listens=False, dials=False)


@pytest.mark.parametrize(
    "fields, listens, dials, expected",
    [
        ({"ca": "CA"}, True, False, "a daemon that listens with TLS needs both --tls-cert and --tls-key"),
        ({"cert": "CERT", "ca": "CA"}, True, True, "needs both --tls-cert and --tls-key"),
        ({"key": "KEY"}, True, False, "needs both --tls-cert and --tls-key"),
        ({"cert": "CERT", "key": "KEY"}, False, True, "connecting with TLS needs --tls-ca"),
        ({"cert": "CERT", "key": "KEY"}, True, True, "connecting with TLS needs --tls-ca"),
    ],
)
def test_check_names_the_missing_piece(
    tls_files: TlsFiles, fields: Dict[str, str], listens: bool, dials: bool, expected: str
) -> None:
    files = {"CA": tls_files.ca, "CERT": tls_files.cert, "KEY": tls_files.key}
    tls = TlsConfig(**{name: files[value] for name, value in fields.items()})
    with pytest.raises(ValueError, match=expected):
        tls.check(listens=listens, dials=dials)


def wrong_files(tls_files: TlsFiles, directory: Path) -> Dict[str, str]:
    garbage = directory / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    return {"missing": str(directory / "absent.pem"), "garbage": str(garbage), "directory": str(directory)}


@pytest.mark.parametrize(
    "role, wrong, expected",
    [
        ("cert", "missing", "cannot load the TLS certificate {wrong} with its key {key}: "),
        ("cert", "garbage", "cannot load the TLS certificate {wrong} with its key {key}: "),
        ("cert", "directory", "cannot load the TLS certificate {wrong} with its key {key}: "),
        ("key", "missing", "cannot load the TLS certificate {cert} with its key {wrong}: "),
        ("key", "garbage", "cannot load the TLS certificate {cert} with its key {wrong}: "),
        ("ca", "missing", "cannot load the TLS CA {wrong}: "),
        ("ca", "garbage", "cannot load the TLS CA {wrong}: "),
    ],
)
def test_check_names_a_wrong_file(tls_files: TlsFiles, tmp_path: Path, role: str, wrong: str, expected: str) -> None:
    path = wrong_files(tls_files, tmp_path)[wrong]
    tls = tls_files.daemon(**{role: path})
    with pytest.raises(ValueError) as info:
        tls.check(listens=True, dials=True)
    assert str(info.value).startswith(expected.format(wrong=path, cert=tls_files.cert, key=tls_files.key))


def test_check_refuses_a_key_of_another_certificate(tls_files: TlsFiles) -> None:
    with pytest.raises(ValueError, match="cannot load the TLS certificate .* with its key .*: .*MISMATCH"):
        tls_files.daemon(key=tls_files.other_key).check(listens=True, dials=False)


def test_a_daemon_with_an_unusable_configuration_exits_2(
    tls_files: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    assert daemon_tls(parse_args(), listens=True, dials=True) is None  # TLS off
    good = daemon_tls(parse_args("--tls-cert", tls_files.cert, "--tls-key", tls_files.key), listens=True, dials=False)
    assert good is not None and good.cert == tls_files.cert
    with caplog.at_level(logging.ERROR, logger="farm.tls"), pytest.raises(SystemExit) as info:
        daemon_tls(parse_args("--tls-ca", tls_files.ca), listens=True, dials=True)
    assert info.value.code == 2
    assert "needs both --tls-cert and --tls-key" in caplog.text


# --- farm up: checked before any daemon starts, then handed to them --------------------------------


class Started(Exception):
    """Raised instead of starting a farm: what farm up would have started it with."""


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> List[Dict[str, Any]]:
    """farm up's FarmStack replaced: records the inventory and the environment, and raises Started."""
    calls: List[Dict[str, Any]] = []

    def fake_stack(inventory: Any, log_dir: str) -> None:
        calls.append({"inventory": inventory, "environ": dict(os.environ)})
        raise Started()

    monkeypatch.setattr(up, "FarmStack", fake_stack)
    return calls


def write_inventory(directory: Path, tls_block: str = "") -> str:
    path = directory / "farm.yaml"
    path.write_text(ONE_BOARD + tls_block)
    return str(path)


@pytest.mark.parametrize(
    "options, expected",
    [
        (
            ["--tls-ca", "{tmp}/absent.pem"],
            "farm up: a daemon that listens with TLS needs both --tls-cert and --tls-key",
        ),
        (["--tls-cert", "{cert}", "--tls-key", "{key}"], "farm up: connecting with TLS needs --tls-ca"),
        (
            ["--tls-cert", "{tmp}/absent.pem", "--tls-key", "{key}", "--tls-ca", "{ca}"],
            "farm up: cannot load the TLS certificate {tmp}/absent.pem with its key {key}: ",
        ),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-ca", "{tmp}/absent.pem"],
            "farm up: cannot load the TLS CA {tmp}/absent.pem: ",
        ),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{other_key}", "--tls-ca", "{ca}"],
            "farm up: cannot load the TLS certificate {cert} with its key {other_key}: ",
        ),
    ],
)
def test_farm_up_with_bad_tls_exits_2_before_any_daemon(
    tls_files: TlsFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    started: List[Dict[str, Any]],
    options: List[str],
    expected: str,
) -> None:
    names = dict(tls_files._asdict(), tmp=str(tmp_path))
    code = up.main([write_inventory(tmp_path), *[option.format(**names) for option in options]])
    err = capsys.readouterr().err
    assert code == 2 and not started
    assert err.startswith(expected.format(**names)), err
    assert err.count("\n") == 1


def test_farm_up_with_a_missing_file_in_the_inventory_exits_2(
    tls_files: TlsFiles, tmp_path: Path, capsys: pytest.CaptureFixture, started: List[Dict[str, Any]]
) -> None:
    block = "tls: {cert: %s, key: missing.key, ca: %s}\n" % (tls_files.cert, tls_files.ca)
    assert up.main([write_inventory(tmp_path, block)]) == 2 and not started
    assert capsys.readouterr().err == (
        "farm up: %s:3: tls.key: expected an existing, readable file (relative paths start at the inventory's "
        "directory), got %r\n" % (tmp_path / "farm.yaml", str(tmp_path / "missing.key"))
    )


def test_farm_up_hands_the_inventorys_tls_to_the_daemons(
    tls_files: TlsFiles, tmp_path: Path, started: List[Dict[str, Any]]
) -> None:
    for name in ("ca", "cert", "key"):
        shutil.copy(getattr(tls_files, name), tmp_path / ("farm-" + name))
    block = "tls: {cert: farm-cert, key: farm-key, ca: farm-ca, server_name: farm.test}\n"
    with pytest.raises(Started):
        up.main([write_inventory(tmp_path, block)])
    tls = started[0]["inventory"].tls
    expected = {
        "REMOTEDEV_TLS_CERT": str(tmp_path / "farm-cert"),
        "REMOTEDEV_TLS_KEY": str(tmp_path / "farm-key"),
        "REMOTEDEV_TLS_CA": str(tmp_path / "farm-ca"),
        "REMOTEDEV_TLS_SERVER_NAME": "farm.test",
    }
    assert tls.as_env() == expected
    assert {name: started[0]["environ"].get(name) for name in expected} == expected


def test_farm_up_options_and_variables_override_the_inventory_field_by_field(
    tls_files: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: List[Dict[str, Any]]
) -> None:
    block = "tls: {cert: %s, key: %s, ca: %s, server_name: farm.lab}\n" % (
        tls_files.other_cert,
        tls_files.other_key,
        tls_files.other_ca,
    )
    monkeypatch.setenv("REMOTEDEV_TLS_SERVER_NAME", "farm.test")  # beats the inventory's farm.lab
    monkeypatch.chdir(Path(tls_files.ca).parent)
    options = ["--tls-cert", Path(tls_files.cert).name, "--tls-key", tls_files.key, "--tls-ca", tls_files.ca]
    with pytest.raises(Started):
        up.main([write_inventory(tmp_path, block), *options])
    environ = started[0]["environ"]
    assert [environ[ENV[name]] for name in ENV] == [tls_files.cert, tls_files.key, tls_files.ca, "farm.test"]


def test_farm_up_without_tls_leaves_the_environment_alone(
    tmp_path: Path, started: List[Dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Started):
        up.main([write_inventory(tmp_path)])
    assert started[0]["inventory"].tls is None
    assert not any(started[0]["environ"].get(name) for name in ENV.values())
    monkeypatch.setenv("REMOTEDEV_TLS_SERVER_NAME", "farm.lab")  # a name alone turns nothing on
    with pytest.raises(Started):
        up.main([write_inventory(tmp_path)])
    assert started[1]["inventory"].tls is None


# --- the launcher ---------------------------------------------------------------------------------------


def test_the_launcher_uses_the_inventorys_tls_in_place_of_the_environments(
    tls_files: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTEDEV_TLS_CA", tls_files.other_ca)
    monkeypatch.setenv("REMOTEDEV_TLS_SERVER_NAME", "stale.lab")
    block = "tls: {cert: %s, key: %s, ca: %s}\n" % (tls_files.cert, tls_files.key, tls_files.ca)
    stack = FarmStack(parse_inventory(ONE_BOARD + block, str(tmp_path / "farm.yaml")), str(tmp_path / "logs"))
    assert stack.tls.as_env() == tls_files.daemon().as_env()  # no stale server name either


def test_without_a_tls_block_the_launcher_keeps_the_environments(
    tls_files: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not FarmStack(parse_inventory(ONE_BOARD), str(tmp_path)).tls.enabled
    for name, value in tls_files.daemon(server_name="farm.test").as_env().items():
        monkeypatch.setenv(name, value)
    stack = FarmStack(parse_inventory(ONE_BOARD), str(tmp_path))
    assert stack.tls.as_env() == tls_files.daemon(server_name="farm.test").as_env()


def test_the_description_tells_clients_and_external_boards_about_tls() -> None:
    described = {
        "inventory": "lab.yaml",
        "tracker": ["127.0.0.1", 9190],
        "proxy": None,
        "boards": [],
        "expected": {"rasp4": 1},
        "tls": {"ca": "/etc/farm/ca.pem", "server_name": "farm.lab"},
    }
    text = up.format_description(described, "/tmp/logs")
    assert (
        "use it:   pytest --tracker 127.0.0.1:9190 --tls-ca /etc/farm/ca.pem --tls-server-name farm.lab   |   "
        "farm status --tracker 127.0.0.1:9190 --tls-ca /etc/farm/ca.pem --tls-server-name farm.lab"
    ) in text.splitlines()
    assert (
        "  expected: 1 external board(s) of key rasp4 (farm server --tracker 127.0.0.1:9190 --key rasp4 "
        "--tls-cert CERT --tls-key KEY --tls-ca CA)"
    ) in text.splitlines()
    plain = up.format_description(dict(described, tls=None), "/tmp/logs")
    assert "tls" not in plain
