"""``python -m farm.server``: run a board daemon (:mod:`farm.board.daemon`), as TVM's ``rpc_server``."""

import sys

from .board.daemon import main

if __name__ == "__main__":
    sys.exit(main())
