"""Per-row statistics of an activation in one pass: what a tap keeps when it stays on the GPU.

Each row (one position of a tap, all its features) reduces to four float32 numbers:
sum of squares, largest magnitude, sum, and the count of non-finite values. RMS, mean and
"did it blow up" follow, and two runtimes' rows can be compared without moving the activation.

Reference: the same four reductions in torch (`row_stats_reference`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

STATS = ("sumsq", "absmax", "sum", "nonfinite")


@triton.jit
def _row_stats_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    sumsq = tl.zeros([BLOCK], tl.float32)
    absmax = tl.zeros([BLOCK], tl.float32)
    total = tl.zeros([BLOCK], tl.float32)
    bad = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, n, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * n + cols, mask=cols < n, other=0.0).to(tl.float32)
        finite = (x == x) & (tl.abs(x) < float("inf"))
        bad += tl.where(finite, 0.0, 1.0)
        x = tl.where(finite, x, 0.0)
        sumsq += x * x
        absmax = tl.maximum(absmax, tl.abs(x))
        total += x
    out = out_ptr + row * 4
    tl.store(out, tl.sum(sumsq, axis=0))
    tl.store(out + 1, tl.max(absmax, axis=0))
    tl.store(out + 2, tl.sum(total, axis=0))
    tl.store(out + 3, tl.sum(bad, axis=0))


def row_stats(x: torch.Tensor) -> torch.Tensor:
    """[T, ...] -> [T, 4] float32 (STATS); non-finite values count, and are left out of the rest."""
    x2 = x.reshape(x.shape[0], -1).contiguous()
    out = torch.empty((x2.shape[0], 4), device=x.device, dtype=torch.float32)
    n = x2.shape[1]
    _row_stats_kernel[(x2.shape[0],)](x2, out, n, BLOCK=min(4096, triton.next_power_of_2(n)),
                                      num_warps=4)
    return out


def row_stats_reference(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(x.shape[0], -1).float()
    finite = torch.isfinite(x2)
    clean = torch.where(finite, x2, torch.zeros_like(x2))
    return torch.stack([clean.pow(2).sum(1), clean.abs().amax(1), clean.sum(1),
                        (~finite).sum(1).float()], dim=1)
