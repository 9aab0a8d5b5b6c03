"""The plugin's settings, each from the command line, the environment, the ini file or a default (in that order).

Every setting remembers where its value came from, so the run's header can
say so and a bad value is reported with its source. The TLS settings of a
run that brings up its own farm fall back, field by field, to the
inventory's ``tls`` block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import pytest

from farm.net.secret import SECRET_ENV, load_secret
from farm.net.sockets import parse_address
from farm.net.tls import ENV as TLS_ENV
from farm.net.tls import SYSTEM_CA, TlsConfig
from farm.ops.benchruns import DEFAULT_STORAGE, check_name
from farm.ops.inventory import (
    BUILTIN_INVENTORIES,
    DEFAULT_INVENTORY,
    Inventory,
    InventoryError,
    inventory_path,
    load_inventory,
)
from farm.ops.regression import FailSpec

#: ``--device-benchmark-compare`` given bare: the latest saved run.
LATEST_RUN = "latest"
#: Seconds a test may wait in the queue unless told otherwise.
DEFAULT_DEVICE_WAIT = 600.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError("%r is not a number of seconds >= 0" % text)
    return value


def _optional_seconds(text: str) -> Optional[float]:
    value = _seconds(text)
    return value or None  # 0: no limit


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("%r is not true or false" % text)


def _inventory_path(text: str) -> str:
    try:
        return inventory_path(text)
    except InventoryError as exc:
        raise ValueError(str(exc)) from None


def _secret_file(text: str) -> str:
    load_secret(text)  # readable, long enough: checked now, not at the first connection
    return os.path.abspath(text)


def _tls_file(text: str) -> str:
    path = os.path.abspath(text)
    if not os.path.isfile(path):
        raise ValueError("no such file %s" % path)
    return path


def _tls_ca(text: str) -> str:
    return SYSTEM_CA if text == SYSTEM_CA else _tls_file(text)


def _server_name(text: str) -> str:
    if not text.strip() or any(character.isspace() for character in text.strip()):
        raise ValueError("%r is not a host name" % text)
    return text.strip()


def _priority(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("%r is not a whole number" % text) from None


def _run_name(text: str) -> str:
    return check_name(text.strip())  # its BenchRunError is a ValueError that says what is wrong


def _compared_run(text: str) -> str:
    return LATEST_RUN if text.strip() in ("", LATEST_RUN) else _run_name(text)


def _directory(text: str) -> str:
    if not text.strip():
        raise ValueError("%r is not a directory" % text)
    return os.path.abspath(text)


def _key(text: str) -> str:
    if not text.strip() or ":" in text:
        raise ValueError("%r is not a board key" % text)
    return text.strip()


@dataclass(frozen=True)
class Option:
    """One setting: its command-line flag, ini key, environment variable, parser and default."""

    dest: str  # the attribute of Settings; the command line's is "remotedev_" + dest (other plugins use plain names)
    flag: str
    ini: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = ""
    path: bool = False  # a file: relative to the ini file's directory when given there
    names: Tuple[str, ...] = ()  # values that name something instead of a file (not made relative)
    const: Optional[str] = None  # the value of the flag given bare (``--flag`` without ``=VALUE``)


OPTIONS = (
    Option("tracker", "--tracker", "remotedev_tracker", "REMOTEDEV_TRACKER", parse_address, None,
           "use the farm of the tracker at HOST:PORT (also TVM_TRACKER_HOST and TVM_TRACKER_PORT)", "HOST:PORT"),
    Option("farm", "--farm", "remotedev_farm", "REMOTEDEV_FARM", _inventory_path, DEFAULT_INVENTORY,
           "the inventory to bring up as the run's own farm when no tracker is given "
           "(default: two local boards of key 'local')", "PATH", path=True, names=tuple(BUILTIN_INVENTORIES)),
    Option("device_key", "--device-key", "device_key", "REMOTEDEV_DEVICE_KEY", _key, None,
           "the board key of tests that do not name one (default: the farm's default key)", "KEY"),
    Option("device_wait", "--device-wait", "device_wait", "REMOTEDEV_DEVICE_WAIT", _seconds, DEFAULT_DEVICE_WAIT,
           "seconds a test may wait in the queue for a board before it fails (default: %g)" % DEFAULT_DEVICE_WAIT,
           "SECONDS"),
    Option("device_priority", "--device-priority", "device_priority", "REMOTEDEV_DEVICE_PRIORITY", _priority, 0,
           "queue priority of this run's requests; higher goes first (default: 0)", "N"),
    Option("session_timeout", "--device-session-timeout", "device_session_timeout", "REMOTEDEV_SESSION_TIMEOUT",
           _optional_seconds, None, "seconds after which a board ends a test's session (default: 0, none)",
           "SECONDS"),
    Option("device_strict", "--device-strict", "device_strict", "REMOTEDEV_DEVICE_STRICT", _flag, False,
           "fail, instead of skipping, tests whose key no board of the farm serves"),
    Option("secret_file", "--secret-file", "remotedev_secret_file", SECRET_ENV, _secret_file, None,
           "the farm secret's file, proved to the tracker, the proxy and every board (default: none)", "PATH",
           path=True),
    Option("tls_cert", "--tls-cert", "remotedev_tls_cert", TLS_ENV["cert"], _tls_file, None,
           "the certificate (PEM) the daemons of the run's own farm present", "PATH", path=True),
    Option("tls_key", "--tls-key", "remotedev_tls_key", TLS_ENV["key"], _tls_file, None,
           "the private key of --tls-cert (PEM)", "PATH", path=True),
    Option("tls_ca", "--tls-ca", "remotedev_tls_ca", TLS_ENV["ca"], _tls_ca, None,
           "connect with TLS, checking the farm's certificates against this CA bundle (PEM), or %r for the "
           "system's (default: the inventory's tls block, else no TLS)" % SYSTEM_CA, "PATH", path=True,
           names=(SYSTEM_CA,)),
    Option("tls_server_name", "--tls-server-name", "remotedev_tls_server_name", TLS_ENV["server_name"],
           _server_name, None, "the name every daemon's certificate carries (default: the address dialled)",
           "NAME"),
    Option("benchmark_save", "--device-benchmark-save", "device_benchmark_save", "REMOTEDEV_BENCHMARK_SAVE",
           _run_name, None, "save the run's device_benchmark figures as NAME in the storage directory, at its end",
           "NAME"),
    Option("benchmark_storage", "--device-benchmark-storage", "device_benchmark_storage",
           "REMOTEDEV_BENCHMARK_STORAGE", _directory, None,
           "the directory of saved device_benchmark runs (default: %s in the rootdir)" % DEFAULT_STORAGE, "DIR",
           path=True),
    Option("benchmark_compare", "--device-benchmark-compare", "device_benchmark_compare",
           "REMOTEDEV_BENCHMARK_COMPARE", _compared_run, None,
           "compare each device_benchmark figure with the same test and key in saved run NAME (bare: the latest "
           "saved run)", "NAME", const=LATEST_RUN),
    Option("benchmark_fail", "--device-benchmark-fail", "device_benchmark_fail", "REMOTEDEV_BENCHMARK_FAIL",
           FailSpec.parse, None, "fail the tests whose figure got worse than the compared run's by more than the "
           "threshold, by a statistical test of the samples (as median:10%%; compares with the latest saved run "
           "unless --device-benchmark-compare names one)", "STAT:PERCENT"),
)  # fmt: skip
#: The TLS settings, by the field of :class:`farm.net.tls.TlsConfig` each fills.
TLS_OPTIONS = {field_name: "tls_" + field_name for field_name in TLS_ENV}


@dataclass
class Settings:
    """The resolved settings; ``sources`` names where each came from (``--flag``, ``ENV``, ``ini NAME``, default)."""

    tracker: Optional[Tuple[str, int]] = None
    farm: str = DEFAULT_INVENTORY
    device_key: Optional[str] = None
    device_wait: float = DEFAULT_DEVICE_WAIT
    device_priority: int = 0
    session_timeout: Optional[float] = None
    device_strict: bool = False
    secret_file: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    tls_server_name: Optional[str] = None
    benchmark_save: Optional[str] = None
    benchmark_storage: str = DEFAULT_STORAGE  # resolve() makes it absolute (the default: in the rootdir)
    benchmark_compare: Optional[str] = None  # a run's name, or LATEST_RUN
    benchmark_fail: Optional[FailSpec] = None
    sources: Dict[str, str] = field(default_factory=dict)
    inventory: Optional[Inventory] = None  # the run's own farm's, with the run's TLS settings in its tls

    @property
    def tls(self) -> Optional[TlsConfig]:
        """The run's TLS configuration, for its clients and its own farm's daemons; None when TLS is off."""
        tls = self.tls_given()
        return tls if tls.enabled else None

    def tls_given(self) -> TlsConfig:
        """The TLS fields set so far, even too few to turn TLS on."""
        return TlsConfig(**{name: getattr(self, dest) for name, dest in TLS_OPTIONS.items()})


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("remotedev", "remote boards (pytest-remotedev)")
    for option in OPTIONS:
        dest = "remotedev_" + option.dest
        if option.parse is _flag:
            group.addoption(option.flag, dest=dest, action="store_true", default=None, help=option.help)
        elif option.const is not None:
            group.addoption(option.flag, dest=dest, nargs="?", const=option.const, default=None,
                            metavar=option.metavar, help=option.help)  # fmt: skip
        else:
            group.addoption(option.flag, dest=dest, default=None, metavar=option.metavar, help=option.help)
        help_text = option.help.replace("%%", "%")  # argparse formats an option's help; the ini's is shown as it is
        parser.addini(option.ini, "%s (same as %s; env %s)" % (help_text, option.flag, option.env), default=None)


def resolve(config: pytest.Config, environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings of this run; ``pytest.UsageError`` names a bad value and where it came from."""
    settings = Settings()
    for option in OPTIONS:
        raw, source = _raw_value(config, option, environ)
        if raw is None:
            value, source = option.default, "default"
        elif isinstance(raw, str):
            try:
                value = option.parse(raw)
            except ValueError as exc:
                raise pytest.UsageError("pytest-remotedev: %s from %s: %s" % (option.flag, source, exc)) from None
        else:
            value = raw  # --device-strict given on the command line
        setattr(settings, option.dest, value)
        settings.sources[option.dest] = source
    if settings.benchmark_storage is None:
        settings.benchmark_storage = str(config.rootpath / DEFAULT_STORAGE)
    if settings.tracker is None:
        try:
            settings.inventory = load_inventory(settings.farm)
        except InventoryError as exc:
            raise pytest.UsageError("pytest-remotedev: %s (from %s)" % (exc, settings.sources["farm"])) from None
        _fill_tls_from_inventory(settings, settings.inventory)
    _check_tls(settings)
    return settings


def _fill_tls_from_inventory(settings: Settings, inventory: Inventory) -> None:
    """The inventory's ``tls`` fields for those the run did not give; the inventory then holds the result."""
    settings.inventory = inventory.with_tls(settings.tls_given())
    merged = settings.inventory.tls
    for name, dest in TLS_OPTIONS.items():
        if getattr(settings, dest) is None and merged is not None and getattr(merged, name):
            setattr(settings, dest, getattr(merged, name))
            settings.sources[dest] = "inventory %s" % inventory.path


def _check_tls(settings: Settings) -> None:
    """Load the TLS files now: what clients need (a CA) and, for the run's own farm, what its daemons need."""
    tls = settings.tls
    if tls is None:
        return
    own_farm = settings.tracker is None
    try:
        tls.check(listens=own_farm or bool(tls.cert or tls.key), dials=True)
    except ValueError as exc:
        given = ", ".join(
            "--%s from %s" % (dest.replace("_", "-"), settings.sources[dest])
            for dest in TLS_OPTIONS.values()
            if getattr(settings, dest) is not None
        )
        what = "the run's own farm" if own_farm else "connecting to the farm"
        raise pytest.UsageError("pytest-remotedev: TLS for %s (%s): %s" % (what, given, exc)) from None


def _raw_value(config: pytest.Config, option: Option, environ: Mapping[str, str]) -> Tuple[Any, str]:
    """The first value given, command line > environment > ini file, and where it was given."""
    value = config.getoption("remotedev_" + option.dest)
    if value is not None:
        return value, option.flag
    if environ.get(option.env):
        return environ[option.env], option.env
    if option.dest == "tracker" and environ.get("TVM_TRACKER_HOST"):
        port = environ.get("TVM_TRACKER_PORT") or "9190"
        return "%s:%s" % (environ["TVM_TRACKER_HOST"], port), "TVM_TRACKER_HOST/TVM_TRACKER_PORT"
    value = config.getini(option.ini)
    if value not in (None, ""):
        if option.path and not os.path.isabs(value) and value not in option.names:  # to the ini file's directory
            value = os.path.join(str(config.inipath.parent if config.inipath else config.rootpath), value)
        return value, "ini %s" % option.ini
    return None, "default"
