"""Unit tests of farm inventories: parsing, defaults, board names and counts, and errors naming file:line and field."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.net.tls import TlsConfig
from farm.ops.inventory import (
    DEFAULT_INVENTORY,
    BoardGroup,
    Inventory,
    InventoryError,
    Listener,
    ToolchainSpec,
    load_inventory,
    parse_inventory,
)
from farm.ops.targets import host_target

PROJECT = Path(__file__).resolve().parents[4]
FILE = "farm.yaml"


def parse(text: str) -> Inventory:
    return parse_inventory(text, FILE)


def error_of(text: str) -> str:
    with pytest.raises(InventoryError) as info:
        parse(text)
    return str(info.value)


# --- valid inventories -----------------------------------------------------------------------------


def test_full_inventory() -> None:
    inventory = parse(
        """
tracker:
  host: 0.0.0.0
  port: 9190
  port_end: 9200
proxy:
  host: 127.0.0.2
  port: 9300
default_key: big
boards:
  - key: local
    count: 2
  - key: local
    count: 1
    proxy: true
  - key: big
    name: gpu
    count: 2
    host: 127.0.0.3
"""
    )
    assert inventory.path == FILE
    assert inventory.tracker == Listener("0.0.0.0", 9190, 9200)
    assert inventory.proxy == Listener("127.0.0.2", 9300, None)
    assert inventory.default_key == "big"
    assert inventory.boards == (
        BoardGroup("local", 2),
        BoardGroup("local", 1, proxy=True),
        BoardGroup("big", 2, name="gpu", host="127.0.0.3"),
    )
    assert inventory.board_counts() == {"local": 3, "big": 2}
    assert [name for name, _ in inventory.named_boards()] == ["local-0", "local-1", "local-2", "gpu-0", "gpu-1"]
    assert [group.proxy for _, group in inventory.named_boards()] == [False, False, True, False, False]


def test_defaults() -> None:
    inventory = parse("boards:\n  - key: rasp4\n")
    assert inventory.tracker == Listener("127.0.0.1", 0, None)
    assert inventory.proxy is None
    assert inventory.default_key == "rasp4"  # the first board's key
    assert inventory.boards == (BoardGroup("rasp4", 1, False, "", "127.0.0.1"),)
    assert inventory.named_boards() == [("rasp4-0", inventory.boards[0])]


def test_default_key_is_the_first_boards_key() -> None:
    inventory = parse("boards:\n  - {key: b}\n  - {key: a}\n")
    assert inventory.default_key == "b"


def test_empty_tracker_section_gives_defaults() -> None:
    assert parse("tracker:\nboards: [{key: k}]\n").tracker == Listener()


def test_names_are_numbered_across_groups_of_one_prefix() -> None:
    inventory = parse(
        """
boards:
  - {key: a, count: 2}
  - {key: b, name: a, count: 1}
  - {key: b, count: 2}
  - {key: a, count: 1, name: x}
  - {key: a, count: 1}
"""
    )
    names = [(name, group.key) for name, group in inventory.named_boards()]
    assert names == [("a-0", "a"), ("a-1", "a"), ("a-2", "b"), ("b-0", "b"), ("b-1", "b"), ("x-0", "a"), ("a-3", "a")]
    assert inventory.board_counts() == {"a": 4, "b": 3}


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["", "a", "n"]), st.integers(1, 5)),
        min_size=1,
        max_size=6,
    )
)
def test_names_unique_and_counts_add_up(groups: List[Tuple[str, str, int]]) -> None:
    lines = ["boards:"]
    for key, name, count in groups:
        lines.append("  - {key: %s, count: %d%s}" % (key, count, ", name: %s" % name if name else ""))
    inventory = parse("\n".join(lines) + "\n")
    named = inventory.named_boards()
    assert len(named) == sum(count for _, _, count in groups)
    assert len({name for name, _ in named}) == len(named)
    for key in {key for key, _, _ in groups}:
        assert inventory.board_counts()[key] == sum(count for k, _, count in groups if k == key)
    for name, group in named:
        prefix, _, number = name.rpartition("-")
        assert prefix == (group.name or group.key) and number.isdigit()


def test_ports_at_the_limits() -> None:
    inventory = parse("tracker: {port: 65535, port_end: 65536}\nproxy: {port: 1}\nboards: [{key: k, proxy: true}]\n")
    assert inventory.tracker == Listener("127.0.0.1", 65535, 65536)
    assert inventory.proxy == Listener("127.0.0.1", 1, None)


def test_proxy_on_the_tracker_port_of_another_host_is_fine() -> None:
    inventory = parse(
        "tracker: {host: 127.0.0.1, port: 9190}\nproxy: {host: 127.0.0.2, port: 9190}\nboards: [{key: k}]\n"
    )
    assert inventory.proxy == Listener("127.0.0.2", 9190)


def test_both_on_port_zero_is_fine() -> None:
    assert parse("tracker: {port: 0}\nproxy: {port: 0}\nboards: [{key: k}]\n").proxy == Listener()


def test_emulated_external_boards_and_toolchains() -> None:
    inventory = parse(
        """
tracker: {port: 9190}
toolchains:
  aarch64: {compiler: aarch64-linux-gnu-gcc-12, flags: [-O3, -mcpu=cortex-a72]}
  riscv64-linux-gnu: {compiler: riscv64-linux-gnu-gcc}
boards:
  - {key: local, port: 9300, count: 2}
  - {key: aarch64, start: emulated, arch: aarch64}
  - {key: armhf, start: emulated, arch: arm-linux-gnueabihf, proxy: false}
  - {key: rasp4, start: external, arch: aarch64, count: 3}
  - {key: visionfive, start: external, arch: riscv64-linux-gnu}
"""
    )
    local, emulated, armhf, rasp4, riscv = inventory.boards
    assert (local.start, local.port, local.arch, local.target) == ("local", 9300, None, host_target())
    assert (emulated.start, emulated.triple) == ("emulated", "aarch64-linux-gnu")
    assert armhf.target is not None and armhf.target.name == "armhf" and armhf.target.qemu == "qemu-arm"
    assert (rasp4.start, rasp4.triple) == ("external", "aarch64-linux-gnu")
    assert riscv.target is None and riscv.triple == "riscv64-linux-gnu"
    assert inventory.toolchains == {
        "aarch64-linux-gnu": ToolchainSpec(
            "aarch64-linux-gnu", "aarch64-linux-gnu-gcc-12", ("-O3", "-mcpu=cortex-a72")
        ),
        "riscv64-linux-gnu": ToolchainSpec("riscv64-linux-gnu", "riscv64-linux-gnu-gcc", ()),
    }
    assert inventory.expected_boards() == {"rasp4": 3, "visionfive": 1}
    assert inventory.board_counts() == {"local": 2, "aarch64": 1, "armhf": 1, "rasp4": 3, "visionfive": 1}


def test_fixed_ports_on_different_addresses_are_fine() -> None:
    inventory = parse("tracker: {port: 9000}\nboards:\n  - {key: k, port: 9000, host: 127.0.0.2, count: 2}\n")
    assert inventory.boards[0].port == 9000


def test_keys_allow_letters_digits_dot_underscore_dash() -> None:
    assert parse("boards: [{key: Rasp-4_b.v2}]\n").default_key == "Rasp-4_b.v2"


# --- errors: file:line: field: what was expected -----------------------------------------------------


def test_limits_become_the_board_servers_options() -> None:
    text = "boards:\n  - key: k\n    limits: {max_session_time: 1.5, memory: 256, quota_files: 1000}\n  - key: j\n"
    limited, plain = parse_inventory(text).boards
    assert limited.limits == (("max_session_time", 1.5), ("memory", 256), ("quota_files", 1000))
    assert limited.limit_options() == [
        "--max-session-time", "1.5", "--session-memory", "256", "--session-quota-files", "1000"
    ]  # fmt: skip
    assert plain.limits == () and plain.limit_options() == []


def test_a_board_group_names_its_board_server() -> None:
    text = "boards:\n  - {key: k, server: native}\n  - {key: k, server: native, start: emulated, arch: aarch64}\n"
    native, emulated, python = parse(text + "  - {key: k}\n").boards
    assert (native.server, emulated.server, python.server) == ("native", "native", "python")
    assert "boards[0].server: expected one of: python, native, got 'rust'" in error_of(
        "boards:\n  - {key: k, server: rust}\n"
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        # unknown fields, at each level
        (
            "tracker: {port: 0}\nboards:\n  - key: k\n    colour: red\n",
            "farm.yaml:4: boards[0].colour: unknown field 'colour' "
            "(expected one of: key, count, proxy, name, host, port, start, arch, session_user, limits, server)",
        ),
        (
            "trackr: {}\nboards: [{key: k}]\n",
            "farm.yaml:1: trackr: unknown field 'trackr' "
            "(expected one of: tracker, proxy, default_key, toolchains, boards, tls)",
        ),
        (
            "tracker:\n  host: h\n  prot: 1\nboards: [{key: k}]\n",
            "farm.yaml:3: tracker.prot: unknown field 'prot' (expected one of: host, port, port_end)",
        ),
        # wrong types and ranges
        (
            "boards:\n  - key: k\n  - key: k\n    count: two\n",
            "farm.yaml:4: boards[1].count: expected a number of boards, 1..1024, got 'two'",
        ),
        (
            "boards:\n  - {key: k, count: 0}\n",
            "farm.yaml:2: boards[0].count: expected a number of boards, 1..1024, got 0",
        ),
        ("boards:\n  - {key: k, count: 1025}\n", "boards[0].count: expected a number of boards, 1..1024, got 1025"),
        ("boards:\n  - {key: k, count: true}\n", "boards[0].count: expected a number of boards, 1..1024, got True"),
        ("boards:\n  - {key: k, count: 1.5}\n", "boards[0].count: expected a number of boards, 1..1024, got 1.5"),
        ("boards:\n  - {key: k, proxy: yes please}\n", "boards[0].proxy: expected true or false, got 'yes please'"),
        ("boards:\n  - {key: 'a:b'}\n", "farm.yaml:2: boards[0].key: expected a key of letters, digits"),
        (
            "boards:\n  - {key: 'a b'}\n",
            "boards[0].key: expected a key of letters, digits, '.', '_' or '-', got 'a b'",
        ),
        ("boards:\n  - {key: 4}\n", "boards[0].key: expected a key of letters, digits, '.', '_' or '-', got 4"),
        ("boards:\n  - {key: k, name: 'x y'}\n", "boards[0].name: expected a board name of letters, digits"),
        ("boards:\n  - {key: k, host: ''}\n", "boards[0].host: expected a host name or address to listen on, got ''"),
        ("boards:\n  - {count: 2}\n", "farm.yaml:2: boards[0].key: expected the board's key (a required field)"),
        ("boards:\n  - just-a-key\n", "farm.yaml:2: boards[0]: expected a mapping with the fields key, count"),
        (
            "tracker:\n  port: 70000\nboards: [{key: k}]\n",
            "farm.yaml:2: tracker.port: expected a port number in 0..65535 (0: any free port), got 70000",
        ),
        ("tracker:\n  port: '9190'\nboards: [{key: k}]\n", "tracker.port: expected a port number in 0..65535"),
        (
            "tracker:\n  host: 7\nboards: [{key: k}]\n",
            "farm.yaml:2: tracker.host: expected a host name or address, got 7",
        ),
        (
            "tracker: {port: 9190, port_end: 9190}\nboards: [{key: k}]\n",
            "farm.yaml:1: tracker.port_end: expected a port range end above port 9190, got 9190",
        ),
        ("tracker: [1, 2]\nboards: [{key: k}]\n", "farm.yaml:1: tracker: expected a mapping with the fields host"),
        ("- {key: k}\n", "farm.yaml:1: the document: expected a mapping with the fields tracker, proxy"),
        # duplicate keys
        (
            "tracker: {port: 0}\ntracker: {port: 1}\nboards: [{key: k}]\n",
            "farm.yaml:2: tracker: 'tracker' appears twice (first on line 1)",
        ),
        (
            "boards:\n  - key: a\n    count: 1\n    count: 2\n",
            "farm.yaml:4: boards[0].count: 'count' appears twice (first on line 3)",
        ),
        # missing or empty boards
        ("tracker: {port: 0}\n", "farm.yaml:1: boards: expected a list of boards (at least one)"),
        (
            "tracker: {port: 0}\nboards: []\n",
            "farm.yaml:2: boards: expected a list of boards (at least one), got an empty list",
        ),
        ("boards:\n", "farm.yaml:1: boards: expected a list of boards (at least one), got nothing"),
        ("boards: {key: k}\n", "boards: expected a list of boards (at least one), got a mapping"),
        (
            "",
            "farm.yaml:1: the document: expected a mapping with the fields "
            "tracker, proxy, default_key, toolchains, boards, tls, got nothing",
        ),
        # proxy: true without a proxy section
        (
            "boards:\n  - key: k\n  - key: k\n    proxy: true\n",
            "farm.yaml:4: boards[1].proxy: expected a 'proxy' section for boards with proxy: true",
        ),
        # default_key no board has
        (
            "default_key: rasp4\nboards:\n  - {key: local}\n  - {key: big}\n",
            "farm.yaml:1: default_key: expected one of the boards' keys (big, local), got 'rasp4'",
        ),
        # the proxy on the tracker's port
        (
            "tracker: {port: 9190}\nproxy:\n  port: 9190\nboards: [{key: k}]\n",
            "farm.yaml:3: proxy.port: expected a port not already given to tracker.port (9190), got 9190",
        ),
        # how boards start, their architectures and toolchains
        (
            "boards:\n  - {key: k, start: docker}\n",
            "farm.yaml:2: boards[0].start: expected one of: local, emulated, external, got 'docker'",
        ),
        (
            "boards:\n  - key: k\n    start: emulated\n",
            "farm.yaml:2: boards[0].arch: expected an architecture the "
            "emulators support (aarch64, armhf) for start: emulated",
        ),
        (
            "boards:\n  - {key: k, start: emulated, arch: x86_64}\n",
            "farm.yaml:2: boards[0].arch: expected an "
            "architecture the emulators support (aarch64, armhf) for start: emulated, got 'x86_64'",
        ),
        ("boards:\n  - {key: k, arch: aarch64}\n", "boards[0].arch: expected this machine's architecture"),
        (
            "tracker: {port: 9190}\nboards:\n  - {key: k, start: external, arch: riscv64-linux-gnu}\n",
            "farm.yaml:3: boards[0].arch: expected an architecture with a toolchain: a known one (aarch64, armhf, "
            "x86_64) or a triple listed under toolchains, got 'riscv64-linux-gnu'",
        ),
        (
            "boards:\n  - {key: rasp4, start: external, arch: aarch64}\n",
            "farm.yaml:1: tracker.port: expected a fixed tracker port that external boards can be given",
        ),
        (
            "toolchains:\n  aarch64: {flags: [-O3]}\nboards: [{key: k}]\n",
            "farm.yaml:2: toolchains.aarch64.compiler: expected the compiler's command (a required field)",
        ),
        (
            "toolchains:\n  aarch64: {compiler: gcc, flags: -O3}\nboards: [{key: k}]\n",
            "farm.yaml:2: toolchains.aarch64.flags: expected a list of compiler flags, got '-O3'",
        ),
        ("toolchains: [gcc]\nboards: [{key: k}]\n", "farm.yaml:1: toolchains: expected a mapping of target triple"),
        # fixed ports that clash
        (
            "tracker: {port: 9191}\nboards:\n  - {key: k, count: 3, port: 9189}\n",
            "farm.yaml:3: boards[0].port: expected a port not already given to tracker.port (9191), got 9189",
        ),
        (
            "boards:\n  - {key: a, count: 2, port: 9000}\n  - {key: b, port: 9001, host: 0.0.0.0}\n",
            "farm.yaml:3: boards[1].port: expected a port not already given to boards[0].port (9001), got 9001",
        ),
        (
            "proxy: {port: 0}\nboards:\n  - {key: k, proxy: true, port: 9000}\n",
            "farm.yaml:3: boards[0].port: expected no port for a board behind the proxy",
        ),
        ("boards:\n  - {key: k, count: 3, port: 65534}\n", "boards[0].port: expected room for 3 consecutive ports"),
        # a board group's limits
        (
            "boards:\n  - key: k\n    limits: {memory: -1}\n",
            "farm.yaml:3: boards[0].limits.memory: expected a number of MB, 0 or more (0: no limit), got -1",
        ),
        (
            "boards:\n  - key: k\n    limits: {max_session_time: .nan}\n",
            "farm.yaml:3: boards[0].limits.max_session_time: expected a number of seconds, 0 or more",
        ),
        (
            "boards:\n  - key: k\n    limits: {pids: 3}\n",
            "farm.yaml:3: boards[0].limits.pids: unknown field 'pids' (expected one of: max_session_time, memory, "
            "processes, open_files, quota, quota_files)",
        ),
        (
            "tracker: {port: 9190}\nboards:\n  - {key: k, start: external, limits: {memory: 64}}\n",
            "farm.yaml:3: boards[0].limits: expected no limits for an external board",
        ),
        # not YAML at all
        ("boards: [{key: k}\n", "farm.yaml:2: not valid YAML: "),
        ("tracker: {port: 0}\nboards:\n  - key: k\n   count: 1\n", "farm.yaml:4: not valid YAML: "),
        ("boards: [{key: k}]\n\tbad: tab\n", "not valid YAML: "),
    ],
)
def test_errors_name_file_line_and_field(text: str, expected: str) -> None:
    message = error_of(text)
    assert message.startswith(expected) or expected in message, message
    assert re.match(r"^farm\.yaml:\d+: ", message), message
    assert "\n" not in message  # one line


def test_invalid_yaml_names_the_problem() -> None:
    message = error_of("tracker: {port: 0}\nboards:\n  - key: k\n   count: 1\n")
    assert re.match(r"^farm\.yaml:4: not valid YAML: \S", message), message


def test_error_is_a_value_error() -> None:
    assert issubclass(InventoryError, ValueError)


# --- files ------------------------------------------------------------------------------------------------


def test_load_inventory_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text("boards:\n  - {key: k, count: lots}\n")
    with pytest.raises(InventoryError, match=r"^%s:2: boards\[0\]\.count: " % re.escape(str(path))):
        load_inventory(str(path))
    path.write_text("boards: [{key: k, count: 3}]\n")
    inventory = load_inventory(str(path))
    assert inventory.path == str(path) and inventory.board_counts() == {"k": 3}


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(InventoryError, match=r"^cannot read the inventory %s: " % re.escape(str(path))):
        load_inventory(str(path))


@pytest.mark.parametrize("path", [PROJECT / "configs" / "farm.local.yaml", Path(DEFAULT_INVENTORY)])
def test_shipped_local_inventory(path: Path) -> None:
    inventory = load_inventory(str(path))
    counts = inventory.board_counts()
    assert max(counts.values()) >= 2
    key = max(counts, key=lambda k: counts[k])
    assert inventory.default_key == key == "local"
    assert inventory.tracker.port == 0 and inventory.proxy is not None and inventory.proxy.port == 0
    assert any(group.proxy for group in inventory.boards) and any(not group.proxy for group in inventory.boards)
    assert len({name for name, _ in inventory.named_boards()}) == sum(counts.values())


def test_configs_link_to_the_embedded_inventory() -> None:
    shipped = PROJECT / "configs" / "farm.local.yaml"
    assert (
        os.path.samefile(str(shipped), DEFAULT_INVENTORY) or shipped.read_text() == Path(DEFAULT_INVENTORY).read_text()
    )


# --- the tls block ------------------------------------------------------------------------------------------


def tls_dir(tmp_path: Path) -> Path:
    """An inventory's directory with certs/ca.pem, certs/farm.pem and certs/farm.key (their contents do not
    matter here: the inventory only checks that the files are there)."""
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("ca.pem", "farm.pem", "farm.key"):
        (certs / name).write_text("PEM\n")
    return tmp_path


def parse_in(directory: Path, text: str) -> Inventory:
    return parse_inventory(text, str(directory / FILE))


ONE = "boards: [{key: k}]\n"


def test_tls_paths_are_relative_to_the_inventory(tmp_path: Path) -> None:
    directory = tls_dir(tmp_path)
    path = directory / "lab.yaml"
    path.write_text(
        ONE
        + "tls:\n  cert: certs/farm.pem\n  key: %s\n  ca: ./certs/../certs/ca.pem\n  server_name: farm.lab\n"
        % (directory / "certs" / "farm.key")
    )
    tls = load_inventory(str(path)).tls
    assert tls is not None and tls.enabled
    certs = str(directory / "certs")
    assert (tls.cert, tls.key, tls.ca, tls.server_name) == (
        os.path.join(certs, "farm.pem"),
        os.path.join(certs, "farm.key"),
        os.path.join(certs, "ca.pem"),
        "farm.lab",
    )


def test_tls_ca_may_be_the_systems(tmp_path: Path) -> None:
    tls = parse_in(tls_dir(tmp_path), ONE + "tls: {cert: certs/farm.pem, key: certs/farm.key, ca: system}\n").tls
    assert tls is not None and tls.ca == "system" and tls.server_name is None


@pytest.mark.parametrize("block", ["", "tls:\n", "tls: null\n"])
def test_no_tls_block_means_tls_off(block: str) -> None:
    assert parse(ONE + block).tls is None


TLS_OK = "tls:\n  cert: certs/farm.pem\n  key: certs/farm.key\n  ca: certs/ca.pem\n"


@pytest.mark.parametrize(
    "block, expected",
    [
        (
            "tls:\n  cert: certs/farm.pem\n  ca: certs/ca.pem\n",
            "farm.yaml:3: tls.key: expected the private key of tls.cert (a required field)",
        ),
        (
            "tls:\n  key: certs/farm.key\n  ca: certs/ca.pem\n",
            "farm.yaml:3: tls.cert: expected the certificate of tls.key (a required field)",
        ),
        ("tls: {}\n", "farm.yaml:2: tls.cert: expected the daemons' certificate (a required field)"),
        ("tls: {ca: system}\n", "farm.yaml:2: tls.cert: expected the daemons' certificate (a required field)"),
        (
            "tls:\n  cert: certs/farm.pem\n  key: certs/farm.key\n",
            "farm.yaml:3: tls.ca: expected the CA that signed tls.cert, a PEM file or 'system' (a required field",
        ),
        (
            TLS_OK + "  colour: red\n",
            "farm.yaml:6: tls.colour: unknown field 'colour' (expected one of: cert, key, ca, server_name)",
        ),  # fmt: skip
        (
            "tls: [certs/farm.pem]\n",
            "farm.yaml:2: tls: expected a mapping with the fields cert, key, ca, server_name, got a list",
        ),  # fmt: skip
        (
            "tls: certs\n",
            "farm.yaml:2: tls: expected a mapping with the fields cert, key, ca, server_name, got 'certs'",
        ),
        (TLS_OK.replace("certs/farm.pem", "7"), "farm.yaml:3: tls.cert: expected a file name, got 7"),
        (TLS_OK.replace("certs/farm.key", "''"), "farm.yaml:4: tls.key: expected a file name, got ''"),
        (TLS_OK.replace("certs/ca.pem", "[a, b]"), "farm.yaml:5: tls.ca: expected a file name, got a list"),
        (
            TLS_OK + "  server_name: 9\n",
            "farm.yaml:6: tls.server_name: expected the name on every daemon's certificate (a host name), got 9",
        ),
        (
            "tls:\n  cert: certs/farm.pem\n  cert: certs/farm.pem\n",
            "farm.yaml:4: tls.cert: 'cert' appears twice (first on line 3)",
        ),
    ],
)
def test_tls_errors_name_file_line_and_field(tmp_path: Path, block: str, expected: str) -> None:
    directory = tls_dir(tmp_path)
    with pytest.raises(InventoryError) as info:
        parse_in(directory, ONE + block)
    message = str(info.value)
    assert message.startswith("%s:" % (directory / FILE)), message
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize("field, line", [("cert", 3), ("key", 4), ("ca", 5)])
@pytest.mark.parametrize("problem", ["missing", "a directory"])
def test_tls_files_must_exist_and_the_error_names_the_file(
    tmp_path: Path, field: str, line: int, problem: str
) -> None:
    directory = tls_dir(tmp_path)
    wrong = directory / "certs" / ("wrong-" + field)
    if problem == "a directory":
        wrong.mkdir()
    given = {"cert": "certs/farm.pem", "key": "certs/farm.key", "ca": "certs/ca.pem"}
    given[field] = "certs/wrong-" + field
    block = "tls:\n" + "".join("  %s: %s\n" % item for item in given.items())
    with pytest.raises(InventoryError) as info:
        parse_in(directory, ONE + block)
    assert str(info.value) == (
        "%s:%d: tls.%s: expected an existing, readable file (relative paths start at the inventory's directory), "
        "got %r" % (directory / FILE, line, field, str(wrong))
    )


def test_options_override_the_tls_block_field_by_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tls_dir(tmp_path)
    inventory = parse_in(directory, ONE + TLS_OK + "  server_name: farm.lab\n")
    monkeypatch.chdir(tmp_path)
    overridden = inventory.with_tls(TlsConfig(ca="other-ca.pem", server_name="farm.test"))
    assert overridden.tls is not None and inventory.tls is not None
    assert (overridden.tls.cert, overridden.tls.key) == (inventory.tls.cert, inventory.tls.key)
    assert (overridden.tls.ca, overridden.tls.server_name) == (str(tmp_path / "other-ca.pem"), "farm.test")
    assert overridden.boards == inventory.boards and inventory.tls.ca == str(directory / "certs" / "ca.pem")
    assert inventory.with_tls(TlsConfig(ca="system")).tls.ca == "system"  # type: ignore[union-attr]
    assert inventory.with_tls(TlsConfig()).tls.cert == inventory.tls.cert  # type: ignore[union-attr]


def test_options_alone_turn_tls_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inventory = parse(ONE)
    assert inventory.with_tls(TlsConfig(server_name="farm.lab")).tls is None  # a name alone is no TLS
    tls = inventory.with_tls(TlsConfig(cert="c.pem", key="/k.pem", ca="system")).tls
    assert tls is not None and (tls.cert, tls.key, tls.ca) == (str(tmp_path / "c.pem"), "/k.pem", "system")


def test_a_board_group_names_its_session_user() -> None:
    inventory = parse("boards:\n  - {key: a, session_user: farm-session}\n  - {key: b}\n")
    assert [group.session_user for group in inventory.boards] == ["farm-session", None]
    assert "session_user" in error_of("boards:\n  - {key: a, session_user: 'two words'}\n")


def test_native_boards_may_serve_a_farm_with_tls(tmp_path: Path) -> None:
    inventory = parse_in(tls_dir(tmp_path), "boards:\n  - {key: k, server: native}\n" + TLS_OK)
    assert inventory.tls is not None and [group.server for group in inventory.boards] == ["native"]
