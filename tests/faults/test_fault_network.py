"""Network trouble between a client and its board: the board runs in a network namespace of its own.

Each test makes a namespace and a veth pair with names of its own, runs the
tracker on the root side's address and a board inside the namespace (``ip netns
exec``), and removes both afterwards, also when the test fails. Needs root and
``ip`` (iproute2), else the tests are skipped; a queueing discipline the kernel
lacks (netem is optional) skips only its own case.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import numpy as np
import pytest
from fault_farm import FaultFarm, assert_farm_whole, fault_farms, pause_in_call

import farm
from conftest import NATIVE_CHECKED, board_server_named
from farm.client.session import SESSION_END_GRACE

logger = logging.getLogger("tests.faults.network")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

VADD = "void vadd(const float *a, const float *b, float *c, int64_t n)"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``ip ARGS...``; with ``check``, a failure raises naming the command and what it said."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and result.returncode:
        raise RuntimeError("ip %s failed: %s" % (" ".join(args), result.stderr.strip()))
    return result


class Namespace:
    """A network namespace joined to the root one by a veth pair: 10.251.N.1 outside, 10.251.N.2 inside."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.name = "farm-fault-" + suffix
        self.outside, self.inside = "ffo" + suffix, "ffi" + suffix  # interface names: 15 characters at most
        subnet = int(suffix[:2], 16)
        self.host_address, self.board_address = "10.251.%d.1" % subnet, "10.251.%d.2" % subnet
        self.exec = ["ip", "netns", "exec", self.name]

    def create(self) -> None:
        ip("netns", "add", self.name)
        ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside, "netns", self.name)
        ip("addr", "add", self.host_address + "/24", "dev", self.outside)
        ip("link", "set", self.outside, "up")
        ip("-n", self.name, "addr", "add", self.board_address + "/24", "dev", self.inside)
        ip("-n", self.name, "link", "set", self.inside, "up")
        ip("-n", self.name, "link", "set", "lo", "up")

    def link(self, state: str) -> None:
        """``ip link set OUTSIDE up|down``: the cable, plugged or pulled."""
        ip("link", "set", self.outside, state)

    def shape(self, qdisc: List[str]) -> None:
        """Traffic towards the board through ``tc qdisc add ... root QDISC``; skips the test if the kernel lacks it."""
        result = subprocess.run(["tc", "qdisc", "add", "dev", self.outside, "root", *qdisc],
                                capture_output=True, text=True, timeout=10)  # fmt: skip
        if result.returncode:
            pytest.skip("tc qdisc %s: %s (not in this kernel?)" % (" ".join(qdisc), result.stderr.strip()))

    def exists(self) -> List[str]:
        """What is left of it: the namespace's name in ``ip netns list``, the outside interface."""
        left = [self.name] if self.name in ip("netns", "list").stdout.split() else []
        return left + ([self.outside] if ip("link", "show", self.outside, check=False).returncode == 0 else [])

    def remove(self) -> None:
        """Kill what still runs inside, then delete the namespace (and with it the veth pair)."""
        if self.name in ip("netns", "list").stdout.split():
            for pid in ip("netns", "pids", self.name, check=False).stdout.split():
                subprocess.run(["kill", "-KILL", pid], capture_output=True, timeout=10)
            ip("netns", "del", self.name, check=False)
        ip("link", "del", self.outside, check=False)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        pytest.skip("network namespaces need root, ip and tc (apt-get install iproute2)")
    space = Namespace()
    try:
        try:
            space.create()
        except RuntimeError as exc:
            pytest.skip("cannot make a network namespace here: %s" % exc)
        yield space
    finally:
        space.remove()
    assert not space.exists(), "left after the test: %r" % space.exists()


@pytest.fixture(params=["python", NATIVE_CHECKED])
def start(
    request: pytest.FixtureRequest,
    namespace: Namespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    native_builds: Dict[bool, str],
) -> Iterator[Callable[[], FaultFarm]]:
    """A farm whose tracker listens outside the namespace, and a board of key ``net`` inside it: a Python board,
    or a native one."""

    def started() -> FaultFarm:
        inventory = "tracker: {host: %s, port: 0}\nboards:\n  - {key: k}\n" % namespace.host_address
        faulty = starter(inventory)
        faulty.add_board("net", prefix=namespace.exec, host=namespace.board_address)
        return faulty

    with fault_farms(
        tmp_path, monkeypatch, board_server_named(request.param, native_builds)
    ) as starter:  # stops before the namespace goes
        yield started


def test_link_dropped_mid_call(start: Callable[[], FaultFarm], namespace: Namespace, kernels: Dict[str, Path]) -> None:
    """``ip link set down`` while the board runs a call: the client is told within its session timeout and the
    grace after it; with the link back, the board has ended the session and is back in the pool."""
    faulty = start()
    session_timeout = 2.0
    session = faulty.request("net", session_timeout=session_timeout)
    assert session.host == namespace.board_address
    call = pause_in_call(session, kernels)
    namespace.link("down")
    try:
        began = time.monotonic()
        error = call.exception(timeout=session_timeout + SESSION_END_GRACE + 10)
        waited = time.monotonic() - began
    finally:
        namespace.link("up")
    assert waited < session_timeout + SESSION_END_GRACE + 2, waited
    where = r"board 'net' at %s:%d went silent while waiting for a reply" % (re.escape(session.host), session.port)
    assert_farm_whole(faulty, error, farm.SessionLostError, [where, "the network to it is down"])


SHAPES = [
    pytest.param(["netem", "delay", "200ms"], id="netem-delay-200ms"),
    pytest.param(["tbf", "rate", "4mbit", "burst", "32kbit", "latency", "400ms"], id="tbf-4mbit"),
]


@pytest.mark.parametrize("qdisc", SHAPES)
def test_slow_link(
    start: Callable[[], FaultFarm], namespace: Namespace, kernels: Dict[str, Path], qdisc: List[str]
) -> None:
    """A delayed (or throttled) link: calls, arrays and files still come through exact, only slower."""
    namespace.shape(qdisc)
    faulty = start()
    session = faulty.request("net", session_timeout=60)
    began = time.monotonic()
    session.ping()
    logger.info("a ping over %s took %.3f s", " ".join(qdisc), time.monotonic() - began)
    session.upload(kernels["libvadd.so"])
    vadd = session.load_module("libvadd.so").get_function("vadd", VADD)
    x = np.arange(1 << 15, dtype=np.float32)
    a, b, c = session.array(x), session.array(2 * x), session.empty(x.shape, "float32")
    vadd(a, b, c, x.size)
    np.testing.assert_array_equal(c.numpy(), 3 * x)
    blob = os.urandom(256 << 10)
    session.upload(blob, "blob.bin")
    assert session.download("blob.bin") == blob
    session.close()
    logger.info("the session over %s took %.3f s", " ".join(qdisc), time.monotonic() - began)
    assert_farm_whole(faulty)
