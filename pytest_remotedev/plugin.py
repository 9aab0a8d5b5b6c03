"""pytest plugin entry point (registered through the ``pytest11`` entry point).

For now it registers the ``device`` marker; the fixtures, options and the
bundled farm come with the plugin's own issue.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "device(key): run this test on a board of the given key",
    )
