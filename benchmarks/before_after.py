"""Before and after: the headline figures of this checkout and of an older one, side by side in one run.

Runs ``bench_dataplane.py --before DIR`` (sessions, calls and transfers on a board of each checkout, one CPU) and
``bench_tracker.py --before DIR`` (requests through a tracker and a board of each checkout, with TVM's alongside),
then prints one table of both checkouts' figures and their ratio::

    python benchmarks/before_after.py --before ../before [--quick] [--json out.json]

The older checkout may have either layout of ``farm`` (flat, or in folders by side).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import bench_dataplane
import bench_tracker
import harness

#: (tool, scenario, figure of this checkout, of the older one, field, label, unit): lower is better but for MB/s.
ROWS = (
    ("dataplane", "sessions", "farm", "before", "open_close_ms", "open + close a session", "ms"),
    ("dataplane", "calls", "farm_noop_signature", "before_noop_signature", "", "no-op call round trip", "us"),
    ("dataplane", "transfers", "farm_upload", "before_upload", "", "upload", "MB/s"),
    ("dataplane", "transfers", "farm_download", "before_download", "", "download", "MB/s"),
    ("tracker", "requests", "farm", "before", "", "request to a ready session", "ms"),
    ("tracker", "requests", "farm_kept", "before_kept", "", "same, tracker connection kept", "ms"),
)


def compare(results: Dict[str, Dict[str, Any]]) -> List[List[str]]:
    """One row per figure: before, after, after / before, and for requests TVM's against each."""
    rows = []
    for tool, scenario, after, before, field, label, unit in ROWS:
        figures = results[tool]["scenarios"].get(scenario, {})
        if after in figures and before in figures:
            mine, old = ((figures[name][field] if field else figures[name])["median"] for name in (after, before))
            tvm = figures.get(after.replace("farm", "tvm"), {}).get("median") if tool == "tracker" else None
            versus = "%.1f / %.1f" % (tvm / old, tvm / mine) if tvm else "-"
            rows.append([label, "%.2f %s" % (old, unit), "%.2f %s" % (mine, unit), "%.2f" % (mine / old), versus])
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the older checkout (a directory holding farm/)")
    parser.add_argument("--quick", action="store_true", help="a short run, for the smoke test")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    common = ["--before", os.path.abspath(args.before), "--log-level", args.log_level] + ["--quick"] * args.quick
    results: Dict[str, Dict[str, Any]] = {}
    status = 0
    with tempfile.TemporaryDirectory(prefix="before-after-") as workdir:
        for name, tool in (("dataplane", bench_dataplane.TOOL), ("tracker", bench_tracker.TOOL)):
            path = os.path.join(workdir, name + ".json")
            status |= harness.main(tool, [*common, "--json", path])
            with open(path, encoding="utf-8") as handle:
                results[name] = json.load(handle)
    header = ("figure", "before", "after", "after / before", "TVM / before, TVM / after")
    lines = ["", "## Before and after", "", "before: %s (farm sources %s); after: %s" % (
        args.before, harness.farm_fingerprint(os.path.join(args.before, "farm")),
        results["tracker"]["machine"]["farm_sources_sha256"]), ""]  # fmt: skip
    harness.publish(results, "\n".join(lines + harness.table(header, compare(results))) + "\n", args.json)
    return status


if __name__ == "__main__":
    sys.exit(main())
