"""How the daemons log: one line per record, whatever a peer put into the text (standard library only).

Keys, names and reasons that peers send end up in log messages; a newline in
one could forge a line of its own. Control characters in a message are shown
escaped (``\\x0a``); a traceback that follows a message keeps its lines.
"""

from __future__ import annotations

import logging
import re
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class OneLineFormatter(logging.Formatter):
    """A formatter that escapes control characters in the message itself."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        record.message = _CONTROL.sub(lambda match: "\\x%02x" % ord(match.group()), record.message)
        return super().formatMessage(record)


def configure_logging(level: str) -> None:
    """Log at ``level`` to stderr, one line per record."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
