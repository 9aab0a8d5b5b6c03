"""``farm demo``: start a board, build a kernel, run it there and check it against numpy."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Optional, Tuple

from ..net.sockets import parse_address
from .processes import start_board
from .toolchain import compile_shared

KERNEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "vadd.c")
SIGNATURE = "void vadd(const float *a, const float *b, float *c, int64_t n)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--board", metavar="HOST:PORT", help="use this running board instead of starting one")
    parser.add_argument("--key", default="demo", help="the board's key (default: demo)")
    parser.add_argument("--size", type=int, default=1 << 20, help="elements per vector (default: 1048576)")


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="farm-demo-") as workdir:
        board = None
        if args.board:
            address = parse_address(args.board)
        else:
            board = start_board(os.path.join(workdir, "board.log"), key=args.key)
            address = board.wait_for_bind()  # it listens already: its address at once
            print("started a board %r at %s:%d (pid %d)" % (args.key, address[0], address[1], board.pid))
        try:
            return _demo(address, args.key, args.size, workdir)
        finally:
            if board is not None:
                board.stop()
                print("stopped the board")


def _demo(address: Tuple[str, int], key: str, size: int, workdir: str) -> int:
    import numpy as np

    from ..client.session import connect

    library = compile_shared([KERNEL], os.path.join(workdir, "libvadd.so"))
    print("built %s with the host compiler" % os.path.basename(library))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(size, dtype=np.float32)
    y = rng.standard_normal(size, dtype=np.float32)
    with connect(address[0], address[1], key=key) as remote:
        info = remote.system_info()
        print("connected to board %r: %s %s, Python %s" % (info["key"], info["os"], info["machine"], info["python"]))
        remote.upload(library)
        vadd = remote.load_module("libvadd.so").get_function("vadd", signature=SIGNATURE)
        a, b, c = remote.array(x), remote.array(y), remote.empty(size, "float32")
        start = time.perf_counter()
        vadd(a, b, c, size)
        elapsed = time.perf_counter() - start
        result = c.numpy()
    expected = x + y
    if not np.array_equal(result, expected):
        bad = int(np.count_nonzero(result != expected))
        print("FAILED: %d of %d elements differ from numpy" % (bad, size))
        return 1
    print("vadd of %d float32 elements ran on the board in %.2f ms; result matches numpy" % (size, elapsed * 1e3))
    return 0


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="farm demo", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
