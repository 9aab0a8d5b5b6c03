"""``time_evaluator`` on the board: the timing loop, run next to the function, in the board's Python.

Each run is one ctypes call from a Python loop. What that loop and the
ctypes call cost is measured here, on the same board and in the same
process: the same loop calls a libc function that returns at once
(``labs``) given the function's own prototype and arguments, so converting
each argument is counted too. Its median cost per call, and the fixed cost
of a batch (reading the clock), are subtracted from every figure and reported
as ``overhead_s`` and ``overhead_batch_s``; what the subtraction cannot remove
(the interquartile range of the calibration) is ``overhead_spread_s``. The
process's CPU time is read around each batch, outside it: ``on_cpu`` is the
share of each repeat's wall time the process ran, below 1 when other
processes took the CPU (or the function waited).
A native timing helper per target would avoid the subtraction, but it would
need a toolchain on the board's side of the farm for every target; ctypes
needs nothing a bare board lacks.

The semantics are TVM's: one warm-up run; ``number`` runs per repeat, grown
as TVM grows it until one repeat lasts ``min_repeat_ms``; a cooldown every
``repeats_to_cooldown`` repeats; ``cache_flush_bytes`` copied between two
buffers before each batch, and ``cache_flush_cpu_non_first_arg`` before each
repeat. A flush evicts the loop's own code and data too, so a few calls of the
no-op follow it (they do not touch the arguments' memory). Standard library
only: boards run it.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import statistics
import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Set

from ..errors import ArgumentError
from ..protocol.timing import FLUSH_NON_FIRST_ARG, TimingOptions
from .machine import current_cpu, load, machine_state

#: TVM's growth factor of ``number`` while one repeat is shorter than ``min_repeat_ms``.
GOLDEN_RATIO = 1.618
#: The calibration: batches of calls to the no-op, each lasting about this long.
CALIBRATION_BATCH_NS = 2_000_000
CALIBRATION_BATCHES = 9
#: Batches of one call, for the cost of a batch beside its calls.
SINGLE_BATCHES = 101
#: Calls of the no-op after a cache flush: the loop, ctypes and the interpreter back in the caches, the data not.
REWARM_CALLS = 3
#: Repeats whose timed batch lasted this long report the share of it the process spent on a CPU.
SHARE_BATCH_NS = 1_000_000
#: Bytes written over to evict the caches when the board does not say how large its last level is.
DEFAULT_EVICTION_BYTES = 64 << 20


class FirstArray(NamedTuple):
    """The first argument's memory, read back into the caches after an eviction."""

    address: int
    nbytes: int


def _batch(function: Callable[..., Any], args: Sequence[Any], number: int) -> int:
    """Nanoseconds ``number`` calls of ``function(*args)`` take."""
    clock = time.perf_counter_ns
    start = clock()
    for _ in itertools.repeat(None, number):
        function(*args)
    return clock() - start


def _no_op_like(function: Any) -> Any:
    """A libc function that returns at once, given ``function``'s prototype (its conversions cost the same)."""
    no_op = type(function)(ctypes.cast(ctypes.CDLL(None).labs, ctypes.c_void_p).value)
    if getattr(function, "argtypes", None) is not None:
        no_op.argtypes = function.argtypes
    no_op.restype = function.restype
    return no_op


class Overhead(NamedTuple):
    """What the timing loop itself costs: ``batch_ns + per_call_ns * number`` nanoseconds for ``number`` runs."""

    per_call_ns: float
    batch_ns: float  # reading the clock twice and starting the loop
    spread_ns: float  # the interquartile range of the per-call figure: what subtracting it cannot remove

    def per_run(self, elapsed_ns: int, number: int) -> float:
        """Nanoseconds one of ``number`` runs that took ``elapsed_ns`` took, less the loop's own cost."""
        return (elapsed_ns - self.batch_ns) / number - self.per_call_ns


def calibrate(function: Any, args: Sequence[Any]) -> Overhead:
    """The loop's cost when it calls ``function`` with ``args``, measured on a no-op of the same prototype."""
    return _calibrate_on(_no_op_like(function), args)


def _calibrate_on(no_op: Any, args: Sequence[Any]) -> Overhead:
    number = 1000
    while True:  # size a batch to CALIBRATION_BATCH_NS; bounded: each pass doubles it
        elapsed = _batch(no_op, args, number)
        if elapsed >= CALIBRATION_BATCH_NS / 2:
            break
        number *= 2
    number = max(1, int(number * CALIBRATION_BATCH_NS / max(elapsed, 1)))
    per_call = [_batch(no_op, args, number) / number for _ in range(CALIBRATION_BATCHES)]
    single = statistics.median(_batch(no_op, args, 1) for _ in range(SINGLE_BATCHES))
    quartiles = statistics.quantiles(per_call, n=4)
    median = statistics.median(per_call)
    return Overhead(median, max(single - median, 0.0), quartiles[2] - quartiles[0])


def last_level_cache_bytes(root: str = "/") -> int:
    """The largest CPU cache of cpu0, from sysfs; DEFAULT_EVICTION_BYTES / 2 where it is not exposed."""
    base = os.path.join(root, "sys/devices/system/cpu/cpu0/cache")
    largest = 0
    try:
        names = [name for name in os.listdir(base) if name.startswith("index")]
    except OSError:
        names = []
    for name in names:
        try:
            with open(os.path.join(base, name, "size"), encoding="ascii") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            largest = max(largest, int(digits) * scale)
    return largest or DEFAULT_EVICTION_BYTES // 2


class _Flusher:
    """Evicts data from the CPU caches between runs, outside the timed loop."""

    def __init__(self, options: TimingOptions, first: Optional[FirstArray], rewarm: Callable[[], Any]) -> None:
        self._rewarm = rewarm  # the loop's own path, which the eviction evicts too, without touching the data
        self._copy = None
        if options.cache_flush_bytes:  # TVM copies one buffer of this size over another
            size = options.cache_flush_bytes
            self._copy = (ctypes.create_string_buffer(size), ctypes.create_string_buffer(size), size)
        self._evict = None
        self._first = first
        if options.f_preproc == FLUSH_NON_FIRST_ARG:  # write over twice the last level, then fetch the first
            size = 2 * last_level_cache_bytes()
            self._evict = (ctypes.create_string_buffer(size), size)
            self._scratch = ctypes.create_string_buffer(first.nbytes if first else 0)

    def before_repeat(self) -> None:
        if self._evict is not None:
            buffer, size = self._evict
            ctypes.memset(buffer, 0x5A, size)
            if self._first is not None and self._first.nbytes:
                ctypes.memmove(self._scratch, self._first.address, self._first.nbytes)
            self._rewarm()

    def before_batch(self) -> None:
        if self._copy is not None:
            target, source, size = self._copy
            ctypes.memmove(target, source, size)
            self._rewarm()


class _Pinned:
    """Runs the loop on one CPU, and puts the process's CPUs back afterwards."""

    def __init__(self, cpu: Optional[int]) -> None:
        self.cpu = cpu
        self._before: Set[int] = set()

    def __enter__(self) -> _Pinned:
        if self.cpu is None:
            return self
        self._before = os.sched_getaffinity(0)
        if self.cpu not in self._before:
            raise ArgumentError(
                "pin_cpu=%d is not among the CPUs this session may run on (%s)"
                % (self.cpu, ", ".join(str(cpu) for cpu in sorted(self._before)))
            )
        os.sched_setaffinity(0, {self.cpu})
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._before:
            os.sched_setaffinity(0, self._before)


def _others_running() -> Optional[int]:
    return load()["other_processes_running"]


def time_function(
    function: Any, args: Sequence[Any], options: TimingOptions, first: Optional[FirstArray] = None
) -> Dict[str, Any]:
    """Time ``function(*args)`` as ``options`` say; the reply's metadata (times in seconds)."""
    no_op = _no_op_like(function)
    flusher = _Flusher(options, first, lambda: _batch(no_op, args, REWARM_CALLS))
    with _Pinned(options.pin_cpu):
        function(*args)  # the warm-up run, discarded
        overhead = _calibrate_on(no_op, args)
        results, others, clamped, on_cpu = [], [_others_running()], 0, []
        number = options.number
        for index in range(options.repeat):
            flusher.before_repeat()
            elapsed, zero_times = 0, 0
            while True:
                if elapsed > 0:
                    number = int(max(options.min_repeat_ms / (elapsed / 1e6 / number) + 1, number * GOLDEN_RATIO))
                flusher.before_batch()
                cpu_time = time.process_time_ns()
                elapsed = _batch(function, args, number)
                cpu_time = time.process_time_ns() - cpu_time
                zero_times += elapsed == 0
                if elapsed / 1e6 >= options.min_repeat_ms or zero_times >= options.limit_zero_time_iterations:
                    break
            per_run = overhead.per_run(elapsed, number)
            clamped += per_run < 0
            results.append(max(per_run, 0.0) / 1e9)
            if elapsed >= SHARE_BATCH_NS:
                on_cpu.append(round(cpu_time / elapsed, 3))
            others.append(_others_running())
            if options.cooldown_interval_ms > 0 and index % options.repeats_to_cooldown == 0:
                time.sleep(options.cooldown_interval_ms / 1000)
        cpu = options.pin_cpu if options.pin_cpu is not None else current_cpu()
    state = machine_state(cpu)
    counted = [count for count in others if count is not None]
    if counted:
        state["other_processes_running"] = int(statistics.median(counted))
    return {
        "results": results,
        "number": number,
        "overhead_s": overhead.per_call_ns / 1e9,
        "overhead_batch_s": overhead.batch_ns / 1e9,
        "overhead_spread_s": overhead.spread_ns / 1e9,
        "clamped": clamped,
        "on_cpu": on_cpu,
        "cpu": cpu,
        "state": state,
        "method": "board-python",
    }
