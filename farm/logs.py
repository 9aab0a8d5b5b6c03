"""How the daemons log: one line per record, whatever a peer put into the text (standard library only).

Keys, names and reasons that peers send end up in log messages; a newline in
one could forge a line of its own. Control characters in a message are shown
escaped (``\\x0a``); a traceback that follows a message keeps its lines.
:func:`escape_control` does the same for other output of peers' text (``farm status``).
"""

from __future__ import annotations

import logging
import re
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: C0 and C1 control characters (newlines, a terminal's ESC and CSI), DEL, Unicode's line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return "\\x%02x" % code if code < 0x100 else "\\u%04x" % code


def escape_control(text: str) -> str:
    """``text`` with its control characters shown escaped (a newline as ``\\x0a``): one line, no terminal codes."""
    return _CONTROL.sub(_escaped, text)


class OneLineFormatter(logging.Formatter):
    """A formatter that escapes control characters in the message itself."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        record.message = escape_control(record.message)
        return super().formatMessage(record)


def configure_logging(level: str) -> None:
    """Log at ``level`` to stderr, one line per record."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
