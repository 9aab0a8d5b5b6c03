"""The example suite: C kernels built for the board each test got, run there, checked against numpy.

Every test runs once per key of the farm (``device(keys="all")``): on the
embedded default that is the local boards; with ``--farm emulated`` also the
aarch64 and armhf boards under qemu-user; against a real farm
(``--tracker HOST:PORT``) every key its boards register, or the one
``--device-key`` names. The sources are cross-compiled on the host for what
the board says it runs (``build_for``), uploaded, loaded and called there.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

from conftest import CONV2D_RELU, MATMUL, MAX, SUM
from pytest_remotedev import assert_close

pytestmark = pytest.mark.device(keys="all")

# name -> (C function, C element type)
VADD = {
    "float32": ("vadd_f32", "float"),
    "float64": ("vadd_f64", "double"),
    "int32": ("vadd_i32", "int32_t"),
    "int8": ("vadd_i8", "int8_t"),
    "uint16": ("vadd_u16", "uint16_t"),
}


def accumulation_bound(terms: int, magnitudes: np.ndarray) -> float:
    """The classic bound on float32 rounding in a sum of ``terms`` products: n*eps/(1-n*eps) times the sum of the
    products' magnitudes (the largest, as one absolute tolerance)."""
    eps = float(np.finfo(np.float32).eps)
    return terms * eps / (1 - terms * eps) * float(np.max(magnitudes))


def random_array(rng: np.random.Generator, dtype: str, shape: Any) -> np.ndarray:
    """Values over the whole range of an integer type (so sums wrap), or normal floats."""
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", sorted(VADD))
def test_vector_add(device: Any, kernel: Callable[[str], Any], dtype: str) -> None:
    name, ctype = VADD[dtype]
    signature = "void %s(const %s *a, const %s *b, %s *c, int64_t n)" % (name, ctype, ctype, ctype)
    vadd = kernel("vadd.c").get_function(name, signature)
    rng = np.random.default_rng(1)
    a, b = random_array(rng, dtype, 100_003), random_array(rng, dtype, 100_003)
    c = device.empty(a.shape, dtype)
    vadd(device.array(a), device.array(b), c, a.size)
    with np.errstate(over="ignore"):
        expected = a + b  # integers wrap, as in C
    assert_close(c.numpy(), expected, name="vadd (%s)" % dtype)


@pytest.mark.parametrize("shape", [(1, 1, 1), (64, 96, 48), (33, 17, 65)], ids=lambda s: "x".join(map(str, s)))
def test_matmul(device: Any, kernel: Callable[[str], Any], shape: Any) -> None:
    m, k, n = shape
    matmul = kernel("matmul.c").get_function("matmul_f32", MATMUL)
    rng = np.random.default_rng(2)
    a, b = random_array(rng, "float32", (m, k)), random_array(rng, "float32", (k, n))
    c = device.empty((m, n), "float32")
    matmul(device.array(a), device.array(b), c, m, k, n)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    atol = accumulation_bound(k, np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
    assert_close(c.numpy(), expected, atol=atol, name="matmul %dx%dx%d" % shape)


def conv2d_relu_reference(image: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The same layer in numpy, in float64: every kernel offset's shifted image times its weights, summed."""
    channels_out, _, kernel, _ = weight.shape
    out_h, out_w = image.shape[1] - kernel + 1, image.shape[2] - kernel + 1
    out = np.broadcast_to(bias.astype(np.float64)[:, None, None], (channels_out, out_h, out_w)).copy()
    for ky in range(kernel):
        for kx in range(kernel):
            window = image[:, ky : ky + out_h, kx : kx + out_w].astype(np.float64)
            out += np.einsum("oc,chw->ohw", weight[:, :, ky, kx].astype(np.float64), window)
    return np.maximum(out, 0.0)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_conv2d_relu_layer(device: Any, kernel: Callable[[str], Any], kernel_size: int) -> None:
    channels_in, height, width, channels_out = 3, 32, 28, 8
    conv = kernel("conv2d_relu.c").get_function("conv2d_relu_f32", CONV2D_RELU)
    rng = np.random.default_rng(3)
    image = random_array(rng, "float32", (channels_in, height, width))
    weight = random_array(rng, "float32", (channels_out, channels_in, kernel_size, kernel_size))
    bias = random_array(rng, "float32", channels_out)
    out_shape = (channels_out, height - kernel_size + 1, width - kernel_size + 1)
    out = device.empty(out_shape, "float32")
    conv(device.array(image), device.array(weight), device.array(bias), out,
         channels_in, height, width, channels_out, kernel_size)  # fmt: skip
    result = out.numpy()
    magnitudes = conv2d_relu_reference(np.abs(image), np.abs(weight), np.abs(bias))  # the sum of |terms|
    atol = accumulation_bound(channels_in * kernel_size**2 + 1, magnitudes)
    expected = conv2d_relu_reference(image, weight, bias)
    assert_close(result, expected, atol=atol, name="conv2d+relu k=%d" % kernel_size)
    assert (result == 0).any() and (result > 0).any()  # the ReLU cut some values and kept others


def test_reductions(device: Any, kernel: Callable[[str], Any]) -> None:
    module = kernel("reduce.c")
    rng = np.random.default_rng(4)
    x = random_array(rng, "float32", 1_000_001)
    ints = random_array(rng, "int32", 50_000)
    total = module.get_function("sum_f32", SUM)(device.array(x), x.size)
    largest = module.get_function("max_i32", MAX)(device.array(ints), ints.size)
    assert_close(total, x.astype(np.float64).sum(), rtol=1e-12, name="sum")
    assert largest == int(ints.max())
