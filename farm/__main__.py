"""``python -m farm``: the ``farm`` command."""

import sys

from .ops.cli import main

sys.exit(main())
