"""A whole farm over TLS, on real processes at 127.0.0.1: from an inventory's ``tls`` block through the
launcher, ``farm up`` and the pytest plugin; members with the farm's CA get boards, others are refused.

The certificates are the tests' own (``tls_files``: a farm CA, the farm's certificate for 127.0.0.1,
localhost and farm.test, and a stranger CA). Nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, Optional

import numpy as np
import pytest
from farm_certs import TlsFiles
from test_farm_up import FarmUp, require_emulators

import farm
from conftest import python_env, wait_for
from farm.client.tracker import TrackerError
from farm.net.tls import ENV, TlsConfig
from farm.ops.inventory import parse_inventory
from farm.ops.launcher import FarmStack

PYTHON_BOARDS = "tracker: {port: 0}\nproxy: {port: 0}\nboards:\n  - {key: sealed}\n  - {key: sealed, proxy: true}\n"
BOARDS = PYTHON_BOARDS + "  - {key: sealed, server: native}\n  - {key: sealed, server: native, proxy: true}\n"
#: The Python boards, then the native ones: each registers with the tracker over TLS, directly or through the proxy.
SEALED = {"sealed-0": "python", "sealed-1": "python", "sealed-2": "native", "sealed-3": "native"}
INNER = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")


def tls_block(tls_files: TlsFiles, server_name: Optional[str] = None) -> str:
    name = ", server_name: %s" % server_name if server_name else ""
    return "tls: {cert: %s, key: %s, ca: %s%s}\n" % (tls_files.cert, tls_files.key, tls_files.ca, name)


@pytest.fixture(autouse=True)
def no_tls_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*ENV.values(), "REMOTEDEV_SECRET_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def sealed_farm(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[FarmStack]:
    """The launcher's farm of an inventory with a tls block (nothing in the environment): a listening board
    and one behind the proxy, of the Python board server and of the native one."""
    inventory = parse_inventory(BOARDS + tls_block(tls_files), "sealed.yaml")
    stack = FarmStack(inventory, str(tmp_path_factory.mktemp("farm")))
    stack.start(timeout=30)
    yield stack
    stack.stop()


def log_of(stack: FarmStack, name: str) -> str:
    return (Path(stack.log_dir) / (name + ".log")).read_text()


def board_names(tracker: farm.TrackerClient, count: int) -> Dict[str, str]:
    """Each board's name and server, of ``count`` boards held at once; an array goes to each and back."""
    sessions = [tracker.request("sealed", wait=20.0) for _ in range(count)]
    try:
        data = np.arange(1 << 16, dtype=np.float32)
        for session in sessions:
            np.testing.assert_array_equal(session.array(data).numpy(), data)
        return {info["name"]: info["server"] for info in (session.system_info() for session in sessions)}
    finally:
        for session in sessions:
            session.close()


def test_members_with_the_farm_ca_get_boards_directly_and_through_the_proxy(
    sealed_farm: FarmStack, tls_files: TlsFiles
) -> None:
    assert sealed_farm.describe()["tls"] == {"ca": tls_files.ca}
    with farm.connect_tracker(*sealed_farm.tracker_address, tls=tls_files.client()) as tracker:
        assert board_names(tracker, 4) == SEALED


def test_one_certificate_for_the_whole_farm_by_server_name(sealed_farm: FarmStack, tls_files: TlsFiles) -> None:
    with farm.connect_tracker(*sealed_farm.tracker_address, tls=tls_files.client(server_name="farm.test")) as tracker:
        assert board_names(tracker, 4) == SEALED
    with pytest.raises(TrackerError, match="not valid for 'elsewhere.test'"):
        farm.connect_tracker(*sealed_farm.tracker_address, tls=tls_files.client(server_name="elsewhere.test"))


def test_clients_without_tls_or_with_another_ca_are_refused_and_logged(
    sealed_farm: FarmStack, tls_files: TlsFiles
) -> None:
    with pytest.raises(TrackerError, match="REMOTEDEV_TLS_CA"):
        farm.connect_tracker(*sealed_farm.tracker_address)  # plain TCP, as TVM speaks
    with pytest.raises(TrackerError, match="the certificate was refused"):
        farm.connect_tracker(*sealed_farm.tracker_address, tls=TlsConfig(ca=tls_files.other_ca))
    wait_for(
        lambda: "it spoke TVM's tracker protocol, not TLS" in log_of(sealed_farm, "tracker"),
        10,
        "the tracker logs the plain client it refused",
    )
    wait_for(
        lambda: "refused this end's certificate" in log_of(sealed_farm, "tracker"),
        10,
        "the tracker logs the client that refused its certificate",
    )


def test_the_plugin_brings_up_the_inventorys_tls_farm(pytester: pytest.Pytester, tls_files: TlsFiles) -> None:
    """No TLS option: the inventory's block reaches the daemons, the controller and the xdist workers."""
    inventory = pytester.makefile(".yaml", farm=PYTHON_BOARDS + tls_block(tls_files, "farm.test"))
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_board(device, n):
            assert device.run(sum, [n, 1]) == n + 1
            assert os.environ["REMOTEDEV_TLS_CA"] == %r
            assert os.environ["REMOTEDEV_TLS_SERVER_NAME"] == "farm.test"
        """
        % tls_files.ca
    )
    result = pytester.runpytest_subprocess(*INNER, "--farm", str(inventory), "-n", "2", timeout=180)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["remotedev: own farm from *; TLS, CA %s (from inventory *)" % tls_files.ca])


def test_the_plugin_reaches_a_tls_farm_with_its_ca(
    pytester: pytest.Pytester, sealed_farm: FarmStack, tls_files: TlsFiles
) -> None:
    pytester.makepyfile("def test_board(device):\n    assert device.system_info()['key'] == 'sealed'\n")
    tracker = "%s:%d" % sealed_farm.tracker_address
    result = pytester.runpytest_subprocess(*INNER, "--tracker", tracker, "--tls-ca", tls_files.ca, timeout=120)
    result.assert_outcomes(passed=1)
    refused = pytester.runpytest_subprocess(*INNER, "--tracker", tracker, timeout=120)
    refused.assert_outcomes(errors=1)
    refused.stdout.fnmatch_lines(["*REMOTEDEV_TLS_CA*"])


def test_farm_up_with_tls_and_a_secret(tmp_path: Path, tls_files: TlsFiles) -> None:
    """farm up --secret-file with an inventory's tls block, overridden by --tls-server-name: members holding
    both get boards; the secret still keeps out a client that has the CA but not the secret."""
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    secret.chmod(0o600)
    inventory = tmp_path / "farm.yaml"
    inventory.write_text(BOARDS + tls_block(tls_files, "localhost"))
    up = FarmUp(tmp_path / "up", str(inventory), "--secret-file", str(secret), "--tls-server-name", "farm.test")
    try:
        described = up.wait_up()
        assert described["tls"] == {"ca": tls_files.ca, "server_name": "farm.test"}
        tracker = "%s:%d" % tuple(described["tracker"])
        assert "--tls-ca %s --tls-server-name farm.test" % tls_files.ca in up.stdout
        status = [sys.executable, "-m", "farm", "status", "--tracker", tracker, "--secret-file", str(secret)]
        env = python_env()
        listed = subprocess.run(status + ["--tls-ca", tls_files.ca, "--tls-server-name", "farm.test"], env=env,
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert listed.returncode == 0 and "sealed" in listed.stdout, (listed.stdout, listed.stderr)
        plain = subprocess.run(status, env=env, capture_output=True, text=True, timeout=30)
        assert plain.returncode != 0 and "REMOTEDEV_TLS_CA" in plain.stderr, plain.stderr
        address = tuple(described["tracker"])
        members = tls_files.client(server_name="farm.test")
        with farm.connect_tracker(*address, tls=members, secret=secret.read_bytes()) as client:
            assert board_names(client, 4) == SEALED
        with pytest.raises(TrackerError):
            farm.connect_tracker(*address, tls=members)  # the CA without the secret
        assert up.signal(signal.SIGTERM) == 0, up.outputs()
    finally:
        up.close()


@pytest.mark.slow
def test_emulated_boards_speak_tls(tmp_path: Path, tls_files: TlsFiles) -> None:
    """The packed board server under qemu-user gets the TLS files through the environment, listening and
    behind the proxy; so does the native one, built with the target's OpenSSL (Debian's, fetched)."""
    require_emulators()
    inventory = tmp_path / "emulated.yaml"
    inventory.write_text(
        "tracker: {port: 0}\nproxy: {port: 0}\nboards:\n  - {key: aarch64, start: emulated, arch: aarch64}\n"
        "  - {key: armhf, start: emulated, arch: armhf, proxy: true}\n"
        "  - {key: native-aarch64, server: native, start: emulated, arch: aarch64}\n"
        "  - {key: native-armhf, server: native, start: emulated, arch: armhf, proxy: true}\n" + tls_block(tls_files)
    )
    up = FarmUp(tmp_path / "up", str(inventory), "--timeout", "90")
    try:
        described = up.wait_up(120.0)
        with farm.connect_tracker(*described["tracker"], tls=tls_files.client()) as client:
            for key, machine in (("aarch64", "aarch64"), ("armhf", "armv7l")):
                with client.request(key, wait=30.0) as session:
                    assert session.system_info()["machine"] == machine
                    assert session.run(sum, [1, 2]) == 3
                with client.request("native-" + key, wait=30.0) as session:
                    info = session.system_info()
                    assert (info["machine"], info["server"]) == (machine, "native")
                    data = np.arange(1 << 12, dtype=np.int32)
                    np.testing.assert_array_equal(session.array(data).numpy(), data)
        assert up.signal(signal.SIGTERM) == 0, up.outputs()
    finally:
        up.close()
