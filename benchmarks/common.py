"""What the benchmark scripts share: the machine's description, the code's fingerprint, child environments."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))  # measure this checkout's farm, installed or not

import farm  # noqa: E402

logger = logging.getLogger("benchmarks")


def machine_info(**extra: Any) -> Dict[str, Any]:
    """Cores, CPU model, Python and kernel (and ``extra``); nothing that names this machine."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    info = {
        "cores": os.cpu_count() or 0,
        "cpu_model": model,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "farm": farm.__version__,
        "farm_sources_sha256": farm_fingerprint(),
    }
    info.update(extra)
    return info


def farm_fingerprint() -> str:
    """A short hash of the farm package's sources, to tell which code a result belongs to."""
    digest = hashlib.sha256()
    root = Path(farm.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def child_env() -> Dict[str, str]:
    """The environment for child Pythons (boards, trackers): this checkout's ``farm`` first on their path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def exit_on_signal(number: int, _frame: Any) -> None:
    """A signal handler that unwinds the script, so its ``finally`` blocks stop every process."""
    raise SystemExit(128 + number)


def machine_line(machine: Dict[str, Any]) -> str:
    """The machine of :func:`machine_info` in one line of a report."""
    return "%d cores, %s, %s %s, kernel %s" % (
        machine["cores"],
        machine["cpu_model"],
        machine["python_implementation"],
        machine["python"],
        machine["kernel"],
    )


def publish(results: Dict[str, Any], text: str, json_path: Optional[str]) -> None:
    """Print a report, write the results to ``json_path`` when given, and log the run's duration."""
    sys.stdout.write(text)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
        logger.info("wrote %s", json_path)
    logger.info("done in %.1f s", results["elapsed_s"])


_INNER_ENV_DROP = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_CURRENT_TEST", "TVM_TRACKER_HOST", "TVM_TRACKER_PORT")


def inner_env() -> Dict[str, str]:
    """An inner pytest's environment: this checkout first on the path, nothing pointing it at another farm
    (``REMOTEDEV_CACHE`` stays: it says where the emulators and artifacts are, not which farm to use)."""
    env = child_env()
    for name in list(env):
        dropped = name.startswith(("REMOTEDEV_", "PYTEST_XDIST_")) and name != "REMOTEDEV_CACHE"
        if name in _INNER_ENV_DROP or dropped:
            del env[name]
    return env


def spread(values: List[float]) -> Dict[str, Any]:
    """Median, min, max and the values themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def tls_files(directory: str) -> Any:
    """A CA and the farm's certificate and key in ``directory``, made with the test suite's helper
    (``tests/farm_certs.py``, which needs ``pip install -e .[test]``)."""
    tests = str(PROJECT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from farm_certs import make_tls_files

    return make_tls_files(Path(directory))
