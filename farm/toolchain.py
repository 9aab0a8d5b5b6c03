"""Build C sources into shared libraries for a board (host side)."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from typing import Optional, Sequence, Union

logger = logging.getLogger("farm.toolchain")

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_FLAGS = ("-O2", "-shared", "-fPIC")


class BuildError(RuntimeError):
    """The compiler failed; the message holds its command line and output."""


def default_compiler() -> str:
    """``$CC`` if set, else ``cc``."""
    return os.environ.get("CC", "cc")


def compile_shared(
    sources: Sequence[PathLike],
    output: PathLike,
    compiler: Optional[str] = None,
    flags: Sequence[str] = DEFAULT_FLAGS,
    extra_flags: Sequence[str] = (),
) -> str:
    """Compile ``sources`` into the shared library ``output`` and return its path."""
    command = [*shlex.split(compiler or default_compiler()), *flags, *extra_flags, "-o", os.fspath(output)]
    command += [os.fspath(source) for source in sources]
    logger.debug("compiling: %s", shlex.join(command))
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        raise BuildError("compiler %r not found (set CC or install one)" % command[0]) from None
    if result.returncode:
        raise BuildError("%s failed with code %d:\n%s" % (shlex.join(command), result.returncode, result.stdout))
    return os.fspath(output)
