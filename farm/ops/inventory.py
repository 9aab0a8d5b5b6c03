"""Farm inventories: the YAML file that says which tracker, proxy and boards make up a farm (host side).

    tracker: {host: 127.0.0.1, port: 0}     # port 0: the tracker binds any free port
    proxy: {host: 127.0.0.1, port: 0}       # only needed by boards with proxy: true
    default_key: local                      # optional; else the first board's key
    toolchains:                             # optional; built-in ones for the known architectures
      aarch64-linux-gnu: {compiler: aarch64-linux-gnu-gcc, flags: [-O2, -mcpu=cortex-a72]}
    boards:
      - {key: local, count: 1}
      - {key: local, count: 1, proxy: true} # dials out to the proxy
      - {key: aarch64, start: emulated, arch: aarch64}   # the board server under qemu-user
      - {key: rasp4, start: external, arch: aarch64}     # registers itself; only expected
      - {key: phone, server: native}        # the native board server (C): no Python on the board
    tls: {cert: farm.pem, key: farm.key, ca: ca.pem}    # optional; paths relative to this file

:func:`load_inventory` reads one with PyYAML's safe loader and checks it;
every mistake is an :class:`InventoryError` naming the file, the line, the
field and what was expected. docs/inventory.md describes every field.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import yaml

from ..net.tls import ENV as TLS_FIELDS
from ..net.tls import SYSTEM_CA, TlsConfig
from .targets import EMULATED, TARGETS, Target, host_target, target_named

_SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inventories")
#: Inventories that ship with the package, by the short name ``--farm`` and ``farm up`` also take.
BUILTIN_INVENTORIES = {name: os.path.join(_SHIPPED, "farm.%s.yaml" % name) for name in ("local", "emulated", "native")}
#: The inventory the pytest plugin brings up when it is given neither a tracker nor an inventory.
DEFAULT_INVENTORY = BUILTIN_INVENTORIES["local"]

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
    """``count`` boards of one key; ``name`` (default: the key) prefixes their names.

    ``start`` says how they come to be (:data:`STARTS`); ``arch`` is the
    architecture they run (None: this machine's, for local boards); ``port``,
    when not 0, is the first of ``count`` consecutive ports they listen on;
    ``session_user`` is the user their sessions run as when they are started
    as root (None: the board server's default, ``nobody``); ``limits`` bounds
    each of their sessions (:data:`LIMITS`: field, value); ``server`` is the
    board server they run (:data:`SERVERS`).
    """

    key: str
    count: int = 1
    proxy: bool = False
    name: str = ""
    host: str = "127.0.0.1"
    start: str = "local"
    arch: Optional[str] = None
    port: int = 0
    session_user: Optional[str] = None
    limits: Tuple[Tuple[str, float], ...] = ()
    server: str = "python"

    def limit_options(self) -> List[str]:
        """The board server's options that set ``limits``: ``["--max-session-time", "600", ...]``."""
        options: List[str] = []
        for name, value in self.limits:
            options += [LIMITS[name][0], "%g" % value if isinstance(value, float) else str(value)]
        return options

    @property
    def target(self) -> Optional[Target]:
        """The architecture the boards run, from :mod:`farm.ops.targets` (None: unknown to the farm)."""
        if self.arch is None:
            return host_target()
        try:
            return target_named(self.arch)
        except KeyError:
            return None

    @property
    def triple(self) -> Optional[str]:
        """The target triple artifacts for these boards are built for."""
        target = self.target
        return target.triple if target is not None else self.arch


@dataclass(frozen=True)
class ToolchainSpec:
    """An inventory's compiler for one target triple (``farm.toolchain`` turns it into a toolchain)."""

    triple: str
    compiler: str
    flags: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Inventory:
    """A checked inventory; ``path`` is the file it came from."""

    path: str
    tracker: Listener
    proxy: Optional[Listener]
    boards: Tuple[BoardGroup, ...]
    default_key: str
    toolchains: Dict[str, ToolchainSpec] = field(default_factory=dict)  # by target triple
    tls: Optional[TlsConfig] = None  # every daemon's certificate, key and CA (absolute paths); None: TLS off

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

    def expected_boards(self) -> Dict[str, int]:
        """Boards per key that start elsewhere and only register (``start: external``)."""
        counts: Dict[str, int] = {}
        for group in self.boards:
            if group.start == "external":
                counts[group.key] = counts.get(group.key, 0) + group.count
        return counts

    def with_tls(self, override: TlsConfig) -> Inventory:
        """This inventory with the fields ``override`` names in place of its ``tls`` block's (relative paths in
        ``override`` are the working directory's); TLS off if neither names a certificate, key or CA."""
        own = self.tls or TlsConfig()
        merged = {name: getattr(override, name) or getattr(own, name) for name in TLS_FIELDS}
        tls = TlsConfig(**{name: _tls_path(value, os.getcwd()) if name in _TLS_FILES else value
                           for name, value in merged.items()})  # fmt: skip
        return dataclasses.replace(self, tls=tls if tls.enabled else None)


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
#: A board group's ``limits``: each field's board server option, and what it takes.
LIMITS = {
    "max_session_time": ("--max-session-time", "a number of seconds, 0 or more (0: no maximum)"),
    "memory": ("--session-memory", "a number of MB, 0 or more (0: no limit)"),
    "processes": ("--session-processes", "a number of processes, 0 or more (0: no limit)"),
    "open_files": ("--session-open-files", "a number of open files, 0 or more (0: the daemon's own limit)"),
    "quota": ("--session-quota", "a number of MB, 0 or more (0: no limit)"),
    "quota_files": ("--session-quota-files", "a number of files, 0 or more (0: no limit)"),
}
#: How a board group's daemons come to be: started here, started here under qemu-user, or started by someone else.
STARTS = ("local", "emulated", "external")
#: The board servers a group may run: ``python -m farm.server``, or the native one (docs/native-board.md).
SERVERS = ("python", "native")


def _listener(doc: _Document, path: Path, value: Any) -> Listener:
    fields = _fields(doc, path, value, ("host", "port", "port_end"))
    host = _get(doc, fields, path, "host", _is_text, "a host name or address", "127.0.0.1")
    port = _get(doc, fields, path, "port", _is_int(0, 65535), "a port number in 0..65535 (0: any free port)", 0)
    port_end = _get(doc, fields, path, "port_end", _is_int(1, 65536), "the end of a port range, 1..65536", None)
    if port_end is not None and port_end <= port:
        raise doc.error(path + ("port_end",), "a port range end above port %d" % port, port_end)
    return Listener(host, port, port_end)


def _board_group(doc: _Document, path: Path, value: Any) -> BoardGroup:
    allowed = ("key", "count", "proxy", "name", "host", "port", "start", "arch", "session_user", "limits", "server")
    fields = _fields(doc, path, value, allowed)
    if "key" not in fields:
        raise doc.error(path + ("key",), "the board's key (a required field)", found=False)
    start = _get(doc, fields, path, "start", lambda v: v in STARTS, "one of: %s" % ", ".join(STARTS), "local")
    group = BoardGroup(
        key=_get(doc, fields, path, "key", _is_key, _KEY_EXPECTED, ""),
        count=_get(doc, fields, path, "count", _is_int(1, 1024), "a number of boards, 1..1024", 1),
        proxy=_get(doc, fields, path, "proxy", lambda v: isinstance(v, bool), "true or false", False),
        name=_get(doc, fields, path, "name", _is_key, "a board name of letters, digits, '.', '_' or '-'", ""),
        host=_get(doc, fields, path, "host", _is_text, "a host name or address to listen on", "127.0.0.1"),
        start=start,
        arch=_get(doc, fields, path, "arch", _is_key, "an architecture (%s) or a target triple" % _ARCHES, None),
        port=_get(doc, fields, path, "port", _is_int(0, 65535), "a port number in 0..65535 (0: any free port)", 0),
        session_user=_get(doc, fields, path, "session_user", _is_key, "a user name on the board's machine", None),
        limits=_limits(doc, path + ("limits",), fields["limits"]) if "limits" in fields else (),
        server=_get(doc, fields, path, "server", lambda v: v in SERVERS, "one of: %s" % ", ".join(SERVERS), "python"),
    )
    _check_start(doc, path, group)
    return group


def _limits(doc: _Document, path: Path, value: Any) -> Tuple[Tuple[str, float], ...]:
    fields = _fields(doc, path, value, tuple(LIMITS))
    limits = []
    for name, (_, expected) in LIMITS.items():
        seconds = name == "max_session_time"  # the one that may have a fraction
        check = _is_seconds if seconds else _is_int(0, 1 << 62)
        number = _get(doc, fields, path, name, check, expected, None)
        if number is not None:
            limits.append((name, number))
    return tuple(limits)


def _is_seconds(value: Any) -> bool:
    return type(value) in (int, float) and 0 <= value < float("inf")


_ARCHES = ", ".join(sorted(TARGETS))


def _check_start(doc: _Document, path: Path, group: BoardGroup) -> None:
    """What each way of starting needs: an emulated architecture, a local board on this machine's."""
    if group.start == "emulated":
        if group.target is None or group.target.name not in EMULATED:
            expected = "an architecture the emulators support (%s) for start: emulated" % ", ".join(EMULATED)
            raise doc.error(path + ("arch",), expected, group.arch, group.arch is not None)
    elif group.start == "local" and group.arch is not None and group.target != host_target():
        host = host_target()
        expected = "this machine's architecture (%s) for a local board; use start: emulated for another" % (
            host.name if host is not None else "unknown"
        )
        raise doc.error(path + ("arch",), expected, group.arch)
    if group.limits and group.start == "external":
        raise doc.error(path + ("limits",), "no limits for an external board (set its own options where it runs)",
                        dict(group.limits))  # fmt: skip
    if group.port and group.start == "external":
        raise doc.error(path + ("port",), "no port for an external board (it listens where it runs)", group.port)
    if group.port and group.proxy:
        raise doc.error(path + ("port",), "no port for a board behind the proxy (it dials out)", group.port)
    if group.port and group.port + group.count > 65536:
        raise doc.error(path + ("port",), "room for %d consecutive ports below 65536" % group.count, group.port)


def _toolchains(doc: _Document, value: Any) -> Dict[str, ToolchainSpec]:
    if not isinstance(value, dict):
        raise doc.error(("toolchains",), "a mapping of target triple to {compiler, flags}", value)
    specs: Dict[str, ToolchainSpec] = {}
    for name, item in value.items():
        path: Path = ("toolchains", str(name))
        if not _is_key(name):
            raise doc.error(path, "an architecture (%s) or a target triple as the key" % _ARCHES, name)
        fields = _fields(doc, path, item, ("compiler", "flags"))
        if "compiler" not in fields:
            raise doc.error(path + ("compiler",), "the compiler's command (a required field)", found=False)
        compiler = _get(doc, fields, path, "compiler", _is_text, "a compiler command", "")
        flags = _get(doc, fields, path, "flags", _is_text_list, "a list of compiler flags", [])
        triple = target_named(name).triple if name in TARGETS else name
        specs[triple] = ToolchainSpec(triple, compiler, tuple(flags))
    return specs


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and item for item in value)


def _check_toolchains(doc: _Document, boards: Tuple[BoardGroup, ...], toolchains: Dict[str, ToolchainSpec]) -> None:
    """Every board's architecture must have a compiler: a built-in one or an entry in ``toolchains``."""
    for index, group in enumerate(boards):
        if group.target is None and group.arch not in toolchains:
            expected = "an architecture with a toolchain: a known one (%s) or a triple listed under toolchains" % (
                _ARCHES
            )
            raise doc.error(("boards", index, "arch"), expected, group.arch)


#: The fields of a ``tls`` block that name files.
_TLS_FILES = ("cert", "key", "ca")


def _tls_path(value: Optional[str], base: str) -> Optional[str]:
    """A TLS file's absolute path (``value`` relative to ``base``); ``system`` and None stay as they are."""
    return value if value in (None, SYSTEM_CA) else os.path.normpath(os.path.join(base, value))


def _tls(doc: _Document, value: Any) -> TlsConfig:
    """The ``tls`` block: the certificate and key every daemon presents and the CA they and farm up check it
    against (all three required, since every daemon listens and all but the tracker dial), and a server name."""
    path: Path = ("tls",)
    fields = _fields(doc, path, value, tuple(TLS_FIELDS))
    required = {
        "cert": "the %s (a required field)"
        % ("certificate of tls.key" if "key" in fields else "daemons' certificate"),
        "key": "the private key of tls.cert (a required field)",
        "ca": "the CA that signed tls.cert, a PEM file or %r (a required field: the boards, the proxy and farm "
        "up check the certificate against it)" % SYSTEM_CA,
    }
    for name, expected in required.items():
        if name not in fields:
            raise doc.error(path + (name,), expected, found=False)
    base = os.path.dirname(os.path.abspath(doc.path))
    values: Dict[str, Optional[str]] = {}
    for name in _TLS_FILES:
        values[name] = _tls_path(_get(doc, fields, path, name, _is_text, "a file name", None), base)
        if values[name] != SYSTEM_CA and not _is_readable_file(values[name]):
            expected = "an existing, readable file (relative paths start at the inventory's directory)"
            raise doc.error(path + (name,), expected, values[name])
    expected = "the name on every daemon's certificate (a host name)"
    values["server_name"] = _get(doc, fields, path, "server_name", _is_text, expected, None)
    return TlsConfig(**values)


def _is_readable_file(path: Optional[str]) -> bool:
    return path is not None and os.path.isfile(path) and os.access(path, os.R_OK)


_ANY_ADDRESS = ("0.0.0.0", "::", "")


def _check_ports(doc: _Document, tracker: Listener, proxy: Optional[Listener], boards: Tuple[BoardGroup, ...]) -> None:
    """No two daemons given the same fixed port on one address (a wildcard address clashes with every address)."""
    owners: List[Tuple[Path, str, int, int]] = [(("tracker", "port"), tracker.host, tracker.port, 1)]
    if proxy is not None:
        owners.append((("proxy", "port"), proxy.host, proxy.port, 1))
    owners += [(("boards", index, "port"), group.host, group.port, group.count) for index, group in enumerate(boards)]
    taken: Dict[int, List[Tuple[str, Path]]] = {}
    for path, host, first, count in owners:
        for port in range(first, first + count) if first else ():
            for other_host, other in taken.get(port, []):
                if host == other_host or host in _ANY_ADDRESS or other_host in _ANY_ADDRESS:
                    field_name = doc._where(other).split(": ", 1)[1]
                    raise doc.error(path, "a port not already given to %s (%d)" % (field_name, port), first)
            taken.setdefault(port, []).append((host, path))


def parse_inventory(text: str, path: str = "<inventory>") -> Inventory:
    """Check the inventory in ``text``; ``path`` names it in error messages, and its directory is the one the
    ``tls`` block's relative paths start from (the working directory for ``<inventory>``)."""
    doc = _Document(path, text)
    top = _fields(doc, (), doc.data, ("tracker", "proxy", "default_key", "toolchains", "boards", "tls"))
    tracker = _listener(doc, ("tracker",), top.get("tracker") or {})
    proxy = _listener(doc, ("proxy",), top["proxy"]) if top.get("proxy") is not None else None
    boards_value = top.get("boards")
    if not isinstance(boards_value, list) or not boards_value:
        raise doc.error(("boards",), "a list of boards (at least one)", boards_value, "boards" in top)
    boards = tuple(_board_group(doc, ("boards", index), item) for index, item in enumerate(boards_value))
    for index, group in enumerate(boards):
        if group.proxy and proxy is None:
            raise doc.error(("boards", index, "proxy"), "a 'proxy' section for boards with proxy: true", found=False)
        if group.start == "external" and not tracker.port:
            raise doc.error(("tracker", "port"), "a fixed tracker port that external boards can be given",
                            tracker.port, "port" in (top.get("tracker") or {}))  # fmt: skip
    _check_ports(doc, tracker, proxy, boards)
    toolchains = _toolchains(doc, top["toolchains"]) if top.get("toolchains") is not None else {}
    _check_toolchains(doc, boards, toolchains)
    keys = [group.key for group in boards]
    expected = "one of the boards' keys (%s)" % ", ".join(sorted(set(keys)))
    default_key = _get(doc, top, (), "default_key", lambda value: value in keys, expected, keys[0])
    tls = _tls(doc, top["tls"]) if top.get("tls") is not None else None
    return Inventory(path, tracker, proxy, boards, default_key, toolchains, tls)


def inventory_path(name: str) -> str:
    """The file ``name`` names: a path, else a built-in inventory's short name; InventoryError if neither."""
    if os.path.isfile(name) or name not in BUILTIN_INVENTORIES:
        if not os.path.isfile(name):
            raise InventoryError(
                "no inventory file %s (built-in inventories: %s)" % (name, ", ".join(BUILTIN_INVENTORIES))
            )
        return name
    return BUILTIN_INVENTORIES[name]


def load_inventory(path: str) -> Inventory:
    """Read and check the inventory file at ``path``."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise InventoryError("cannot read the inventory %s: %s" % (path, exc.strerror or exc)) from None
    return parse_inventory(text, path)
