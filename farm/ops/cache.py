"""Where the farm keeps what it downloads and builds on the host (emulator sysroots, built artifacts)."""

from __future__ import annotations

import os

#: Environment variable naming the cache root; else $XDG_CACHE_HOME/pytest-remotedev, else ~/.cache/pytest-remotedev.
CACHE_ENV = "REMOTEDEV_CACHE"


def cache_root() -> str:
    """The cache root directory (not created here)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return os.path.abspath(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pytest-remotedev")


def cache_dir(kind: str) -> str:
    """``ROOT/KIND`` (``emulators``, ``artifacts``), created if missing."""
    path = os.path.join(cache_root(), kind)
    os.makedirs(path, exist_ok=True)
    return path
