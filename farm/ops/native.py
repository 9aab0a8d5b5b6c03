"""``farm build-server``: the native board server (the C daemon in ``farm/native/``) built for a target (host side).

The daemon is one executable per target, built with the toolchain that builds
the target's kernels and cached by content as kernels are
(:func:`farm.ops.toolchain.build_executable`). It links libc, libdl and
libffi, libffi statically where the toolchain has ``libffi.a``; for a cross
target whose toolchain has no libffi, Debian's libffi-dev for that
architecture is fetched once (:func:`target_libffi`). TLS is built in (``-DFARM_TLS``, against OpenSSL's
headers only: the daemon loads libssl with ``dlopen`` when it is given TLS, so a board without TLS never maps
libssl or libcrypto) where OpenSSL is found for the target: the toolchain's own (:func:`finds_openssl`), else
for a cross target Debian's libssl-dev fetched as libffi-dev is (:func:`target_openssl`); without it the daemon
refuses the ``--tls-*`` options. See docs/native-board.md.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional, Tuple

from .. import __version__
from .build import copy_artifact, load_inventory_named
from .cache import cache_dir
from .emulators import EmulatorError, download_packages, unpack_packages
from .targets import Target, host_target
from .toolchain import BuildError, Toolchain, build_executable, toolchain_for

logger = logging.getLogger("farm.native")

#: The daemon's sources: ``farm/native``, package data, so that an installed package builds it too.
SOURCE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "native")
#: How every build compiles: C11, every warning an error.
FLAGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-O2")
#: An instrumented build for the tests: AddressSanitizer and UndefinedBehaviorSanitizer, every report fatal.
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
NAME = "farm-board"
#: Debian's package of libffi's headers and static library, fetched for a cross target whose toolchain lacks them.
FFI_PACKAGES = ("libffi-dev",)
#: Debian's package of OpenSSL's headers and libraries (with libssl3), fetched for a cross target that lacks them.
SSL_PACKAGES = ("libssl-dev",)
#: Written last into a fetched libffi: only a directory holding it counts.
MARKER = ".farm-complete"


def sources() -> List[str]:
    """The daemon's C sources; BuildError when this installation has none."""
    found = sorted(glob.glob(os.path.join(SOURCE_DIR, "*.c")))
    if not found:
        raise BuildError(
            "the native board's sources are not in %s: this installation of pytest-remotedev lacks its package data"
            % SOURCE_DIR
        )
    return found


def _compiles(toolchain: Toolchain, source: str, options: List[str]) -> bool:
    """Whether the toolchain takes the C ``source`` with ``options`` (``-E``: preprocessed only)."""
    try:
        result = subprocess.run(
            [*toolchain.command(), "-x", "c", "-", *options],
            input=source,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return False
    return result.returncode == 0


def _finds_libffi(toolchain: Toolchain) -> bool:
    """Whether the toolchain finds ``ffi.h`` by itself (its own sysroot, or this machine's for the host)."""
    return _compiles(toolchain, "#include <ffi.h>\n", ["-E"])


def target_libffi(target: Target, directory: Optional[str] = None) -> str:
    """A directory holding ``target``'s libffi headers and static library: Debian's libffi-dev for the target,
    downloaded and unpacked once (as ``farm emulators install`` fetches the targets' Pythons)."""
    return _fetched(target, target.name, FFI_PACKAGES, "libffi", directory)


def target_openssl(target: Target, directory: Optional[str] = None) -> str:
    """A directory holding ``target``'s OpenSSL headers and libraries: Debian's libssl-dev for the target, fetched
    once as :func:`target_libffi` fetches libffi-dev."""
    return _fetched(target, target.name + "-openssl", SSL_PACKAGES, "OpenSSL", directory)


def _fetched(target: Target, name: str, packages: Tuple[str, ...], what: str, directory: Optional[str]) -> str:
    """Debian's ``packages`` for ``target`` and their dependencies, unpacked once into the directory ``name`` of
    the cache (a lock keeps concurrent builds from fetching twice); BuildError if they cannot be fetched."""
    from filelock import FileLock  # host-only

    base = directory or cache_dir("native-sysroots")
    root = os.path.join(base, name)
    if os.path.exists(os.path.join(root, MARKER)):
        return root
    with FileLock(os.path.join(base, ".%s.lock" % name)):
        if os.path.exists(os.path.join(root, MARKER)):
            return root
        shutil.rmtree(root, ignore_errors=True)
        work = tempfile.mkdtemp(prefix=".%s.partial-" % name, dir=base)
        try:
            archives = download_packages(target, os.path.join(work, "apt"), packages)
            unpack_packages(archives, os.path.join(work, "root"))
            open(os.path.join(work, "root", MARKER), "w").close()
            os.rename(os.path.join(work, "root"), root)
        except EmulatorError as exc:
            raise BuildError("cannot fetch %s for %s: %s" % (what, target.name, exc)) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return root


def finds_openssl(toolchain: Toolchain) -> bool:
    """Whether the toolchain builds and links against OpenSSL for its target (its headers, libssl and libcrypto):
    then the daemon is built with TLS."""
    probe = "#include <openssl/ssl.h>\nint main(void) { return SSL_CTX_new(TLS_method()) == 0; }\n"
    with tempfile.TemporaryDirectory(prefix="farm-openssl-") as work:
        return _compiles(toolchain, probe, ["-o", os.path.join(work, "probe"), "-lssl", "-lcrypto"])


def _fetches_for(toolchain: Toolchain) -> bool:
    """Whether what the toolchain lacks is fetched from Debian: a cross target Debian knows."""
    return bool(toolchain.target.debian_arch) and toolchain.target != host_target()


def openssl(toolchain: Toolchain) -> Optional[Tuple[List[str], List[str], List[str]]]:
    """Where OpenSSL's headers come from (flags, what to link: nothing, as libssl is loaded at run time, and the
    files the build depends on), as :func:`_libffi` says it for libffi: the toolchain's own, else for a cross target
    Debian's libssl-dev fetched by :func:`target_openssl`; None where there is none (or it cannot be fetched)."""
    if finds_openssl(toolchain):
        return [], [], []
    if not _fetches_for(toolchain):
        return None
    try:
        root = target_openssl(toolchain.target)
    except BuildError as exc:
        logger.warning("%s: building without TLS", exc)
        return None
    triple = toolchain.target.triple
    include = os.path.join(root, "usr", "include")
    header = os.path.join(include, triple, "openssl", "opensslconf.h")
    flags = ["-I", os.path.join(include, triple), "-I", include]
    return flags, [], [header]


def _static_libffi(toolchain: Toolchain) -> Optional[str]:
    """The toolchain's ``libffi.a``, if it has one."""
    command = [*toolchain.command(), "-print-file-name=libffi.a"]
    try:
        answer = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
    except OSError:
        return None
    return answer if os.path.isabs(answer) and os.path.isfile(answer) else None


def _libffi(toolchain: Toolchain) -> Tuple[List[str], List[str], List[str]]:
    """Where libffi comes from: flags, what to link after the sources, and the files the build depends on.

    The toolchain's own libffi (static where it has ``libffi.a``), else, for a cross target Debian knows, its
    libffi-dev fetched by :func:`target_libffi`.
    """
    if _finds_libffi(toolchain) or not _fetches_for(toolchain):
        archive = _static_libffi(toolchain)
        return [], [archive, "-ldl"] if archive else ["-lffi", "-ldl"], [archive] if archive else []
    root, triple = target_libffi(toolchain.target), toolchain.target.triple
    archive = os.path.join(root, "usr", "lib", triple, "libffi.a")
    flags = ["-I", os.path.join(root, "usr", "include", triple), "-I", os.path.join(root, "usr", "include")]
    return flags, [archive, "-ldl"], [archive, os.path.join(root, "usr", "include", triple, "ffi.h")]


def build_server(
    toolchain: Toolchain, sanitize: bool = False, cache_dir: Optional[str] = None, tls: Optional[bool] = None
) -> str:
    """Build the native board server for ``toolchain`` (``sanitize``: with ASan and UBSan); its path in the cache.

    ``tls``: build TLS in (BuildError without OpenSSL for the target), or not; None: where OpenSSL is found.
    """
    if not toolchain.available():
        toolchain.version()  # raises BuildError saying which package to install
    include, libraries, depends = _libffi(toolchain)
    found = openssl(toolchain) if tls is not False else None
    if tls and found is None:
        raise BuildError(
            "TLS needs OpenSSL for %s: install the Debian package libssl-dev (for a cross target, libssl-dev:%s), "
            "or give the toolchain's sysroot one" % (toolchain.target.name, toolchain.target.debian_arch or "ARCH")
        )
    flags = [*FLAGS, '-DFARM_VERSION="%s"' % __version__, *(SANITIZE_FLAGS if sanitize else ()), *include]
    if found is not None:
        flags += ["-DFARM_TLS", *found[0]]
        libraries, depends = [*libraries, *found[1]], [*depends, *found[2]]
    name = NAME + ("-sanitized" if sanitize else "")
    try:
        return build_executable(sources(), toolchain, name, flags, libraries, cache_dir, depends)
    except BuildError as exc:
        if "ffi.h" in str(exc) or "-lffi" in str(exc):
            raise BuildError(
                "%s\nthe native board needs libffi for %s: install the Debian package libffi-dev (for a cross "
                "target, libffi-dev:%s), or give the toolchain's sysroot one"
                % (exc, toolchain.target.name, toolchain.target.debian_arch or toolchain.target.name)
            ) from None
        raise


def host_server(sanitize: bool = False, tls: Optional[bool] = None) -> str:
    """The native board server built for this machine with ``$CC`` or ``cc`` (cached); ``tls`` as
    :func:`build_server` takes it."""
    target = host_target()
    if target is None:
        raise BuildError("this machine's architecture is unknown to the farm")
    return build_server(toolchain_for(target), sanitize, tls=tls)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", required=True, help="the target: x86_64, aarch64 or armhf")
    parser.add_argument(
        "--toolchain",
        metavar="TRIPLE",
        help="build with this triple's toolchain: the --farm inventory's toolchains: entry, else TRIPLE-gcc",
    )
    parser.add_argument("--farm", metavar="INVENTORY", help="the inventory whose toolchains: section to use")
    parser.add_argument("-o", "--output", metavar="PATH", help="copy the executable here (a directory or a file name)")
    parser.add_argument("--sanitize", action="store_true", help="instrument with AddressSanitizer and UBSan")
    parser.add_argument("--cache-dir", metavar="DIR", help="the artifact cache (default: $REMOTEDEV_CACHE/artifacts)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _toolchain(args: argparse.Namespace) -> Toolchain:
    overrides = load_inventory_named(args.farm).toolchains if args.farm else {}
    target = toolchain_for(args.arch, overrides).target
    if not args.toolchain or args.toolchain == target.triple:
        return toolchain_for(target, overrides)
    spec = overrides.get(args.toolchain)
    if spec is not None:
        return Toolchain(target, spec.compiler, tuple(spec.flags) or ("-O2",))
    return Toolchain(target, shlex.quote(args.toolchain + "-gcc"))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        toolchain = _toolchain(args)
        tls = toolchain.available() and openssl(toolchain) is not None
        server = build_server(toolchain, args.sanitize, args.cache_dir, tls=tls)
        if tls:
            print("farm build-server: TLS built in (OpenSSL, loaded at run time when TLS is given)", file=sys.stderr)
        else:
            print(
                "farm build-server: built without TLS: OpenSSL was not found for %s (install libssl-dev, for a "
                "cross target in the toolchain's sysroot); the daemon refuses --tls-*" % toolchain.target.name,
                file=sys.stderr,
            )
        if args.output:
            server = copy_artifact(server, args.output, NAME)
    except (BuildError, OSError) as exc:
        print("farm build-server: %s" % exc, file=sys.stderr)
        return 1
    print(server)
    return 0
