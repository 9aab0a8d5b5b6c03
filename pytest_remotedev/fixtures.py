"""The fixtures tests use: ``farm``, ``device_key``, ``remote_device``, ``device``, ``build_for`` and
``device_benchmark``."""

from __future__ import annotations

from typing import Any, Callable, Iterator, cast

import pytest

from .artifacts import Builder
from .benchmarking import DeviceBenchmark
from .benchrun import BENCHMARK_PLUGIN, FIXTURE_KEY, BenchmarkRun
from .leases import Leases, key_of_test
from .plugin import RUN_PLUGIN, RemoteDevRun
from .stack import Farm

#: Where ``remote_device`` keeps the test's boards (``device_benchmark`` finds a TVM board's among them).
LEASES_KEY = pytest.StashKey[Leases]()


def _run(request: pytest.FixtureRequest) -> RemoteDevRun:
    return cast(RemoteDevRun, request.config.pluginmanager.get_plugin(RUN_PLUGIN))  # registered at configure


@pytest.fixture(scope="session")
def farm(request: pytest.FixtureRequest) -> Farm:
    """The farm in use: its tracker address, keys and board counts, and whether this run brought it up.

    With no ``--tracker``, the run's own farm starts here on first use in a
    plain run (and stops at the end of the session); under pytest-xdist the
    controller has started it already.
    """
    run = _run(request)
    farm = run.session_farm()
    if run.owns_farm_here():
        request.addfinalizer(run.stop_farm)
    return farm


@pytest.fixture
def device_key(request: pytest.FixtureRequest, farm: Farm) -> str:
    """The key this test runs on: its ``device(keys=...)`` parameter, its marker's key, ``--device-key``, or the
    farm's default key."""
    return key_of_test(request.node, _run(request).settings, farm)


@pytest.fixture
def remote_device(request: pytest.FixtureRequest, farm: Farm) -> Iterator[Callable[..., Any]]:
    """A factory: ``remote_device(key=None, priority=None, wait=None, session_timeout=None)``.

    Each call queues for a board of ``key`` (default: the test's key) and
    returns a connected session; every board is released when the test ends,
    however it ended.
    """
    leases: Leases = _run(request).leases_for(request.node, farm)
    request.node.stash[LEASES_KEY] = leases
    yield leases.acquire
    leases.release_all()


@pytest.fixture
def device(remote_device: Callable[..., Any], device_key: str) -> Any:
    """A session on one board of the test's key (``device_key``): its ``device(keys=...)`` parameter, its
    ``@pytest.mark.device("KEY")``, else ``--device-key``, else the farm's default key."""
    return remote_device(device_key)


@pytest.fixture(scope="session")
def build_for(request: pytest.FixtureRequest) -> Builder:
    """Build C sources for a session's board: ``path = build_for(device, ["vadd.c"], flags=["-O3"])``.

    The compiler follows what the board runs (the inventory's ``toolchains:``
    first, then the built-in cross compilers); results are cached by content,
    once across xdist workers.
    """
    inventory = _run(request).settings.inventory
    return Builder(inventory.toolchains if inventory is not None else {})


@pytest.fixture
def device_benchmark(request: pytest.FixtureRequest, farm: Farm, remote_device: Callable[..., Any]) -> DeviceBenchmark:
    """Time a function on its board: ``device_benchmark(function, *args, name=None, number=10, repeat=20,
    min_repeat_ms=10, **options)`` returns a ``farm.BenchmarkResult``.

    ``function`` is a ``RemoteFunction`` of a session the test holds (timed by its ``time_evaluator``; options
    such as ``pin_cpu`` or ``cache_flush_bytes`` pass through), or ``(module, "name")`` of a module loaded in a
    TVM session (timed by TVM's own, on ``dev=`` or the first argument's device). Each figure is recorded
    on the test (junit property ``device_benchmark``), shown in the run's table per key, compared and saved
    as the ``--device-benchmark-*`` options say. ``name`` tells a test's figures apart (default: the
    function's name).
    """
    run = _run(request)
    benchmarks = cast(BenchmarkRun, request.config.pluginmanager.get_plugin(BENCHMARK_PLUGIN))
    benchmark = DeviceBenchmark(
        request.node,
        request.node.stash[LEASES_KEY],
        lambda: key_of_test(request.node, run.settings, farm),
        benchmarks.compare,
    )
    request.node.stash[FIXTURE_KEY] = benchmark
    return benchmark
