"""The numeric types of the daemons' options (argparse ``type=``), one set for the board, the tracker and the proxy.

Each refuses what it cannot use with a message naming the value and what was expected, so that
``--session-quota -1`` or ``--unproven-timeout inf`` stops the daemon at start rather than later.
Standard library only: boards use it.
"""

from __future__ import annotations

import argparse
from typing import Callable


def whole(low: int = 0, what: str = "a whole number") -> Callable[[str], int]:
    """A whole number of ``low`` or more, written in ASCII digits (no sign, no spaces); ``what`` names it."""

    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or int(text) < low:
            raise argparse.ArgumentTypeError("%r is not %s (%d or more)" % (text, what, low))
        return int(text)

    return parse


def seconds(positive: bool = False) -> Callable[[str], float]:
    """A finite number of seconds, 0 or more (``positive``: above 0)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (0 < value if positive else 0 <= value) or value == float("inf"):  # NaN fails either comparison
            raise argparse.ArgumentTypeError(
                "%r is not a number of seconds %s" % (text, "above 0" if positive else "(0 or more)")
            )
        return value

    return parse


#: The counts most options take: connections, entries, processes.
count = whole()
positive_count = whole(1)
