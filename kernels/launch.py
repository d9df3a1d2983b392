"""Programmatic dependent launch (PDL) for the kernels of a one-token step.

A decode step is ~300 short kernels in a row, each reading the one before's output. Launched
with PDL (sm_90+), a kernel's blocks may start while the kernel before it finishes: each waits
(`wait_inputs`) before its first read of anything a predecessor wrote and before its first
store, so results are as with plain stream order, and each lets its successor launch
(`release_dependents`) once its own blocks are all running or done. Weights are constant, so
a kernel may read them before the wait.

IMPDIFF_PDL=0 launches everything in plain stream order (an A/B, or a suspect).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

PDL_ENV = "IMPDIFF_PDL"


@functools.cache
def _capable(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


def pdl_enabled(device: torch.device) -> bool:
    return (device.type == "cuda" and os.environ.get(PDL_ENV) != "0"
            and os.environ.get("TRITON_INTERPRET") != "1" and _capable(device))


def pdl_options(device: torch.device, one_token: bool = True) -> dict:
    """Keyword arguments of a Triton launch: the kernel's PDL switch and the launch attribute.
    Only a one-token step's kernels: prefill's many-wave kernels measured slower with it
    (gemma3-270m pp512 ~134k -> ~127k t/s)."""
    return {"PDL": True, "launch_pdl": True} if one_token and pdl_enabled(device) else {}


@triton.jit
def wait_inputs(PDL: tl.constexpr):
    if PDL:
        gdc_wait()


@triton.jit
def release_dependents(PDL: tl.constexpr):
    if PDL:
        gdc_launch_dependents()
