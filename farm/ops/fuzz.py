"""``farm fuzz``: the native board daemon's input parsers under clang's libFuzzer (docs/native-board.md, "Fuzzing").

Each target in ``farm/native/fuzz/`` is one C file with ``LLVMFuzzerTestOneInput``,
linked with the daemon's own sources (all but ``main.c``) and ``common.c``,
instrumented with AddressSanitizer and UBSan. :func:`build_fuzzers` builds them all,
cached by content as the server is; :func:`write_seeds` writes a seed corpus of real
requests, hellos, proofs and tracker replies made by the project's own encoders;
:func:`run_fuzzer` runs one target for a bounded count and time.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .cache import cache_dir
from .native import SOURCE_DIR
from .toolchain import BuildError

logger = logging.getLogger("farm.fuzz")

#: The targets' sources and the regression inputs (``TARGET-WHAT``, each run once by the tests).
FUZZ_DIR = os.path.join(SOURCE_DIR, "fuzz")
REGRESSION_DIR = os.path.join(FUZZ_DIR, "regressions")
TARGETS = ("frame", "call", "signature", "hello", "proof", "proxy", "json", "tracker")
#: How the daemon's sources and the targets compile: the server's warnings, sanitizers made fatal.
FLAGS = (
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-g",
    "-O1",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
)
LIBRARIES = ("-lffi", "-ldl")
#: Debian's packages of clang and its libFuzzer runtime; the compilers tried, newest name first.
PACKAGES = ("clang-14", "libclang-rt-14-dev")
COMPILERS = ("clang", *("clang-%d" % version for version in range(19, 13, -1)))
#: The secret and the acceptor's nonce the proof target holds (fuzz.h), for seeds that pass the proof.
SECRET = b"fuzzing-secret-of-the-farm-0123456789"
NONCE = b"\x5a" * 32
MARKER = ".farm-complete"
_DONE = re.compile(r"^Done (\d+) runs", re.MULTILINE)
#: A sanitizer's or libFuzzer's report: "==PID==ERROR: AddressSanitizer", "==PID== ERROR: libFuzzer", UBSan's.
_REPORT = re.compile(r"^==\d+== ?ERROR: |: runtime error: ", re.MULTILINE)


def _install_hint() -> str:
    return "install Debian's %s (apt-get install %s)" % (" and ".join(PACKAGES), " ".join(PACKAGES))


def fuzz_compiler() -> str:
    """``$FUZZ_CC``, else the first clang found; BuildError saying what to install when there is none."""
    named = os.environ.get("FUZZ_CC")
    if named:
        return named
    for name in COMPILERS:
        if shutil.which(name):
            return name
    raise BuildError("the fuzz targets need clang with libFuzzer, and no clang is installed: %s" % _install_hint())


def _compile(command: List[str]) -> None:
    logger.debug("compiling: %s", shlex.join(command))
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise BuildError("cannot run %s: %s" % (command[0], exc)) from None
    if result.returncode:
        hint = "\nclang's libFuzzer runtime is missing: " + _install_hint() if "fuzzer" in result.stdout else ""
        raise BuildError(
            "%s failed with code %d:\n%s%s" % (shlex.join(command), result.returncode, result.stdout, hint)
        )


def _sources() -> List[str]:
    """The daemon's sources the targets link: every one but ``main.c`` (libFuzzer has the main)."""
    return [path for path in sorted(glob.glob(os.path.join(SOURCE_DIR, "*.c"))) if os.path.basename(path) != "main.c"]


def _key(compiler: str) -> str:
    """The build's content key: the compiler's version, the flags and every source and header it reads."""
    try:
        version = subprocess.run([*shlex.split(compiler), "--version"], stdout=subprocess.PIPE, text=True).stdout
    except OSError as exc:
        raise BuildError("cannot run %s: %s" % (compiler, exc)) from None
    digest = hashlib.sha256(("farm.fuzz/1\0%s\0%s\0" % (version, "\0".join(FLAGS + LIBRARIES))).encode())
    for pattern in ("*.c", "*.h", "fuzz/*.c", "fuzz/*.h"):
        for path in sorted(glob.glob(os.path.join(SOURCE_DIR, pattern))):
            with open(path, "rb") as source:
                digest.update(b"%s\0%s\0" % (os.path.relpath(path, SOURCE_DIR).encode(), source.read()))
    return digest.hexdigest()


def build_fuzzers(cache: Optional[str] = None, compiler: Optional[str] = None) -> Dict[str, str]:
    """Build every fuzz target (cached by content); their executables by target name."""
    from filelock import FileLock  # host-only

    compiler = compiler or fuzz_compiler()
    base = cache or cache_dir("fuzz")
    directory = os.path.join(base, _key(compiler)[:16])
    found = {target: os.path.join(directory, "fuzz-" + target) for target in TARGETS}
    if os.path.exists(os.path.join(directory, MARKER)):
        return found
    os.makedirs(base, exist_ok=True)
    with FileLock(directory + ".lock"):
        if os.path.exists(os.path.join(directory, MARKER)):
            return found
        work = tempfile.mkdtemp(prefix=".fuzz-partial-", dir=base)
        try:
            _build_into(work, shlex.split(compiler))
            open(os.path.join(work, MARKER), "w").close()
            shutil.rmtree(directory, ignore_errors=True)
            os.rename(work, directory)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return found


def _build_into(work: str, compiler: List[str]) -> None:
    """The daemon's objects compiled once for all targets, then each target linked with them."""
    objects = os.path.join(work, "objects")
    os.makedirs(objects)
    sources = [*_sources(), os.path.join(FUZZ_DIR, "common.c")]
    instrument = "-fsanitize=fuzzer-no-link,address,undefined"
    commands = [
        [*compiler, *FLAGS, instrument, "-c", source, "-o", os.path.join(objects, os.path.basename(source) + ".o")]
        for source in sources
    ]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_compile, commands))
    linked = sorted(glob.glob(os.path.join(objects, "*.o")))
    for target in TARGETS:
        source = os.path.join(FUZZ_DIR, target + ".c")
        output = os.path.join(work, "fuzz-" + target)
        _compile([*compiler, *FLAGS, "-fsanitize=fuzzer,address,undefined", source, *linked, *LIBRARIES, "-o", output])
    shutil.rmtree(objects)


@dataclass(frozen=True)
class FuzzRun:
    """One run of a fuzz target: how many inputs it ran, its exit code and output."""

    target: str
    runs: int
    returncode: int
    output: str

    @property
    def crashed(self) -> bool:
        """Whether a sanitizer or libFuzzer reported an input (a crash, a leak, a timeout)."""
        return self.returncode != 0 or _REPORT.search(self.output) is not None


def run_fuzzer(
    executable: str,
    target: str,
    seconds: int,
    runs: int,
    corpus: Sequence[str] = (),
    artifacts: Optional[str] = None,
    extra: Sequence[str] = (),
) -> FuzzRun:
    """Run a target for at most ``runs`` inputs and ``seconds`` seconds from ``corpus`` directories (the first one
    gains what it finds); a crashing input is written into ``artifacts``."""
    command = [executable, "-max_total_time=%d" % seconds, "-runs=%d" % runs, "-timeout=10", "-rss_limit_mb=2048"]
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
        command.append("-artifact_prefix=%s/" % artifacts.rstrip("/"))
    dictionary = os.path.join(FUZZ_DIR, target + ".dict")
    if os.path.exists(dictionary):
        command.append("-dict=%s" % dictionary)
    command += [*extra, *corpus]
    logger.info("fuzzing: %s", shlex.join(command))
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    done = _DONE.search(result.stdout)
    return FuzzRun(target, int(done.group(1)) if done else 0, result.returncode, result.stdout)


def regressions(target: str) -> List[str]:
    """The committed inputs that once crashed ``target`` (``regressions/TARGET-WHAT``)."""
    return sorted(glob.glob(os.path.join(REGRESSION_DIR, target + "-*")))


def run_regressions(executable: str, target: str) -> FuzzRun:
    """Run each regression input of ``target`` once."""
    inputs = regressions(target)
    result = subprocess.run(
        [executable, *inputs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    return FuzzRun(target, len(inputs), result.returncode, result.stdout)


# --- seeds: real inputs, made by the project's encoders ---------------------------------------------------------


def _frame(op: int, meta: Optional[Dict[str, object]] = None, payload: bytes = b"") -> bytes:
    from ..protocol.framing import encode_frame

    return b"".join(bytes(part) for part in encode_frame(op, 7, meta, payload))


def _frames() -> List[bytes]:
    from ..protocol.calls import encode_call
    from ..protocol.ops import Op

    call = encode_call(1, "aiifan", [3, 4, -5, 2.5, 4, 0])
    return [
        _frame(Op.PING),
        _frame(Op.SYSTEM_INFO),
        _frame(Op.UPLOAD, {"name": "sub/kernel.so"}, b"\x7fELF"),
        _frame(Op.DOWNLOAD, {"name": "../outside"}),
        _frame(Op.REMOVE, {"name": "a/./b/../c"}),
        _frame(Op.LISTDIR, {"name": "."}),
        _frame(Op.LOAD_MODULE, {"name": "libvadd.so"}),
        _frame(Op.GET_FUNCTION, {"module": 1, "name": "vadd", "signature": "void vadd(const float *a, int n)"}),
        _frame(Op.CALL, None, call),
        _frame(Op.PIPELINED_CALL, None, encode_call(2, "iif", [1, 2, 0.5])),
        _frame(Op.ARRAY_NEW, {"shape": [2, 2], "dtype": "float32"}, bytes(16)),
        _frame(Op.ARRAY_EMPTY, {"shape": [3, 0, 18446744073709551616], "dtype": "int64"}),
        _frame(Op.ARRAY_READ, {"id": 3, "release": [4]}),
        _frame(Op.ARRAY_WRITE, {"id": 4}, bytes(16)),
        _frame(Op.TIME, {"function": 1, "number": 10, "repeat": 3}, call),
        _frame(Op.CLOSE),
    ]


def _proofs() -> List[bytes]:
    """Acceptor-side seeds (first byte even) that pass the proof, a hello behind; connector-side ones (odd)."""
    from ..protocol.auth import Acceptor, Connector
    from ..protocol.handshake import encode_hello

    connector, acceptor = Connector(SECRET, b"\x11" * 32), Acceptor(SECRET, NONCE)
    hello = connector.data_to_send()
    acceptor.feed(hello)
    connector.feed(acceptor.data_to_send())
    accepted = hello + connector.data_to_send() + encode_hello("client", "fuzz", 5.0)
    ours, theirs = Connector(SECRET, NONCE), Acceptor(SECRET, b"\x22" * 32)
    theirs.feed(ours.data_to_send())
    answer = theirs.data_to_send()
    return [b"\x00" + accepted, b"\x0e" + accepted, b"\x01" + answer, b"\x41" + answer, b"\x01" + answer[:64] + b"\0"]


def _tracker_replies() -> List[bytes]:
    from ..protocol.tracker import encode_message

    pending = encode_message(["fuzz:0.5", "fuzz:0.25"])
    return [
        b"\x24" + encode_message(0) + encode_message(0) + pending,
        b"\xaa" + pending + encode_message([]),
        b"\x00" + encode_message({"error": "nope"}) + struct.pack("<i", 3) + b"[1,",
    ]


def _proxy_replies() -> List[bytes]:
    from ..protocol.handshake import CODE_BUSY, CODE_MISMATCH, CODE_SUCCESS, encode_reply

    return [
        encode_reply(CODE_SUCCESS, "client:fuzz -timeout=2.5") + b"RD\x01",
        encode_reply(CODE_BUSY, "board 'fuzz' is busy"),
        encode_reply(CODE_MISMATCH),
        encode_reply(CODE_SUCCESS, "client:\u00e9 -timeout=1e400"),
    ]


def _signatures() -> List[bytes]:
    return [
        b"void vadd(const float *a, const float *b, float *out, int n)",
        b"int32_t f(uint8_t x, unsigned long long int y, double z[4], _Float16 *h);",
        b"float*  g ( void )",
        b"struct s *h(char **argv, signed char c, bool flag)",
    ]


def _seeds() -> Dict[str, List[bytes]]:
    from ..protocol.calls import encode_call
    from ..protocol.handshake import encode_hello

    frames = _frames()
    return {
        "frame": frames,
        "call": [
            encode_call(1, "aiifa", [3, 4, -5, 2.5, 3]),
            encode_call(2, "iufn", [1, 2**63, 1.5, 0]),
            encode_call(1, "a", [99]),
        ],
        "signature": _signatures(),
        "hello": [
            encode_hello("client", "fuzz"),
            encode_hello("client", "fuzz", 2.5),
            b"client:fuzz -timeout=1_0.5e3 -other=x",
            "server:\u00e9\u3000key\u2028-timeout=inf".encode(),
        ],
        "proof": _proofs(),
        "proxy": _proxy_replies(),
        "json": [json.dumps(value).encode() for value in (_JSON_VALUE, [0.5, -0, 1e400, "\ud800"], "\\u00e9")]
        + [
            b'{"a": [1, 2, {"b": null}], "c": "\\ud83d\\ude00\\ud800x"}',
            b"-Infinity",
            b"[NaN, 123456789012345678901]",
        ],
        "tracker": _tracker_replies(),
    }


_JSON_VALUE = {"name": "a/b", "shape": [1, 2, 3], "dtype": "float32", "nested": {"list": [True, False, None]}}


def write_seeds(directory: str) -> Dict[str, str]:
    """Write each target's seed inputs into ``directory/TARGET``; those directories by target."""
    written = {}
    for target, seeds in _seeds().items():
        path = os.path.join(directory, target)
        os.makedirs(path, exist_ok=True)
        for number, seed in enumerate(seeds):
            with open(os.path.join(path, "seed-%02d" % number), "wb") as out:
                out.write(seed)
        written[target] = path
    return written


# --- farm fuzz ------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET", help="the targets to run (default: all): %s" % ", ".join(TARGETS)
    )
    parser.add_argument("--seconds", type=int, default=60, help="how long to run each target (default: 60)")
    parser.add_argument("--runs", type=int, default=-1, help="at most this many inputs per target (default: no limit)")
    parser.add_argument(
        "--corpus", metavar="DIR", help="keep each target's corpus in DIR/TARGET (default: a temporary directory)"
    )
    parser.add_argument("--artifacts", metavar="DIR", default=".", help="where crashing inputs go (default: here)")
    parser.add_argument("--cache-dir", metavar="DIR", help="where the built targets are cached")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    unknown = [target for target in args.targets if target not in TARGETS]
    if unknown:
        logger.error("unknown targets %s; the targets are %s", ", ".join(unknown), ", ".join(TARGETS))
        return 2
    try:
        executables = build_fuzzers(args.cache_dir)
    except BuildError as exc:
        logger.error("%s", exc)
        return 1
    corpus = args.corpus or tempfile.mkdtemp(prefix="farm-fuzz-")
    seeds = write_seeds(os.path.join(corpus, ".seeds"))
    failed = 0
    for target in args.targets or TARGETS:
        kept = os.path.join(corpus, target)
        os.makedirs(kept, exist_ok=True)
        result = run_fuzzer(
            executables[target], target, args.seconds, args.runs, [kept, seeds[target]], args.artifacts
        )
        verdict = "CRASHED" if result.crashed else "ok"
        logger.info("%s: %d runs, %s", target, result.runs, verdict)
        if result.crashed:
            failed += 1
            logger.error("%s", result.output[-4000:])
    if not args.corpus:
        shutil.rmtree(corpus, ignore_errors=True)
    return 1 if failed else 0
