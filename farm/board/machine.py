"""The board's state, read where Linux exposes it: what a timing figure needs beside it to be trusted.

Every reading is optional. A board that does not expose something (a VM without cpufreq, a kernel without
thermal zones) reports None for it, never an error. ``root`` is ``/`` on a board; tests pass a directory of
their own laid out as sysfs and procfs. Standard library only: boards run it.
"""

from __future__ import annotations

import math
import os
import platform
from typing import Any, Dict, List, Optional

#: A governor that holds the frequency still; any other lets it move between runs.
STEADY_GOVERNOR = "performance"
#: The 1-minute load average per CPU, less one for the timing loop itself, above which the board counts as busy.
BUSY_LOAD_PER_CPU = 0.5
#: The share of a repeat's wall time the timing loop must have run on a CPU.
ON_CPU = 0.9
#: The coefficient of variation of the repeats above which a figure counts as noisy.
NOISY_SPREAD = 0.05


def _read(root: str, path: str) -> Optional[str]:
    try:
        with open(os.path.join(root, path.lstrip("/")), encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _number(text: Optional[str]) -> Optional[int]:
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def cpu_frequency(cpu: int, root: str = "/") -> Dict[str, Any]:
    """``cpu``'s governor and its current, minimum and maximum frequency in kHz (None where not exposed)."""
    base = "sys/devices/system/cpu/cpu%d/cpufreq/" % cpu
    return {
        "governor": _read(root, base + "scaling_governor"),
        "current_khz": _number(_read(root, base + "scaling_cur_freq")),
        "min_khz": _number(_read(root, base + "scaling_min_freq")),
        "max_khz": _number(_read(root, base + "scaling_max_freq")),
    }


def temperatures(root: str = "/") -> Dict[str, float]:
    """Each thermal zone's temperature in °C, by its type (``zone`` number where two share a type)."""
    found: Dict[str, float] = {}
    base = os.path.join(root, "sys/class/thermal")
    try:
        zones = sorted(name for name in os.listdir(base) if name.startswith("thermal_zone"))
    except OSError:
        return found
    for zone in zones:
        millidegrees = _number(_read(root, "sys/class/thermal/%s/temp" % zone))
        if millidegrees is None:
            continue
        kind = _read(root, "sys/class/thermal/%s/type" % zone) or zone
        found[kind if kind not in found else "%s (%s)" % (kind, zone)] = millidegrees / 1000.0
    return found


def throttled(cpu: int, root: str = "/") -> Optional[bool]:
    """Whether the board has throttled for heat or power: the Raspberry Pi firmware's flags, or the x86 cores'
    throttle count; None where neither is exposed."""
    flags = _number(_read(root, "sys/devices/platform/soc/soc:firmware/get_throttled"))
    if flags is not None:
        return flags != 0
    count = _number(_read(root, "sys/devices/system/cpu/cpu%d/thermal_throttle/core_throttle_count" % cpu))
    return None if count is None else count > 0


def load(root: str = "/") -> Dict[str, Any]:
    """The load averages (1, 5 and 15 minutes) and how many other processes are running now."""
    averages = (_read(root, "proc/loadavg") or "").split()[:3]
    running = None
    for line in (_read(root, "proc/stat") or "").splitlines():
        if line.startswith("procs_running "):
            running = _number(line.split()[1])
    return {
        "load_average": [float(value) for value in averages] if len(averages) == 3 else None,
        "other_processes_running": None if running is None else max(running - 1, 0),  # less the reader
    }


def emulator(root: str = "/") -> Optional[str]:
    """The user-mode emulator this process runs under (``qemu-aarch64``), None on the hardware itself.

    qemu-user shows the guest everywhere but in the process's own command name.
    """
    for line in (_read(root, "proc/self/status") or "").splitlines():
        if line.startswith("Name:"):
            name = line.split(None, 1)[1] if len(line.split(None, 1)) > 1 else ""
            return name if name.startswith("qemu-") else None
    return None


def machine_state(cpu: Optional[int] = None, root: str = "/") -> Dict[str, Any]:
    """The board's state for a figure measured on ``cpu`` (None: the CPU this process runs on now)."""
    if cpu is None:
        cpu = current_cpu(root)
    return {
        "machine": platform.machine(),
        "emulator": emulator(root),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        **cpu_frequency(cpu, root),
        "temperatures_c": temperatures(root),
        "throttled": throttled(cpu, root),
        **load(root),
    }


def current_cpu(root: str = "/") -> int:
    """The CPU this process last ran on (field 39 of /proc/self/stat), 0 where that cannot be read."""
    stat = _read(root, "proc/self/stat") or ""
    fields = stat[stat.rfind(")") + 2 :].split()  # after the command, which may hold spaces
    processor = _number(fields[36]) if len(fields) > 36 else None
    return processor if processor is not None else 0


def finite(value: Any) -> Optional[float]:
    """``value`` as a float if it is a finite int or float (not a bool), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def checked_state(value: Any) -> Dict[str, Any]:
    """A state as a peer reported it, each field :func:`noise` reads set to None unless it has its type; the
    rest as reported."""
    if not isinstance(value, dict):
        return {}
    state = dict(value)
    averages = state.get("load_average")
    if not (isinstance(averages, list) and averages and all(finite(item) is not None for item in averages)):
        state["load_average"] = None
    for name in ("cpu_count", "other_processes_running", "cpu"):
        if not (isinstance(state.get(name), int) and not isinstance(state.get(name), bool)):
            state[name] = None
    for name in ("governor", "emulator"):
        if not isinstance(state.get(name), str):
            state[name] = None
    state["throttled"] = state.get("throttled") if isinstance(state.get("throttled"), bool) else None
    return state


def contention(state: Dict[str, Any]) -> List[str]:
    """Why ``state`` says other processes competed with the timing loop for the board's CPUs: a high load
    average, or as many other processes running as there are CPUs. Empty when it says neither."""
    reasons = []
    averages, cpus = state.get("load_average"), state.get("cpu_count") or 1
    if averages and averages[0] - 1 > BUSY_LOAD_PER_CPU * cpus:  # less the timing loop's own
        reasons.append("the load average is %.2f on %d CPUs" % (averages[0], cpus))
    others = state.get("other_processes_running")
    if others is not None and others >= cpus:
        reasons.append("%d other processes were running on %d CPUs" % (others, cpus))
    return reasons


def noise(state: Dict[str, Any], spread: Optional[float] = None, on_cpu: Optional[float] = None) -> List[str]:
    """Why a figure measured in ``state`` may be noisy, given the repeats' coefficient of variation ``spread``
    and the lowest share of a repeat's time the process was on a CPU (``on_cpu``): each reason a sentence;
    empty when none is known."""
    reasons = []
    governor = state.get("governor")
    if governor is not None and governor != STEADY_GOVERNOR:
        reasons.append("the CPU governor is %r, not %r" % (governor, STEADY_GOVERNOR))
    if state.get("throttled"):
        reasons.append("the board has throttled")
    reasons.extend(contention(state))
    if on_cpu is not None and on_cpu < ON_CPU:
        reasons.append(
            "the loop ran only %.0f%% of the time of a repeat (other processes took the CPU, or the function waits)"
            % (100 * on_cpu)
        )
    if spread is not None and spread > NOISY_SPREAD:
        reasons.append("the repeats vary by %.1f%% (more than %.0f%%)" % (100 * spread, 100 * NOISY_SPREAD))
    return reasons
