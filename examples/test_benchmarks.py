"""Benchmarks of the example kernels: each timed on the board it runs on, on every key of the farm.

``device_benchmark`` runs the timing loop on the board (20 repeats, each at least 10 ms of calls), records
the figure with the board's state, and shows it in the run's table per key. Saved and compared, the same
tests catch a kernel that got slower:

    pytest examples/test_benchmarks.py --device-benchmark-save=main
    pytest examples/test_benchmarks.py --device-benchmark-compare=main --device-benchmark-fail=median:10%

Each test also checks what the timed calls computed, so that a fast but wrong kernel does not pass. The sizes
keep a benchmark to seconds on an emulated board too (qemu runs a kernel tens of times slower).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from conftest import CONV2D_RELU, MATMUL, VADD_F32
from pytest_remotedev import assert_close

pytestmark = pytest.mark.device(keys="all")


def test_vector_add_256k(device: Any, kernel: Callable[[str], Any], device_benchmark: Any) -> None:
    vadd = kernel("vadd.c").get_function("vadd_f32", VADD_F32)
    x = np.random.default_rng(5).standard_normal(1 << 18, dtype=np.float32)
    c = device.empty(x.shape, "float32")
    result = device_benchmark(vadd, device.array(x), device.array(x), c, x.size)
    assert len(result.results) == result.repeat
    assert_close(c.numpy(), x + x, name="vadd timed")


def test_matmul_96(device: Any, kernel: Callable[[str], Any], device_benchmark: Any) -> None:
    matmul = kernel("matmul.c").get_function("matmul_f32", MATMUL)
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((96, 96), dtype=np.float32), rng.standard_normal((96, 96), dtype=np.float32)
    c = device.empty((96, 96), "float32")
    device_benchmark(matmul, device.array(a), device.array(b), c, 96, 96, 96)
    assert_close(c.numpy(), a.astype(np.float64) @ b.astype(np.float64), atol=1e-3, name="matmul timed")


def test_conv2d_relu_layer(device: Any, kernel: Callable[[str], Any], device_benchmark: Any) -> None:
    conv = kernel("conv2d_relu.c").get_function("conv2d_relu_f32", CONV2D_RELU)
    rng = np.random.default_rng(7)
    image = rng.standard_normal((8, 32, 32), dtype=np.float32)
    weight = rng.standard_normal((16, 8, 3, 3), dtype=np.float32)
    bias = rng.standard_normal(16, dtype=np.float32)
    out = device.empty((16, 30, 30), "float32")
    device_benchmark(conv, device.array(image), device.array(weight), device.array(bias), out, 8, 32, 32, 16, 3)
    assert (out.numpy() >= 0).all()  # the ReLU's output
