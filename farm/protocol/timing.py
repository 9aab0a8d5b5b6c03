"""The options of a TIME request (``time_evaluator``), checked the same way on the host and on the board.

A TIME request carries a CALL payload (:mod:`farm.protocol.calls`) and these
options as its metadata. Names, defaults and meaning are TVM's
``Module.time_evaluator``'s, plus ``pin_cpu``. The board checks them again: a
client is not trusted to have done so.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

from ..errors import ArgumentError

#: TVM's ``f_preproc`` that evicts every argument but the first (the output) from the CPU caches.
FLUSH_NON_FIRST_ARG = "cache_flush_cpu_non_first_arg"
PREPROCESSORS = ("", FLUSH_NON_FIRST_ARG)
#: The most of ``number``, ``min_repeat_ms`` and the other counts: TVM holds them in a C ``int``.
MAX_COUNT = (1 << 31) - 1
#: The most repeats one request may ask for: their figures travel back in the reply's metadata.
MAX_REPEAT = 100_000


class TimingOptions(NamedTuple):
    """How to time a function: TVM's ``time_evaluator`` arguments and the CPU to pin the loop to."""

    number: int = 10
    repeat: int = 1
    min_repeat_ms: int = 0
    limit_zero_time_iterations: int = 100
    cooldown_interval_ms: int = 0
    repeats_to_cooldown: int = 1
    cache_flush_bytes: int = 0
    f_preproc: str = ""
    pin_cpu: Optional[int] = None

    def to_meta(self) -> Dict[str, Any]:
        return self._asdict()


_LOWEST = {
    "number": 1,
    "repeat": 1,
    "min_repeat_ms": 0,
    "limit_zero_time_iterations": 0,
    "cooldown_interval_ms": 0,
    "repeats_to_cooldown": 1,
    "cache_flush_bytes": 0,
}


def _count(name: str, value: Any, highest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError("time_evaluator: %s must be an integer, not %s" % (name, repr(value)[:100]))
    lowest = _LOWEST[name]
    if not lowest <= value <= highest:
        raise ArgumentError("time_evaluator: %s is %d; it must be between %d and %d" % (name, value, lowest, highest))
    return value


def timing_options(meta: Dict[str, Any], max_flush_bytes: int = MAX_COUNT) -> TimingOptions:
    """Checked options from ``meta`` (missing ones take TVM's defaults); ArgumentError naming a bad one."""
    unknown = sorted(set(meta) - set(TimingOptions._fields))
    if unknown:
        raise ArgumentError("time_evaluator: unknown option %r" % str(unknown[0])[:100])
    defaults = TimingOptions()
    values: Dict[str, Any] = {}
    for name in _LOWEST:
        highest = {"repeat": MAX_REPEAT, "cache_flush_bytes": max_flush_bytes}.get(name, MAX_COUNT)
        values[name] = _count(name, meta.get(name, getattr(defaults, name)), highest)
    preproc = meta.get("f_preproc", "")
    if preproc not in PREPROCESSORS:
        raise ArgumentError(
            "time_evaluator: f_preproc %s is not one this board offers (%r, or '' for none)"
            % (repr(preproc)[:100], FLUSH_NON_FIRST_ARG)
        )
    pin_cpu = meta.get("pin_cpu")
    if pin_cpu is not None and (isinstance(pin_cpu, bool) or not isinstance(pin_cpu, int) or pin_cpu < 0):
        raise ArgumentError(
            "time_evaluator: pin_cpu must be a CPU number (0 or more) or None, not %s" % repr(pin_cpu)[:100]
        )
    return TimingOptions(f_preproc=preproc, pin_cpu=pin_cpu, **values)
