"""How this GPU launches the kernels: its SM count, the tuning tables swept on it, and
programmatic dependent launch (PDL) for the kernels of a one-token step.

A decode step is ~300 short kernels in a row, each reading the one before's output. Launched
with PDL (sm_90+), a kernel's blocks may start while the kernel before it finishes: each waits
(`wait_inputs`) before its first read of anything a predecessor wrote and before its first
store, so results are as with plain stream order, and each lets its successor launch
(`release_dependents`) once its own blocks are all running or done. Weights are constant, so
a kernel may read them before the wait.

IMPDIFF_PDL=0 launches everything in plain stream order (an A/B, or a suspect).

IMPDIFF_FUSIONS names what a one-token step fuses beyond that (comma-separated, or "all"),
opt-in until a GPU has timed each (stop 23 built them with none lent): "branches", a layer's
two QKV products of different formats as parallel branches (engine/fast.py); "rope", Q and K
rotated and K, V written to the cache by the QKV GEMV (kernels/mma_gemv.py).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..engine.errors import SettingError

PDL_ENV = "IMPDIFF_PDL"
FUSIONS_ENV = "IMPDIFF_FUSIONS"
FUSIONS = ("branches", "rope")
TUNING_DIR = Path(__file__).parent / "tuning"


@functools.cache
def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.cache
def tuning_table(env: str, suffix: str) -> dict:
    """A table of configs per shape, written by benchmarks/gemv_sweep.py --write-table: the
    JSON file named by $`env`, else the one shipped for this GPU (tuning/<device name>`suffix`),
    else none."""
    path = os.environ.get(env)
    if not path and torch.cuda.is_available():
        shipped = TUNING_DIR / (torch.cuda.get_device_name().replace(" ", "_") + suffix)
        path = str(shipped) if shipped.is_file() else None
    return json.loads(Path(path).read_text()) if path else {}


def fused(name: str) -> bool:
    """Whether $IMPDIFF_FUSIONS turns on the fusion `name` (one of FUSIONS)."""
    assert name in FUSIONS, name
    return name in fusions()


def fusions() -> frozenset[str]:
    """The fusions $IMPDIFF_FUSIONS turns on; SettingError for a name it does not know."""
    return _fusions(os.environ.get(FUSIONS_ENV, ""))


@functools.cache
def _fusions(value: str) -> frozenset[str]:
    names = {n.strip() for n in value.split(",") if n.strip()}
    if names == {"all"}:
        return frozenset(FUSIONS)
    unknown = sorted(names - set(FUSIONS))
    if unknown:
        raise SettingError(f"{FUSIONS_ENV}: unknown fusion {unknown[0]!r} (expected a "
                           f"comma-separated list of {', '.join(FUSIONS)}, or all)")
    return frozenset(names)


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
