"""The version is written once, in ``farm/__init__.py``; the package's metadata takes it from there."""

from __future__ import annotations

import re
from pathlib import Path

import farm

PROJECT = Path(__file__).resolve().parents[3]


def test_the_version_is_written_once() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", farm.__version__), farm.__version__
    pyproject = (PROJECT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "farm.__version__" }' in pyproject
    assert not re.search(r"^version\s*=\s*\"", pyproject, re.MULTILINE), "a second version in pyproject.toml"
