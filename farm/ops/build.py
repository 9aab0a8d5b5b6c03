"""``farm build``: compile C sources into one cached shared library for a target or an inventory's board key."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, Sequence, Union

from .targets import Target
from .toolchain import BuildError, Toolchain, build_shared, toolchain_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="C sources, all linked into one library")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--target", metavar="ARCH", help="an architecture (x86_64, aarch64, armhf) or its triple")
    which.add_argument("--key", help="build for the boards of this key in the --farm inventory")
    parser.add_argument(
        "--farm", metavar="INVENTORY", help="the inventory (a file; local, emulated, native) of --key and toolchains"
    )
    parser.add_argument("-o", "--output", metavar="PATH", help="copy the library here (a directory or a file name)")
    parser.add_argument("--name", help="the library's name (default: the first source's stem)")
    parser.add_argument("--flag", action="append", default=[], metavar="FLAG", help="a compiler flag (--flag=-O3)")
    parser.add_argument("-D", "--define", action="append", default=[], metavar="NAME[=VALUE]", help="a macro")
    parser.add_argument("--depends", action="append", default=[], metavar="FILE", help="another file the build reads")
    parser.add_argument("--cache-dir", metavar="DIR", help="the artifact cache (default: $REMOTEDEV_CACHE/artifacts)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.key and not args.farm:
        print("farm build: --key needs --farm INVENTORY", file=sys.stderr)
        return 2
    try:
        toolchain = _toolchain(args)
        library = build_shared(args.sources, toolchain, name=args.name, flags=args.flag, cache_dir=args.cache_dir,
                               defines=_defines(args.define), depends=args.depends)  # fmt: skip
        if args.output:
            library = copy_artifact(library, args.output, os.path.basename(library).rsplit("-", 1)[0] + ".so")
    except (BuildError, OSError) as exc:
        print("farm build: %s" % exc, file=sys.stderr)
        return 1
    print(library)
    return 0


def _toolchain(args: argparse.Namespace) -> Toolchain:
    inventory = load_inventory_named(args.farm) if args.farm else None
    overrides = inventory.toolchains if inventory is not None else {}
    if args.target:
        return toolchain_for(args.target, overrides)
    if inventory is None:
        raise BuildError("--key needs --farm: the inventory that names the key's boards")
    groups = [group for group in inventory.boards if group.key == args.key]
    if not groups:
        keys = ", ".join(sorted({group.key for group in inventory.boards}))
        raise BuildError("%s has no boards of key %r (keys: %s)" % (inventory.path, args.key, keys))
    toolchains = {toolchain_for(_architecture(group), overrides) for group in groups}
    if len(toolchains) > 1:
        names = ", ".join(sorted(toolchain.target.name for toolchain in toolchains))
        raise BuildError("the boards of key %r run different architectures (%s): use --target" % (args.key, names))
    return toolchains.pop()


def load_inventory_named(name: str) -> Any:
    """The inventory file or built-in inventory (``local``, ``emulated``) ``name``."""
    from .inventory import InventoryError, inventory_path, load_inventory  # needs PyYAML, a host-only package

    try:
        return load_inventory(inventory_path(name))
    except InventoryError as exc:
        raise BuildError(str(exc)) from None


def _architecture(group: Any) -> Union[Target, str]:
    """A board group's target; else its ``arch`` (one farm.targets does not know, for toolchain_for to refuse)."""
    found = group.target or group.arch
    if found is None:
        raise BuildError("this machine's architecture is unknown to the farm: use --target")
    return found


def _defines(texts: Sequence[str]) -> Dict[str, Optional[str]]:
    """``NAME=VALUE`` or ``NAME`` (value None) per text."""
    defines: Dict[str, Optional[str]] = {}
    for text in texts:
        name, equals, value = text.partition("=")
        defines[name] = value if equals else None
    return defines


def copy_artifact(artifact: str, output: str, name: str) -> str:
    """Copy ``artifact`` to the file ``output``, or to ``output/NAME`` for a directory, atomically."""
    destination = os.path.join(output, name) if os.path.isdir(output) or output.endswith(os.sep) else output
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    partial = destination + ".tmp"
    shutil.copyfile(artifact, partial)
    shutil.copymode(artifact, partial)
    os.replace(partial, destination)
    return destination


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.build", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
