"""farm.board.machine: the board's state read from a directory laid out as sysfs and procfs, and on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from farm.board.machine import machine_state, noise


def lay_out(root: Path, files: Dict[str, str]) -> str:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return str(root)


RASPBERRY_PI = {
    "sys/devices/system/cpu/cpu2/cpufreq/scaling_governor": "ondemand",
    "sys/devices/system/cpu/cpu2/cpufreq/scaling_cur_freq": "600000",
    "sys/devices/system/cpu/cpu2/cpufreq/scaling_min_freq": "600000",
    "sys/devices/system/cpu/cpu2/cpufreq/scaling_max_freq": "1500000",
    "sys/class/thermal/thermal_zone0/type": "cpu-thermal",
    "sys/class/thermal/thermal_zone0/temp": "61324",
    "sys/devices/platform/soc/soc:firmware/get_throttled": "0x50005",
    "proc/loadavg": "3.10 1.50 0.70 4/321 9999",
    "proc/stat": "cpu  1 2 3\nprocs_running 3\nprocs_blocked 0",
}


def test_a_board_that_exposes_everything(tmp_path: Path) -> None:
    state = machine_state(cpu=2, root=lay_out(tmp_path, RASPBERRY_PI))
    assert state["cpu"] == 2 and state["governor"] == "ondemand"
    assert (state["current_khz"], state["min_khz"], state["max_khz"]) == (600000, 600000, 1500000)
    assert state["temperatures_c"] == {"cpu-thermal": pytest.approx(61.324)}
    assert state["throttled"] is True
    assert state["load_average"] == [3.10, 1.50, 0.70] and state["other_processes_running"] == 2


def test_a_board_that_exposes_nothing_reports_none(tmp_path: Path) -> None:
    state = machine_state(cpu=0, root=str(tmp_path))
    assert state["governor"] is None and state["current_khz"] is None and state["throttled"] is None
    assert state["temperatures_c"] == {} and state["load_average"] is None
    assert state["other_processes_running"] is None and noise(state) == []


def test_x86_throttling_and_zones_of_one_type(tmp_path: Path) -> None:
    files = {
        "sys/devices/system/cpu/cpu0/thermal_throttle/core_throttle_count": "0",
        "sys/class/thermal/thermal_zone0/type": "x86_pkg_temp",
        "sys/class/thermal/thermal_zone0/temp": "45000",
        "sys/class/thermal/thermal_zone1/type": "x86_pkg_temp",
        "sys/class/thermal/thermal_zone1/temp": "not a number",
        "sys/class/thermal/thermal_zone2/type": "x86_pkg_temp",
        "sys/class/thermal/thermal_zone2/temp": "47000",
    }
    state = machine_state(cpu=0, root=lay_out(tmp_path, files))
    assert state["throttled"] is False
    assert state["temperatures_c"] == {"x86_pkg_temp": 45.0, "x86_pkg_temp (thermal_zone2)": 47.0}


def test_each_reason_for_noise_is_named(tmp_path: Path) -> None:
    state = machine_state(cpu=2, root=lay_out(tmp_path, RASPBERRY_PI))
    state["cpu_count"] = 4
    reasons = noise(state, spread=0.12)
    assert reasons == [
        "the CPU governor is 'ondemand', not 'performance'",
        "the board has throttled",
        "the load average is 3.10 on 4 CPUs",
        "the repeats vary by 12.0% (more than 5%)",
    ]
    quiet = dict(state, governor="performance", throttled=False, load_average=[0.1, 0.1, 0.1])
    assert noise(quiet, spread=0.01) == []


def test_this_machine() -> None:
    """Whatever this machine exposes, the reading works and names a CPU that exists."""
    state = machine_state()
    assert 0 <= state["cpu"] < (state["cpu_count"] or 1)
    assert state["load_average"] is not None and len(state["load_average"]) == 3
    assert isinstance(state["other_processes_running"], int)


def test_an_emulated_process_names_its_emulator(tmp_path: Path) -> None:
    root = lay_out(tmp_path, {"proc/self/status": "Name:\tqemu-aarch64\nUmask:\t0022\nState:\tR (running)"})
    assert machine_state(cpu=0, root=root)["emulator"] == "qemu-aarch64"
    native = lay_out(tmp_path / "native", {"proc/self/status": "Name:\tpython3\nUmask:\t0022"})
    assert machine_state(cpu=0, root=native)["emulator"] is None


def test_more_running_processes_than_cpus_is_noise() -> None:
    quiet = {"cpu_count": 2, "other_processes_running": 1}
    assert noise(quiet) == []
    assert noise(dict(quiet, other_processes_running=2)) == ["2 other processes were running on 2 CPUs"]
