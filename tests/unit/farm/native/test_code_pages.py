"""The native board's drop_code_pages() (util.c), which an idle daemon, spawner and standby call: it lets go of
the resident pages of code mappings, and of nothing that was written."""

from __future__ import annotations

import subprocess
from pathlib import Path

from farm.ops.native import SOURCE_DIR
from farm.ops.toolchain import compile_shared

DRIVER = Path(__file__).with_name("code_pages.c")
NATIVE = Path(SOURCE_DIR)


def test_code_pages_are_let_go_and_written_pages_kept(tmp_path: Path) -> None:
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-I", str(NATIVE)]
    driver = compile_shared([DRIVER, NATIVE / "util.c"], tmp_path / "code-pages", flags=flags)
    mapped = tmp_path / "mapped"
    mapped.write_bytes(bytes(range(256)) * 1024)  # 256 KiB: 16 pages of any page size up to 16 KiB
    result = subprocess.run([driver, str(mapped)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    before, after, kept = (int(word) for word in result.stdout.split())
    assert (before, after, kept) == (16, 0, 1), result.stdout
