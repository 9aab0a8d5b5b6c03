"""The regression decision between a baseline run and a candidate: pure functions, no I/O.

A result is a regression only when all hold:

* its figure (the median, mean or min of the repeats, per ``--device-benchmark-fail``) got worse than the
  baseline's beyond the threshold;
* a one-sided Mann-Whitney U test of the repeats says the candidate is slower with p < ``ALPHA`` (0.01);
* the slowdown is beyond the noise: the candidate's fastest repeat is worse than the baseline's fastest beyond
  the threshold (a change of the code slows every repeat; other work on the board slows some), and when either
  run is flagged noisy, worse than the baseline's 90 % quantile too (a busy board slows whole runs), and, when
  the candidate's board was busy, its loop's time on a CPU is worse too (other processes take wall time only).
  Otherwise the verdict is NOISY, which does not fail.

Why Mann-Whitney U: it compares ranks, so the long right tail of timings (a preempted repeat) weighs no
more than any other slow repeat; it assumes no distribution; its p-value is exact for the few repeats a
benchmark usually has (computed without randomness, so the same files always give the same verdict),
where a bootstrap of the median of five repeats can only ever pick among five values. With fewer than
``MIN_SAMPLES`` (5) repeats on a side the smallest p-value the test can give is above 0.01, so such a
result is reported as "not enough samples" rather than decided.
"""

from __future__ import annotations

import functools
import math
import re
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..board.machine import ON_CPU
from ..errors import FarmError
from .benchruns import Entry, Run, format_seconds, text_table

ALPHA = 0.01
MIN_SAMPLES = 5
#: Above this many pairs (or with ties) the p-value comes from the normal approximation.
EXACT_PAIRS = 2500
#: When either run is flagged noisy, the candidate's fastest repeat must be worse than this quantile of the
#: baseline's repeats beyond the threshold.
NOISY_QUANTILE = 0.9

REGRESSION = "regression"
IMPROVEMENT = "improvement"
SAME = "same"
TOO_FEW = "not enough samples"
NOISY = "noisy"  # slower, but not beyond the noise: not a regression
NEW = "new"  # in the candidate, missing in the baseline
GONE = "gone"  # in the baseline, missing in the candidate

STATISTICS: Dict[str, Callable[[Sequence[float]], float]] = {
    "median": statistics.median,
    "mean": statistics.fmean,
    "min": min,
}
_SPEC = re.compile(r"^\s*(\w+)\s*:\s*([0-9.eE+-]+)\s*(%?)\s*$")


class FailSpecError(FarmError, ValueError):
    """A ``--device-benchmark-fail`` value that does not parse."""


@dataclass(frozen=True)
class FailSpec:
    """What counts as worse: ``statistic`` (median, mean or min) grew by more than ``threshold``, a fraction
    of the baseline's when ``relative`` (``median:10%``), else seconds (``median:0.002``)."""

    statistic: str
    threshold: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> FailSpec:
        """``STATISTIC:PERCENT%`` or ``STATISTIC:SECONDS``; FailSpecError saying what is wrong otherwise."""
        match = _SPEC.match(text)
        if not match:
            raise FailSpecError("%r is not a benchmark failure threshold: use e.g. median:10%% or median:0.002" % text)
        name, number, percent = match.groups()
        statistic = name.lower()
        if statistic not in STATISTICS:
            raise FailSpecError("%r: unknown statistic %r (use %s)" % (text, name, ", ".join(STATISTICS)))
        try:
            threshold = float(number)
        except ValueError:
            raise FailSpecError("%r: %r is not a number" % (text, number)) from None
        if not math.isfinite(threshold) or threshold < 0:
            raise FailSpecError("%r: the threshold must be a finite number of 0 or more" % text)
        return cls(statistic, threshold / 100 if percent else threshold, bool(percent))

    def __str__(self) -> str:
        if self.relative:
            return "%s:%g%%" % (self.statistic, 100 * self.threshold)
        return "%s:%g" % (self.statistic, self.threshold)

    def figure(self, samples: Sequence[float]) -> float:
        """This spec's statistic of ``samples``."""
        return float(STATISTICS[self.statistic](samples))

    def worse(self, baseline: float, candidate: float) -> bool:
        """Whether ``candidate`` is worse than ``baseline`` beyond the threshold."""
        limit = baseline * (1 + self.threshold) if self.relative else baseline + self.threshold
        return candidate > limit

    def better(self, baseline: float, candidate: float) -> bool:
        """Whether ``candidate`` is better than ``baseline`` beyond the threshold."""
        limit = baseline * (1 - self.threshold) if self.relative else baseline - self.threshold
        return candidate < limit


#: The verdicts' threshold when no ``--device-benchmark-fail`` is given (nothing fails then).
DEFAULT_SPEC = FailSpec("median", 0.05, True)

SpecLike = Union[FailSpec, str, None]


def parse_fail(text: str) -> FailSpec:
    """The FailSpec of a ``--device-benchmark-fail`` value (see FailSpec.parse)."""
    return FailSpec.parse(text)


@dataclass(frozen=True)
class Comparison:
    """One result compared with its baseline: the figures (seconds, None where a side is missing), the change
    as a fraction of the baseline's, the one-sided p-value in the direction of the change, the verdict
    (REGRESSION, IMPROVEMENT, SAME, NOISY, TOO_FEW, NEW or GONE), the repeats on each side, and a note: for
    NOISY why the slowdown may be noise, for a REGRESSION on a noisy run which run was noisy and why."""

    test: str
    key: str
    board: str
    spec: FailSpec
    baseline: Optional[float]
    candidate: Optional[float]
    change: Optional[float]
    p_value: Optional[float]
    verdict: str
    samples: Tuple[int, int]
    alpha: float = ALPHA
    note: str = ""

    @property
    def regression(self) -> bool:
        return self.verdict == REGRESSION

    def message(self) -> str:
        """One line saying what was compared and why the verdict."""
        statistic = self.spec.statistic
        if self.verdict == NEW:
            return "%s %s: no baseline for this test and key" % (statistic, format_seconds(self.candidate))
        if self.verdict == GONE:
            return "not run; the baseline's %s was %s" % (statistic, format_seconds(self.baseline))
        before, after = format_seconds(self.baseline), format_seconds(self.candidate)
        figures = "%s %s against %s in the baseline (%s" % (statistic, after, before, _percent(self.change))
        if self.verdict == TOO_FEW:
            return "%s): not enough samples, %d and %d repeats where %d a side are needed" % (
                figures, self.samples[0], self.samples[1], MIN_SAMPLES)  # fmt: skip
        why = {
            REGRESSION: "a regression: worse beyond %s and p < %g",
            IMPROVEMENT: "an improvement: better beyond %s and p < %g",
            NOISY: "slower beyond %s with p < %g, but not failed as noise: ",
        }.get(self.verdict, "the same: within %s, or p >= %g")
        why = why % (self.spec, self.alpha) + self.note
        return "%s, Mann-Whitney p=%s): %s" % (figures, _p(self.p_value), why)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able dict (the spec as its text), read back by from_dict."""
        data = asdict(self)
        data["spec"], data["samples"] = str(self.spec), list(self.samples)
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Comparison:
        fields = dict(data, spec=FailSpec.parse(data["spec"]), samples=tuple(data["samples"]))
        return cls(**fields)


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """The one-sided p-value of the Mann-Whitney U test that ``y`` tends to be greater than ``x``: exact when
    there are no ties and at most EXACT_PAIRS pairs, else the normal approximation with the tie correction
    and a continuity correction. 1.0 when either side is empty."""
    n1, n2 = len(x), len(y)
    if not n1 or not n2:
        return 1.0
    ranks, ties = _ranks(list(x) + list(y))
    u = sum(ranks[n1:]) - n2 * (n2 + 1) / 2  # pairs (x_i, y_j) with y_j > x_i, ties counting a half
    if not ties and n1 * n2 <= EXACT_PAIRS:
        counts = _u_counts(n1, n2)
        return sum(counts[int(u) :]) / sum(counts)
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - sum(t**3 - t for t in ties) / (n * (n - 1)))
    if variance <= 0:
        return 1.0  # every value equal: no evidence either way
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2))


def compare_entries(
    baseline: Optional[Entry], candidate: Entry, spec: SpecLike = None, alpha: float = ALPHA
) -> Comparison:
    """Compare one candidate result with its baseline (None: NEW)."""
    spec = _spec(spec)
    after = candidate.samples
    if baseline is None:
        figure = spec.figure(after) if after else None
        return Comparison(candidate.test, candidate.key, candidate.board, spec, None, figure, None, None, NEW,
                          (0, len(after)))  # fmt: skip
    return _decide(baseline, candidate, spec, alpha)


def compare(
    baseline: Union[Run, Iterable[Entry]],
    candidate: Union[Run, Iterable[Entry]],
    spec: SpecLike = None,
    *,
    include_gone: bool = False,
    alpha: float = ALPHA,
) -> List[Comparison]:
    """Compare each candidate result with the baseline's of the same (test, key), in the candidate's order;
    with ``include_gone``, the baseline's results the candidate lacks follow as GONE."""
    before = _by_ident(baseline)
    after = _by_ident(candidate)
    spec = _spec(spec)
    comparisons = [compare_entries(before.get(ident), entry, spec, alpha) for ident, entry in after.items()]
    if include_gone:
        for ident, entry in before.items():
            if ident not in after:
                figure = spec.figure(entry.samples) if entry.samples else None
                comparisons.append(Comparison(entry.test, entry.key, entry.board, spec, figure, None, None, None,
                                              GONE, (len(entry.samples), 0)))  # fmt: skip
    return comparisons


def format_comparison(comparisons: Sequence[Comparison]) -> str:
    """The comparisons as a text table (test, key, board, both figures, the change, p and the verdict), then a
    line saying why for each regression, each noisy verdict and each comparison with a note."""
    statistic = comparisons[0].spec.statistic if comparisons else DEFAULT_SPEC.statistic
    header = ("test", "key", "board", "baseline " + statistic, statistic, "change", "p", "verdict")
    rows = [
        (c.test, c.key, c.board, format_seconds(c.baseline), format_seconds(c.candidate), _percent(c.change),
         _p(c.p_value), c.verdict.upper() if c.regression else c.verdict)
        for c in comparisons
    ]  # fmt: skip
    reasons = ["%s [%s]: %s\n" % (c.test, c.key, c.message()) for c in comparisons
               if c.verdict in (REGRESSION, NOISY) or c.note]  # fmt: skip
    return text_table(header, rows) + "".join(reasons)


def regressions(comparisons: Iterable[Comparison]) -> List[Comparison]:
    """The comparisons whose verdict is REGRESSION."""
    return [comparison for comparison in comparisons if comparison.regression]


def _decide(baseline: Entry, candidate: Entry, spec: FailSpec, alpha: float) -> Comparison:
    before, after = baseline.samples, candidate.samples
    old = spec.figure(before) if before else None
    new = spec.figure(after) if after else None
    change = (new - old) / old if old and new is not None else None
    counts = (len(before), len(after))
    verdict, p, note = TOO_FEW, None, ""
    if min(counts) >= MIN_SAMPLES and old is not None and new is not None:
        slower = new >= old
        p = mann_whitney_greater(before, after) if slower else mann_whitney_greater(after, before)
        verdict = SAME
        if p < alpha and slower and spec.worse(old, new):
            doubt = _within_noise(baseline, candidate, spec)
            verdict, note = (NOISY, doubt) if doubt else (REGRESSION, _noisy_run(baseline, candidate))
        elif p < alpha and not slower and spec.better(old, new):
            verdict = IMPROVEMENT
    return Comparison(candidate.test, candidate.key, candidate.board, spec, old, new, change, p, verdict, counts,
                      alpha, note)  # fmt: skip


def _within_noise(baseline: Entry, candidate: Entry, spec: FailSpec) -> str:
    """Why a significant slowdown beyond the threshold may still be the noise of the runs ("" if it cannot be):
    a change of the code slows every repeat, its fastest too, while other work on the board slows some
    repeats, or whole runs when the board is busy, which the noise flags then tell."""
    fastest = min(candidate.samples)
    if not spec.worse(min(baseline.samples), fastest):
        return "the fastest repeat is not slower beyond %s: only some repeats are" % spec
    noisy = [name for name, entry in (("baseline", baseline), ("candidate", candidate)) if entry.noisy]
    if noisy and not spec.worse(quantile(baseline.samples, NOISY_QUANTILE), fastest):
        runs = "the %s run is" % noisy[0] if len(noisy) == 1 else "both runs are"
        return "%s noisy and the fastest repeat is within %s of the baseline's %d%% quantile" % (
            runs, spec, round(100 * NOISY_QUANTILE))  # fmt: skip
    return _cpu_taken(baseline, candidate, spec)


def _cpu_taken(baseline: Entry, candidate: Entry, spec: FailSpec) -> str:
    """Why a slowdown may be other processes taking the board's CPU ("" if it cannot be): the function kept
    the CPU through a repeat of the baseline (it does not wait), the candidate's board says other processes
    competed for its CPUs, and the loop's time on a CPU (each repeat's seconds times its share on a CPU) is not
    worse beyond the threshold. A change of the code costs time on the CPU; a busy board costs wall time only."""
    before, after = baseline.on_cpu, candidate.on_cpu
    busy = candidate.contention
    if before is None or after is None or not busy or max(before) < ON_CPU:
        return ""
    old = spec.figure([seconds * share for seconds, share in zip(baseline.samples, before)])
    new = spec.figure([seconds * share for seconds, share in zip(candidate.samples, after)])
    if spec.worse(old, new):
        return ""
    return (
        "the candidate's loop was on a CPU %.0f%% of the time (the median of its repeats; the baseline's %.0f%%) "
        "while %s, and its %s time on a CPU, %s, is within %s of the baseline's %s: other processes took the CPU"
        % (100 * statistics.median(after), 100 * statistics.median(before), busy[0], spec.statistic,
           format_seconds(new), spec, format_seconds(old))
    )  # fmt: skip


def _noisy_run(baseline: Entry, candidate: Entry) -> str:
    """For a regression: which run was noisy and why ("" if neither was)."""
    side, entry = ("candidate", candidate) if candidate.noisy else ("baseline", baseline)
    if not entry.noisy:
        return ""
    return "; the %s run was noisy (%s): time it again to confirm" % (side, "; ".join(entry.result["noise"]))


def quantile(samples: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``samples``, rounded down to a sample: below 1 it is never the largest
    sample, so one outlier does not move it."""
    ordered = sorted(samples)
    return ordered[int(fraction * (len(ordered) - 1))]


def _ranks(values: List[float]) -> Tuple[List[float], List[int]]:
    """Each value's rank (1-based; tied values share their mean rank) and the sizes of the groups of ties."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = []
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for index in order[start : end + 1]:
            ranks[index] = (start + end) / 2 + 1
        if end > start:
            ties.append(end - start + 1)
        start = end + 1
    return ranks, ties


@functools.lru_cache(maxsize=64)
def _u_counts(n1: int, n2: int) -> Tuple[int, ...]:
    """How many of the orderings of n1 + n2 distinct values give each U (0 to n1*n2): the coefficients of the
    Gaussian binomial [n1+n2 choose n1], built factor by factor so each step divides exactly."""
    counts = [1] + [0] * (n1 * n2)
    for i in range(1, n1 + 1):
        shift = n2 + i
        for k in range(len(counts) - 1, shift - 1, -1):  # times (1 - q^(n2+i))
            counts[k] -= counts[k - shift]
        for k in range(i, len(counts)):  # divided by (1 - q^i)
            counts[k] += counts[k - i]
    return tuple(counts)


def _by_ident(entries: Union[Run, Iterable[Entry]]) -> Dict[Tuple[str, str], Entry]:
    if isinstance(entries, Run):
        return entries.by_ident()
    return {entry.ident: entry for entry in entries}


def _spec(spec: SpecLike) -> FailSpec:
    if spec is None:
        return DEFAULT_SPEC
    return spec if isinstance(spec, FailSpec) else FailSpec.parse(spec)


def _percent(change: Optional[float]) -> str:
    return "-" if change is None else "%+.1f%%" % (100 * change)


def _p(p: Optional[float]) -> str:
    return "-" if p is None else "%.3g" % p
