"""What ``time_evaluator`` returns: the figures of each repeat, with the board's state and why they may be noisy.

:class:`BenchmarkResult` holds what TVM's does (``results``, ``mean``,
``median``, ``min``, ``max``, ``std``, in seconds, printed the same way) and
what a figure needs to be trusted: the method, the overhead subtracted, the
CPU, the board's state, the noise reasons and the emulator if any. It is
built from the board's reply, which is data from a peer: every field is
checked before it is used.
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence

from ..board.machine import checked_state, finite, noise
from ..protocol.timing import MAX_REPEAT

#: Fields of ``to_dict()``, in order.
FIELDS = (
    "function", "board", "method", "results", "number", "repeat", "mean", "median", "min", "max", "std",
    "overhead_s", "overhead_spread_s", "cpu", "on_cpu", "state", "noise", "emulated",
)  # fmt: skip


def _shares(value: Any) -> List[float]:
    """The on-CPU shares of a reply: finite numbers only, at most one per repeat."""
    if not isinstance(value, list):
        return []
    shares = [finite(item) for item in value[:MAX_REPEAT]]
    return [share for share in shares if share is not None]


class BenchmarkResult:
    """Seconds per run of a function, one figure per repeat (each the mean of ``number`` runs)."""

    def __init__(
        self,
        results: Sequence[float],
        *,
        function: str = "",
        board: Optional[Dict[str, Any]] = None,
        method: str = "board-python",
        number: int = 0,
        overhead_s: float = 0.0,
        overhead_spread_s: float = 0.0,
        cpu: Optional[int] = None,
        state: Optional[Dict[str, Any]] = None,
        noise_reasons: Optional[List[str]] = None,
        on_cpu: Sequence[float] = (),
    ) -> None:
        self.results = tuple(float(result) for result in results)
        if not self.results:
            raise ValueError("a benchmark result needs at least one figure")
        self.function = function
        self.board = dict(board or {})
        self.method = method
        self.number = number
        self.repeat = len(self.results)
        #: Per-call seconds of the timing loop, subtracted from each figure, and how much they varied.
        self.overhead_s = overhead_s
        self.overhead_spread_s = overhead_spread_s
        self.cpu = cpu
        self.state = state
        self.mean = statistics.fmean(self.results)
        self.median = statistics.median(self.results)
        self.min = min(self.results)
        self.max = max(self.results)
        self.std = statistics.pstdev(self.results)
        self.emulated: Optional[str] = (state or {}).get("emulator")
        #: Per repeat (of at least 1 ms), the share of its wall time the board's process ran on a CPU.
        self.on_cpu = [float(share) for share in on_cpu]
        if noise_reasons is None:
            resolved = self.mean > self.overhead_spread_s  # below it, the spread is the method's own
            lowest = min(self.on_cpu) if self.on_cpu else None
            noise_reasons = (
                noise(checked_state(state), self.spread if resolved else None, lowest) if state is not None else []
            )
        self.noise = list(noise_reasons)

    @property
    def spread(self) -> Optional[float]:
        """The coefficient of variation of the repeats (None with one repeat or a mean of zero)."""
        return self.std / self.mean if self.repeat > 1 and self.mean > 0 else None

    @property
    def noisy(self) -> bool:
        return bool(self.noise)

    @classmethod
    def from_reply(cls, meta: Any, function: str, board: Dict[str, Any], repeat: int) -> BenchmarkResult:
        """The result of a TIME reply; ValueError naming what does not make sense in it."""
        if not isinstance(meta, dict):
            raise ValueError("the reply has no metadata")
        results = meta.get("results")
        if not isinstance(results, list) or len(results) != repeat:
            raise ValueError("the reply does not hold %d figures" % repeat)
        figures = [finite(result) for result in results]
        if any(figure is None or figure < 0 for figure in figures):
            raise ValueError("the reply's figures are not non-negative numbers")
        number, overhead, cpu = meta.get("number"), finite(meta.get("overhead_s")), meta.get("cpu")
        if not isinstance(number, int) or isinstance(number, bool) or number < 1 or overhead is None:
            raise ValueError("the reply's number of runs or overhead is missing")
        return cls(
            [figure for figure in figures if figure is not None],
            function=function,
            board=board,
            method=str(meta.get("method", ""))[:40],
            number=number,
            overhead_s=overhead,
            overhead_spread_s=finite(meta.get("overhead_spread_s")) or 0.0,
            cpu=cpu if isinstance(cpu, int) and not isinstance(cpu, bool) else None,
            state=checked_state(meta.get("state")),
            on_cpu=_shares(meta.get("on_cpu")),
        )

    @classmethod
    def from_tvm(cls, result: Any, function: str = "", board: Optional[Dict[str, Any]] = None) -> BenchmarkResult:
        """A TVM ``BenchmarkResult`` (from TVM's own ``time_evaluator``) as one of ours."""
        ours = cls(list(result.results), function=function, board=board, method="tvm", noise_reasons=[])
        ours.noise = noise({}, ours.spread)  # TVM reports no state: the spread alone can tell
        return ours

    def to_dict(self) -> Dict[str, Any]:
        """Every field, JSON-able."""
        values = dict(vars(self), results=list(self.results))
        return {name: values[name] for name in FIELDS}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> BenchmarkResult:
        """The result ``to_dict()`` gave."""
        return cls(
            data["results"],
            function=data.get("function", ""),
            board=data.get("board"),
            method=data.get("method", ""),
            number=data.get("number", 0),
            overhead_s=data.get("overhead_s", 0.0),
            overhead_spread_s=data.get("overhead_spread_s", 0.0),
            cpu=data.get("cpu"),
            state=data.get("state"),
            noise_reasons=data.get("noise", []),
            on_cpu=data.get("on_cpu", ()),
        )

    def __repr__(self) -> str:
        return "BenchmarkResult(min=%r, mean=%r, median=%r, max=%r, std=%r, results=%r)" % (
            self.min, self.mean, self.median, self.max, self.std, self.results,
        )  # fmt: skip

    def __str__(self) -> str:
        lines = [
            "Execution time summary:",
            "%s %s %s %s %s"
            % tuple(
                title.center(12) for title in ("mean (ms)", "median (ms)", "max (ms)", "min (ms)", "std (ms)")
            ),  # fmt: skip
            " ".join(
                ("%.4f" % (value * 1000)).center(12)
                for value in (self.mean, self.median, self.max, self.min, self.std)
            )
            + " " * 15,  # fmt: skip
        ]
        if self.emulated:
            lines.append("emulated: measured under %s; its times are not the hardware's" % self.emulated)
        if self.noise:
            lines.append("noisy: " + "; ".join(self.noise))
        return "\n".join(lines)
