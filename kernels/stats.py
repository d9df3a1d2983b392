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


MAX_TENSORS = 32  # per launch: the pointers and strides stay well inside the kernel parameters


@triton.jit
def _one_row(x_ptr, out, n: tl.constexpr, BLOCK: tl.constexpr):
    sumsq = tl.zeros([BLOCK], tl.float32)
    absmax = tl.zeros([BLOCK], tl.float32)
    total = tl.zeros([BLOCK], tl.float32)
    bad = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, n, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + cols, mask=cols < n, other=0.0).to(tl.float32)
        finite = (x == x) & (tl.abs(x) < float("inf"))
        bad += tl.where(finite, 0.0, 1.0)
        x = tl.where(finite, x, 0.0)
        sumsq += x * x
        absmax = tl.maximum(absmax, tl.abs(x))
        total += x
    tl.store(out, tl.sum(sumsq, axis=0))
    tl.store(out + 1, tl.max(absmax, axis=0))
    tl.store(out + 2, tl.sum(total, axis=0))
    tl.store(out + 3, tl.sum(bad, axis=0))


@triton.jit
def _row_stats_kernel(xs, strides, out_ptr, rows, NS: tl.constexpr, BLOCKS: tl.constexpr):
    """Program (r, i): row r of tensor i of the tuple xs (NS[i] values from xs[i] + r *
    strides[i]) into out[i, r]. Many taps' statistics in one launch: a tapped forward's cost
    is mostly launches."""
    row = tl.program_id(0).to(tl.int64)
    which = tl.program_id(1)
    for i in tl.static_range(len(NS)):
        if which == i:
            _one_row(xs[i] + row * strides[i], out_ptr + (i * rows + row) * 4, NS[i],
                     BLOCKS[i])


def _row_major(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(x.shape[0], -1)
    return x2 if x2.stride(1) == 1 else x2.contiguous()


def row_stats_many(xs: list[torch.Tensor]) -> torch.Tensor:
    """[T, ...] tensors with one T -> [len(xs), T, 4] float32 (STATS), a launch per
    MAX_TENSORS tensors; non-finite values count, and are left out of the rest."""
    flat = [_row_major(x) for x in xs]
    rows = flat[0].shape[0]
    assert all(f.shape[0] == rows for f in flat), "one launch takes tensors of one row count"
    out = torch.empty((len(flat), rows, 4), device=flat[0].device, dtype=torch.float32)
    for start in range(0, len(flat), MAX_TENSORS):
        part = flat[start:start + MAX_TENSORS]
        ns = tuple(f.shape[1] for f in part)
        _row_stats_kernel[(rows, len(part))](
            tuple(part), tuple(f.stride(0) for f in part), out[start], rows, NS=ns,
            BLOCKS=tuple(min(4096, triton.next_power_of_2(n)) for n in ns), num_warps=4)
    return out


def row_stats(x: torch.Tensor) -> torch.Tensor:
    """[T, ...] -> [T, 4] float32 (STATS) of one tensor."""
    return row_stats_many([x])[0]


def row_stats_reference(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(x.shape[0], -1).float()
    finite = torch.isfinite(x2)
    clean = torch.where(finite, x2, torch.zeros_like(x2))
    return torch.stack([clean.pow(2).sum(1), clean.abs().amax(1), clean.sum(1),
                        (~finite).sum(1).float()], dim=1)
