"""pytest-remotedev: run tests of cross-compiled code on a farm of remote boards from pytest.

The plugin (``pytest_remotedev.plugin``) loads through the ``pytest11`` entry
point and gives tests the ``farm``, ``remote_device`` and ``device`` fixtures;
:func:`assert_close` compares a board's result with a numpy reference.
"""

from __future__ import annotations

from .compare import assert_close, tolerances_for

__all__ = ["assert_close", "tolerances_for"]
