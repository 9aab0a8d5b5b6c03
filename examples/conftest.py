"""What the example tests share: the kernels' C signatures and the ``kernel`` fixture that loads one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

KERNELS = Path(__file__).resolve().parent / "kernels"

VADD_F32 = "void vadd_f32(const float *a, const float *b, float *c, int64_t n)"
MATMUL = "void matmul_f32(const float *a, const float *b, float *c, int64_t m, int64_t k, int64_t n)"
CONV2D_RELU = (
    "void conv2d_relu_f32(const float *input, const float *weight, const float *bias, float *output, "
    "int64_t channels_in, int64_t height, int64_t width, int64_t channels_out, int64_t kernel)"
)
SUM = "double sum_f32(const float *x, int64_t n)"
MAX = "int32_t max_i32(const int32_t *x, int64_t n)"


@pytest.fixture
def kernel(device: Any, build_for: Callable[..., str]) -> Callable[[str], Any]:
    """``kernel("vadd.c")``: that source built for this board, uploaded and loaded there."""

    def load(source: str) -> Any:
        library = build_for(device, [KERNELS / source])
        device.upload(library)
        return device.load_module(os.path.basename(library))

    return load
