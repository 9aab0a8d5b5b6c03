"""Pack the board server into one zipapp: ``farm pack-server -o farm-server.pyz``.

The archive holds the board side of ``farm`` (:data:`BOARD_PACKAGES` and
:data:`BOARD_TOP_MODULES`) and, unless told otherwise, the installed
cloudpickle for the board's ``run`` op. A board runs it with a bare Python:

    python3 farm-server.pyz --tracker HOST:PORT --key KEY

The same sources give the same bytes: entries are sorted, stored uncompressed
(no dependence on the board's zlib or the host's) and dated 1980-01-01.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import List, Tuple

from ..errors import FarmError

logger = logging.getLogger("farm.pack")

#: The zipapp's first line: the board's own python3.
INTERPRETER = "/usr/bin/env python3"
#: Every entry's timestamp (the earliest a zip file can hold), so the archive does not depend on file times.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
#: ``__main__.py``: the server's options, with the archive's own name in its usage line.
MAIN = '''"""Run the packed board server: python3 farm-server.pyz --key KEY [--tracker HOST:PORT]."""
import argparse
import sys

from farm.board import daemon as server

parser = argparse.ArgumentParser(description="Run a board server.")
server.add_arguments(parser)
sys.exit(server.run(parser.parse_args()))
'''
#: What ships to a board, as the tree says it: these folders of ``farm`` whole, and these shared top-level modules.
BOARD_PACKAGES = ("board", "net", "protocol")
BOARD_TOP_MODULES = ("__init__", "cli_types", "errors", "lifetime", "logs", "server", "signature")

Entry = Tuple[str, Path]  # the name in the archive, the file it comes from


def board_modules() -> List[Entry]:
    """The ``farm`` modules a board runs: :data:`BOARD_TOP_MODULES` and every module of :data:`BOARD_PACKAGES`."""
    package = Path(__file__).resolve().parent.parent
    files = [package / (name + ".py") for name in BOARD_TOP_MODULES]
    for folder in BOARD_PACKAGES:
        files.extend(sorted((package / folder).glob("*.py")))
    return [(path.relative_to(package.parent).as_posix(), path) for path in files]


def cloudpickle_modules() -> List[Entry]:
    """The installed cloudpickle package's Python files (it is pure Python)."""
    try:
        import cloudpickle
    except ImportError:
        raise FarmError("cloudpickle is not installed here; install it or use --no-cloudpickle") from None
    package = Path(cloudpickle.__file__).parent
    logger.info("bundling cloudpickle %s from %s", cloudpickle.__version__, package)
    return [("cloudpickle/" + path.name, path) for path in sorted(package.glob("*.py"))]


def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.external_attr = 0o644 << 16  # -rw-r--r--
    return info


def archive_bytes(entries: List[Entry]) -> bytes:
    """The zipapp: the shebang line, then a zip of ``__main__.py`` and ``entries``, sorted by name."""
    buffer = io.BytesIO()
    buffer.write(("#!%s\n" % INTERPRETER).encode("utf-8"))
    contents = {"__main__.py": MAIN.encode("utf-8")}
    contents.update((name, path.read_bytes()) for name, path in entries)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(contents):
            archive.writestr(_zip_entry(name), contents[name])
    return buffer.getvalue()


def _write_executable(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half an archive), mode 0755."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".farm-pack-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o755)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def pack_server(output: str, with_cloudpickle: bool = True) -> str:
    """Write the board server's zipapp to ``output`` and return ``output``."""
    entries = board_modules() + (cloudpickle_modules() if with_cloudpickle else [])
    logger.info("packing __main__.py, %s", ", ".join(name for name, _ in entries))
    _write_executable(output, archive_bytes(entries))
    return output


# --- command line -------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", default="farm-server.pyz", help="the archive to write (default: farm-server.pyz)"
    )
    parser.add_argument(
        "--no-cloudpickle",
        dest="with_cloudpickle",
        action="store_false",
        help="leave cloudpickle out (the board's run() then needs it installed there)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        path = pack_server(args.output, args.with_cloudpickle)
    except (FarmError, OSError) as exc:
        logger.error("%s", exc)
        return 1
    print("%s (%d bytes)" % (path, os.path.getsize(path)))
    return 0
