"""The ``device_benchmark`` fixture's work: time a function on the test's board and record the figure on the test.

Each figure becomes a :class:`Record`: the test, the benchmark's name, the board's key and name and the whole
:class:`farm.client.timing.BenchmarkResult` as a dict. A compact form goes into the test's ``user_properties``
(``device_benchmark``, for the junit XML); the whole records ride on the test's teardown report
(``report.device_benchmarks``), which pytest-xdist carries to the controller, where the run is summed up
and saved (:mod:`.benchrun`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import pytest

from farm.errors import ArgumentError
from farm.ops.benchruns import Entry
from farm.protocol.timing import timing_options

if TYPE_CHECKING:
    from farm.client.timing import BenchmarkResult
    from farm.ops.regression import Comparison

    from .leases import Leases

#: The user property of each figure in the junit XML.
PROPERTY = "device_benchmark"
#: The attribute of a test's teardown report holding its records (as dicts).
REPORT_ATTRIBUTE = "device_benchmarks"

#: Defaults for figures meant to be compared between runs: 20 samples give the rank test enough of them to tell
#: a 10 % change from noise, and each sample averages at least 10 ms of runs (``number`` grows to reach it), well
#: above the clock's resolution and a scheduler's tick, so that one interruption moves a sample little.
DEFAULT_NUMBER = 10
DEFAULT_REPEAT = 20
DEFAULT_MIN_REPEAT_MS = 10


@dataclass(frozen=True)
class Record:
    """One figure of one test: ``result`` is ``BenchmarkResult.to_dict()``."""

    test: str
    name: str
    key: str
    board: str
    result: Dict[str, Any]
    #: The figure of a first timing that read as a regression, when this one is the timing again (else None).
    first_timing: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def entry(self) -> Entry:
        """The saved runs' form: a test's figures are told apart by their name after the test's node id."""
        return Entry("%s::%s" % (self.test, self.name), self.key, self.board, self.result)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Record:
        first = data.get("first_timing")
        return cls(str(data["test"]), str(data["name"]), str(data["key"]), str(data["board"]), dict(data["result"]),
                   None if first is None else float(first))  # fmt: skip

    @property
    def median(self) -> float:
        return float(self.result["median"])

    @property
    def spread(self) -> float:
        """The repeats' coefficient of variation (std over mean); 0 for a zero mean."""
        mean = float(self.result["mean"])
        return float(self.result["std"]) / mean if mean > 0 else 0.0

    @property
    def emulated(self) -> Optional[str]:
        """The emulator the figure was taken under (``qemu-aarch64``): not the hardware's time."""
        return str(self.result["emulated"]) if self.result.get("emulated") else None

    @property
    def noise(self) -> List[str]:
        return [str(reason) for reason in self.result.get("noise") or ()]

    def property_value(self) -> str:
        """The compact JSON of the junit property: what a reader of the report needs to judge the figure."""
        compact = {
            "test": self.test,
            "name": self.name,
            "key": self.key,
            "board": self.board,
            "median": self.median,
            "std": float(self.result["std"]),
            "noisy": bool(self.noise),
            "noise": self.noise,
            "emulated": self.emulated,
            "samples": list(self.result["results"]),
        }
        return json.dumps(compact, separators=(",", ":"))


class DeviceBenchmark:
    """``device_benchmark(function, *args, name=None, number=10, repeat=20, min_repeat_ms=10, dev=None, **options)``.

    ``function`` is a :class:`farm.RemoteFunction` of a session the test holds, timed on its board by
    ``function.time_evaluator(...)`` (``options``: its other arguments, such as ``pin_cpu`` or
    ``cache_flush_bytes``); or, for a TVM board, a pair ``(module, "function name")`` of a module loaded in
    the TVM session, timed by TVM's own ``module.time_evaluator`` on ``dev`` (default: the device of the
    first argument that has one). ``name`` tells a test's figures apart (default: the function's name).
    Options are checked as ``time_evaluator`` checks them, before anything runs.
    """

    def __init__(
        self,
        item: pytest.Item,
        leases: Leases,
        test_key: Callable[[], str],
        compare: Callable[[Record], Optional[Comparison]],
    ) -> None:
        self.item = item
        self.leases = leases
        self.test_key = test_key
        self.compare = compare
        self.records: List[Record] = []
        self.comparisons: List[Tuple[Record, Comparison]] = []

    def __call__(
        self,
        function: Any,
        *args: Any,
        name: Optional[str] = None,
        number: int = DEFAULT_NUMBER,
        repeat: int = DEFAULT_REPEAT,
        min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS,
        dev: Any = None,
        **options: Any,
    ) -> BenchmarkResult:
        options.update(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
        timing_options(options)  # ArgumentError naming a bad one, before anything runs
        if isinstance(function, tuple):
            label = self._label(name, function[1] if len(function) == 2 else "")
        else:
            label = self._label(name, self._farm_function(function).name)
        result, record, comparison = self._measure(function, args, label, dev, options)
        if comparison is not None and comparison.regression:  # a regression is timed again before it counts
            first = comparison.candidate
            result, record, _ = self._measure(function, args, label, dev, options)
            record = replace(record, first_timing=first)
            comparison = self.compare(record)
        self.records.append(record)
        self.item.user_properties.append((PROPERTY, record.property_value()))
        if comparison is not None:
            self.comparisons.append((record, comparison))
        return result

    def _measure(
        self, function: Any, args: Tuple[Any, ...], label: str, dev: Any, options: Dict[str, Any]
    ) -> Tuple[BenchmarkResult, Record, Optional[Comparison]]:
        """Time ``function`` once; its result, its record and the record compared with the baseline."""
        if isinstance(function, tuple):
            result = self._time_tvm(function, args, dev, options)
        else:
            result = function.time_evaluator(dev, **options)(*args)
        board = result.board or {}
        record = Record(
            self.item.nodeid,
            label,
            str(board.get("key") or self.test_key()),
            str(board.get("name") or board.get("address") or "?"),
            result.to_dict(),
        )
        return result, record, self.compare(record)

    def _label(self, name: Optional[str], default: str) -> str:
        label = default if name is None else name
        if not isinstance(label, str) or not label.strip():
            raise ArgumentError("device_benchmark: name must be a non-empty string, got %r" % (label,))
        if any(record.name == label for record in self.records):
            raise ArgumentError(
                "device_benchmark: this test already has a figure named %r; give each call its own name=" % label
            )
        return label

    @staticmethod
    def _farm_function(function: Any) -> Any:
        from farm.client.session import RemoteFunction  # the client (numpy) loads in the process that times

        if not isinstance(function, RemoteFunction):
            raise ArgumentError(
                "device_benchmark: time a farm.RemoteFunction (module.get_function(name, signature)) or, on a TVM "
                "board, a (module, 'function name') pair; got %s" % type(function).__name__
            )
        return function

    def _time_tvm(
        self, pair: Tuple[Any, ...], args: Tuple[Any, ...], dev: Any, options: Dict[str, Any]
    ) -> BenchmarkResult:
        """TVM's own ``time_evaluator`` on the TVM board that holds ``module``; the result wrapped as ours."""
        from farm.client.timing import BenchmarkResult

        if len(pair) != 2 or not isinstance(pair[1], str) or not hasattr(pair[0], "time_evaluator"):
            raise ArgumentError(
                "device_benchmark: a TVM function is a (module, 'function name') pair of a module loaded in a TVM "
                "session; got %r" % (pair,)
            )
        module, function_name = pair
        if dev is None:
            dev = next((arg.device for arg in args if hasattr(arg, "device")), None)
        if dev is None:
            raise ArgumentError("device_benchmark: pass dev= (the TVM session's device) when no argument is a tensor")
        if options.pop("pin_cpu", None) is not None:
            raise ArgumentError("device_benchmark: pin_cpu is not an option of TVM's time_evaluator")
        evaluator = module.time_evaluator(function_name, dev, **options)
        return BenchmarkResult.from_tvm(evaluator(*args), board=self._tvm_board(dev), function=function_name)

    def _tvm_board(self, dev: Any) -> Dict[str, Any]:
        """The TVM board ``dev`` belongs to, among the boards the test holds: key, name, address."""
        from farm.client.session import RemoteSession

        held = [lease for lease in self.leases.leases if not isinstance(lease.session, RemoteSession)]
        # A remote TVM device's type carries its session's table index (TVM's RPC_SESS_MASK encoding).
        index = int(getattr(dev, "dlpack_device_type", lambda: 0)()) // 128 - 1
        matching = [lease for lease in held if getattr(lease.session, "_tbl_index", None) == index] or held
        if len(matching) != 1:
            return {"key": self.test_key(), "name": None, "address": None}
        lease = matching[0]
        return {"key": lease.key, "name": lease.board_id, "address": lease.address}
