"""pytest-remotedev: run tests of cross-compiled code on a farm of remote boards from pytest.

The plugin (``pytest_remotedev.plugin``) loads through the ``pytest11`` entry
point and gives tests the ``farm``, ``remote_device`` and ``device`` fixtures;
:func:`assert_close` compares a board's result with a numpy reference.
"""

from __future__ import annotations

from typing import Any

__all__ = ["assert_close", "tolerances_for"]


def __getattr__(name: str) -> Any:
    # numpy loads on first use, not with the plugin: pytest's controller under xdist never needs it.
    if name in __all__:
        from . import compare

        return getattr(compare, name)
    raise AttributeError("module 'pytest_remotedev' has no attribute %r" % name)
