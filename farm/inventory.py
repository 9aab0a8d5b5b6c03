"""Farm inventories: the YAML file that says which tracker, proxy and boards make up a farm (host side).

    tracker: {host: 127.0.0.1, port: 0}     # port 0: the tracker binds any free port
    proxy: {host: 127.0.0.1, port: 0}       # only needed by boards with proxy: true
    default_key: local                      # optional; else the first board's key
    boards:
      - {key: local, count: 1}
      - {key: local, count: 1, proxy: true} # dials out to the proxy

:func:`load_inventory` reads one with PyYAML's safe loader and checks it;
every mistake is an :class:`InventoryError` naming the file, the line, the
field and what was expected. docs/inventory.md describes every field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import yaml

#: The inventory the pytest plugin brings up when it is given neither a tracker nor an inventory.
DEFAULT_INVENTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inventories", "farm.local.yaml")

_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")  # no ':' (match keys are KEY:NONCE), no spaces, no brackets
Path = Tuple[Union[str, int], ...]


class InventoryError(ValueError):
    """An inventory that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class Listener:
    """Where a tracker or proxy listens: ``port`` 0 lets it pick; ``port_end`` bounds a range."""

    host: str = "127.0.0.1"
    port: int = 0
    port_end: Optional[int] = None


@dataclass(frozen=True)
class BoardGroup:
    """``count`` local boards of one key; ``name`` (default: the key) prefixes their names."""

    key: str
    count: int = 1
    proxy: bool = False
    name: str = ""
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class Inventory:
    """A checked inventory; ``path`` is the file it came from."""

    path: str
    tracker: Listener
    proxy: Optional[Listener]
    boards: Tuple[BoardGroup, ...]
    default_key: str

    def board_counts(self) -> Dict[str, int]:
        """Boards per key."""
        counts: Dict[str, int] = {}
        for group in self.boards:
            counts[group.key] = counts.get(group.key, 0) + group.count
        return counts

    def named_boards(self) -> List[Tuple[str, BoardGroup]]:
        """Every board with its name: ``PREFIX-0``, ``PREFIX-1``... numbered across groups of one prefix."""
        numbers: Dict[str, int] = {}
        named = []
        for group in self.boards:
            prefix = group.name or group.key
            for _ in range(group.count):
                named.append(("%s-%d" % (prefix, numbers.get(prefix, 0)), group))
                numbers[prefix] = numbers.get(prefix, 0) + 1
        return named


class _Document:
    """The parsed YAML with the line of every value, so errors can point at it."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 0
            problem = getattr(exc, "problem", None) or str(exc)
            raise InventoryError("%s:%d: not valid YAML: %s" % (path, line, problem)) from None
        self.lines: Dict[Path, int] = {}
        if node is not None:
            self._index(node, ())

    def _index(self, node: yaml.Node, path: Path) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    where = self._where(path + (key,), key_node.start_mark.line + 1)
                    raise InventoryError("%s: %r appears twice (first on line %d)" % (where, key, seen[key]))
                seen[key] = key_node.start_mark.line + 1
                self._index(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._index(item, path + (index,))

    def line_of(self, path: Path) -> int:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def _where(self, path: Path, line: Optional[int] = None) -> str:
        field = "".join("[%d]" % part if isinstance(part, int) else ".%s" % part for part in path).lstrip(".")
        return "%s:%d: %s" % (self.path, self.line_of(path) if line is None else line, field or "the document")

    def error(self, path: Path, expected: str, value: Any = None, found: bool = True) -> InventoryError:
        got = ", got %s" % _describe(value) if found else ""
        return InventoryError("%s: expected %s%s" % (self._where(path), expected, got))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)):
        kind = "mapping" if isinstance(value, dict) else "list"
        return ("an empty %s" if not value else "a %s") % kind
    return "%r" % (value,)


def _fields(doc: _Document, path: Path, value: Any, allowed: Tuple[str, ...]) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise doc.error(path, "a mapping with the fields %s" % ", ".join(allowed), value)
    for name in value:
        if name not in allowed:
            where = doc._where(path + (str(name),))  # a YAML key may be a number; the path holds its text
            raise InventoryError("%s: unknown field %r (expected one of: %s)" % (where, name, ", ".join(allowed)))
    return value


def _get(doc: _Document, fields: Dict[str, Any], path: Path, name: str, check: Callable[[Any], bool],
         expected: str, default: Any) -> Any:  # fmt: skip
    if name not in fields:
        return default
    value = fields[name]
    if not check(value):
        raise doc.error(path + (name,), expected, value)
    return value


def _is_int(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and low <= value <= high


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_key(value: Any) -> bool:
    return isinstance(value, str) and bool(_KEY.match(value))


_KEY_EXPECTED = "a key of letters, digits, '.', '_' or '-'"


def _listener(doc: _Document, path: Path, value: Any) -> Listener:
    fields = _fields(doc, path, value, ("host", "port", "port_end"))
    host = _get(doc, fields, path, "host", _is_text, "a host name or address", "127.0.0.1")
    port = _get(doc, fields, path, "port", _is_int(0, 65535), "a port number in 0..65535 (0: any free port)", 0)
    port_end = _get(doc, fields, path, "port_end", _is_int(1, 65536), "the end of a port range, 1..65536", None)
    if port_end is not None and port_end <= port:
        raise doc.error(path + ("port_end",), "a port range end above port %d" % port, port_end)
    return Listener(host, port, port_end)


def _board_group(doc: _Document, path: Path, value: Any) -> BoardGroup:
    fields = _fields(doc, path, value, ("key", "count", "proxy", "name", "host"))
    if "key" not in fields:
        raise doc.error(path + ("key",), "the board's key (a required field)", found=False)
    return BoardGroup(
        key=_get(doc, fields, path, "key", _is_key, _KEY_EXPECTED, ""),
        count=_get(doc, fields, path, "count", _is_int(1, 1024), "a number of boards, 1..1024", 1),
        proxy=_get(doc, fields, path, "proxy", lambda v: isinstance(v, bool), "true or false", False),
        name=_get(doc, fields, path, "name", _is_key, "a board name of letters, digits, '.', '_' or '-'", ""),
        host=_get(doc, fields, path, "host", _is_text, "a host name or address to listen on", "127.0.0.1"),
    )


def parse_inventory(text: str, path: str = "<inventory>") -> Inventory:
    """Check the inventory in ``text``; ``path`` is only used in error messages."""
    doc = _Document(path, text)
    top = _fields(doc, (), doc.data, ("tracker", "proxy", "default_key", "boards"))
    tracker = _listener(doc, ("tracker",), top.get("tracker") or {})
    proxy = _listener(doc, ("proxy",), top["proxy"]) if top.get("proxy") is not None else None
    boards_value = top.get("boards")
    if not isinstance(boards_value, list) or not boards_value:
        raise doc.error(("boards",), "a list of boards (at least one)", boards_value, "boards" in top)
    boards = tuple(_board_group(doc, ("boards", index), item) for index, item in enumerate(boards_value))
    for index, group in enumerate(boards):
        if group.proxy and proxy is None:
            raise doc.error(("boards", index, "proxy"), "a 'proxy' section for boards with proxy: true", found=False)
    if proxy is not None and proxy.port and proxy.port == tracker.port and proxy.host == tracker.host:
        raise doc.error(("proxy", "port"), "a port other than the tracker's", proxy.port)
    keys = [group.key for group in boards]
    expected = "one of the boards' keys (%s)" % ", ".join(sorted(set(keys)))
    default_key = _get(doc, top, (), "default_key", lambda value: value in keys, expected, keys[0])
    return Inventory(path, tracker, proxy, boards, default_key)


def load_inventory(path: str) -> Inventory:
    """Read and check the inventory file at ``path``."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise InventoryError("cannot read the inventory %s: %s" % (path, exc.strerror or exc)) from None
    return parse_inventory(text, path)
