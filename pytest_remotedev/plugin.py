"""pytest-remotedev: the hooks (registered through the ``pytest11`` entry point).

Options and their sources live in :mod:`.options`, the farm's lifecycle in
:mod:`.stack`, the fixtures in :mod:`.fixtures`, a test's boards in
:mod:`.leases`, reporting in :mod:`.report`, the queue display in
:mod:`.waiting` and the ``device_benchmark`` figures in :mod:`.benchrun`
(a plugin object of its own). :class:`RemoteDevRun` is the one object per
process that ties the rest together; under pytest-xdist the controller's owns the bundled
farm and the workers' read it from ``workerinput``.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import Any, Dict, List, Optional

import pytest

from farm.net.secret import SECRET_ENV

from .benchrun import BENCHMARK_PLUGIN, BenchmarkRun
from .leases import ALL_KEYS, KEY_PARAM, Leases, device_mark, marker_key, requester
from .options import Settings, add_options, resolve
from .report import UsageSummary
from .stack import BundledFarm, Farm, FarmUnavailable, existing_farm
from .waiting import WAIT_NOTICE, Announcer, QueueWatcher, TerminalLock, fetch_status

pytest_plugins = ["pytest_remotedev.fixtures"]

#: The name :class:`RemoteDevRun` is registered under.
RUN_PLUGIN = "remotedev-run"
#: The entry of xdist's ``workerinput`` that carries the run id and the farm.
WORKERINPUT_KEY = "remotedev"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "device(key): run this test on a board of KEY, as device('rasp4') or device(key='rasp4'); "
        "or once per key, as device(keys=['rasp4', 'jetson']) or device(keys='all'); on a test, class or module",
    )
    settings = resolve(config)
    tls = settings.tls
    _export_environment(config, {SECRET_ENV: settings.secret_file, **(tls.as_env() if tls is not None else {})})
    run = RemoteDevRun(config, settings)
    config.pluginmanager.register(run, RUN_PLUGIN)
    config.pluginmanager.register(BenchmarkRun(config, settings), BENCHMARK_PLUGIN)
    config.add_cleanup(run.close)


def _export_environment(config: pytest.Config, values: Dict[str, Optional[str]]) -> None:
    """Settings given by option, ini file or inventory reach every client, worker and daemon of the run the way
    those given in the environment do: the variables in ``values`` (None: leave it) are set for the length of
    the run, and their previous values restored at its end."""
    exported = {name: value for name, value in values.items() if value is not None}
    if not exported:
        return
    previous = {name: os.environ.get(name) for name in exported}
    os.environ.update(exported)

    def restore() -> None:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    config.add_cleanup(restore)


def _tls_header(settings: Settings) -> str:
    """The header's TLS part: the CA (and server name) clients check the farm's certificates with."""
    if settings.tls is None:
        return ""
    sources = settings.sources
    text = "; TLS, CA %s (from %s)" % (settings.tls_ca, sources["tls_ca"])
    if settings.tls_server_name is not None:
        text += ", server name %s (from %s)" % (settings.tls_server_name, sources["tls_server_name"])
    return text


class RemoteDevRun:
    """This process's part of the run: the farm, the tests' boards and what gets reported."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        handed: Dict[str, Any] = getattr(config, "workerinput", {}).get(WORKERINPUT_KEY) or {}
        self.is_worker = hasattr(config, "workerinput")
        self.worker = getattr(config, "workerinput", {}).get("workerid", "main")
        self.run_id: str = handed.get("run_id") or uuid.uuid4().hex[:8]
        self._farm: Optional[Farm] = Farm.from_json(handed["farm"]) if handed.get("farm") else None
        self._bundled: Optional[BundledFarm] = None
        self._owner_here = False  # a plain run whose session fixture started the farm
        self._failed = False
        self._watcher: Optional[QueueWatcher] = None
        self._terminal_lock: Optional[TerminalLock] = None
        self._announcer = Announcer()
        self.summary = UsageSummary()

    @property
    def run_tag(self) -> str:
        """What every request of this run has in its user name."""
        return "run %s" % self.run_id

    # --- the farm ------------------------------------------------------------------

    def session_farm(self) -> Farm:
        """The farm of this run, reaching or starting it on first use (fails the asking test if it cannot)."""
        failure = ""
        if self._farm is None:
            try:
                if self.settings.tracker is not None:
                    self._farm = existing_farm(self.settings.tracker)
                else:
                    self._farm = self._start_bundled()
                    self._owner_here = True
            except FarmUnavailable as exc:
                failure = str(exc)
        if self._farm is None:
            pytest.fail(failure, pytrace=False)  # outside the except: no chained traceback in the report
        return self._farm

    def owns_farm_here(self) -> bool:
        return self._owner_here

    def _start_bundled(self) -> Farm:
        assert self.settings.inventory is not None  # resolve() loaded it when no tracker was given
        self._bundled = BundledFarm(self.settings.inventory)
        return self._bundled.start()

    def stop_farm(self) -> None:
        """Stop the bundled farm if this process started it (idempotent); keep its logs if the run failed."""
        if self._bundled is not None:
            self._bundled.stop(keep_logs=self._failed)

    def close(self) -> None:
        """The end of the run, however it ended (also Ctrl-C): stop the watcher, then the farm."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self.stop_farm()

    # --- pytest-xdist, in the controller ------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: List[Any]) -> None:
        """Before any worker starts: bring up the bundled farm (unless a tracker was given) and watch the queue."""
        if self.settings.tracker is None and self._farm is None:
            try:
                self._farm = self._start_bundled()
            except FarmUnavailable as exc:
                pytest.exit(str(exc), returncode=pytest.ExitCode.INTERNAL_ERROR)
        tracker = self._farm.tracker if self._farm is not None else self.settings.tracker
        if tracker is not None and self._watcher is None:
            self._terminal_lock = TerminalLock()
            config.pluginmanager.register(self._terminal_lock, "remotedev-terminal-lock")
            self._watcher = QueueWatcher(tracker, self.run_tag, self._write_status)
            self._watcher.start()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        farm = self._farm.to_json() if self._farm is not None else None
        node.workerinput[WORKERINPUT_KEY] = {"run_id": self.run_id, "farm": farm}

    # --- tests ------------------------------------------------------------------------

    def leases_for(self, item: pytest.Item, farm: Farm) -> Leases:
        user = "%s %s %s %s" % (requester(), self.run_tag, self.worker, item.nodeid)
        on_progress = None if self.is_worker else self._progress_here
        return Leases(item, self.settings, farm, user, on_progress)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """``@pytest.mark.device(keys=[...])`` or ``keys="all"``: one instance of the test per key."""
        try:
            mark = device_mark(metafunc.definition, metafunc.definition.nodeid)
        except pytest.UsageError:
            return  # reported, with the others, once collection is done
        if mark is None or mark.keys is None:
            return
        if KEY_PARAM not in metafunc.fixturenames:
            raise pytest.UsageError(
                "%s: @pytest.mark.device(keys=...) needs a test that uses the device or device_key fixture"
                % metafunc.definition.nodeid
            )
        if mark.keys != ALL_KEYS:
            keys = list(mark.keys)
        elif self.settings.device_key is not None:
            keys = [self.settings.device_key]  # the suite runs on the one key this run is for
        else:
            keys = self.farm_keys()
        metafunc.parametrize(KEY_PARAM, keys, ids=keys)

    def farm_keys(self) -> List[str]:
        """The farm's keys at collection: the inventory's (no need to start it), or the tracker's, sorted."""
        if self._farm is not None:
            return list(self._farm.keys) if self._farm.bundled else sorted(self._farm.keys)
        if self.settings.tracker is None:
            assert self.settings.inventory is not None
            return list(self.settings.inventory.board_counts())
        try:
            self._farm = existing_farm(self.settings.tracker)
        except FarmUnavailable as exc:
            raise pytest.UsageError("%s (asked for the keys of device(keys='all'))" % exc) from None
        return sorted(self._farm.keys)

    def pytest_collection_modifyitems(self, items: List[pytest.Item]) -> None:
        """Check every ``device`` marker now (a malformed one stops the run); skip tests for another key."""
        wanted = self.settings.device_key
        source = self.settings.sources["device_key"]
        for item in items:
            key = marker_key(item)
            if key is not None and wanted is not None and key != wanted:
                reason = "test is for key %r; this run is for key %r (%s)" % (key, wanted, source)
                item.add_marker(pytest.mark.skip(reason=reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self._failed = True
        if not self.is_worker:
            self.summary.add_report(report)

    # --- the terminal -------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> List[str]:
        settings, sources = self.settings, self.settings.sources
        if settings.tracker is not None:
            farm = "farm at tracker %s:%d (from %s)" % (*settings.tracker, sources["tracker"])
            default_key = "the farm's only key"
        else:
            assert settings.inventory is not None
            farm = "own farm from %s (from %s)" % (settings.inventory.path, sources["farm"])
            default_key = "%s, the farm's default" % settings.inventory.default_key
        if settings.device_key is not None:
            key = "key %s (from %s)" % (settings.device_key, sources["device_key"])
        else:
            key = "key %s" % default_key
        return ["remotedev: %s; %s%s" % (farm, key, _tls_header(settings))]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self.summary.write(terminalreporter)
        if self._failed and self._bundled is not None:
            terminalreporter.write_line("remotedev: the bundled farm's logs are kept in %s" % self._bundled.log_dir)

    def _progress_here(self, state: Dict[str, Any]) -> None:
        """A test of this (plain) run waits in the queue: say so now and then, from the main thread."""
        if state.get("waited", 0) < WAIT_NOTICE or self._farm is None:
            return
        line = fetch_status(self._farm.tracker, self.run_tag)
        if self._announcer.due(line, time.monotonic()):
            capture = self.config.pluginmanager.get_plugin("capturemanager")  # None under -p no:capture
            with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
                self._write_status(line)  # type: ignore[arg-type]

    def _write_status(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        lock = self._terminal_lock.lock if self._terminal_lock is not None else contextlib.nullcontext()
        with lock:
            if reporter._tw.width_of_current_line and not reporter.currentfspath:
                reporter._tw.line()  # finish the line of progress dots first
            reporter.write_line(line, yellow=True)
            reporter.flush()
