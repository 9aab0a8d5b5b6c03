"""Saved benchmark runs: one JSON file per run, written into a storage directory and read back by name.

A run file holds::

    {"format": 1, "name": "main", "created": "2026-12-07T08:30:00+00:00",
     "commit": "88ff9f5...", "dirty": false, "machine": "Linux-6.8-x86_64-with-glibc2.39",
     "results": [{"test": "tests/test_k.py::test_add", "key": "local", "board": "local-0",
                  "result": {...BenchmarkResult.to_dict()...}}, ...]}

Saving a name again replaces that run. Results are matched between runs by (test, key).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..board.machine import checked_state, contention, finite
from ..errors import FarmError

logger = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_STORAGE = os.path.join(".benchmarks", "device")
SUFFIX = ".json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

PathLike = Union[str, "os.PathLike[str]"]


class BenchRunError(FarmError, ValueError):
    """A saved run cannot be written, found or read; the message names the file and the problem."""


@dataclass(frozen=True)
class Entry:
    """One benchmark result of a run: the test's node id, the board key and board it ran on, and
    ``result``, a ``BenchmarkResult.to_dict()``."""

    test: str
    key: str
    board: str
    result: Dict[str, Any]

    def __post_init__(self) -> None:
        samples = self.result.get("results") or []
        if not isinstance(samples, (list, tuple)) or not all(isinstance(value, (int, float)) for value in samples):
            raise ValueError("the results of %s on %s are not a list of seconds" % (self.test, self.key))

    @property
    def ident(self) -> Tuple[str, str]:
        """(test, key): what a result is matched by between two runs."""
        return (self.test, self.key)

    @property
    def noisy(self) -> bool:
        """Whether the result was flagged noisy (its ``noise`` names the reasons)."""
        return bool(self.result.get("noise"))

    @property
    def samples(self) -> List[float]:
        """The seconds of each repeat (the result's ``results``)."""
        return [float(value) for value in self.result.get("results") or ()]

    @property
    def on_cpu(self) -> Optional[List[float]]:
        """The share of each repeat's wall time the timing loop ran on a CPU (its ``on_cpu``); None unless
        there is one positive finite share per repeat (a TVM result has none, short repeats are not shared)."""
        reported = self.result.get("on_cpu")
        shares = [finite(value) for value in reported] if isinstance(reported, list) else []
        if not shares or len(shares) != len(self.samples) or not all(share and share > 0 for share in shares):
            return None
        return [float(share) for share in shares if share is not None]

    @property
    def contention(self) -> List[str]:
        """Why the result's board state says other processes competed for its CPUs (empty: it does not)."""
        return contention(checked_state(self.result.get("state")))

    @classmethod
    def from_result(cls, test: str, result: Any, key: Optional[str] = None, board: Optional[str] = None) -> Entry:
        """An entry for ``test`` from a ``BenchmarkResult`` (or its ``to_dict()``); the key and the board's
        name default to those in the result's ``board``."""
        data = dict(result if isinstance(result, Mapping) else result.to_dict())
        data["results"] = list(data.get("results") or [])  # as it reads back from JSON
        about = data.get("board") or {}
        return cls(test, str(key or about.get("key") or ""), str(board or about.get("name") or ""), data)

    def to_dict(self) -> Dict[str, Any]:
        return {"test": self.test, "key": self.key, "board": self.board, "result": self.result}


@dataclass(frozen=True)
class Run:
    """A saved run: its name, when and where it was taken, and its entries. ``path`` is the file it was read
    from (None before it is saved)."""

    name: str
    created: str
    commit: Optional[str]
    dirty: bool
    machine: str
    entries: List[Entry] = field(default_factory=list)
    path: Optional[Path] = None

    def by_ident(self) -> Dict[Tuple[str, str], Entry]:
        """The entries by (test, key); a later entry of the same pair replaces an earlier one."""
        return {entry.ident: entry for entry in self.entries}

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "created": self.created,
            "commit": self.commit,
            "dirty": self.dirty,
            "machine": self.machine,
            "results": [entry.to_dict() for entry in self.entries],
        }

    @classmethod
    def from_dict(cls, data: Any, path: Optional[Path] = None) -> Run:
        """A run from a decoded file; raises BenchRunError naming ``path`` when the data is not a run."""
        where = str(path) if path is not None else "the run"
        if not isinstance(data, dict):
            raise BenchRunError("%s: not a saved benchmark run (a JSON object is expected)" % where)
        if data.get("format") != FORMAT:
            raise BenchRunError(
                "%s: format %r of saved runs is not supported (this version reads format %d)"
                % (where, data.get("format"), FORMAT)
            )
        try:
            entries = [
                Entry(str(e["test"]), str(e["key"]), str(e["board"]), dict(e["result"])) for e in data["results"]
            ]
            return cls(str(data["name"]), str(data["created"]), data.get("commit"), bool(data.get("dirty")),
                       str(data.get("machine", "")), entries, path)  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchRunError(
                "%s: a saved benchmark run with a missing or malformed field (%s)" % (where, exc)
            ) from None


def git_commit(cwd: Optional[PathLike] = None) -> Tuple[Optional[str], bool]:
    """(HEAD's commit, whether the checkout has uncommitted changes) in ``cwd``; (None, False) outside a git
    checkout or without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None, False
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("no git commit for the run: %s", exc)
        return None, False
    return head.stdout.strip(), bool(status.stdout.strip())


def new_run(name: str, entries: Iterable[Entry], checkout: Optional[PathLike] = None) -> Run:
    """A run named ``name`` of ``entries``, stamped with the time, the machine and the git commit of
    ``checkout`` (default: the current directory)."""
    check_name(name)
    commit, dirty = git_commit(checkout)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Run(name, created, commit, dirty, platform.platform(), list(entries))


def check_name(name: str) -> str:
    """``name`` if it can name a run file (letters, digits, ``._+-``, not starting with a dot); else BenchRunError."""
    if not _NAME.match(name):
        raise BenchRunError("%r cannot name a saved run: use letters, digits and . _ + -" % name)
    return name


def save_run(
    storage: Optional[PathLike], name: str, entries: Iterable[Entry], checkout: Optional[PathLike] = None
) -> Path:
    """Write a run of ``entries`` as ``STORAGE/NAME.json`` (storage None: ``.benchmarks/device``; relative
    paths from the current directory), replacing a run saved under that name before; returns the file's
    path. The file appears whole or not at all. The commit recorded is ``checkout``'s (see new_run)."""
    return write_run(storage or DEFAULT_STORAGE, new_run(name, entries, checkout))


def write_run(directory: PathLike, run: Run) -> Path:
    """Write ``run`` as ``DIRECTORY/NAME.json`` atomically (a temporary file renamed over it)."""
    directory = Path(directory)
    path = directory / (check_name(run.name) + SUFFIX)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / (".%s.%s.tmp" % (run.name, uuid.uuid4().hex))
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to any file
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(run.to_dict(), stream, indent=1, sort_keys=True)
                stream.write("\n")
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except (OSError, TypeError, ValueError) as exc:  # ValueError, TypeError: a result that is not JSON-able
        raise BenchRunError("%s: cannot save the run: %s" % (path, exc)) from exc
    logger.info("saved benchmark run %r (%d results) in %s", run.name, len(run.entries), path)
    return path


def find_run(storage: Optional[PathLike] = None, name: Optional[str] = None) -> Path:
    """The file of run ``name``: ``STORAGE/NAME.json``, ``STORAGE/NAME``, or ``NAME`` as a path. Without a
    name, the latest run in storage (the most recently written file). BenchRunError when there is none."""
    directory = Path(storage or DEFAULT_STORAGE)
    if name is None:
        runs = _runs_in(directory)
        if not runs:
            raise BenchRunError("%s: no saved benchmark runs" % directory)
        return max(runs, key=lambda path: (path.stat().st_mtime_ns, path.name))
    for candidate in (directory / (name + SUFFIX), directory / name, Path(name)):
        if candidate.is_file():
            return candidate
    known = ", ".join(path.name[: -len(SUFFIX)] for path in _runs_in(directory)) or "none"
    raise BenchRunError("no saved benchmark run %r (in %s: %s)" % (name, directory, known))


def load_run(storage: Optional[PathLike] = None, name: Optional[str] = None) -> Run:
    """Read run ``name`` (see find_run; the latest when None). BenchRunError naming the file when it is
    missing, is not JSON, or is not a run of a format this version reads."""
    return read_run(find_run(storage, name))


def read_run(path: PathLike) -> Run:
    """Read the run file ``path``; BenchRunError naming it when it cannot be read or is not a run."""
    path = Path(path)
    try:
        with open(path) as stream:
            data = json.load(stream)
    except OSError as exc:
        raise BenchRunError("%s: cannot read the saved run: %s" % (path, exc.strerror or exc)) from None
    except ValueError as exc:
        raise BenchRunError("%s: not JSON (%s)" % (path, exc)) from None
    return Run.from_dict(data, path)


def _runs_in(directory: Path) -> List[Path]:
    try:
        return sorted(path for path in directory.glob("*" + SUFFIX) if path.is_file())
    except OSError:
        return []


def format_seconds(seconds: Optional[float]) -> str:
    """``seconds`` with a unit that keeps it readable (``1.23 ms``); ``-`` for None."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return "%.3g %s" % (seconds / scale, unit)
    return "%.3g ns" % (seconds / 1e-9)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under a header, in columns padded to their widest cell."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines) + "\n"


def format_run(run: Run) -> str:
    """A saved run as text: where it came from, then a table of test, key, board, median, spread (the repeats'
    coefficient of variation), repeats and the noisy flag with its reasons."""
    commit = (run.commit or "no commit")[:12] + (" (with uncommitted changes)" if run.dirty else "")
    heading = "run %s: %s, %s, on %s\n" % (run.name, run.created, commit, run.machine or "an unknown machine")
    header = ("test", "key", "board", "median", "spread", "repeats", "noisy")
    rows = []
    for entry in run.entries:
        samples = entry.samples
        median = statistics.median(samples) if samples else None
        spread = _spread(entry)
        noise = entry.result.get("noise") or []
        rows.append((entry.test, entry.key, entry.board, format_seconds(median),
                     "-" if spread is None else "%.1f%%" % (100 * spread), len(samples),
                     "yes: " + "; ".join(noise) if noise else "no"))  # fmt: skip
    return heading + text_table(header, rows)


def _spread(entry: Entry) -> Optional[float]:
    """The coefficient of variation of the repeats: the result's std over its mean (as TVM's, the population
    standard deviation), None for fewer than two repeats or a zero mean."""
    samples = entry.samples
    if len(samples) < 2:
        return None
    mean = entry.result.get("mean", statistics.fmean(samples))
    std = entry.result.get("std", statistics.pstdev(samples))
    return float(std) / mean if mean else None
