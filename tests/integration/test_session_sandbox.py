"""A session is a sandbox on its board: attacks from a session's own code, on real board daemons.

The tests run as root, so every board they start runs its sessions as ``nobody``. Each test performs the
attack from inside a session (``session.run``) and asserts it fails; on the code before the session spawner
and ``--session-user`` each of them succeeded.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import cloudpickle
import pytest
from farm_certs import TlsFiles

import farm
from conftest import python_env, standby_of, wait_for
from farm.net.tls import TlsConfig
from farm.ops.inventory import load_inventory
from farm.ops.launcher import FarmStack
from farm.ops.processes import DaemonProcess, board_command

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are on a board daemon started as root")

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the board cannot import this module

KEY = "sandbox"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


class Secrets:
    """A farm secret and the TLS certificate and key in a directory the session user can reach, each file mode
    600 and owned by the daemon's user, as a deployment keeps them."""

    def __init__(self, directory: Path, tls_files: TlsFiles, owner: int) -> None:
        directory.mkdir()
        self.secret = base64.b64encode(os.urandom(32))
        self.secret_file = directory / "farm.secret"
        self.secret_file.write_bytes(self.secret + b"\n")
        self.key_file = directory / "farm.key"
        shutil.copy(tls_files.key, self.key_file)
        self.cert_file = directory / "farm.pem"
        shutil.copy(tls_files.cert, self.cert_file)
        self.ca = tls_files.ca
        for path in (self.secret_file, self.key_file, self.cert_file):
            path.chmod(0o600)
            os.chown(path, owner, owner if owner else 0)

    def options(self) -> List[str]:
        """The daemon's options: the files named on its command line, where a session can read their paths."""
        return [
            "--secret-file",
            str(self.secret_file),
            "--tls-cert",
            str(self.cert_file),
            "--tls-key",
            str(self.key_file),
            "--tls-ca",
            str(self.ca),
        ]

    def connect(self, daemon: DaemonProcess) -> farm.RemoteSession:
        return farm.connect(*daemon.address, key=KEY, secret=self.secret, tls=TlsConfig(ca=self.ca))


@pytest.fixture
def start(reachable_tmp: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """``start(options, as_nobody=False, cwd=None)``: a board daemon (started as root, or as nobody), stopped after."""
    started: List[DaemonProcess] = []

    def start_daemon(options: List[str] = (), as_nobody: bool = False, cwd: Optional[Path] = None) -> DaemonProcess:
        argv = [*(NOBODY if as_nobody else []), *board_command(KEY, extra=list(options))]
        daemon = DaemonProcess(argv, str(reachable_tmp / ("board-%d.log" % len(started))), python_env(), cwd=cwd)
        started.append(daemon)
        daemon.wait_for_bind()
        return daemon

    yield start_daemon
    for daemon in started:
        daemon.stop()


# --- what runs in the session ------------------------------------------------------------


def writable_import_path() -> List[Tuple[str, str]]:
    """Each directory on the session's import path it could write to, and how it found out."""
    import os
    import sys

    found = []
    for entry in sys.path:
        directory = entry or "."
        if os.access(directory, os.W_OK):
            found.append((entry, "os.access"))
        if os.path.isdir(directory):
            planted = os.path.join(directory, "planted_by_a_session.py")
            try:
                with open(planted, "w") as handle:
                    handle.write("PLANTED = True\n")
                found.append((entry, "wrote a module"))
                os.unlink(planted)  # the attack worked: leave the board as it was
            except OSError:
                pass
    stdlib = os.path.dirname(os.__file__)
    try:
        with open(os.path.join(stdlib, "json", "__init__.py"), "a"):
            found.append((stdlib, "could rewrite the standard library"))
    except OSError:
        pass
    return found


def plant(path: str) -> str:
    """Try to leave a module where a later session would import it."""
    try:
        with open(path, "w") as handle:
            handle.write("raise SystemExit('a planted module ran')\n")
        return "planted"
    except OSError as exc:
        return "refused: %s" % exc.strerror


def import_planted() -> str:
    try:
        import planted  # noqa: F401
    except ImportError as exc:
        return "not found: %s" % exc
    return "imported"


def who_am_i() -> Dict[str, object]:
    import os

    here = os.stat(".")
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "directory_owner": here.st_uid,
        "directory_mode": here.st_mode & 0o777,
        "environment": dict(os.environ),
    }


def steal(daemon_pid: int) -> Dict[str, str]:
    """Try every way to the farm secret and the TLS key a session has: the files named on the command line
    (its own, the spawner's, the daemon's), and the daemon's and the spawner's /proc files."""
    import os

    def attempt(path: str) -> str:
        try:
            with open(path, "rb") as handle:
                return "read %d bytes" % len(handle.read(1 << 16))
        except OSError as exc:
            return "refused: %s" % (exc.strerror or exc)

    results = {}
    arguments = open("/proc/self/cmdline", "rb").read().split(b"\0")
    for option in (b"--secret-file", b"--tls-key"):
        path = os.fsdecode(arguments[arguments.index(option) + 1])
        results[path] = attempt(path)
    for pid in (daemon_pid, os.getppid()):
        for name in ("environ", "mem", "maps"):
            path = "/proc/%d/%s" % (pid, name)
            results[path] = attempt(path)
    return results


def find_in_memory(needles: List[Tuple[bytes, str, int]]) -> List[str]:
    """Which needles (given as a prefix, the SHA-256 of the whole and its length, so the needle itself is not in
    memory) are in this process's memory: every readable mapping, read through /proc/self/mem."""
    import ctypes
    import hashlib

    ctypes.CDLL(None).prctl(4, 1)  # PR_SET_DUMPABLE: a process that changed user may not open its own /proc files
    found = []
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        regions = [line.split() for line in maps]
        for fields in regions:
            if not fields[1].startswith("r") or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(value, 16) for value in fields[0].split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            for prefix, digest, length in needles:
                at = data.find(prefix)
                while at >= 0:
                    if hashlib.sha256(data[at : at + length]).hexdigest() == digest:
                        found.append(
                            "%s at %#x in %s" % (digest[:12], start + at, " ".join(fields[5:]) or "anonymous")
                        )
                    at = data.find(prefix, at + 1)
    return found


def holds_what_it_holds() -> List[str]:
    """The scan of a bytes object the session made and holds: found, or the scan could not find a secret either."""
    held = b"held by the session %d" % os.getpid()
    return find_in_memory([needle(held)])


def needle(data: bytes) -> Tuple[bytes, str, int]:
    return data[:8], hashlib.sha256(data).hexdigest(), len(data)


# --- the attacks ---------------------------------------------------------------------------


def test_no_directory_on_a_sessions_import_path_is_writable(start: Callable[..., DaemonProcess]) -> None:
    daemon = start()
    with farm.connect(*daemon.address, key=KEY) as session:
        assert session.run(writable_import_path) == []
        path = session.run(lambda: __import__("sys").path)
    assert "" not in path and str(Path.cwd()) not in path, path


def test_a_module_left_in_the_daemons_start_directory_is_not_imported(
    start: Callable[..., DaemonProcess], reachable_tmp: Path, drop_box: Path
) -> None:
    """A session tries to leave ``planted.py`` and ``cloudpickle.py`` in the daemon's start directory for the next
    session; when the directory is writable anyway (here the test writes them), the next session imports neither."""
    start_directory = reachable_tmp / "start"
    start_directory.mkdir()
    daemon = start(cwd=start_directory)
    with farm.connect(*daemon.address, key=KEY) as session:
        assert session.run(plant, str(start_directory / "planted.py")).startswith("refused")
        assert session.run(plant, str(start_directory / "cloudpickle.py")).startswith("refused")
    marker = drop_box / "cloudpickle-ran"
    (start_directory / "planted.py").write_text("PLANTED = True\n")
    (start_directory / "cloudpickle.py").write_text(
        "open(%r, 'w').close()\nraise ImportError('planted')\n" % str(marker)
    )
    with farm.connect(*daemon.address, key=KEY) as session:
        assert session.run(lambda: 6 * 7) == 42
        assert session.run(import_planted).startswith("not found")
    assert not marker.exists(), "the next session imported the planted cloudpickle.py"


def test_a_session_on_a_root_daemon_runs_as_the_session_user_and_reaches_no_secret(
    start: Callable[..., DaemonProcess], reachable_tmp: Path, tls_files: TlsFiles
) -> None:
    secrets = Secrets(reachable_tmp / "secrets", tls_files, owner=0)
    daemon = start(secrets.options())
    with secrets.connect(daemon) as session:
        me = session.run(who_am_i)
        stolen = session.run(steal, daemon.pid)
    assert (me["uid"], me["euid"], me["gid"], me["groups"]) == (65534, 65534, 65534, []), me
    assert (me["directory_owner"], me["directory_mode"]) == (65534, 0o700), me
    assert not [name for name in me["environment"] if name.startswith("REMOTEDEV_")], me["environment"]
    assert stolen and all(result.startswith("refused") for result in stolen.values()), stolen


def kill(pid: int) -> str:
    import os
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as exc:
        return "refused: %s" % exc.strerror
    return "killed"


def test_a_session_cannot_kill_its_daemon_or_spawner(start: Callable[..., DaemonProcess]) -> None:
    daemon = start()
    with farm.connect(*daemon.address, key=KEY) as session:
        assert session.run(kill, daemon.pid) == "refused: Operation not permitted"
        assert session.run(lambda: kill(os.getppid())) == "refused: Operation not permitted"
        session.ping()
    assert daemon.process.poll() is None


def reach_into(pid: int) -> Dict[str, str]:
    """Try to read another process's memory and to trace it: what each attempt got."""
    import ctypes
    import os

    got = {}
    try:
        with open("/proc/%d/mem" % pid, "rb", 0) as mem:
            mem.read(1)
        got["mem"] = "read"
    except OSError as exc:
        got["mem"] = "refused: %s" % exc.strerror
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
        got["ptrace"] = "attached"
    else:
        got["ptrace"] = "refused: %s" % os.strerror(ctypes.get_errno())
    return got


def test_a_session_cannot_reach_into_another_boards_standby_session_process(
    start: Callable[..., DaemonProcess],
) -> None:
    """Two boards sharing a session user (docs/security.md): a session of one finds the other's standby, the next
    session's process waiting as that user, but can neither read its memory nor trace it. It may signal it, as any
    process of its user; the other board then forks its next session when it comes."""
    waiting, attacker = start(), start()
    standby = wait_for(lambda: standby_of(waiting.pid), 10, "the first board's standby session process")
    with farm.connect(*attacker.address, key=KEY) as session:
        assert session.run(lambda: __import__("os").getuid()) == 65534
        assert session.run(reach_into, standby) == {
            "mem": "refused: Permission denied",
            "ptrace": "refused: Operation not permitted",
        }
        assert session.run(kill, standby) == "killed"
    with farm.connect(*waiting.address, key=KEY) as session:
        assert session.run(lambda: __import__("os").getpid()) != standby
        assert session.run(lambda: __import__("os").getuid()) == 65534
    noticed = ("ended before its session", "is gone; forking the session's")  # reaped first, or found gone
    assert waiting.process.poll() is None and any(text in waiting.log_text() for text in noticed)


@pytest.mark.parametrize("daemon_user", ["root", "nobody"])
def test_neither_the_secret_nor_the_tls_key_is_in_a_sessions_memory(
    start: Callable[..., DaemonProcess], reachable_tmp: Path, tls_files: TlsFiles, daemon_user: str
) -> None:
    secrets = Secrets(reachable_tmp / "secrets", tls_files, owner=65534 if daemon_user == "nobody" else 0)
    daemon = start(secrets.options(), as_nobody=daemon_user == "nobody")
    pem = secrets.key_file.read_bytes()
    body = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    needles = [needle(secrets.secret), needle(pem), *(needle(line) for line in body)]
    with secrets.connect(daemon) as session:
        found = session.run(find_in_memory, needles)
        held = session.run(holds_what_it_holds)
        uid = session.run(lambda: __import__("os").getuid())
    assert held, "the scan finds what the session holds, so it could find the secret"
    assert found == [], found
    assert uid == 65534


def test_an_unknown_session_user_is_refused_at_start(reachable_tmp: Path) -> None:
    argv = board_command(KEY, extra=["--session-user", "no-such-farm-user"])
    result = subprocess.run(argv, env=python_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "the session user 'no-such-farm-user' does not exist on this board" in result.stderr, result.stderr


def test_a_daemon_that_is_not_root_says_it_runs_sessions_as_itself(start: Callable[..., DaemonProcess]) -> None:
    daemon = start(as_nobody=True)
    assert "this daemon is not root, so sessions run as its own user nobody" in daemon.log_text()
    with farm.connect(*daemon.address, key=KEY) as session:
        assert session.run(lambda: __import__("os").getuid()) == 65534


def test_root_as_the_session_user_is_allowed_with_a_warning_that_names_the_risk(
    start: Callable[..., DaemonProcess],
) -> None:
    daemon = start(["--session-user", "root"])
    assert "sessions run as root (--session-user root): a session can rewrite the board's Python" in daemon.log_text()
    with farm.connect(*daemon.address, key=KEY) as session:
        assert session.run(lambda: __import__("os").getuid()) == 0


def test_a_root_daemon_warns_of_a_secret_file_the_session_user_can_read(
    start: Callable[..., DaemonProcess], reachable_tmp: Path, tls_files: TlsFiles
) -> None:
    secrets = Secrets(reachable_tmp / "secrets", tls_files, owner=0)
    secrets.secret_file.chmod(0o644)
    daemon = start(secrets.options())
    assert "the session user nobody can read %s" % secrets.secret_file in daemon.log_text()
    assert "the session user nobody can read %s" % secrets.key_file not in daemon.log_text()


def test_the_daemon_stops_when_its_session_spawner_dies(start: Callable[..., DaemonProcess]) -> None:
    """Sessions must not silently stop working: with its spawner gone the daemon says so and exits (code 1), so
    that what supervises it starts it again."""
    daemon = start()
    (spawner,) = wait_for(lambda: _spawner_of(daemon.pid), 10, "the spawner and the watchdog in its own group")
    session = farm.connect(*daemon.address, key=KEY)
    session.ping()
    os.kill(spawner, signal.SIGKILL)
    assert daemon.process.wait(timeout=30) == 1
    assert "the session spawner (pid %d) is gone; the board daemon stops" % spawner in daemon.log_text()
    with pytest.raises(farm.SessionLostError, match="the board daemon shut down"):
        session.ping()


def _spawner_of(daemon: int) -> List[int]:
    """[the spawner] once the daemon has two children and the watchdog took a process group of its own."""
    with open("/proc/%d/task/%d/children" % (daemon, daemon)) as handle:
        children = [int(child) for child in handle.read().split()]
    in_its_group = [child for child in children if os.getpgid(child) == daemon]
    return in_its_group if len(children) == 2 and len(in_its_group) == 1 else []


def test_a_board_whose_python_the_session_user_cannot_read_refuses_to_start(reachable_tmp: Path) -> None:
    """A clear error at start, not sessions that fail later: here the work directory is out of its reach."""
    private = reachable_tmp / "private"
    private.mkdir(mode=0o700)
    argv = board_command(KEY, extra=["--work-dir", str(private / "work")])
    result = subprocess.run(argv, env=python_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    assert "the session user nobody cannot reach the work directory %s" % (private / "work") in result.stderr


def test_an_inventory_names_the_session_user_of_each_board_group(tmp_path: Path) -> None:
    inventory = tmp_path / "farm.yaml"
    inventory.write_text("tracker: {port: 0}\nboards:\n  - {key: a, session_user: root}\n  - {key: b}\n")
    stack = FarmStack(load_inventory(str(inventory)), str(tmp_path / "logs"))
    stack.start(timeout=60)
    try:
        with farm.connect_tracker(*stack.tracker_address) as tracker:
            uids = {}
            for key in ("a", "b"):
                with tracker.request(key, wait=30) as session:
                    uids[key] = session.run(lambda: __import__("os").getuid())
    finally:
        stack.stop()
    assert uids == {"a": 0, "b": 65534}
