"""Build C sources for the board a test got: the ``build_for`` fixture's work.

The board says what it runs (``system_info()["machine"]``); :mod:`farm.ops.toolchain`
picks the compiler for it (the inventory's ``toolchains:`` first) and keeps the
result in its content-addressed cache, so xdist workers asking for the same
artifact build it once.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Mapping, Optional, Sequence, Union

import pytest

from farm.errors import FarmError
from farm.ops.toolchain import BuildError, CompilerSpec, build_shared, toolchain_for_machine

PathLike = Union[str, "os.PathLike[str]"]


class Builder:
    """``build_for(session, sources, flags=(), name=None, defines=None)`` -> the local path of the library."""

    def __init__(self, overrides: Mapping[str, CompilerSpec], cache_dir: Optional[str] = None) -> None:
        self.overrides = overrides
        self.cache_dir = cache_dir
        # A session's board does not change. Weak keys: an id() could be reused by a later session of another board.
        self._machines: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def machine_of(self, session: Any) -> str:
        """What the board runs (``x86_64``, ``aarch64``, ``armv7l``), asked once per session."""
        known = self._machines.get(session)
        if known is not None:
            return known
        machine = failure = ""
        try:
            machine = str(session.system_info()["machine"])
        except (FarmError, KeyError, AttributeError) as exc:
            failure = "cannot tell what the board runs, to build for it: %s" % exc
        if failure:
            pytest.fail(failure, pytrace=False)  # outside the except: no chained traceback in the report
        self._machines[session] = machine
        return machine

    def __call__(
        self,
        session: Any,
        sources: Sequence[PathLike],
        flags: Sequence[str] = (),
        name: Optional[str] = None,
        defines: Optional[Mapping[str, Optional[str]]] = None,
    ) -> str:
        machine = self.machine_of(session)
        failure = ""
        try:
            toolchain = toolchain_for_machine(machine, self.overrides)
            return build_shared(sources, toolchain, name=name, flags=flags, cache_dir=self.cache_dir, defines=defines)
        except BuildError as exc:
            failure = "building %s for the board (%s): %s" % (
                ", ".join(os.fspath(source) for source in sources),
                machine,
                exc,
            )
        pytest.fail(failure, pytrace=False)  # outside the except: no chained traceback in the report
