"""``python -m farm.tracker``: run a tracker."""

import sys

from .server import main

sys.exit(main())
