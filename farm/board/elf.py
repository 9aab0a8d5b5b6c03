"""Read the target architecture of an ELF file (standard library only)."""

from __future__ import annotations

import struct
import sys
from typing import Optional

# e_machine values (System V ABI) and the names `uname -m` gives them.
MACHINES = {
    3: "i386",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390x",
    40: "arm",
    62: "x86_64",
    183: "aarch64",
    243: "riscv",
    258: "loongarch",
}


def elf_machine(path: str) -> Optional[str]:
    """``x86_64``, ``aarch64``, ``arm`` ... for an ELF file, None for anything else."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    order = "<" if header[5] == 1 else ">"
    (machine,) = struct.unpack(order + "H", header[18:20])
    bits = 64 if header[4] == 2 else 32
    name = MACHINES.get(machine, "machine %d" % machine)
    if name == "riscv":
        name += str(bits)
    return name


def interpreter_machine() -> Optional[str]:
    """The architecture of the running Python itself (under qemu-user: the emulated one)."""
    return elf_machine(sys.executable) or elf_machine("/proc/self/exe")
