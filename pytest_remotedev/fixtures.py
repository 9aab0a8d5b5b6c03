"""The fixtures tests use: ``farm``, ``remote_device`` and ``device``."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from .leases import Leases
from .plugin import RUN_PLUGIN, RemoteDevRun
from .stack import Farm


def _run(request: pytest.FixtureRequest) -> RemoteDevRun:
    return request.config.pluginmanager.get_plugin(RUN_PLUGIN)


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
def remote_device(request: pytest.FixtureRequest, farm: Farm) -> Iterator[Callable[..., Any]]:
    """A factory: ``remote_device(key=None, priority=None, wait=None, session_timeout=None)``.

    Each call queues for a board of ``key`` (default: the test's key) and
    returns a connected session; every board is released when the test ends,
    however it ended.
    """
    leases: Leases = _run(request).leases_for(request.node, farm)
    yield leases.acquire
    leases.release_all()


@pytest.fixture
def device(remote_device: Callable[..., Any]) -> Any:
    """A session on one board of the test's key: ``@pytest.mark.device("KEY")``, else ``--device-key``,
    else the farm's default key."""
    return remote_device()
