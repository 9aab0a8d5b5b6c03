"""The architectures the farm knows: how a board of each names itself, builds for it and is emulated.

One table, used by the inventory (which ``arch`` a board may have), the
toolchains (which cross compiler builds for it) and the emulators (which
qemu-user binary and which Debian architecture's Python run it). Standard
library only.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Target:
    """One architecture: ``name`` is what inventories and options call it."""

    name: str
    triple: str  # the GNU target triple of its toolchain
    machines: Tuple[str, ...]  # what platform.machine() says on such a board
    elf: str  # what farm.board.elf.elf_machine() says of code built for it
    debian_arch: str  # the Debian architecture of its packages
    qemu: str  # the qemu-user binary that runs its code on another host
    compiler: str  # the cross compiler's command, from Debian's gcc-TRIPLE package

    @property
    def compiler_package(self) -> str:
        return "gcc-" + self.triple.replace("_", "-")  # Debian's names: gcc-x86-64-linux-gnu

    @property
    def libc_package(self) -> str:
        return "libc6-dev-%s-cross" % self.debian_arch


TARGETS: Dict[str, Target] = {
    target.name: target
    for target in (
        Target("x86_64", "x86_64-linux-gnu", ("x86_64",), "x86_64", "amd64", "qemu-x86_64", "x86_64-linux-gnu-gcc"),
        Target("aarch64", "aarch64-linux-gnu", ("aarch64", "arm64"), "aarch64", "arm64", "qemu-aarch64",
               "aarch64-linux-gnu-gcc"),
        Target("armhf", "arm-linux-gnueabihf", ("armv7l", "armv8l", "armv7"), "arm", "armhf", "qemu-arm",
               "arm-linux-gnueabihf-gcc"),
    )
}  # fmt: skip

#: The architectures the emulators provision and the inventory accepts for ``emulate``.
EMULATED = ("aarch64", "armhf")


def target_named(name: str) -> Target:
    """The target called ``name`` (``aarch64``, ``armhf``, ``x86_64``) or with that triple; KeyError if none."""
    for target in TARGETS.values():
        if name in (target.name, target.triple):
            return target
    raise KeyError("unknown architecture %r (known: %s)" % (name, ", ".join(sorted(TARGETS))))


def target_of_machine(machine: str) -> Optional[Target]:
    """The target of a board whose platform.machine() is ``machine``; None when the farm does not know it."""
    for target in TARGETS.values():
        if machine in target.machines:
            return target
    return None


def host_target() -> Optional[Target]:
    """The target of this machine."""
    return target_of_machine(platform.machine())
