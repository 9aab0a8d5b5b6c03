"""Build C sources into shared libraries for a board (host side).

:func:`compile_shared` runs a compiler once. :func:`build_shared` builds for a
:class:`Toolchain` (a target architecture and its compiler) into a cache keyed
by a hash of everything that shapes the output, so a second build is a file
lookup and concurrent builds of one artifact (xdist workers) compile once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

from ..board.elf import elf_machine
from .cache import cache_dir as default_cache_dir
from .targets import TARGETS, Target, host_target, target_named, target_of_machine

logger = logging.getLogger("farm.toolchain")

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_FLAGS = ("-O2", "-shared", "-fPIC")
#: A toolchain's own flags unless it names others.
TOOLCHAIN_FLAGS = ("-O2",)
#: What every build adds after the toolchain's and the caller's flags.
SHARED_FLAGS = ("-shared", "-fPIC")
#: Bumped when the cache key's layout changes, so old artifacts are never taken for new ones.
_KEY_VERSION = b"farm.toolchain/1"
_QUOTED_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"', re.MULTILINE)


class BuildError(RuntimeError):
    """The compiler is missing or failed; the message says what to do or holds its command line and output."""


class ArchitectureMismatch(BuildError):
    """A shared library is built for another architecture than the one it is meant for."""


class CompilerSpec(Protocol):
    """What an override needs: a compiler command and its flags (an inventory's ``toolchains:`` entry)."""

    @property
    def compiler(self) -> str: ...

    @property
    def flags(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Toolchain:
    """A compiler for one target: ``compiler`` is a command line (shlex-split), ``flags`` come first."""

    target: Target
    compiler: str
    flags: Tuple[str, ...] = TOOLCHAIN_FLAGS

    def command(self) -> List[str]:
        """The compiler's command line as a list."""
        return shlex.split(self.compiler)

    def available(self) -> bool:
        """Whether the compiler's executable is found."""
        command = self.command()
        return bool(command) and shutil.which(command[0]) is not None

    def version(self) -> str:
        """The first line of ``COMPILER --version`` (run once per process and compiler)."""
        if not self.available():
            raise BuildError(self._missing())
        return _compiler_version(self.compiler)

    def _missing(self) -> str:
        target = self.target
        package = "gcc" if target == host_target() else target.compiler_package
        return (
            "compiler %r for %s (%s) not found: install the Debian package %s (apt-get install %s) "
            "or run `farm emulators install`; or name another compiler ($CC for this machine's target, "
            "the inventory's toolchains: section for any)"
            % (self.compiler, target.name, target.triple, package, package)
        )


@functools.lru_cache(maxsize=None)
def _compiler_version(compiler: str) -> str:
    command = [*shlex.split(compiler), "--version"]
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise BuildError("cannot run %s: %s" % (shlex.join(command), exc)) from None
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        raise BuildError("%s failed with code %d:\n%s" % (shlex.join(command), result.returncode, result.stdout))
    return lines[0].strip()


def default_compiler() -> str:
    """``$CC`` if set, else ``cc``."""
    return os.environ.get("CC", "cc")


def toolchain_for(
    target_or_name: Union[Target, str], overrides: Optional[Mapping[str, CompilerSpec]] = None
) -> Toolchain:
    """The toolchain for a target, or an architecture name or triple (``aarch64``, ``arm-linux-gnueabihf``).

    ``overrides`` (an inventory's ``toolchains:``, by triple) win, also for a
    triple the farm does not know; else this machine's own target uses ``$CC``
    or ``cc`` and the others their cross compiler. An override's empty flags
    mean the default ones.
    """
    overrides = overrides or {}
    if isinstance(target_or_name, str) and target_or_name in overrides and target_or_name not in TARGETS:
        target = Target(target_or_name, target_or_name, (), "", "", "", "")  # a triple only the inventory knows
    else:
        target = _target(target_or_name)
    spec = overrides.get(target.triple)
    if spec is not None:
        return Toolchain(target, spec.compiler, tuple(spec.flags) or TOOLCHAIN_FLAGS)
    if target == host_target():
        return Toolchain(target, default_compiler())
    return Toolchain(target, target.compiler)


def _target(target_or_name: Union[Target, str]) -> Target:
    if isinstance(target_or_name, Target):
        return target_or_name
    try:
        return target_named(target_or_name)
    except KeyError:
        triples = ", ".join(sorted(target.triple for target in TARGETS.values()))
        raise BuildError(
            "unknown architecture %r: expected one of %s or a triple (%s)"
            % (target_or_name, ", ".join(sorted(TARGETS)), triples)
        ) from None


def toolchain_for_machine(machine: str, overrides: Optional[Mapping[str, CompilerSpec]] = None) -> Toolchain:
    """The toolchain for a board whose ``platform.machine()`` is ``machine`` (``armv7l``, ``aarch64``...)."""
    target = target_of_machine(machine)
    if target is None:
        known = sorted(name for target in TARGETS.values() for name in target.machines)
        raise BuildError(
            "no known target runs on a board whose machine is %r (known: %s)" % (machine, ", ".join(known))
        )
    return toolchain_for(target, overrides)


def build_shared(
    sources: Sequence[PathLike],
    toolchain: Toolchain,
    name: Optional[str] = None,
    flags: Sequence[str] = (),
    cache_dir: Optional[str] = None,
    defines: Optional[Mapping[str, Optional[str]]] = None,
    depends: Sequence[PathLike] = (),
) -> str:
    """Build ``sources`` into one shared library for ``toolchain`` and return its path in the cache.

    The path is ``CACHE/TRIPLE/NAME-HASH.so`` (``NAME``: the first source's
    stem). The hash covers the sources (names and bytes), the headers they
    include with quotes from their own directories or ``-I`` ones, ``depends``,
    the compiler command and version and every flag. A hit returns at once; a
    miss compiles under a lock per artifact into a temporary file that replaces
    the artifact only when complete and for the right architecture.
    """
    options = (*toolchain.flags, *flags, *_define_flags(defines or {}), *SHARED_FLAGS)
    return _cached_build(sources, toolchain, name, options, (), ".so", cache_dir, depends)


def build_executable(
    sources: Sequence[PathLike],
    toolchain: Toolchain,
    name: Optional[str] = None,
    flags: Sequence[str] = (),
    libraries: Sequence[str] = (),
    cache_dir: Optional[str] = None,
    depends: Sequence[PathLike] = (),
) -> str:
    """Build ``sources`` into one executable for ``toolchain``, cached as :func:`build_shared` caches libraries.

    ``libraries`` (``-lffi``, a static archive's path) follow the sources on the linker's command line.
    """
    options = (*toolchain.flags, *flags)
    return _cached_build(sources, toolchain, name, options, libraries, "", cache_dir, depends)


def _cached_build(
    sources: Sequence[PathLike],
    toolchain: Toolchain,
    name: Optional[str],
    options: Sequence[str],
    libraries: Sequence[str],
    suffix: str,
    cache_dir: Optional[str],
    depends: Sequence[PathLike],
) -> str:
    paths = [os.path.abspath(os.fspath(source)) for source in sources]
    if not paths:
        raise BuildError("no sources to build")
    name = name or os.path.splitext(os.path.basename(paths[0]))[0]
    if not name or os.sep in name:
        raise BuildError("%r cannot name an artifact (a file name without %r)" % (name, os.sep))
    keyed = (*options, "libraries:", *libraries) if libraries else options
    key = _artifact_key(paths, toolchain, keyed, [os.fspath(path) for path in depends])
    directory = os.path.join(cache_dir or default_cache_dir("artifacts"), toolchain.target.triple)
    artifact = os.path.join(directory, "%s-%s%s" % (name, key[:16], suffix))
    if os.path.exists(artifact):
        logger.debug("cache hit: %s", artifact)
        return artifact
    os.makedirs(directory, exist_ok=True)
    return _build_locked(paths, toolchain, options, artifact, libraries)


def _build_locked(
    sources: List[str], toolchain: Toolchain, options: Sequence[str], artifact: str, libraries: Sequence[str] = ()
) -> str:
    """Build ``artifact`` unless another process did while this one waited for the lock."""
    from filelock import FileLock  # host-only: farm.cli imports this module, and `farm server` runs on bare Pythons

    with FileLock(artifact + ".lock"):
        if os.path.exists(artifact):
            logger.debug("cache hit (built while waiting): %s", artifact)
            return artifact
        partial = artifact + ".tmp"  # only the lock holder writes it: one found now is a crashed build's, overwritten
        try:
            compile_shared(sources, partial, toolchain.compiler, options, libraries=libraries)
            _check_built(partial, toolchain)
            os.replace(partial, artifact)
        finally:
            _discard(partial)
    logger.info("built %s", artifact)
    return artifact


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _check_built(path: str, toolchain: Toolchain) -> None:
    built, wanted = elf_machine(path), toolchain.target.elf
    if wanted and built != wanted:  # an inventory's own triple: the farm does not know its ELF machine
        raise ArchitectureMismatch(
            "compiler %r built %s for target %s (%s), which needs %s code: check the toolchain's compiler"
            % (toolchain.compiler, "%s code" % built if built else "no ELF file", toolchain.target.name,
               toolchain.target.triple, wanted)
        )  # fmt: skip


def _define_flags(defines: Mapping[str, Optional[str]]) -> List[str]:
    """``-DNAME`` or ``-DNAME=VALUE``, sorted by name."""
    return ["-D%s" % name if value is None else "-D%s=%s" % (name, value) for name, value in sorted(defines.items())]


def _artifact_key(sources: Sequence[str], toolchain: Toolchain, options: Sequence[str], depends: Sequence[str]) -> str:
    """The hex SHA-256 of everything that shapes a build's output (see :func:`build_shared`)."""
    digest = hashlib.sha256()
    _feed(digest, _KEY_VERSION, toolchain.version().encode(), *(part.encode() for part in toolchain.command()))
    _feed(digest, b"options", *(option.encode() for option in options))
    for label, path in _inputs(sources, _include_dirs(options), depends):
        try:
            with open(path, "rb") as handle:
                _feed(digest, label.encode(), handle.read())
        except OSError as exc:
            raise BuildError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
    return digest.hexdigest()


def _feed(digest: Any, *parts: bytes) -> None:
    """Add ``parts`` so that no two different sequences feed the same bytes."""
    digest.update(b"%d;" % len(parts))
    for part in parts:
        digest.update(b"%d:" % len(part))
        digest.update(part)


def _inputs(sources: Sequence[str], include_dirs: Sequence[str], depends: Sequence[str]) -> Iterator[Tuple[str, str]]:
    """(label, path) of each file that counts: the sources, the local headers they include, ``depends``."""
    for path in sources:
        yield "source " + os.path.basename(path), path
    for included, path in _local_headers(sources, include_dirs):
        yield "header " + included, path
    for path in depends:
        yield "depends " + os.path.basename(path), path


def _include_dirs(options: Sequence[str]) -> List[str]:
    """The directories of ``-IDIR`` and ``-I DIR`` options."""
    found = []
    for index, option in enumerate(options):
        if option == "-I" and index + 1 < len(options):
            found.append(options[index + 1])
        elif option.startswith("-I") and option != "-I":
            found.append(option[2:])
    return found


def _local_headers(sources: Sequence[str], include_dirs: Sequence[str]) -> List[Tuple[str, str]]:
    """(name as included, path) of the files reached through ``#include "..."``, each once, in a stable order."""
    found: List[Tuple[str, str]] = []
    seen = set()
    pending = list(sources)
    while pending:
        includer = pending.pop(0)
        try:
            with open(includer, "rb") as handle:
                text = handle.read()
        except OSError as exc:
            raise BuildError("cannot read %s: %s" % (includer, exc.strerror or exc)) from None
        for raw in _QUOTED_INCLUDE.findall(text):
            included = raw.decode("utf-8", "replace")
            path = _find_header(included, [os.path.dirname(includer), *include_dirs])
            if path is not None and os.path.realpath(path) not in seen:
                seen.add(os.path.realpath(path))
                found.append((included, path))
                pending.append(path)
    return found


def _find_header(included: str, directories: Sequence[str]) -> Optional[str]:
    for directory in directories:
        path = os.path.join(directory, included)
        if os.path.isfile(path):
            return path
    return None  # a system header, left to the compiler's version


def check_artifact_for(path: PathLike, machine: str) -> None:
    """Refuse ``path`` for a board whose ``platform.machine()`` is ``machine`` unless built for its architecture."""
    built = elf_machine(os.fspath(path))
    target = target_of_machine(machine)
    runs = target.elf if target is not None else machine
    if built == runs:
        return
    what = "built for %s" % built if built else "not an ELF file"
    advice = ": build it for %s" % target.name if target is not None else ""
    raise ArchitectureMismatch(
        "%s is %s, but the board runs %s (%s code)%s"
        % (os.path.basename(os.fspath(path)), what, machine, runs, advice)
    )


def compile_shared(
    sources: Sequence[PathLike],
    output: PathLike,
    compiler: Optional[str] = None,
    flags: Sequence[str] = DEFAULT_FLAGS,
    extra_flags: Sequence[str] = (),
    libraries: Sequence[str] = (),
) -> str:
    """Compile ``sources`` into ``output`` (a shared library with the default flags) and return its path.

    ``libraries`` follow the sources, where the linker looks for what they need.
    """
    command = [*shlex.split(compiler or default_compiler()), *flags, *extra_flags, "-o", os.fspath(output)]
    command += [os.fspath(source) for source in sources]
    command += list(libraries)
    logger.debug("compiling: %s", shlex.join(command))
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        raise BuildError("compiler %r not found (set CC or install one)" % command[0]) from None
    if result.returncode:
        raise BuildError("%s failed with code %d:\n%s" % (shlex.join(command), result.returncode, result.stdout))
    return os.fspath(output)
