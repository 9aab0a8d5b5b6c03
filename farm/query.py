"""``python -m farm.query``: a farm's boards and queues (:mod:`farm.client.query`), as TVM's ``query_rpc_tracker``."""

import sys

from .client.query import main

if __name__ == "__main__":
    sys.exit(main())
