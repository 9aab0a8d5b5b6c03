"""``python -m farm.proxy``: run a proxy."""

import sys

from .server import main

sys.exit(main())
