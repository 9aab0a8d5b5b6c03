"""The tree says what runs on a board: no module that ships to a board imports one that does not.

``farm pack-server`` packs :data:`farm.ops.pack.BOARD_PACKAGES` and :data:`farm.ops.pack.BOARD_TOP_MODULES`;
every import in them, at any depth (inside functions too), must name the standard library, another
board-side module, or cloudpickle (which the pack bundles for ``run()``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from farm.ops.pack import BOARD_PACKAGES, BOARD_TOP_MODULES, board_modules

BUNDLED = {"cloudpickle"}
#: Imports of the host side that a board never reaches, each inside a function the host alone calls.
ON_THE_HOST_ONLY = {
    ("farm/__init__.py", "farm.client"): "farm.connect and farm.connect_tracker, loaded on first use",
    ("farm/protocol/values.py", "numpy"): "decoding arrays in a reply, which only the host does",
}


def _module_name(path: Path) -> str:
    name = ".".join(path.with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _imports(path: Path, module: str) -> Iterator[Tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if node.module is None or node.level and base in _BOARD_PACKAGES_FULL | {"farm"}:
                yield from ((node.lineno, base + "." + alias.name) for alias in node.names)
            else:
                yield node.lineno, base


_BOARD_PACKAGES_FULL = {"farm." + name for name in BOARD_PACKAGES}


def _board_side(name: str) -> bool:
    if name in ("farm", "farm.__version__") or name in _BOARD_PACKAGES_FULL:
        return True
    parts = name.split(".")
    return (len(parts) >= 2 and parts[1] in BOARD_TOP_MODULES) or ".".join(parts[:2]) in _BOARD_PACKAGES_FULL


def _stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names or name.split(".")[0] in BUNDLED


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is new in Python 3.10")
def test_no_board_module_imports_a_host_only_one() -> None:
    root = Path(__file__).resolve().parents[3]
    offences: List[str] = []
    modules = board_modules()
    assert len(modules) > 20, modules  # the folders were found
    for name, path in modules:
        module = _module_name(Path(name))
        for line, imported in _imports(path, module):
            side_ok = _board_side(imported) if imported.startswith("farm") else _stdlib(imported)
            if not side_ok and (name, imported) not in ON_THE_HOST_ONLY:
                offences.append("%s:%d imports %s" % (path.relative_to(root), line, imported))
    assert not offences, "board-side modules import host-only ones:\n" + "\n".join(offences)


def test_the_check_catches_a_host_import(tmp_path: Path) -> None:
    """The walk above sees imports inside functions and relative ones (else it could pass vacuously)."""
    source = tmp_path / "daemon.py"
    source.write_text("def f():\n    from ..ops import up\n    import numpy\n")
    found = [name for _, name in _imports(source, "farm.board.daemon")]
    assert found == ["farm.ops", "numpy"]
    assert not _board_side("farm.ops") and not _stdlib("numpy") and _board_side("farm.net.tls")
