"""``farm emulators``: qemu-user, the cross compilers and the target Pythons that emulated boards run on.

``install`` puts qemu-user and each emulated target's cross compiler on the host
with apt-get (as root, only when they are missing), and unpacks the target's
Debian Python with its libraries into a sysroot in the cache: the packages are
downloaded with a private apt state (the system's dpkg database is untouched)
and extracted with ``dpkg-deb -x``, without a chroot. qemu-user then runs that
Python with ``qemu-ARCH -L SYSROOT``. Host side; standard library at import
(filelock is imported when an install runs), so ``farm server`` still works on
a bare board Python.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Sequence

from .cache import cache_dir
from .targets import EMULATED, TARGETS, Target

logger = logging.getLogger("farm.emulators")

#: Written last into a sysroot: only a sysroot holding it counts as installed.
MARKER = ".farm-complete"
LOCK_FILE = ".lock"
LOCK_TIMEOUT = 1800.0
QEMU_PACKAGE = "qemu-user"
#: The release's default Python 3 and its standard library (they name the versioned packages, e.g. python3.11).
PYTHON_PACKAGES = ("python3-minimal", "libpython3-stdlib")
PYTHON_LINK = "usr/bin/python3"


class EmulatorError(RuntimeError):
    """A problem with the emulators that the user can fix, in one line."""


def default_dir() -> str:
    """The emulators' cache directory: ``farm.ops.cache.cache_dir("emulators")``."""
    return cache_dir("emulators")


# --- the API ------------------------------------------------------------------------------


def install(
    arches: Sequence[str] = EMULATED, directory: Optional[str] = None, host_packages: bool = True
) -> Dict[str, str]:
    """Install what ``arches`` need and return arch -> sysroot; idempotent and safe to run concurrently.

    With ``host_packages`` the missing qemu-user and cross compilers are apt-installed (which needs root).
    """
    targets = _targets(arches)
    directory = _directory(directory)
    missing = _missing_host_packages(targets) if host_packages else []
    pending = [target for target in targets if _marker(os.path.join(directory, target.name)) is None]
    if missing:
        _check_can_apt_install(missing)
    if pending:
        _require_commands(("apt-get", "dpkg-deb"), "to download and unpack the target Pythons")
    if missing or pending:
        os.makedirs(directory, exist_ok=True)
        with _locked(directory):
            _install_locked(targets, directory, host_packages)
    else:
        for target in targets:
            logger.info("%s: already installed in %s", target.name, os.path.join(directory, target.name))
    return {target.name: os.path.join(directory, target.name) for target in targets}


def sysroot(arch: str, directory: Optional[str] = None) -> str:
    """The installed sysroot of ``arch``; EmulatorError if it is not installed."""
    _targets([arch])  # EmulatorError for an architecture that is not emulated
    root = os.path.join(_directory(directory), arch)
    if _marker(root) is None:
        raise EmulatorError(
            "the %s emulator is not installed in %s: %s" % (arch, os.path.dirname(root), _hint(directory))
        )
    return root


def python_command(arch: str, directory: Optional[str] = None) -> List[str]:
    """``[qemu, "-L", sysroot, sysroot/usr/bin/python3.X]``: the argv prefix that runs ``arch``'s Python."""
    root = sysroot(arch, directory)
    target = TARGETS[arch]
    qemu = shutil.which(target.qemu)
    if qemu is None:
        raise EmulatorError(
            "%s is not on PATH (Debian package %s): %s as root" % (target.qemu, QEMU_PACKAGE, _hint(directory))
        )
    return [qemu, "-L", root, os.path.join(root, _installed(root)["python"])]


def status(directory: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """Per emulated arch: installed, sysroot, python, python_version, qemu and compiler (paths, or None)."""
    directory = _directory(directory)
    result: Dict[str, Dict[str, Any]] = {}
    for arch in EMULATED:
        target = TARGETS[arch]
        root = os.path.join(directory, arch)
        marker = _marker(root) or {}
        result[arch] = {
            "installed": bool(marker),
            "sysroot": root,
            "python": os.path.join(root, marker["python"]) if marker else None,
            "python_version": marker.get("python_version"),
            "qemu": shutil.which(target.qemu),
            "compiler": shutil.which(target.compiler),
        }
    return result


# --- checks -------------------------------------------------------------------------------


def _targets(arches: Sequence[str]) -> List[Target]:
    unknown = [arch for arch in arches if arch not in EMULATED]
    if unknown:
        raise EmulatorError(
            "cannot emulate %s: the supported architectures are %s" % (", ".join(unknown), ", ".join(EMULATED))
        )
    return [TARGETS[arch] for arch in dict.fromkeys(arches)]


def _directory(directory: Optional[str]) -> str:
    return os.path.abspath(directory) if directory else default_dir()


def _hint(directory: Optional[str]) -> str:
    """What to run to install the emulators in ``directory`` (None: the default one)."""
    return "run `farm emulators install%s`" % (" --dir " + shlex.quote(directory) if directory else "")


def _missing_host_packages(targets: Sequence[Target]) -> List[str]:
    """The Debian packages of the qemu binaries, cross compilers and cross C libraries not found on this host."""
    packages: List[str] = []
    for target in targets:
        if shutil.which(target.qemu) is None:
            packages.append(QEMU_PACKAGE)
        if shutil.which(target.compiler) is None:
            packages += [target.compiler_package, target.libc_package]
        elif not _finds_libc(target.compiler):
            packages.append(target.libc_package)
    return list(dict.fromkeys(packages))


def _finds_libc(compiler: str) -> bool:
    """Whether the cross compiler finds its C library (gcc prints the bare name when it does not)."""
    result = subprocess.run([compiler, "-print-file-name=libc.so"], stdout=subprocess.PIPE, text=True)
    return result.returncode == 0 and os.path.isabs(result.stdout.strip())


def _check_can_apt_install(packages: Sequence[str]) -> None:
    _require_commands(("apt-get",), "to install %s" % " ".join(packages))
    if os.geteuid() != 0:
        raise EmulatorError(
            "farm emulators install must run as root to install %s with apt-get; run it with sudo" % " ".join(packages)
        )


def _require_commands(commands: Sequence[str], purpose: str) -> None:
    missing = [command for command in commands if shutil.which(command) is None]
    if missing:
        raise EmulatorError(
            "farm emulators install needs Debian's or Ubuntu's %s %s, and %s not on PATH"
            % (" and ".join(commands), purpose, " and ".join(missing) + (" is" if len(missing) == 1 else " are"))
        )


# --- installing ---------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Hold the directory's install lock (one install at a time, across processes)."""
    try:
        import filelock
    except ImportError:
        raise EmulatorError("farm emulators install needs the filelock package (pip install filelock)") from None

    lock = filelock.FileLock(os.path.join(directory, LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        logger.info("waiting for another farm emulators install in %s to finish", directory)
        try:
            lock.acquire(timeout=LOCK_TIMEOUT)
        except filelock.Timeout:
            raise EmulatorError(
                "another farm emulators install held %s for %g s" % (lock.lock_file, LOCK_TIMEOUT)
            ) from None
    try:
        yield
    finally:
        lock.release()


def _install_locked(targets: Sequence[Target], directory: str, host_packages: bool) -> None:
    """What ``install`` does under the lock: what another process did meanwhile is not done again."""
    missing = _missing_host_packages(targets) if host_packages else []
    if missing:
        _install_host_packages(missing, targets)
    for target in targets:
        root = os.path.join(directory, target.name)
        if _marker(root) is None:
            _install_sysroot(target, directory)
        else:
            logger.info("%s: already installed in %s", target.name, root)


def _install_host_packages(packages: Sequence[str], targets: Sequence[Target]) -> None:
    logger.info("installing host packages with apt-get: %s", " ".join(packages))
    options = ["-q", "-o", "DPkg::Lock::Timeout=%d" % LOCK_TIMEOUT]
    _run(["apt-get", *options, "update"], "apt-get update")
    _run(["apt-get", *options, "install", "-y", "--no-install-recommends", *packages], "apt-get install")
    still = _missing_host_packages(targets)
    if still:
        raise EmulatorError(
            "after apt-get install %s, these are still missing from PATH: %s" % (" ".join(packages), " ".join(still))
        )


def _install_sysroot(target: Target, directory: str) -> None:
    """Download and unpack ``target``'s Python next to its sysroot, then move it into place in one rename."""
    root = os.path.join(directory, target.name)
    _remove_unfinished(target, directory)
    work = tempfile.mkdtemp(prefix=".%s.partial-" % target.name, dir=directory)
    try:
        archives = _download(target, os.path.join(work, "apt"))
        unpacked = os.path.join(work, "sysroot")
        logger.info("%s: unpacking %d packages", target.name, len(archives))
        marker = _unpack(archives, unpacked)
        magic = _try_python(target, unpacked, marker["python"])
        _compile_stdlib(target, unpacked, marker["python"], magic)
        with open(os.path.join(unpacked, MARKER), "w") as handle:
            json.dump(dict(marker, arch=target.name, debian_arch=target.debian_arch), handle, indent=1)
        os.rename(unpacked, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("%s: installed Python %s in %s", target.name, marker["python_version"], root)


def _remove_unfinished(target: Target, directory: str) -> None:
    """Remove what an interrupted install of ``target`` left (the caller holds the lock)."""
    leftovers = glob.glob(os.path.join(directory, ".%s.partial-*" % target.name))
    if os.path.lexists(os.path.join(directory, target.name)):
        leftovers.append(os.path.join(directory, target.name))
    for path in leftovers:
        logger.info("%s: removing the unfinished install %s", target.name, path)
        shutil.rmtree(path)


def download_packages(target: Target, state: str, packages: Sequence[str]) -> List[str]:
    """The ``.deb`` files of ``packages`` for ``target`` and their dependencies, downloaded into ``state`` with a
    private apt state (the system's dpkg database is untouched)."""
    _require_commands(("apt-get", "dpkg-deb"), "to download and unpack %s" % " ".join(packages))
    return _download(target, state, packages)


def unpack_packages(archives: Sequence[str], root: str) -> None:
    """Extract ``archives`` into ``root`` with ``dpkg-deb -x`` (no maintainer scripts run)."""
    for archive in archives:
        _run(["dpkg-deb", "-x", archive, root], "dpkg-deb -x %s" % os.path.basename(archive))


def _download(target: Target, state: str, packages: Sequence[str] = PYTHON_PACKAGES) -> List[str]:
    """Download ``packages`` of ``target`` and their dependencies with a private apt state in ``state``."""
    for sub in ("lists/partial", "archives/partial", "cache"):
        os.makedirs(os.path.join(state, sub))
    open(os.path.join(state, "status"), "w").close()
    options = [
        "-q",
        "-o",
        "APT::Architecture=" + target.debian_arch,
        "-o",
        "APT::Architectures::=" + target.debian_arch,
    ]
    for option, sub in (("State::Lists", "lists"), ("State::Status", "status"), ("Cache", "cache")):
        options += ["-o", "Dir::%s=%s" % (option, os.path.join(state, sub))]
    options += ["-o", "Dir::Cache::archives=" + os.path.join(state, "archives")]
    options += ["-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]
    logger.info(
        "%s: downloading %s (%s) from the system's apt sources", target.name, " ".join(packages), target.debian_arch
    )
    _run(["apt-get", *options, "update"], "apt-get update (%s)" % target.debian_arch)
    command = ["apt-get", *options, "install", "-y", "--download-only", "--no-install-recommends", *packages]
    _run(command, "apt-get install --download-only (%s)" % target.debian_arch)
    return sorted(glob.glob(os.path.join(state, "archives", "*.deb")))


def _unpack(archives: Sequence[str], root: str) -> Dict[str, Any]:
    """Extract ``archives`` into ``root``; the marker's content: packages, python (relative path), python_version."""
    packages: Dict[str, str] = {}
    for archive in archives:
        fields = _run(["dpkg-deb", "--show", "--showformat=${Package}\t${Version}", archive], "dpkg-deb --show")
        name, version = fields.split("\t")
        packages[name] = version
        _run(["dpkg-deb", "-x", archive, root], "dpkg-deb -x %s" % os.path.basename(archive))
    _link_merged_usr(root)
    python = "usr/bin/" + os.path.basename(os.path.realpath(os.path.join(root, PYTHON_LINK)))
    package = os.path.basename(python) + "-minimal"
    if not os.path.isfile(os.path.join(root, python)) or package not in packages:
        raise EmulatorError("the packages %s hold no %s from %s" % (" ".join(PYTHON_PACKAGES), python, package))
    return {"packages": packages, "python": python, "python_version": _upstream_version(packages[package])}


def _link_merged_usr(root: str) -> None:
    """Add the /bin, /sbin and /lib links to /usr that releases with a merged /usr ship outside their packages."""
    for name in ("bin", "sbin", "lib"):
        if not os.path.lexists(os.path.join(root, name)) and os.path.isdir(os.path.join(root, "usr", name)):
            os.symlink(os.path.join("usr", name), os.path.join(root, name))


def _upstream_version(version: str) -> str:
    """``3.11.2`` from the Debian version ``3.11.2-6+deb12u9`` (or ``1:3.11.2-6``)."""
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


def _try_python(target: Target, root: str, python: str) -> Optional[str]:
    """Run the unpacked Python under qemu and check the machine it reports; the hex of its bytecode magic number
    (None, and not tried, without qemu on PATH)."""
    qemu = shutil.which(target.qemu)
    if qemu is None:
        logger.warning("%s: %s is not on PATH, so the unpacked Python was not tried", target.name, target.qemu)
        return None
    code = "import importlib.util, platform; print(platform.machine(), importlib.util.MAGIC_NUMBER.hex())"
    command = [qemu, "-L", root, os.path.join(root, python), "-c", code]
    machine, magic = (_run(command, "%s's Python under %s" % (target.name, target.qemu)).split() + ["", ""])[:2]
    if machine not in target.machines:
        raise EmulatorError("%s's Python under %s reports machine %r" % (target.name, target.qemu, machine))
    logger.info("%s: %s runs under %s as %s", target.name, python, target.qemu, machine)
    return magic


def _compile_stdlib(target: Target, root: str, python: str, magic: Optional[str]) -> None:
    """Byte-compile the target's standard library once (dpkg's postinst would have): each emulated board then
    starts about 0.7 s sooner, however PYTHONDONTWRITEBYTECODE is set where it runs.

    Bytecode does not depend on the machine, only on the interpreter's version (its magic number): when this
    Python's magic is the target's, it compiles natively, several times faster than the target's Python under
    qemu would."""
    qemu = shutil.which(target.qemu)
    if qemu is None:
        return
    library = os.path.join(root, "usr", "lib", os.path.basename(python))
    if magic == importlib.util.MAGIC_NUMBER.hex():
        compiler, interpreter = "this host's Python (the same bytecode)", [sys.executable]
    else:
        compiler, interpreter = "its own Python under %s" % target.qemu, [qemu, "-L", root, os.path.join(root, python)]
    command = [*interpreter, "-m", "compileall", "-q", "-j0", library]
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if result.returncode:  # what could not be compiled is compiled at import, as without this step
        logger.warning("%s: compileall failed for some files: %s", target.name, result.stdout.strip()[-2000:])
    logger.info("%s: compiled the standard library in %s with %s", target.name, library, compiler)


def _run(command: Sequence[str], what: str) -> str:
    """Run ``command`` and return its output; EmulatorError with its last line if it fails."""
    logger.debug("running %s", shlex.join(command))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if result.returncode:
        logger.debug("output of %s:\n%s", what, result.stdout)
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        raise EmulatorError("%s failed with code %d: %s" % (what, result.returncode, lines[-1] if lines else ""))
    return result.stdout


def _installed(root: str) -> Dict[str, Any]:
    """The marker of a sysroot that :func:`sysroot` found complete."""
    marker = _marker(root)
    if marker is None:  # removed since
        raise EmulatorError("the emulator in %s is no longer installed" % root)
    return marker


def _marker(root: str) -> Optional[Dict[str, Any]]:
    """The marker of a complete sysroot, or None (no sysroot, or one an install left unfinished)."""
    try:
        with open(os.path.join(root, MARKER)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


# --- the command --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install_parser = _action(actions, "install", "install qemu-user, the cross compilers and the target Pythons")
    install_parser.add_argument(
        "--arch", action="append", help="an architecture to install (default: %s)" % ", ".join(EMULATED)
    )
    status_parser = _action(actions, "status", "show what is installed, and the qemu binaries and compilers")
    python_parser = _action(actions, "python", "run an emulated target's Python (options go before ARCH)")
    python_parser.add_argument("arch", metavar="ARCH", help="one of: %s" % ", ".join(EMULATED))
    python_parser.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARGS", help="the Python's arguments (after --)"
    )
    for sub in (install_parser, status_parser, python_parser):
        sub.add_argument("--dir", help="the emulators' directory (default: CACHE/emulators, see REMOTEDEV_CACHE)")


def _action(actions: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    return actions.add_parser(name, help=help_text, description=help_text)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return ACTIONS[args.action](args)
    except (EmulatorError, OSError) as exc:
        print("farm emulators: error: %s" % exc, file=sys.stderr)
        return 2


def _run_install(args: argparse.Namespace) -> int:
    for arch, root in install(args.arch or EMULATED, args.dir).items():
        print("%s: %s" % (arch, root))
    return 0


def _run_status(args: argparse.Namespace) -> int:
    for arch, info in status(args.dir).items():
        target = TARGETS[arch]
        if info["installed"]:
            print("%s: installed, Python %s: %s" % (arch, info["python_version"], info["python"]))
        else:
            print("%s: not installed in %s (%s)" % (arch, os.path.dirname(info["sysroot"]), _hint(args.dir)))
        print("  qemu:     %s" % (info["qemu"] or "missing (%s, package %s)" % (target.qemu, QEMU_PACKAGE)))
        print(
            "  compiler: %s"
            % (info["compiler"] or "missing (%s, package %s)" % (target.compiler, target.compiler_package))
        )
    return 0


def _run_python(args: argparse.Namespace) -> int:
    command = python_command(args.arch, args.dir)
    extra = args.args[1:] if args.args[:1] == ["--"] else args.args
    os.execv(command[0], command + extra)


ACTIONS = {"install": _run_install, "status": _run_status, "python": _run_python}
