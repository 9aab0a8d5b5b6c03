"""Builds with real compilers: targets, the artifact cache (hits, misses, concurrent and crashed builds), `farm build`.

Compiler runs are counted by wrapper scripts that log each invocation and
then run the real compiler, so a cache hit is proven by the compiler not
running, not by timing.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional

import pytest

from farm.board.elf import elf_machine
from farm.ops.targets import TARGETS, Target, host_target
from farm.ops.toolchain import (
    ArchitectureMismatch,
    BuildError,
    Toolchain,
    build_shared,
    check_artifact_for,
    toolchain_for,
    toolchain_for_machine,
)

HOST = host_target()
needs_known_host = pytest.mark.skipif(HOST is None, reason="this machine's architecture is unknown to farm.targets")
ARTIFACT = re.compile(r"^kernel-[0-9a-f]{16}\.so$")

KERNEL_C = '#include "kernel.h"\n\nint add(int a, int b) { return a + b + OFFSET; }\n'
KERNEL_H = "#define OFFSET 0\n"

WRAPPER = """\
#!/bin/sh
# A compiler that logs its runs: --version prints {dir}/version; builds follow {dir}/mode.
if [ "$1" = --version ]; then echo version >> {dir}/runs; cat {dir}/version; exit 0; fi
echo build >> {dir}/runs
mode=$(cat {dir}/mode)
if [ "$mode" != ok ]; then
    prev=; for arg; do [ "$prev" = -o ] && out=$arg; prev=$arg; done
    printf '\\177ELF, but cut short' > "$out"
    [ "$mode" = kill ] && kill -9 $PPID
    exit 1
fi
exec {real} "$@"
"""

BUILD_IN_STEP = """\
import sys
from farm.ops.targets import target_named
from farm.ops.toolchain import Toolchain, build_shared
arch, compiler, source, cache = sys.argv[1:]
toolchain = Toolchain(target_named(arch), compiler)
toolchain.version()
print("ready", flush=True)
sys.stdin.readline()
print(build_shared([source], toolchain, cache_dir=cache), flush=True)
"""


@dataclass
class Wrapper:
    """A logging compiler script in ``directory`` around the real compiler of ``target``."""

    directory: Path
    target: Target

    @property
    def command(self) -> str:
        return str(self.directory / "cc")

    def toolchain(self) -> Toolchain:
        return Toolchain(self.target, self.command)

    def builds(self) -> int:
        return self._runs().count("build")

    def version_runs(self) -> int:
        return self._runs().count("version")

    def set(self, mode: str = "ok", version: str = "wrapper cc 1.0") -> None:
        (self.directory / "mode").write_text(mode + "\n")
        (self.directory / "version").write_text(version + "\n")

    def _runs(self) -> List[str]:
        runs = self.directory / "runs"
        return runs.read_text().split() if runs.exists() else []


def make_wrapper(directory: Path, target: Target) -> Wrapper:
    directory.mkdir(parents=True)
    script = directory / "cc"
    script.write_text(WRAPPER.format(dir=directory, real=toolchain_for(target).compiler))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    wrapper = Wrapper(directory, target)
    wrapper.set()
    return wrapper


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """``src/kernel.c``, which includes ``src/kernel.h``."""
    directory = tmp_path / "src"
    directory.mkdir()
    (directory / "kernel.h").write_text(KERNEL_H)
    path = directory / "kernel.c"
    path.write_text(KERNEL_C)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def wrapper(tmp_path: Path) -> Wrapper:
    """A logging wrapper around this machine's compiler."""
    if HOST is None:
        pytest.skip("this machine's architecture is unknown to farm.targets")
    return make_wrapper(tmp_path / "wrapper", HOST)


def require_compiler(arch: str) -> Toolchain:
    toolchain = toolchain_for(arch)
    if not toolchain.available():
        pytest.skip("no compiler for %s: apt-get install %s" % (arch, toolchain.target.compiler_package))
    return toolchain


def files_in(cache: Path) -> List[str]:
    return sorted(path.name for path in cache.rglob("*") if path.is_file() and not path.name.endswith(".lock"))


# --- toolchains for targets and machines -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, arch",
    [("aarch64", "aarch64"), ("aarch64-linux-gnu", "aarch64"), ("armhf", "armhf"),
     ("arm-linux-gnueabihf", "armhf"), ("x86_64", "x86_64"), ("x86_64-linux-gnu", "x86_64")],
)  # fmt: skip
def test_toolchain_for_names_and_triples(name: str, arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "my-cc --quiet")
    toolchain = toolchain_for(name)
    assert toolchain.target == TARGETS[arch]
    assert toolchain.compiler == ("my-cc --quiet" if TARGETS[arch] == HOST else TARGETS[arch].compiler)
    assert toolchain.flags == ("-O2",)


@needs_known_host
def test_host_toolchain_is_cc_without_CC(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    assert toolchain_for(HOST).compiler == "cc"


def test_overrides_by_triple_win() -> None:
    overrides = {
        "aarch64-linux-gnu": SimpleNamespace(compiler="clang --target=aarch64-linux-gnu", flags=["-O3"]),
        "arm-linux-gnueabihf": SimpleNamespace(compiler="arm-gcc-13", flags=()),
    }
    assert toolchain_for("aarch64", overrides) == Toolchain(
        TARGETS["aarch64"], "clang --target=aarch64-linux-gnu", ("-O3",)
    )
    assert toolchain_for("armhf", overrides) == Toolchain(TARGETS["armhf"], "arm-gcc-13", ("-O2",))
    assert toolchain_for("x86_64", overrides) == toolchain_for("x86_64")


@pytest.mark.parametrize("machine, arch", [("x86_64", "x86_64"), ("aarch64", "aarch64"), ("arm64", "aarch64"),
                                           ("armv7l", "armhf"), ("armv8l", "armhf")])  # fmt: skip
def test_toolchain_for_machine(machine: str, arch: str) -> None:
    assert toolchain_for_machine(machine).target == TARGETS[arch]


def test_unknown_architecture_and_machine() -> None:
    with pytest.raises(BuildError, match=r"unknown architecture 'mips'.*aarch64, armhf, x86_64"):
        toolchain_for("mips")
    with pytest.raises(BuildError, match=r"machine is 'riscv64' \(known: aarch64, arm64, armv7, armv7l"):
        toolchain_for_machine("riscv64")


def test_missing_compiler_names_the_package(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no compilers at all
    toolchain = toolchain_for("aarch64")
    assert not toolchain.available()
    with pytest.raises(BuildError) as info:
        build_shared([source], toolchain, cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert "'aarch64-linux-gnu-gcc' for aarch64 (aarch64-linux-gnu) not found" in message
    assert "apt-get install gcc-aarch64-linux-gnu" in message and "farm emulators install" in message


# --- building for each target ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "aarch64", "armhf"])
def test_build_for_each_target(arch: str, source: Path, cache: Path) -> None:
    toolchain = require_compiler(arch)
    path = Path(build_shared([source], toolchain, cache_dir=str(cache)))
    assert path.parent == cache / toolchain.target.triple
    assert ARTIFACT.match(path.name), path.name
    assert elf_machine(str(path)) == toolchain.target.elf
    assert files_in(cache) == [path.name]


def test_default_cache_is_under_REMOTEDEV_CACHE(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toolchain = require_compiler("aarch64")
    monkeypatch.setenv("REMOTEDEV_CACHE", str(tmp_path / "root"))
    path = Path(build_shared([source], toolchain))
    assert path.parent == tmp_path / "root" / "artifacts" / "aarch64-linux-gnu"


def test_sources_link_into_one_library_named_after_the_first(source: Path, cache: Path, wrapper: Wrapper) -> None:
    other = source.with_name("other.c")
    other.write_text("int twice(int a) { return 2 * a; }\n")
    path = Path(build_shared([source, other], wrapper.toolchain(), cache_dir=str(cache)))
    assert ARTIFACT.match(path.name)
    named = Path(build_shared([source, other], wrapper.toolchain(), name="libboth", cache_dir=str(cache)))
    assert named.name.startswith("libboth-") and named.read_bytes() == path.read_bytes()
    symbols = subprocess.run(["nm", "-D", str(path)], capture_output=True, text=True, check=True).stdout
    assert " T add" in symbols and " T twice" in symbols


def test_wrong_architecture_output_is_refused(source: Path, cache: Path, wrapper: Wrapper) -> None:
    other = next(target for target in TARGETS.values() if target != HOST)
    mistaken = Toolchain(other, wrapper.command)  # this machine's compiler posing as a cross compiler
    with pytest.raises(ArchitectureMismatch) as info:
        build_shared([source], mistaken, cache_dir=str(cache))
    assert "built %s code for target %s" % (HOST.elf, other.name) in str(info.value)
    assert "needs %s code" % other.elf in str(info.value)
    assert files_in(cache) == []


# --- the cache -------------------------------------------------------------------------------------------


def test_second_build_is_a_hit_without_running_the_compiler(source: Path, cache: Path, wrapper: Wrapper) -> None:
    first = build_shared([source], wrapper.toolchain(), cache_dir=str(cache))
    assert (wrapper.builds(), wrapper.version_runs()) == (1, 1)
    again = build_shared([source], wrapper.toolchain(), cache_dir=str(cache))
    assert again == first
    assert (wrapper.builds(), wrapper.version_runs()) == (1, 1)  # the version is asked once per process


@pytest.mark.parametrize("change", ["source byte", "header byte", "flag", "define", "depends", "source name"])
def test_a_change_misses(change: str, source: Path, cache: Path, wrapper: Wrapper) -> None:
    extra = source.with_name("extra.txt")
    extra.write_text("1")
    build = dict(sources=[source], toolchain=wrapper.toolchain(), cache_dir=str(cache), depends=[extra])
    first = build_shared(**build)
    if change == "source byte":
        source.write_text(KERNEL_C.replace("a + b", "a - b"))
    elif change == "header byte":
        source.with_name("kernel.h").write_text(KERNEL_H.replace("0", "1"))
    elif change == "flag":
        build["flags"] = ["-O3"]
    elif change == "define":
        build["defines"] = {"SCALE": "2"}
    elif change == "depends":
        extra.write_text("2")
    else:
        build["sources"] = [source.rename(source.with_name("renamed.c"))]
        build["name"] = "kernel"
    second = build_shared(**build)
    assert second != first and os.path.exists(first) and os.path.exists(second)
    assert wrapper.builds() == 2


def test_headers_from_include_dirs_count(source: Path, cache: Path, wrapper: Wrapper, tmp_path: Path) -> None:
    include = tmp_path / "include"
    include.mkdir()
    (include / "config.h").write_text("#define LIMIT 1\n")
    source.with_name("kernel.h").write_text(KERNEL_H + '#include "config.h"\n')
    first = build_shared([source], wrapper.toolchain(), flags=["-I", str(include)], cache_dir=str(cache))
    (include / "config.h").write_text("#define LIMIT 2\n")
    second = build_shared([source], wrapper.toolchain(), flags=["-I", str(include)], cache_dir=str(cache))
    assert first != second and wrapper.builds() == 2


def cli(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farm", "build", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)  # fmt: skip


@needs_known_host
def test_compiler_version_change_misses(source: Path, cache: Path, wrapper: Wrapper) -> None:
    """Each `farm build` is a new process, which asks the compiler its version again."""
    build = [str(source), "--target", HOST.name, "--cache-dir", str(cache)]
    first = cli(*build, env={"CC": wrapper.command})
    assert first.returncode == 0, first.stderr
    wrapper.set(version="wrapper cc 1.1")
    second = cli(*build, env={"CC": wrapper.command})
    assert second.returncode == 0, second.stderr
    assert second.stdout != first.stdout and wrapper.builds() == 2
    again = cli(*build, env={"CC": wrapper.command})
    assert again.stdout == second.stdout and wrapper.builds() == 2


def test_concurrent_builds_compile_once(source: Path, cache: Path, wrapper: Wrapper) -> None:
    """Four processes released together (after each has asked the version) build one artifact once."""
    command = [sys.executable, "-c", BUILD_IN_STEP, HOST.name, wrapper.command, str(source), str(cache)]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        for worker in workers:
            assert worker.stdout.readline() == "ready\n"
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=60)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert [worker.returncode for worker in workers] == [0, 0, 0, 0]
    assert len(set(outputs)) == 1 and ARTIFACT.match(Path(outputs[0].strip()).name)
    assert wrapper.builds() == 1
    assert files_in(cache) == [Path(outputs[0].strip()).name]


def test_failed_build_leaves_nothing_taken_for_a_hit(source: Path, cache: Path, wrapper: Wrapper) -> None:
    wrapper.set(mode="fail")
    with pytest.raises(BuildError, match="failed with code 1"):
        build_shared([source], wrapper.toolchain(), cache_dir=str(cache))
    assert files_in(cache) == []
    wrapper.set(mode="ok")
    path = build_shared([source], wrapper.toolchain(), cache_dir=str(cache))
    assert wrapper.builds() == 2 and elf_machine(path) == HOST.elf


def test_killed_build_leaves_nothing_taken_for_a_hit(source: Path, cache: Path, wrapper: Wrapper) -> None:
    """The builder dies mid-compile (SIGKILL): its partial output stays aside and is never a hit."""
    wrapper.set(mode="kill")
    command = [sys.executable, "-c", BUILD_IN_STEP, HOST.name, wrapper.command, str(source), str(cache)]
    result = subprocess.run(command, input="go\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == -9, result.stderr
    assert [name for name in files_in(cache) if not name.endswith(".tmp")] == []
    wrapper.set(mode="ok")
    path = build_shared([source], wrapper.toolchain(), cache_dir=str(cache))
    assert wrapper.builds() == 2 and elf_machine(path) == HOST.elf
    assert files_in(cache) == [os.path.basename(path)]  # the partial output is gone too


# --- the architecture check before an upload --------------------------------------------------------------


def test_check_artifact_for(source: Path, cache: Path, tmp_path: Path) -> None:
    path = build_shared([source], require_compiler("aarch64"), cache_dir=str(cache))
    check_artifact_for(path, "aarch64")
    check_artifact_for(path, "arm64")
    with pytest.raises(ArchitectureMismatch, match=r"is built for aarch64, but the board runs armv7l \(arm code\): "
                                                   r"build it for armhf"):  # fmt: skip
        check_artifact_for(path, "armv7l")
    with pytest.raises(ArchitectureMismatch, match=r"built for aarch64, but the board runs riscv64 \(riscv64 code\)"):
        check_artifact_for(path, "riscv64")
    text = tmp_path / "notes.so"
    text.write_text("not a library")
    with pytest.raises(ArchitectureMismatch, match="notes.so is not an ELF file"):
        check_artifact_for(text, "aarch64")


# --- farm build --------------------------------------------------------------------------------------------


def test_farm_build_target(source: Path, tmp_path: Path) -> None:
    require_compiler("armhf")
    root = tmp_path / "root"
    result = cli(str(source), "--target", "arm-linux-gnueabihf", "--flag=-O3", "-D", "SCALE=2",
                 env={"REMOTEDEV_CACHE": str(root)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    built = Path(result.stdout.strip())
    assert built.parent == root / "artifacts" / "arm-linux-gnueabihf" and ARTIFACT.match(built.name)
    assert elf_machine(str(built)) == "arm"
    out = tmp_path / "out"
    out.mkdir()
    copied = cli(str(source), "--target", "armhf", "--flag=-O3", "-D", "SCALE=2", "-o", str(out), "--name", "libk",
                 env={"REMOTEDEV_CACHE": str(root)})  # fmt: skip
    assert copied.stdout == "%s\n" % (out / "libk.so") and (out / "libk.so").read_bytes() == built.read_bytes()
    to_file = cli(str(source), "--target", "armhf", "-o", str(out / "named.so"), "--cache-dir", str(tmp_path / "c"))
    assert to_file.stdout == "%s\n" % (out / "named.so") and elf_machine(str(out / "named.so")) == "arm"


def test_farm_build_errors(source: Path, tmp_path: Path) -> None:
    unknown = cli(str(source), "--target", "mips", "--cache-dir", str(tmp_path))
    assert unknown.returncode == 1 and "farm build: unknown architecture 'mips'" in unknown.stderr
    no_farm = cli(str(source), "--key", "arm64")
    assert no_farm.returncode == 2 and "--key needs --farm INVENTORY" in no_farm.stderr
    neither = cli(str(source))
    assert neither.returncode == 2 and "one of the arguments --target --key is required" in neither.stderr
    missing = cli(str(tmp_path / "nothing.c"), "--target", "x86_64", "--cache-dir", str(tmp_path))
    assert missing.returncode == 1 and "nothing.c" in missing.stderr


INVENTORY = """\
toolchains:
  aarch64-linux-gnu: {{compiler: {compiler}, flags: [-O1]}}
boards:
  - {{key: local}}
  - {{key: arm64, start: emulated, arch: aarch64}}
  - {{key: arm32, start: emulated, arch: armhf, count: 2}}
"""


@needs_known_host
def test_farm_build_key(source: Path, tmp_path: Path) -> None:
    require_compiler("aarch64")
    require_compiler("armhf")
    arm64 = make_wrapper(tmp_path / "arm64-cc", TARGETS["aarch64"])
    inventory = tmp_path / "farm.yaml"
    inventory.write_text(INVENTORY.format(compiler=arm64.command))
    common = ["--farm", str(inventory), "--cache-dir", str(tmp_path / "cache")]
    built = {}
    for key in ("local", "arm64", "arm32"):
        result = cli(str(source), "--key", key, *common)
        assert result.returncode == 0, result.stderr
        built[key] = result.stdout.strip()
    assert {key: elf_machine(path) for key, path in built.items()} == {
        "local": HOST.elf, "arm64": "aarch64", "arm32": "arm"}  # fmt: skip
    assert arm64.builds() == 1  # the inventory's toolchain for aarch64-linux-gnu, not the built-in one
    assert Path(built["arm64"]).parent.name == "aarch64-linux-gnu"
    target = cli(str(source), "--target", "aarch64", *common)  # --target takes the inventory's toolchains too
    assert target.stdout.strip() == built["arm64"] and arm64.builds() == 1
    unknown = cli(str(source), "--key", "rasp4", *common)
    assert unknown.returncode == 1 and "no boards of key 'rasp4' (keys: arm32, arm64, local)" in unknown.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("boards: []\n")
    bad = cli(str(source), "--key", "local", "--farm", str(broken))
    assert bad.returncode == 1 and "broken.yaml:1: boards: expected a list of boards" in bad.stderr


def test_farm_build_key_of_a_builtin_inventory(source: Path, tmp_path: Path) -> None:
    require_compiler("armhf")
    result = cli(str(source), "--key", "armhf", "--farm", "emulated", "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert elf_machine(result.stdout.strip()) == "arm"


def test_farm_build_key_of_an_architecture_unknown_to_the_farm(source: Path, tmp_path: Path) -> None:
    """A triple only the inventory's toolchains: knows builds with that entry's compiler."""
    compiler = tmp_path / "riscv64-linux-gnu-gcc"
    compiler.write_text('#!/bin/sh\nexec cc "$@"\n')  # stands in for the cross compiler: any compiler will do
    compiler.chmod(0o755)
    inventory = tmp_path / "farm.yaml"
    inventory.write_text(
        "tracker: {port: 9190}\n"
        "toolchains:\n  riscv64-linux-gnu: {compiler: %s, flags: [-O1]}\n"
        "boards:\n  - {key: riscv, start: external, arch: riscv64-linux-gnu}\n" % compiler
    )
    result = cli(str(source), "--key", "riscv", "--farm", str(inventory), "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    built = Path(result.stdout.strip())
    assert built.parent.name == "riscv64-linux-gnu" and built.is_file()
    missing = inventory.read_text().replace(str(compiler), "riscv64-linux-gnu-gcc-absent")
    inventory.write_text(missing)
    result = cli(str(source), "--key", "riscv", "--farm", str(inventory), "--cache-dir", str(tmp_path))
    assert result.returncode == 1 and "compiler 'riscv64-linux-gnu-gcc-absent' for riscv64-linux-gnu" in result.stderr
